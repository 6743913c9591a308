"""Bad input end to end: each case ends in a clear outcome (sent once after a retry, or a dead
letter with its reason), the worker keeps running, and a healthy campaign processed by the
same worker at the same time is not affected.

Queue payloads that are not JSON objects, of the wrong version or for an unknown message are
in `test_consumer.py`; the provider clients' status mapping is in `test_ai_client.py` and
`test_whatsapp_client.py`. Here every case goes through the whole worker.

Most cases use the simulator. The few answers it cannot give word for word (a chosen AI
text, a truncated body, a gateway 200 with an error body, a model the provider does not
know) come from `ScriptedProvider`: a real HTTP server on loopback like the simulator, which
answers exactly what a test scripts.
"""

from __future__ import annotations

import json
import unicodedata
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from aiohttp import web
from psycopg.types.json import Jsonb

from consumer.devtools.seeding import Campaign, Seeder
from consumer.devtools.simulator import Faults, Simulator
from consumer.ops.replay import ReplayFilters, replay_dead_letters
from consumer.ops.stats import collect_stats
from consumer.settings import DEFAULT_MODEL_PRICES
from tests.harness import consumer_settings, running_worker, wait_until
from tests.integration.test_consumer import dead_letters, message_row, produce, queue_count, terminal

UNKNOWN_MODEL = "nobody/no-such-model"
GOOD_TEXT = "Hello there, this is a perfectly ordinary campaign message for you."


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(faults=Faults(seed=3)) as simulator:
        yield simulator


# --- a provider that answers exactly what the test scripts ----------------------------------------


@dataclass
class Answer:
    status: int = 200
    body: str | None = None  # raw body; None → a good completion (AI) / receipt (send)
    content: str | None = None  # AI only: a well-formed completion with this content
    content_type: str = "application/json"


@dataclass
class ScriptedProvider:
    """OpenAI-compatible completions + Evolution-shaped gateway on loopback, scripted per call."""

    generate: list[Answer] = field(default_factory=list)  # consumed in order, then good answers
    split: list[Answer] = field(default_factory=list)
    send: list[Answer] = field(default_factory=list)
    ai_bodies: list[dict[str, Any]] = field(default_factory=list)
    sends: list[tuple[str, str]] = field(default_factory=list)  # (number, text) accepted
    _runner: web.AppRunner | None = None
    base_url: str = ""

    async def __aenter__(self) -> ScriptedProvider:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/instance/connectionState/{instance}", self._state)
        app.router.add_post("/message/sendText/{instance}", self._send)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.base_url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    @property
    def ai_base_url(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def whatsapp_base_url(self) -> str:
        return self.base_url

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.ai_bodies.append(body)
        if body.get("model") == UNKNOWN_MODEL:
            error = {"error": {"code": 400, "message": f"{UNKNOWN_MODEL} is not a valid model ID"}}
            return web.json_response(error, status=400)
        is_split = "response_format" in body
        script = self.split if is_split else self.generate
        answer = script.pop(0) if script else Answer()
        if answer.body is not None:
            return web.Response(status=answer.status, text=answer.body, content_type=answer.content_type)
        if answer.content is not None:
            content = answer.content
        elif is_split:
            content = json.dumps({"parts": [body["messages"][-1]["content"]]})
        else:
            content = GOOD_TEXT
        completion = {
            "id": "gen-scripted",
            "model": body["model"],
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
        }
        return web.json_response(completion, status=answer.status)

    async def _state(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"instance": {"instanceName": request.match_info["instance"], "state": "open"}}
        )

    async def _send(self, request: web.Request) -> web.Response:
        body = await request.json()
        answer = self.send.pop(0) if self.send else Answer()
        if answer.body is not None:
            return web.Response(status=answer.status, text=answer.body, content_type=answer.content_type)
        self.sends.append((body["number"], body["text"]))
        receipt = {"key": {"remoteJid": f"{body['number']}@s.whatsapp.net", "fromMe": True, "id": "3EB0X"}}
        return web.json_response({**receipt, "status": "PENDING"}, status=201)


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedProvider]:
    async with ScriptedProvider() as provider:
        yield provider


# --- helpers --------------------------------------------------------------------------------------


async def run_until_settled(
    db: psycopg.Connection[Any],
    seed: Seeder,
    provider: Any,
    database_url: str,
    *campaigns: Campaign,
    **settings: Any,
) -> None:
    """Queue everything due, run one worker until every campaign is terminal and the queue empty."""
    produce(db)
    async with running_worker(consumer_settings(database_url, provider, **settings)) as running:
        await wait_until(
            lambda: all(terminal(seed, c) for c in campaigns) and queue_count(db) == 0,
            timeout_s=60,
            what="every campaign settled",
        )
        assert not running.task.done(), "the worker stopped"


def letter_for(db: psycopg.Connection[Any], message_id: uuid.UUID) -> dict[str, Any]:
    [letter] = [d for d in dead_letters(db) if d.get("campaign_message_id") == str(message_id)]
    return letter


def assert_dead(
    db: psycopg.Connection[Any], message_id: uuid.UUID, *, reason: str, error_class: str, mentions: str = ""
) -> dict[str, Any]:
    row = message_row(db, message_id)
    assert row["status"] == "failed", row
    letter = letter_for(db, message_id)
    assert (letter["reason"], letter["error_class"]) == (reason, error_class), letter
    assert mentions.lower() in letter["error"].lower(), letter["error"]
    assert letter["history"], letter
    return letter


def assert_all_sent(seed: Seeder, campaign: Campaign) -> None:
    assert seed.statuses(campaign.run_id) == {"sent": len(campaign.message_ids)}


# --- queue payloads -------------------------------------------------------------------------------


async def test_payloads_of_the_wrong_shape_are_dead_lettered_with_a_reason(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str
) -> None:
    good = seed.campaign(2)
    other = seed.campaign(1, scheduled_offset=timedelta(hours=1))  # not due: only payloads name it
    ids = {"campaign_message_id": str(other.message_ids[0]), "run_id": str(other.run_id)}
    payloads: list[Any] = [
        [1, 2, 3],
        42,
        None,
        {"v": 1},
        {
            "v": 1,
            "campaign_message_id": "not-a-uuid",
            "run_id": str(uuid.uuid4()),
            "lead_id": str(uuid.uuid4()),
        },
        {"v": "one", **ids, "lead_id": str(other.lead_ids[0])},
        # a real message id whose run/lead do not match: never process someone else's row
        {"v": 1, **ids, "lead_id": str(good.lead_ids[0])},
    ]
    for payload in payloads:
        db.execute("SELECT pgmq.send('campaign_messages', %s)", (Jsonb(payload),))

    await run_until_settled(db, seed, sim, database_url, good)

    letters = dead_letters(db)
    assert len(letters) == len(payloads)
    assert {letter["reason"] for letter in letters} == {"invalid_payload"}
    assert all(letter["error"] for letter in letters)
    assert_all_sent(seed, good)
    # the mismatching payload did not touch the row it named
    assert message_row(db, other.message_ids[0])["status"] == "pending"


def deep_array(depth: int) -> str:
    return "[" * depth + "]" * depth


def letters_as_text(db: psycopg.Connection[Any]) -> list[tuple[str, str, str, str | None]]:
    """(reason, error_class, error, campaign_message_id) of every dead letter, read in SQL: a
    letter may carry a poison payload that Python's json could not decode."""
    rows = db.execute(
        "SELECT message->>'reason', message->>'error_class', message->>'error',"
        " message->>'campaign_message_id' FROM pgmq.q_campaign_messages_dlq ORDER BY msg_id"
    ).fetchall()
    return [(str(a), str(b), str(c), d) for a, b, c, d in rows]


async def test_a_poison_payload_among_good_ones_is_dead_lettered_and_the_worker_keeps_going(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str
) -> None:
    """Issue 22: a contract payload with a 3,000-deep array in an extra field (6 KB) stopped
    `campaignq consume` with RecursionError while it decoded the batch, on every start."""
    good = seed.campaign(200)
    other = seed.campaign(1, scheduled_offset=timedelta(hours=1))  # not due: only the poison names it
    poison = (
        f'{{"v": 1, "campaign_message_id": "{other.message_ids[0]}", "run_id": "{other.run_id}",'
        f' "lead_id": "{other.lead_ids[0]}", "extra": {deep_array(3000)}}}'
    )
    db.execute("SELECT pgmq.send('campaign_messages', %s::jsonb)", (poison,))  # first in the batch

    await run_until_settled(db, seed, sim, database_url, good, batch_size=50, concurrency=50)

    assert_all_sent(seed, good)
    [(reason, error_class, error, named)] = letters_as_text(db)
    assert (reason, error_class, named) == ("invalid_payload", "invalid_payload", str(other.message_ids[0]))
    assert "larger than" in error or "deeper than" in error, error
    # the row it names was never claimed, nor charged a crash
    row = message_row(db, other.message_ids[0])
    assert (row["status"], row["retry_count"]) == ("pending", 0), row
    assert queue_count(db) == 0
    # the letter (which carries the poison) stops neither stats nor a replay
    stats = collect_stats(db, prices=DEFAULT_MODEL_PRICES)
    assert stats
    report = replay_dead_letters(db, ReplayFilters(), dry_run=True)
    assert report.by_action() == {"archived_invalid_payload": 1}


async def test_a_lead_whose_custom_fields_nest_too_deep_costs_only_its_own_message(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str
) -> None:
    campaign = seed.campaign(5)
    good = seed.campaign(5)
    bad_id = campaign.message_ids[0]
    db.execute(
        "UPDATE leads SET custom_fields = %s::jsonb WHERE id = %s",
        (f'{{"notes": {deep_array(3000)}}}', campaign.lead_ids[0]),
    )

    await run_until_settled(db, seed, sim, database_url, campaign, good)

    assert_all_sent(seed, good)
    assert seed.statuses(campaign.run_id) == {"sent": 4, "failed": 1}
    row = message_row(db, bad_id)
    assert row["status"] == "failed" and row["error_class"] == "invalid_lead", row
    [(reason, error_class, error, named)] = letters_as_text(db)
    assert (reason, error_class, named) == ("permanent", "invalid_lead", str(bad_id))
    assert "custom_fields" in error


@pytest.mark.parametrize("status", ["sent", "failed", "skipped"])
async def test_a_message_for_a_finished_row_is_archived_and_sends_nothing(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str, status: str
) -> None:
    done = seed.campaign(1)
    good = seed.campaign(2)
    db.execute(
        "UPDATE campaign_messages SET status = %s, generated_message = 'already done', "
        "parts = '[\"already done\"]' WHERE id = %s",
        (status, done.message_ids[0]),
    )
    before = message_row(db, done.message_ids[0])
    db.execute(
        "SELECT pgmq.send('campaign_messages', %s)",
        (
            Jsonb(
                {
                    "v": 1,
                    "campaign_message_id": str(done.message_ids[0]),
                    "run_id": str(done.run_id),
                    "lead_id": str(done.lead_ids[0]),
                }
            ),
        ),
    )

    await run_until_settled(db, seed, sim, database_url, good)

    after = message_row(db, done.message_ids[0])
    assert {k: after[k] for k in ("status", "parts_sent", "retry_count")} == {
        k: before[k] for k in ("status", "parts_sent", "retry_count")
    }
    assert [s.text for s in sim.sends].count("already done") == 0
    assert dead_letters(db) == []
    assert_all_sent(seed, good)
    assert sim.ai_request_count == 2  # only the healthy campaign's


# --- leads ----------------------------------------------------------------------------------------

BAD_PHONES: list[tuple[str | None, str]] = [
    (None, "no phone"),
    ("", "no phone"),
    ("   ", "no phone"),
    ("call me maybe", "letters"),
    ("+55 1199", "digits"),
    ("+55 11 99999-99999-99999", "digits"),
    ("011 99999 9999", "starts with 0"),
    ("+55#11#99999#9999", "unexpected character"),
]


async def test_leads_without_a_usable_phone_are_dead_lettered_before_any_ai_spend(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str
) -> None:
    bad = seed.campaign(len(BAD_PHONES), phones=[phone for phone, _ in BAD_PHONES])
    good = seed.campaign(2, phones=["+5511987650001", "+5511987650002"])

    await run_until_settled(db, seed, sim, database_url, bad, good)

    for message_id, (_, why) in zip(bad.message_ids, BAD_PHONES, strict=True):
        letter = assert_dead(db, message_id, reason="permanent", error_class="invalid_lead", mentions=why)
        assert letter["attempts"] == 1
    assert_all_sent(seed, good)
    assert sim.ai_request_count == 2  # the bad leads cost no generation
    # the phone never appears in a dead letter (they end up in logs and dashboards)
    assert "99999" not in json.dumps(dead_letters(db))


async def test_ten_megabytes_of_custom_fields_make_a_bounded_prompt(
    db: psycopg.Connection[Any], seed: Seeder, scripted: ScriptedProvider, database_url: str
) -> None:
    big = seed.campaign(2)
    good = seed.campaign(2)
    huge_value = "x" * (10 * 1024 * 1024)
    many_keys = {f"field_{i:06d}": "y" * 100 for i in range(100_000)}  # ~11 MB of small fields
    db.execute(
        "UPDATE leads SET custom_fields = %s WHERE id = %s", (Jsonb({"notes": huge_value}), big.lead_ids[0])
    )
    db.execute("UPDATE leads SET custom_fields = %s WHERE id = %s", (Jsonb(many_keys), big.lead_ids[1]))

    await run_until_settled(db, seed, scripted, database_url, big, good)

    assert_all_sent(seed, big)
    assert_all_sent(seed, good)
    prompts = [json.dumps(body) for body in scripted.ai_bodies]
    assert max(len(p) for p in prompts) < 20_000
    assert any("(truncated)" in p for p in prompts)
    assert any("more fields omitted" in p for p in prompts)


async def test_emoji_and_right_to_left_text_travel_intact(
    db: psycopg.Connection[Any], seed: Seeder, scripted: ScriptedProvider, database_url: str
) -> None:
    # Alone: the scripted answers are consumed in arrival order, so no other campaign may race it.
    rtl = seed.campaign(1, split=True, max_parts=3)
    db.execute(
        "UPDATE leads SET name = %s, custom_fields = %s WHERE id = %s",
        ("مريم 👩🏽‍💻", Jsonb({"עיר": "תל אביב", "note": "🎉🔥 שלום"}), rtl.lead_ids[0]),
    )
    family = "👨‍👩‍👧‍👦"
    text = (f"שלום מרים {family}! " * 40).strip() + "\n\n" + ("مرحبا بك 🇧🇷 " * 60).strip()
    scripted.generate.append(Answer(content=text))
    scripted.split.append(Answer(body='{"parts": ["truncated', status=200))  # unusable: local split

    # The two-call path (generate, then split) that models without structured output use.
    await run_until_settled(
        db, seed, scripted, database_url, rtl, max_part_chars=300, ai_structured_output=False
    )

    assert_all_sent(seed, rtl)
    prompt = json.dumps(scripted.ai_bodies[0], ensure_ascii=False)
    assert "مريم 👩🏽‍💻" in prompt and "תל אביב" in prompt and "🎉🔥 שלום" in prompt
    row = message_row(db, rtl.message_ids[0])
    parts = row["parts"]
    assert row["generated_message"] == text
    assert "".join("".join(parts).split()) == "".join(text.split())
    assert all(len(part) <= 300 for part in parts)
    for part in parts:  # no bubble starts inside a grapheme (joiner, skin tone, second flag half)
        assert not unicodedata.combining(part[0]) and part[0] not in "\u200d\ufe0f"
        assert part.count(family) * len(family) <= len(part)
    sent = [t for n, t in scripted.sends if t in parts]
    assert sent == parts


# --- campaign configs -----------------------------------------------------------------------------


async def test_an_unknown_model_is_a_permanent_provider_rejection(
    db: psycopg.Connection[Any], seed: Seeder, scripted: ScriptedProvider, database_url: str
) -> None:
    bad = seed.campaign(2, model=UNKNOWN_MODEL)
    good = seed.campaign(2)

    await run_until_settled(db, seed, scripted, database_url, bad, good)

    for message_id in bad.message_ids:
        assert_dead(
            db, message_id, reason="permanent", error_class="provider_rejected", mentions="not a valid model"
        )
    assert_all_sent(seed, good)


@pytest.mark.parametrize("prompt", ["", "   \n\t"])
async def test_an_empty_prompt_is_a_config_error_and_costs_no_ai_call(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str, prompt: str
) -> None:
    bad = seed.campaign(2, prompt=prompt)
    good = seed.campaign(2)

    await run_until_settled(db, seed, sim, database_url, bad, good)

    for message_id in bad.message_ids:
        assert_dead(
            db, message_id, reason="permanent", error_class="invalid_config", mentions="prompt is empty"
        )
    assert_all_sent(seed, good)
    assert sim.ai_request_count == 2


async def test_an_inbox_the_gateway_does_not_know_is_a_config_error(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str
) -> None:
    bad = seed.campaign(2, instance="unknown-inbox")
    good = seed.campaign(2)

    await run_until_settled(db, seed, sim, database_url, bad, good)

    for message_id in bad.message_ids:
        assert_dead(
            db, message_id, reason="permanent", error_class="invalid_config", mentions="does not exist"
        )
    assert_all_sent(seed, good)
    assert sim.ai_request_count == 2


# --- what the AI answers --------------------------------------------------------------------------

TRUNCATED_COMPLETION = (
    '{"id": "gen-1", "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hel'
)
BAD_AI_ANSWERS: dict[str, Answer] = {
    "empty content": Answer(content=""),
    "only whitespace": Answer(content=" \n\t \u00a0 \n"),
    "too short": Answer(content="  Oi!  "),
    "200 with an error object": Answer(body='{"error": {"code": 502, "message": "Upstream error"}}'),
    "200 with an HTML page": Answer(body="<html><body>Bad gateway</body></html>", content_type="text/html"),
    "truncated JSON body": Answer(body=TRUNCATED_COMPLETION),
    "an error as the content": Answer(content='{"error": "model overloaded, try again"}'),
    "an HTML page as the content": Answer(content="<!DOCTYPE html><html><body>502</body></html>"),
    "no choices": Answer(body='{"id": "gen-1", "choices": []}'),
}


@pytest.mark.parametrize("case", list(BAD_AI_ANSWERS))
async def test_a_bad_ai_answer_is_retried_and_the_message_sent_once(
    db: psycopg.Connection[Any], seed: Seeder, scripted: ScriptedProvider, database_url: str, case: str
) -> None:
    campaign = seed.campaign(1)
    scripted.generate.append(BAD_AI_ANSWERS[case])

    await run_until_settled(db, seed, scripted, database_url, campaign)

    row = message_row(db, campaign.message_ids[0])
    assert (row["status"], row["retry_count"], row["generated_message"]) == ("sent", 1, GOOD_TEXT)
    assert [h["error_class"] for h in row["attempt_history"]] == ["invalid_ai_output"]
    assert scripted.sends == [(scripted.sends[0][0], GOOD_TEXT)]


async def test_an_ai_that_always_answers_garbage_is_dead_lettered_after_max_attempts(
    db: psycopg.Connection[Any], seed: Seeder, scripted: ScriptedProvider, database_url: str
) -> None:
    bad = seed.campaign(1)
    scripted.generate.extend([Answer(content="   "), Answer(body="<html>oops</html>"), Answer(content="")])

    await run_until_settled(db, seed, scripted, database_url, bad, concurrency=1)

    letter = assert_dead(db, bad.message_ids[0], reason="max_attempts", error_class="invalid_ai_output")
    assert letter["attempts"] == 3
    assert scripted.sends == []
    # the next campaign, same worker configuration, is fine once the provider behaves
    good = seed.campaign(2)
    await run_until_settled(db, seed, scripted, database_url, good)
    assert_all_sent(seed, good)


@pytest.mark.parametrize("gap", [" ", ""], ids=["5000 chars of words", "5000 chars without spaces"])
async def test_5000_chars_without_punctuation_are_split_within_whatsapps_limit(
    db: psycopg.Connection[Any], seed: Seeder, scripted: ScriptedProvider, database_url: str, gap: str
) -> None:
    campaign = seed.campaign(1, split=True, max_parts=3)
    words = ["palavra", "mensagem", "cliente", "oferta", "hoje"]
    text = gap.join(words[i % len(words)] for i in range(700))[:5000].strip()
    scripted.generate.append(Answer(content=text))
    scripted.split.append(Answer(body=json.dumps({"parts": [text]})))  # one 5000-char part: refused

    await run_until_settled(db, seed, scripted, database_url, campaign, ai_structured_output=False)

    row = message_row(db, campaign.message_ids[0])
    assert row["status"] == "sent"
    assert 2 <= len(row["parts"]) <= 3
    assert all(0 < len(part) <= 4096 for part in row["parts"])
    assert "".join("".join(row["parts"]).split()) == "".join(text.split())
    assert [t for _, t in scripted.sends] == row["parts"]


# --- what the gateway answers ---------------------------------------------------------------------


async def test_a_gateway_html_502_is_retried_and_the_part_sent_once(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str
) -> None:
    phone = "+5511987654321"
    campaign = seed.campaign(1, phones=[phone])
    good = seed.campaign(2)
    sim.fail_next_send("502_html", number=phone)

    await run_until_settled(db, seed, sim, database_url, campaign, good)

    row = message_row(db, campaign.message_ids[0])
    assert (row["status"], row["retry_count"]) == ("sent", 1)
    assert "HTML" in row["attempt_history"][0]["error"]
    assert len(sim.sends_to(phone)) == 1
    assert sim.duplicate_sends() == []
    assert_all_sent(seed, good)


async def test_a_gateway_200_with_an_error_body_is_not_taken_for_a_delivery(
    db: psycopg.Connection[Any], seed: Seeder, scripted: ScriptedProvider, database_url: str
) -> None:
    campaign = seed.campaign(1)
    error_200 = json.dumps(
        {"status": 500, "error": "Internal Server Error", "response": {"message": "send failed"}}
    )
    scripted.send.append(Answer(status=200, body=error_200))

    await run_until_settled(db, seed, scripted, database_url, campaign)

    row = message_row(db, campaign.message_ids[0])
    assert (row["status"], row["retry_count"]) == ("sent", 1)
    assert "send failed" in row["attempt_history"][0]["error"]
    assert len(scripted.sends) == 1  # delivered by the retry, exactly once


async def test_a_gateway_that_never_answers_times_out_and_the_part_is_sent_once(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str
) -> None:
    phone = "+5511987654321"
    campaign = seed.campaign(1, phones=[phone])
    good = seed.campaign(2)
    sim.set_faults(hang_s=30.0)
    sim.fail_next_send("hang", number=phone)

    await run_until_settled(db, seed, sim, database_url, campaign, good, send_timeout_s=0.5)

    row = message_row(db, campaign.message_ids[0])
    assert (row["status"], row["retry_count"]) == ("sent", 1)
    assert row["attempt_history"][0]["error_class"] == "timeout"
    assert len(sim.sends_to(phone)) == 1
    assert_all_sent(seed, good)
