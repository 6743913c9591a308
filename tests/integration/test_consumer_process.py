"""`campaignq consume` as a real subprocess: SIGKILL, SIGTERM and fatal provider errors."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from consumer.devtools.seeding import Seeder
from consumer.devtools.simulator import Faults, Simulator
from tests.cli import spawn_cli
from tests.harness import AI_KEY, subprocess_env, wait_until
from tests.integration.test_consumer import message_row, produce, terminal


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(faults=Faults(seed=11), ai_api_key=AI_KEY) as simulator:
        yield simulator


async def _exit_code(process: Any, timeout_s: float = 60) -> int:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while process.poll() is None:
        if asyncio.get_running_loop().time() > deadline:
            process.kill()
            raise AssertionError("consumer did not exit")
        await asyncio.sleep(0.05)
    return int(process.returncode)


async def test_sigkill_mid_message_is_processed_after_the_visibility_timeout(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str
) -> None:
    campaign = seed.campaign(1)
    produce(db)
    sim.set_faults(ai_latency_s=2.0)
    env = subprocess_env(database_url, sim, CAMPAIGNQ_VISIBILITY_TIMEOUT_S="5", CAMPAIGNQ_SEND_TIMEOUT_S="2")
    first = spawn_cli("consume", env=env)
    try:
        await wait_until(lambda: sim.ai_request_count >= 1, timeout_s=30, what="generation started")
        assert message_row(db, campaign.message_ids[0])["status"] == "generating"
        first.send_signal(signal.SIGKILL)
        await _exit_code(first)
    finally:
        first.kill()
        first.communicate()
    sim.set_faults(ai_latency_s=0.0)

    second = spawn_cli("consume", env=env)
    try:
        await wait_until(lambda: terminal(seed, campaign), timeout_s=40, what="sent by the second consumer")
    finally:
        second.send_signal(signal.SIGTERM)
        _, err = second.communicate(timeout=30)
    assert second.returncode == 0, err

    row = message_row(db, campaign.message_ids[0])
    assert row["status"] == "sent"
    assert row["retry_count"] == 1  # the crash counts as an attempt
    assert row["attempt_history"][0]["error_class"] == "crashed"
    assert len(sim.sends) == len(row["parts"])  # delivered once


async def test_sigterm_drains_in_flight_work_and_exits_zero(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str
) -> None:
    campaign = seed.campaign(20)
    produce(db)
    sim.set_faults(ai_latency_s=1.0)
    process = spawn_cli("consume", "--concurrency", "8", env=subprocess_env(database_url, sim))
    try:
        await wait_until(lambda: sim.ai_request_count >= 8, timeout_s=30, what="8 in flight")
        process.send_signal(signal.SIGTERM)
        code = await _exit_code(process)
    finally:
        process.kill()
        _, err = process.communicate()
    assert code == 0, err
    assert "draining" in err

    statuses = seed.statuses(campaign.run_id)
    assert statuses.get("generating", 0) == 0 and statuses.get("sending", 0) == 0
    assert statuses.get("sent", 0) >= 8  # the in-flight ones finished
    assert statuses.get("sent", 0) + statuses.get("queued", 0) == 20
    assert sim.duplicate_sends() == []


async def test_drain_timeout_releases_unfinished_messages_without_burning_attempts(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str
) -> None:
    campaign = seed.campaign(3)
    produce(db)
    sim.set_faults(ai_latency_s=20.0)
    env = subprocess_env(database_url, sim, CAMPAIGNQ_DRAIN_TIMEOUT_S="0.5")
    process = spawn_cli("consume", env=env)
    try:
        await wait_until(lambda: sim.ai_request_count >= 3, timeout_s=30, what="3 in flight")
        process.send_signal(signal.SIGTERM)
        code = await _exit_code(process)
    finally:
        process.kill()
        _, err = process.communicate()
    assert code == 0, err
    assert seed.statuses(campaign.run_id) == {"queued": 3}
    rows = db.execute(
        "SELECT retry_count, vt <= now() FROM campaign_messages m JOIN pgmq.q_campaign_messages q "
        "ON (q.message->>'campaign_message_id')::uuid = m.id"
    ).fetchall()
    assert rows == [(0, True)] * 3  # visible again at once, no attempt burnt


async def test_fatal_401_stops_the_process_with_one_clear_critical_line(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str
) -> None:
    campaign = seed.campaign(3)
    produce(db)
    env = subprocess_env(database_url, sim, CAMPAIGNQ_AI_API_KEY="sk-wrong-key-123456")
    process = spawn_cli("consume", env=env)
    code = await _exit_code(process)
    _, err = process.communicate()

    assert code == 3
    critical = [line for line in err.splitlines() if "CRITICAL" in line]
    assert len(critical) == 1, err
    assert "401" in critical[0] or "unauthorized" in critical[0].lower()
    assert "sk-wrong-key-123456" not in err
    assert "Traceback" not in err
    statuses = seed.statuses(campaign.run_id)
    assert statuses == {"queued": 3}
    assert db.execute("SELECT max(retry_count) FROM campaign_messages").fetchone() == (0,)
