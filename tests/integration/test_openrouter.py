"""Issue 21, points 5 to 8: campaignq against an OpenRouter that answers as its documentation says
(OpenRouterTeam/docs c26125a) — its Batch API, its moderation 403, `cache_control` for the
families that need it, Retry-After on 503 — real PostgreSQL + PGMQ, the simulator over HTTP."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import aiohttp
import psycopg
import pytest
from psycopg.rows import dict_row

from consumer.core.llmcost import parts_response_format
from consumer.devtools.seeding import Campaign, Seeder
from consumer.devtools.simulator import Faults, Simulator
from consumer.devtools.simulator.contract import validate
from consumer.errors import ContentBlockedError, FatalError, ProviderOverloadedError, RateLimitedError
from consumer.ops.console.filters import DeadLetterFilter
from consumer.ops.console.store import Store
from consumer.runtime.ai import AIClient
from consumer.runtime.db import Database
from consumer.runtime.pregenerate import OpenRouterBatchClient, Pregenerator, batch_client_for
from consumer.settings import DEFAULT_MODEL_PRICES
from tests.harness import AI_KEY, consumer_settings, running_worker, wait_until
from tests.openrouter_contract import chat_result_schema, load

LONG_PROMPT = "You are Ana from Acme Fitness. Be warm, concrete and brief. " * 140  # ~2,000 tokens
MARKER = Faults().moderation_marker


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(faults=Faults(seed=21, batch_api="openrouter")) as simulator:
        yield simulator
        assert simulator.contract_violations == []  # every body we sent is a valid ChatRequest


def produce(db: psycopg.Connection[Any]) -> int:
    row = db.execute("SELECT enqueue_due_campaign_messages(10000)").fetchone()
    assert row is not None
    return int(row[0])


def terminal(seed: Seeder, campaign: Campaign) -> bool:
    statuses = seed.statuses(campaign.run_id)
    return sum(statuses.get(s, 0) for s in ("sent", "failed", "skipped")) == len(campaign.message_ids)


def rows(db: psycopg.Connection[Any], campaign: Campaign) -> list[dict[str, Any]]:
    cur = db.cursor(row_factory=dict_row)
    return cur.execute(
        "SELECT * FROM campaign_messages WHERE run_id = %s ORDER BY scheduled_at, id", (campaign.run_id,)
    ).fetchall()


# --- point 5: OpenRouter's Batch API ---------------------------------------------------------------


async def test_ten_messages_due_in_3h_go_through_openrouter_batches_and_are_sent_without_ai_calls(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str
) -> None:
    # The default `auto` picks OpenRouter's API on openrouter.ai only; the simulator says so explicitly.
    settings = consumer_settings(database_url, sim, ai_batch_api="openrouter", pregen_min_ahead_s=3600)
    ahead = timedelta(hours=3)
    campaign = seed.campaign(6, split=True, scheduled_offset=ahead, model="openai/gpt-4o-mini")
    other = seed.campaign(4, scheduled_offset=ahead, model="anthropic/claude-haiku-4.5", prompt=LONG_PROMPT)
    db_pool = await Database.open(database_url, max_size=2)
    try:
        async with aiohttp.ClientSession() as session:
            batches = batch_client_for(settings, session)
            assert isinstance(batches, OpenRouterBatchClient)
            pregen = Pregenerator(
                db=db_pool, ai=AIClient.from_settings(settings, session), batches=batches, settings=settings
            )
            first = await pregen.tick()
            # one model per batch: the claim of 10 rows became two OpenRouter batches
            assert (first.submitted_batches, first.submitted_requests) == (2, 10)
            second = await pregen.tick()
            assert second.stored == 10 and second.finished_batches == {"completed": 2}
            async with session.post(
                f"{sim.ai_base_url}/files", headers={"Authorization": "Bearer k"}
            ) as files:
                assert files.status == 404  # no files on OpenRouter
    finally:
        await db_pool.close()
    assert sim.batches.counts["batch_rejected_key_order"] == 0
    submitted = [str(batch.model) for batch in sim.batches.batches.values()]
    assert sorted(submitted) == ["anthropic/claude-haiku-4.5", "openai/gpt-4o-mini"]
    # the batch bodies carry the same layout as the sync path: breakpoint only for Anthropic
    anthropic = next(b for b in sim.batches.batches.values() if b.model == "anthropic/claude-haiku-4.5")
    assert anthropic.requests[0]["body"]["messages"][0]["content"][0]["cache_control"] == {
        "type": "ephemeral"
    }

    for run in (campaign, other):
        assert all(row["generation_mode"] == "batch" and row["parts"] for row in rows(db, run))
        db.execute(
            "UPDATE campaign_messages SET scheduled_at = now() - interval '1 second' WHERE run_id = %s",
            (run.run_id,),
        )
    produce(db)
    before = sim.ai_request_count
    async with running_worker(consumer_settings(database_url, sim)):
        await wait_until(lambda: terminal(seed, campaign) and terminal(seed, other), what="all sent")
    assert sim.ai_request_count == before  # at due time: no synchronous AI call at all
    assert seed.statuses(campaign.run_id) == {"sent": 6} and seed.statuses(other.run_id) == {"sent": 4}
    assert sim.duplicate_sends() == []


async def test_openrouter_batch_submissions_are_validated_like_the_real_api(sim: Simulator) -> None:
    example = load("batch.json")["examples"]
    url = f"{sim.base_url}/api/beta/batches"
    headers = {"Authorization": "Bearer k", "Content-Type": "application/json"}
    good = json.dumps(example["create_request"])
    requests_first = json.dumps(
        {
            "requests": example["create_request"]["requests"],
            "endpoint": "/v1/chat/completions",
            "model": "openai/gpt-4o",
        }
    )
    mismatch = dict(example["create_request"])
    mismatch["requests"] = [{"custom_id": "a", "body": {"model": "other/model", "messages": []}}]
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=requests_first, headers=headers) as refused:
            assert refused.status == 400 and "before" in (await refused.json())["error"]["message"]
        async with http.post(url, data=json.dumps(mismatch), headers=headers) as wrong_model:
            assert wrong_model.status == 400
        empty = {**example["create_request"], "requests": [{"custom_id": "a", "body": {"messages": []}}]}
        async with http.post(url, data=json.dumps(empty), headers=headers) as invalid_item:
            assert invalid_item.status == 400  # each body is checked against the chat request schema
            assert "requests[0]" in (await invalid_item.json())["error"]["message"]
        sim.contract_violations.clear()
        async with http.post(url, data=good, headers=headers) as created:
            assert created.status == 202
            batch = await created.json()
        assert set(batch) == set(example["create_response_202"])
        assert batch["status"] == "validating" and batch["results"] is None
        async with http.get(f"{url}/{batch['id']}", headers=headers) as polled:
            done = await polled.json()
    assert set(done) == set(example["completed_batch"]) and done["status"] == "completed"
    item = done["results"][0]
    assert set(item) == set(example["completed_batch"]["results"][0])
    assert item["custom_id"] == "req-0001" and item["response"]["body"]["choices"][0]["message"]["content"]
    # the client serialises endpoint and model before requests
    body = OpenRouterBatchClient.request_body("m/x", [("1", {"messages": []})])
    assert list(json.loads(body)) == ["endpoint", "model", "requests"]


# --- point 6: a moderation 403 fails one lead, not the process ----------------------------------------


async def test_a_moderated_lead_fails_alone_while_its_run_completes(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str
) -> None:
    workspace = uuid.uuid4()
    inbox = seed.inbox(workspace, "inst-1")
    config = seed.config(workspace, inbox, split=False, max_parts=1, model="openai/gpt-4o-mini", prompt="Hi")
    run_id = seed.run(config, status="running", leads_total=5)
    names = ["Ana", "Bia", f"Caio {MARKER}", "Duda", "Enzo"]
    leads = seed.leads(workspace, 5, names=names)
    seed.messages(run_id, leads, scheduled_offset=timedelta(minutes=-1))
    produce(db)
    async with running_worker(consumer_settings(database_url, sim), expect_exit_code=0) as running:
        await wait_until(
            lambda: sum(seed.statuses(run_id).get(k, 0) for k in ("sent", "failed")) == 5, what="all done"
        )
        assert not running.task.done()  # the process goes on
    assert seed.statuses(run_id) == {"sent": 4, "failed": 1}
    letter = db.execute(
        "SELECT reason, error_class, message->>'error' FROM campaignq_dead_letters WHERE run_id = %s",
        (run_id,),
    ).fetchall()
    assert len(letter) == 1
    reason, error_class, error = letter[0]
    assert (reason, error_class) == ("content_blocked", "content_blocked")
    assert "harassment" in error and "OpenAI" in error  # the provider's reasons, for the operator
    status = db.execute("SELECT status FROM campaign_runs WHERE id = %s", (run_id,)).fetchone()
    assert status is not None and status[0] == "completed"
    # the console's dead-letter page lists it under its reason, with the provider's reasons
    store = Store(database_url, prices=DEFAULT_MODEL_PRICES)
    store.open()
    try:
        listing = store.dead_letters(DeadLetterFilter(reason="content_blocked"))
    finally:
        store.close()
    assert listing["matching"] == 1 and "harassment" in listing["letters"][0]["error"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("moderation_403", ContentBlockedError),
        ("guardrail_403", ContentBlockedError),
        ("rate_limited_429", RateLimitedError),
        ("provider_rate_limit_429", RateLimitedError),
        ("unavailable_503", ProviderOverloadedError),
        ("in_flight_budget_402", RateLimitedError),
    ],
)
async def test_openrouters_documented_error_bodies_map_to_our_errors(
    sim: Simulator, name: str, expected: type[Exception]
) -> None:
    example = load("errors.json")["examples"][name]
    async with aiohttp.ClientSession() as session:
        client = AIClient(session=session, base_url=sim.ai_base_url, api_key=AI_KEY, requests_per_minute=60)
        error = client._error_for(
            example["status"], example.get("headers", {}), json.dumps(example["body"]).encode()
        )
    assert isinstance(error, expected) and not isinstance(error, FatalError)
    if isinstance(error, RateLimitedError) and "headers" in example:
        assert error.retry_after_s == float(example["headers"]["Retry-After"])


# --- point 8: Retry-After on 503 -----------------------------------------------------------------------


async def test_a_503_with_retry_after_defers_like_a_429_without_burning_an_attempt(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str
) -> None:
    campaign = seed.campaign(1)
    produce(db)
    sim.fail_next_ai("503", retry_after_s=1)
    async with running_worker(consumer_settings(database_url, sim)):
        await wait_until(lambda: terminal(seed, campaign), what="sent after the Retry-After")
    row = rows(db, campaign)[0]
    assert row["status"] == "sent" and row["retry_count"] == 0
    outcomes = [request.outcome for request in sim.ai_requests]
    assert outcomes[0] == "503" and outcomes[-1] == "ok"
    assert sim.ai_requests[-1].monotonic_s - sim.ai_requests[0].monotonic_s >= 0.9  # waited the Retry-After


# --- point 7: cache_control where the family needs it ---------------------------------------------------


async def test_cache_control_is_sent_for_anthropic_and_not_for_openai_and_the_cache_follows(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str
) -> None:
    claude = seed.campaign(3, model="anthropic/claude-haiku-4.5", prompt=LONG_PROMPT)
    gpt = seed.campaign(3, model="openai/gpt-4o-mini", prompt=LONG_PROMPT, instance="inst-2")
    produce(db)
    async with running_worker(consumer_settings(database_url, sim)):
        await wait_until(lambda: terminal(seed, claude) and terminal(seed, gpt), what="all sent")
    by_model: dict[str, list[dict[str, Any]]] = {}
    for request in sim.ai_requests:
        by_model.setdefault(request.model, []).append(request.body)
    for body in by_model["anthropic/claude-haiku-4.5"]:
        system, user = body["messages"]
        assert system["content"] == [
            {"type": "text", "text": LONG_PROMPT.strip(), "cache_control": {"type": "ephemeral"}}
        ]
        assert isinstance(user["content"], str)  # the lead's data after the breakpoint
    assert all(isinstance(b["messages"][0]["content"], str) for b in by_model["openai/gpt-4o-mini"])
    assert "cache_control" not in json.dumps(by_model["openai/gpt-4o-mini"])
    # both families hit the cache after the first request: Anthropic thanks to the breakpoint
    cached = {r["id"]: r["ai_cached_tokens"] for r in rows(db, claude) + rows(db, gpt)}
    assert sum(1 for tokens in cached.values() if tokens and tokens > 0) >= 4
    # …and an Anthropic prefix without the breakpoint is never cached
    plain = {
        "model": "anthropic/claude-haiku-4.5",
        "messages": [{"role": "system", "content": LONG_PROMPT}, {"role": "user", "content": "x"}],
        "session_id": "k",
    }
    assert sim.prompt_cache.lookup(plain) == (0, 0) and sim.prompt_cache.lookup(plain) == (0, 0)
    assert sim.prompt_cache.stats()["uncacheable"] == 2


# --- the request contract ------------------------------------------------------------------------------


async def test_the_simulator_refuses_a_body_that_breaks_openrouters_request_schema(sim: Simulator) -> None:
    headers = {"Authorization": "Bearer k"}
    invalid = {
        "model": "m/x",
        "messages": [
            {
                "role": "system",
                "content": [{"type": "text", "text": "x", "cache_control": {"type": "forever"}}],
            }
        ],
        "max_tokens": "many",
    }
    valid = {"model": "m/x", "messages": [{"role": "user", "content": "Lead name: Ana"}], "max_tokens": 64}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.post(f"{sim.ai_base_url}/chat/completions", json=invalid) as refused:
            assert refused.status == 400
            error = (await refused.json())["error"]
        async with http.post(f"{sim.ai_base_url}/chat/completions", json=valid) as accepted:
            assert accepted.status == 200
    assert error["code"] == 400 and "Invalid request body" in error["message"]
    assert len(sim.contract_violations) == 1 and "max_tokens" in sim.contract_violations[0]
    sim.contract_violations.clear()


async def test_a_batch_the_provider_does_not_know_is_closed_and_its_rows_go_sync(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str
) -> None:
    settings = consumer_settings(database_url, sim, ai_batch_api="openrouter", pregen_min_ahead_s=3600)
    campaign = seed.campaign(2, scheduled_offset=timedelta(hours=3))
    db_pool = await Database.open(database_url, max_size=2)
    try:
        async with aiohttp.ClientSession() as session:
            pregen = Pregenerator(
                db=db_pool,
                ai=AIClient.from_settings(settings, session),
                batches=batch_client_for(settings, session),
                settings=settings,
            )
            assert (await pregen.tick()).submitted_requests == 2
            sim.batches.batches.clear()  # e.g. the Batch API was switched, or the provider purged it
            report = await pregen.tick()
    finally:
        await db_pool.close()
    assert report.finished_batches == {"failed": 1} and report.submitted_requests == 0
    assert {row["generation_mode"] for row in rows(db, campaign)} == {None}
    assert db.execute("SELECT status FROM ai_batches").fetchall() == [("failed",)]


async def test_the_simulators_answers_are_shapes_openrouter_documents(sim: Simulator) -> None:
    """Its 200s obey OpenRouter's ChatResult schema; its error bodies use only the documented keys."""
    result_schema = chat_result_schema()
    headers = {"Authorization": "Bearer k"}
    system = {"role": "system", "content": "Write."}
    bodies = [
        {
            "model": "m/x",
            "messages": [system, {"role": "user", "content": "Lead name: Ana"}],
            "max_tokens": 64,
        },
        {
            "model": "m/x",
            "messages": [system, {"role": "user", "content": "Lead name: Ana"}],
            "max_tokens": 64,
            "response_format": parts_response_format(max_parts=3),
        },
    ]
    documented = load("errors.json")["examples"]

    def keys_within(actual: Any, allowed: Any, path: str = "$") -> list[str]:
        if not isinstance(actual, dict):
            return []
        extra = [f"{path}.{k}" for k in actual if k not in allowed]
        return extra + [
            p for k in actual if k in allowed for p in keys_within(actual[k], allowed[k], f"{path}.{k}")
        ]

    async with aiohttp.ClientSession(headers=headers) as http:
        for body in bodies:
            async with http.post(f"{sim.ai_base_url}/chat/completions", json=body) as answer:
                assert answer.status == 200
                assert validate(await answer.json(), result_schema) == []
        for fault, example in (
            ("moderation_403", "moderation_403"),
            ("guardrail_403", "guardrail_403"),
            ("429", "provider_rate_limit_429"),
            ("402_in_flight", "in_flight_budget_402"),
        ):
            sim.fail_next_ai(fault)  # type: ignore[arg-type]
            async with http.post(f"{sim.ai_base_url}/chat/completions", json=bodies[0]) as refused:
                assert refused.status == documented[example]["status"]
                assert keys_within(await refused.json(), documented[example]["body"]) == [], fault
    assert validate(sim.batch_answer(bodies[0]), result_schema) == []
