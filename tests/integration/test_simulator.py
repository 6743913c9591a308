"""The simulator itself: what the other tests, the demo and the benchmarks rely on it to do."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from consumer.devtools.simulator import FAULT_PROFILES, Faults, Simulator, fault_profile

AI_HEADERS = {"Authorization": "Bearer sk-anything"}
WA_HEADERS = {"apikey": "evo-anything"}


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(faults=Faults(seed=1)) as simulator:
        yield simulator


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


def chat(user: str, *, system: str = "Be nice.", max_parts: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "sim/model",
        "max_tokens": 400,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
    }
    if max_parts is not None:
        schema = {"type": "object", "properties": {"parts": {"type": "array", "maxItems": max_parts}}}
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "whatsapp_parts", "schema": schema},
        }
    return body


async def post_chat(session: aiohttp.ClientSession, sim: Simulator, body: dict[str, Any]) -> tuple[int, Any]:
    async with session.post(f"{sim.ai_base_url}/chat/completions", json=body, headers=AI_HEADERS) as response:
        return response.status, await response.json(content_type=None)


async def post_send(
    session: aiohttp.ClientSession,
    sim: Simulator,
    *,
    instance: str = "inbox",
    number: str = "5511900001111",
    text: str = "Hi",
) -> int:
    url = f"{sim.whatsapp_base_url}/message/sendText/{instance}"
    async with session.post(url, json={"number": number, "text": text}, headers=WA_HEADERS) as response:
        return response.status


# --- the fake LLM ------------------------------------------------------------------------------


async def test_generate_answers_a_personalised_two_paragraph_message(
    session: aiohttp.ClientSession, sim: Simulator
) -> None:
    status, answer = await post_chat(session, sim, chat("Lead name: beatriz\nCity: Recife"))

    assert status == 200
    content = answer["choices"][0]["message"]["content"]
    assert 250 <= len(content) <= 500
    assert len(content.split("\n\n")) == 2
    assert "Beatriz" in content.split("\n\n")[0]
    usage = answer["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    assert usage["cost"] > 0


async def test_without_a_name_the_greeting_stays_generic(
    session: aiohttp.ClientSession, sim: Simulator
) -> None:
    _, answer = await post_chat(session, sim, chat("Write something nice."))
    assert "there" in answer["choices"][0]["message"]["content"]


async def test_the_same_seed_gives_the_same_messages(session: aiohttp.ClientSession) -> None:
    contents = []
    for _ in range(2):
        async with Simulator(faults=Faults(seed=42)) as simulator:
            answers = [await post_chat(session, simulator, chat(f"name: lead{i}")) for i in range(5)]
            contents.append([answer["choices"][0]["message"]["content"] for _, answer in answers])
    assert contents[0] == contents[1]


@pytest.mark.parametrize(
    ("text", "max_parts", "expected"),
    [
        ("One.\n\nTwo.\n\nThree.", 3, ["One.", "Two.", "Three."]),
        ("One.\n\nTwo.\n\nThree.", 2, ["One.", "Two.\n\nThree."]),
        ("One.\n\nTwo.", 1, ["One.\n\nTwo."]),
        ("Short one.", 3, ["Short one."]),
    ],
)
async def test_split_answers_json_parts_within_max_items(
    session: aiohttp.ClientSession, sim: Simulator, text: str, max_parts: int, expected: list[str]
) -> None:
    _, answer = await post_chat(session, sim, chat(text, max_parts=max_parts))
    assert json.loads(answer["choices"][0]["message"]["content"]) == {"parts": expected}


async def test_split_cuts_one_long_paragraph_between_sentences(
    session: aiohttp.ClientSession, sim: Simulator
) -> None:
    text = " ".join(f"Sentence number {i} is here." for i in range(8))
    _, answer = await post_chat(session, sim, chat(text, max_parts=3))
    parts = json.loads(answer["choices"][0]["message"]["content"])["parts"]
    assert len(parts) == 2
    assert " ".join(parts) == text


async def test_split_bad_json_fault_answers_content_that_does_not_parse(
    session: aiohttp.ClientSession, sim: Simulator
) -> None:
    sim.set_faults(split_bad_json_p=1.0)
    _, generated = await post_chat(session, sim, chat("name: Ana"))
    _, split = await post_chat(session, sim, chat("One.\n\nTwo.", max_parts=2))
    assert generated["choices"][0]["message"]["content"]  # only split requests are affected
    with pytest.raises(json.JSONDecodeError):
        json.loads(split["choices"][0]["message"]["content"])


async def test_ai_auth_is_checked(session: aiohttp.ClientSession) -> None:
    async with Simulator(ai_api_key="sk-right") as simulator:
        url = f"{simulator.ai_base_url}/chat/completions"
        for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer sk-wrong"}):
            async with session.post(url, json=chat("x"), headers=headers) as response:
                assert response.status == 401
        async with session.post(
            url, json=chat("x"), headers={"Authorization": "Bearer sk-right"}
        ) as response:
            assert response.status == 200


async def test_a_malformed_ai_request_is_a_400(session: aiohttp.ClientSession, sim: Simulator) -> None:
    status, answer = await post_chat(session, sim, {"messages": "nope"})
    assert status == 400
    assert "model" in answer["error"]["message"]


async def test_random_ai_faults_follow_the_configured_probability(
    session: aiohttp.ClientSession, sim: Simulator
) -> None:
    sim.set_faults(ai_rate_limited_p=1.0, ai_retry_after_s=3)
    status, _ = await post_chat(session, sim, chat("x"))
    assert status == 429
    sim.set_faults(ai_rate_limited_p=0.0)
    status, _ = await post_chat(session, sim, chat("x"))
    assert status == 200
    assert sim.stats()["ai"]["by_outcome"] == {"429": 1, "ok": 1}


async def test_chaos_outcomes_are_reproducible_with_a_seed(session: aiohttp.ClientSession) -> None:
    faults = fault_profile("chaos", seed=5, ai_hang_p=0.0)
    outcomes = []
    for _ in range(2):
        async with Simulator(faults=faults) as simulator:
            for _ in range(60):
                await post_chat(session, simulator, chat("x"))
            outcomes.append([request.outcome for request in simulator.ai_requests])
    assert outcomes[0] == outcomes[1]
    assert {"ok", "429"} <= set(outcomes[0])


async def test_scripted_ai_faults_apply_once_in_order(session: aiohttp.ClientSession, sim: Simulator) -> None:
    sim.fail_next_ai("500")
    sim.fail_next_ai("429", times=2, retry_after_s=4)
    statuses = [(await post_chat(session, sim, chat("x")))[0] for _ in range(4)]
    assert statuses == [500, 429, 429, 200]


async def test_scripted_faults_reject_unknown_kinds(sim: Simulator) -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        sim.fail_next_ai("418")  # type: ignore[arg-type]


# --- the fake gateway ---------------------------------------------------------------------------


async def test_connection_state_follows_the_faults(session: aiohttp.ClientSession, sim: Simulator) -> None:
    sim.set_faults(disconnected_instances={"off"}, dead_socket_instances={"zombie"})
    states = {}
    for instance in ("on", "off", "zombie", "unknown-1"):
        url = f"{sim.whatsapp_base_url}/instance/connectionState/{instance}"
        async with session.get(url, headers=WA_HEADERS) as response:
            body = await response.json()
            states[instance] = body["instance"]["state"] if response.status == 200 else response.status
    assert states == {"on": "open", "off": "close", "zombie": "open", "unknown-1": 404}
    assert sim.state_request_count() == 4


async def test_sends_are_recorded_in_order_and_duplicates_counted(
    session: aiohttp.ClientSession, sim: Simulator
) -> None:
    for number, text in [
        ("+55 11 90000-1111", "a"),
        ("5511900002222", "a"),
        ("5511900001111", "b"),
        ("5511900001111", "a"),
    ]:
        assert await post_send(session, sim, number=number, text=text) == 201

    assert [(s.sequence, s.text) for s in sim.sends] == [(1, "a"), (2, "a"), (3, "b"), (4, "a")]
    assert [s.sequence for s in sim.sends_to("5511900001111")] == [1, 3, 4]
    [duplicate] = sim.duplicate_sends()
    assert duplicate.sequence == 4
    assert sim.stats()["send"] == {
        "requests": 4,
        "accepted": 4,
        "duplicates": 1,
        "by_outcome": {"accepted": 4},
    }


async def test_gateway_auth_is_checked(session: aiohttp.ClientSession) -> None:
    async with Simulator(whatsapp_api_key="evo-right") as simulator:
        url = f"{simulator.whatsapp_base_url}/message/sendText/inbox"
        for headers in ({}, {"apikey": "evo-wrong"}):
            async with session.post(url, json={"number": "1", "text": "x"}, headers=headers) as response:
                assert response.status == 401
        assert simulator.sends == []


async def test_send_faults_by_instance_phone_and_script(
    session: aiohttp.ClientSession, sim: Simulator
) -> None:
    sim.set_faults(reject_phones={"5511900009999"}, dead_socket_instances={"zombie"})
    sim.fail_next_send("502_html", text_contains="special")
    sim.fail_next_send("429", number="5511900008888")

    assert await post_send(session, sim, number="5511900009999") == 400
    assert await post_send(session, sim, instance="zombie") == 400  # Evolution 2.3: the catch answers 400
    assert await post_send(session, sim, instance="unknown-2") == 404
    assert await post_send(session, sim, text="plain") == 201
    assert await post_send(session, sim, text="a special one") == 502
    assert await post_send(session, sim, text="a special one") == 201
    assert await post_send(session, sim, number="5511900008888") == 429
    assert [s.text for s in sim.sends] == ["plain", "a special one"]


async def test_a_malformed_send_is_a_400(session: aiohttp.ClientSession, sim: Simulator) -> None:
    url = f"{sim.whatsapp_base_url}/message/sendText/inbox"
    async with session.post(url, json={"number": "5511900001111"}, headers=WA_HEADERS) as response:
        assert response.status == 400
    assert sim.sends == []


# --- control over HTTP (for a simulator in another process) ---------------------------------------


async def test_faults_can_be_read_and_patched_over_http(
    session: aiohttp.ClientSession, sim: Simulator
) -> None:
    async with session.post(
        f"{sim.base_url}/_sim/faults", json={"send_latency_s": 0.01, "reject_phones": ["1"]}
    ) as r:
        assert r.status == 200
    async with session.get(f"{sim.base_url}/_sim/faults") as r:
        faults = await r.json()
    assert faults["send_latency_s"] == 0.01
    assert faults["reject_phones"] == ["1"]
    assert sim.faults.reject_phones == frozenset({"1"})
    async with session.post(f"{sim.base_url}/_sim/faults", json={"ai_hang_p": 2}) as r:
        assert r.status == 400
    async with session.post(f"{sim.base_url}/_sim/faults", json={"no_such_fault": 1}) as r:
        assert r.status == 400


async def test_sends_stats_scripts_and_reset_over_http(
    session: aiohttp.ClientSession, sim: Simulator
) -> None:
    async with session.post(f"{sim.base_url}/_sim/fail-next/send", json={"kind": "500"}) as r:
        assert r.status == 200
    async with session.post(f"{sim.base_url}/_sim/fail-next/ai", json={"kind": "nope"}) as r:
        assert r.status == 400
    assert await post_send(session, sim) == 500
    assert await post_send(session, sim, number="5511900002222") == 201

    async with session.get(f"{sim.base_url}/_sim/sends", params={"number": "5511900002222"}) as r:
        sends = (await r.json())["sends"]
    assert [(s["number"], s["sequence"]) for s in sends] == [("5511900002222", 1)]
    async with session.get(f"{sim.base_url}/_sim/stats") as r:
        stats = await r.json()
    assert stats["send"]["by_outcome"] == {"500": 1, "accepted": 1}

    sim.set_faults(send_latency_s=0.01)
    async with session.post(f"{sim.base_url}/_sim/reset") as r:
        assert r.status == 200
    assert sim.sends == []
    assert sim.stats()["send"]["requests"] == 0
    assert sim.faults.send_latency_s == 0.0


def test_fault_profiles_exist_and_escalate() -> None:
    assert set(FAULT_PROFILES) == {"none", "light", "chaos"}
    assert FAULT_PROFILES["none"] == Faults()
    assert 0 < FAULT_PROFILES["light"].ai_rate_limited_p < FAULT_PROFILES["chaos"].ai_rate_limited_p
    with pytest.raises(ValueError, match="unknown fault profile"):
        fault_profile("apocalypse")


async def test_hundreds_of_concurrent_requests_with_latency_all_succeed(
    session: aiohttp.ClientSession, sim: Simulator
) -> None:
    sim.set_faults(ai_latency_s=0.05, send_latency_s=0.05)
    results = await asyncio.gather(
        *(post_chat(session, sim, chat(f"name: n{i}")) for i in range(150)),
        *(post_send(session, sim, number=f"55119{i:08d}") for i in range(150)),
    )
    assert [r[0] if isinstance(r, tuple) else r for r in results] == [200] * 150 + [201] * 150
    assert len(sim.sends) == 150
    assert sim.duplicate_sends() == []


# --- the CLI command --------------------------------------------------------------------------


async def test_campaignq_simulate_serves_until_sigterm(session: aiohttp.ClientSession) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "consumer.cli",
        "simulate",
        "--port",
        "0",
        "--faults",
        "light",
        "--seed",
        "3",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        lines = [(await asyncio.wait_for(process.stdout.readline(), 15)).decode() for _ in range(3)]
        ai_url = re.search(r"CAMPAIGNQ_AI_BASE_URL=(\S+)", "".join(lines))
        wa_url = re.search(r"CAMPAIGNQ_WHATSAPP_BASE_URL=(\S+)", "".join(lines))
        assert ai_url and wa_url, lines
        assert ai_url.group(1) == f"{wa_url.group(1)}/v1"
        async with session.get(f"{wa_url.group(1)}/_sim/faults") as response:
            faults = await response.json()
        assert faults["ai_rate_limited_p"] == FAULT_PROFILES["light"].ai_rate_limited_p
        assert faults["seed"] == 3
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
    stdout, _ = await asyncio.wait_for(process.communicate(), 15)
    assert process.returncode == 0
    assert b"simulator stopped" in stdout


async def test_campaignq_simulate_reports_a_busy_port_in_one_line(sim: Simulator) -> None:
    port = sim.base_url.rsplit(":", 1)[1]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "consumer.cli",
        "simulate",
        "--port",
        port,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 15)
    assert process.returncode == 2
    assert stderr.decode().strip().startswith("campaignq: error: simulator cannot listen")
    assert len(stderr.decode().strip().splitlines()) == 1
