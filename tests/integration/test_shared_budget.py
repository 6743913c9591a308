"""One AI budget shared by several `campaignq consume` processes (db/migrations/0008).

Real processes against a real PostgreSQL and the simulator. The assertions are counts of AI
requests per window, taken from the simulator's own arrival times, with bounds derived from
the configured budget: never more than the budget plus one second of burst (plus one token
per holder: a bucket always holds at least one).
"""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from consumer.core.fairshare import MIN_WANTED_RPM
from consumer.devtools.processes import Child, Simulator
from consumer.devtools.seeding import Seeder
from consumer.runtime.budget import SharedBudget
from tests.chaos.tools import processes
from tests.cli import run_cli, spawn_logged
from tests.harness import AI_KEY, WHATSAPP_KEY

BUDGET_RPM = 240  # 4 requests/s across every process
PROCESSES = 3
LEASE_S = 2.0
REFRESH_S = 0.5


def _ai_times(sim: Simulator) -> list[float]:
    return [r["t"] for r in sim.request("/_sim/ai-requests")["requests"]]


def _busiest(times: list[float], window_s: float) -> int:
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - window_s:
            start += 1
        best = max(best, end - start + 1)
    return best


def _wait_for(condition: Any, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _holders(db: psycopg.Connection[Any]) -> list[tuple[str, int]]:
    return [(r[0], r[1]) for r in db.execute("SELECT holder, granted_rpm FROM campaignq_rate_limit_holders")]


def _equal_slices(db: psycopg.Connection[Any], budget_rpm: int) -> bool:
    grants = sorted(g for _, g in _holders(db))
    assert sum(grants) <= budget_rpm, grants
    return sum(grants) == budget_rpm and grants[-1] - grants[0] <= 1


def test_three_processes_share_one_budget_survive_a_kill_and_follow_edits(
    db: psycopg.Connection[Any], database_url: str, seed: Seeder, tmp_path: Path
) -> None:
    seed.campaign(3000)
    db.execute("INSERT INTO rate_limits (name, requests_per_minute) VALUES ('ai', %s)", (BUDGET_RPM,))
    db.execute("SET campaignq.queue_horizon_s = 0")
    db.execute("SELECT enqueue_due_campaign_messages(5000)")
    with (
        Simulator(log_dir=tmp_path, args=["--seed", "7", "--ai-latency", "20ms"]) as sim,
        processes() as started,
    ):
        env = {
            "DATABASE_URL": database_url,
            "CAMPAIGNQ_AI_BASE_URL": sim.ai_base_url,
            "CAMPAIGNQ_WHATSAPP_BASE_URL": sim.whatsapp_base_url,
            "CAMPAIGNQ_AI_API_KEY": AI_KEY,
            "CAMPAIGNQ_WHATSAPP_API_KEY": WHATSAPP_KEY,
            "CAMPAIGNQ_AI_REQUESTS_PER_MINUTE": "6000",  # own cap far above the shared budget
            "CAMPAIGNQ_AI_BUDGET_REFRESH_S": str(REFRESH_S),
            "CAMPAIGNQ_AI_BUDGET_LEASE_S": str(LEASE_S),
            "CAMPAIGNQ_CONCURRENCY": "8",
            "CAMPAIGNQ_POLL_INTERVAL_S": "0.2",
            "CAMPAIGNQ_TYPING_DELAY_CAP_S": "0",
            "CAMPAIGNQ_LOG_LEVEL": "INFO",
        }
        consumers: list[Child] = []
        for index in range(PROCESSES):
            consumers.append(spawn_logged(f"consumer-{index}", ["consume"], env=env, log_dir=tmp_path))
            started.append(consumers[-1])
        _wait_for(lambda: len(_holders(db)) == PROCESSES, "three slice holders")
        # Busy processes converge to equal slices within a few refreshes, never above the budget.
        _wait_for(lambda: _equal_slices(db, BUDGET_RPM), "equal slices of the whole budget")
        time.sleep(4)
        phase_one_end = time.monotonic()

        # A SIGKILLed process: its slice comes back to the two others within the lease.
        consumers[0].kill()
        _wait_for(
            lambda: len(_holders(db)) == PROCESSES - 1, "the dead holder's lease to expire", LEASE_S + 10
        )
        _wait_for(lambda: _equal_slices(db, BUDGET_RPM), "its slice back with the others")
        time.sleep(3)

        # An operator edit takes effect without restarts.
        result = run_cli("limits", "set", "ai", str(BUDGET_RPM // 2), "--json", database_url=database_url)
        assert result.returncode == 0, result.stderr
        _wait_for(lambda: sum(g for _, g in _holders(db)) == BUDGET_RPM // 2, "the lowered budget", 10)
        _wait_for(lambda: _equal_slices(db, BUDGET_RPM // 2), "equal slices of the lowered budget", 10)
        time.sleep(3)
        edit_seen = time.monotonic()

        # A 429 seen by one process pauses every process (shared cooldown in the database).
        sim.fail_next("ai", kind="429", retry_after_s=4.0)
        _wait_for(
            lambda: db.execute("SELECT count(*) FROM rate_limit_cooldowns").fetchone() == (1,), "the cooldown"
        )
        cooldown_seen = time.monotonic()
        time.sleep(4.5)
        times = _ai_times(sim)
        for consumer in consumers[1:]:
            assert consumer.alive(), consumer.log()[-2000:]
            assert consumer.stop() == 0, consumer.log()[-2000:]
        assert _holders(db) == []  # a clean stop hands the slice back at once

    burst = BUDGET_RPM / 60 + PROCESSES  # one second of budget, plus one token per bucket
    before_edit = [t for t in times if t < edit_seen - 3]
    assert _busiest(before_edit, 5.0) <= BUDGET_RPM / 60 * 5 + burst
    after_edit = [t for t in times if edit_seen - 2 <= t < cooldown_seen - 0.5]
    assert _busiest(after_edit, 2.0) <= BUDGET_RPM / 2 / 60 * 2 + burst
    # Every process learns the cooldown at its next refresh: from then on nobody calls.
    paused = [t for t in times if cooldown_seen + REFRESH_S + 0.5 < t < cooldown_seen + 3.0]
    assert paused == []
    # The budget is used while the backlog waits (loose: the box is shared).
    used = [t for t in times if phase_one_end - 3 <= t < phase_one_end]
    assert len(used) >= 0.5 * BUDGET_RPM / 60 * 3


async def test_a_new_holder_never_pushes_the_grants_above_the_budget(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO rate_limits (name, requests_per_minute) VALUES ('ai', 600)")
    async with AsyncConnectionPool(database_url, min_size=1, max_size=2, open=False) as pool:
        await pool.open()
        holders = [SharedBudget(pool=pool, cap_rpm=600, lease_s=30) for _ in range(3)]
        sums: list[int] = []
        for step in range(12):
            budget = holders[step % 3] if step >= 2 else holders[step]
            budget._saturated = True  # busy: asks for its whole cap
            await budget.refresh_once()
            async with pool.connection() as conn:
                cur = await conn.execute("SELECT coalesce(sum(granted_rpm), 0) FROM rate_limit_slices")
                row = await cur.fetchone()
            sums.append(int(row[0]) if row else -1)
        assert max(sums) <= 600
        states = [h.state for h in holders]
        assert [s.granted_rpm for s in states if s] == [200, 200, 200]
        await asyncio.gather(*(h.release() for h in holders))


@pytest.mark.parametrize("budget_rpm", [None, 60])
async def test_no_row_means_no_gate_and_a_row_means_a_slice(
    database_url: str, budget_rpm: int | None
) -> None:
    if budget_rpm is not None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO rate_limits (name, requests_per_minute) VALUES ('ai', %s)", (budget_rpm,)
            )
    async with AsyncConnectionPool(database_url, min_size=1, max_size=2, open=False) as pool:
        await pool.open()
        budget = SharedBudget(pool=pool, cap_rpm=600)
        state = await budget.refresh_once()
        assert state.budget_rpm == budget_rpm
        # A first refresh asks for the whole own cap (the grant rule protects the others).
        assert state.granted_rpm == budget_rpm
        if budget_rpm is not None:
            state = await budget.refresh_once()  # idle since: it asks only for a little
            assert state.granted_rpm == MIN_WANTED_RPM
        assert math.isfinite(budget.cooldown_remaining_s())
