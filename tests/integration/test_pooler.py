"""Two consumers, the producer, replay and stats through PgBouncer in transaction mode.

`.ci/run` starts PgBouncer (`pool_mode = transaction`) in front of the PostgreSQL 15 server
and sets CAMPAIGNQ_TEST_PGBOUNCER_PORT; without it these tests are deselected (marker
`pgbouncer`, reported in pytest's summary), never skipped. The same pass also runs the
consumer, process and replay suites through it (tests/harness.py and tests/cli.py route
every connection but migrate's through the pooler).
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from consumer.devtools.seeding import Seeder
from consumer.devtools.simulator import Faults, Simulator
from tests import pg
from tests.cli import run_cli, spawn_cli
from tests.harness import consumer_settings, running_worker, subprocess_env, wait_until
from tests.integration.test_consumer import dead_letters, queue_count, terminal

pytestmark = pytest.mark.pgbouncer


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(faults=Faults(seed=11)) as simulator:
        yield simulator


def _listeners(db: psycopg.Connection[Any]) -> int:
    """Server sessions of this database whose last statement was a LISTEN."""
    row = db.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query ILIKE 'LISTEN%'"
    ).fetchone()
    return int(row[0]) if row else 0


async def test_two_consumers_through_pgbouncer_record_every_outcome(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str
) -> None:
    split = seed.campaign(6, split=True, max_parts=3)
    bad = seed.campaign(1, phones=["not a phone"])
    retried = seed.campaign(1, phones=["+5511987651111"])
    paused = seed.campaign(1, phones=["+5511987652222"])
    cancelled = seed.campaign(1, phones=["+5511987653333"])
    result = run_cli("produce", "--once", database_url=database_url)  # the producer, pooled
    assert result.returncode == 0, result.stderr
    db.execute("UPDATE campaign_runs SET status = 'paused' WHERE id = %s", (paused.run_id,))
    db.execute("UPDATE campaign_runs SET status = 'cancelled' WHERE id = %s", (cancelled.run_id,))
    sim.fail_next_send("500", number="+5511987651111")
    sim.set_faults(ai_latency_s=0.2)  # slow enough that both consumers take part

    settings = consumer_settings(database_url, sim, metrics_port=None, concurrency=4, batch_size=2)
    assert settings.transaction_pooled()
    assert conninfo_to_dict(str(settings.database_url))["port"] == pg.pgbouncer_port()
    async with running_worker(settings) as first, running_worker(settings) as second:
        await wait_until(
            lambda: all(terminal(seed, c) for c in (split, bad, retried, cancelled)) and queue_count(db) == 0,
            what="every outcome through the pooler",
        )
        assert not first.task.done() and not second.task.done()
        assert first.worker.processed > 0 and second.worker.processed > 0  # both took part
        assert _listeners(db) == 0  # no LISTEN left on a pooled connection

    assert seed.statuses(split.run_id) == {"sent": 6}
    assert seed.statuses(bad.run_id) == {"failed": 1}
    assert seed.statuses(retried.run_id) == {"sent": 1}
    assert seed.statuses(paused.run_id) == {"pending": 1}
    assert seed.statuses(cancelled.run_id) == {"skipped": 1}
    assert [letter["reason"] for letter in dead_letters(db)] == ["permanent"]
    assert sim.duplicate_sends() == []

    stats = run_cli("stats", "--json", database_url=database_url)
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)
    replay = run_cli("replay", database_url=database_url)
    assert replay.returncode == 0, replay.stderr
    assert queue_count(db) == 1 and queue_count(db, "q_campaign_messages_dlq") == 0
    archived = queue_count(db, "a_campaign_messages")
    assert archived >= 8
    pruned = run_cli("prune", "--older-than", "0s", database_url=database_url)
    assert pruned.returncode == 0, pruned.stderr
    assert queue_count(db, "a_campaign_messages") == 0


async def test_sigterm_drains_two_pooled_consumer_processes(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str
) -> None:
    campaign = seed.campaign(12)
    db.execute("SELECT enqueue_due_campaign_messages(100)")
    sim.set_faults(ai_latency_s=1.0)
    env = subprocess_env(database_url, sim)
    assert env["CAMPAIGNQ_DB_POOLER"] == "transaction"
    processes = [spawn_cli("consume", "--concurrency", "3", env=env) for _ in range(2)]
    try:
        await wait_until(lambda: sim.ai_request_count >= 6, timeout_s=60, what="6 in flight")
        for process in processes:
            process.send_signal(signal.SIGTERM)
        codes = [await asyncio.to_thread(process.wait, 60) for process in processes]
    finally:
        for process in processes:
            process.kill()
        errors = [process.communicate()[1] for process in processes]
    assert codes == [0, 0], errors
    assert all("transaction pooler" in err for err in errors), errors

    statuses = seed.statuses(campaign.run_id)
    assert statuses.get("generating", 0) == 0 and statuses.get("sending", 0) == 0
    assert statuses.get("sent", 0) >= 6
    assert statuses.get("sent", 0) + statuses.get("queued", 0) == 12
    assert sim.duplicate_sends() == []


async def test_the_producer_loop_keeps_running_through_pgbouncer(
    db: psycopg.Connection[Any], seed: Seeder, database_url: str
) -> None:
    """Many ticks of one statement: psycopg would prepare it server-side after 5, which a
    transaction pooler cannot keep (the next tick may run on another server connection — here
    a fresh one, after the pooler's connections are cut); the loop must go on queueing."""
    first = seed.campaign(1)
    process = spawn_cli("produce", "--every", "0.1s", database_url=database_url)
    try:
        await wait_until(lambda: seed.statuses(first.run_id) == {"queued": 1}, what="the producer running")
        await asyncio.sleep(1.5)  # ~15 more ticks of the same statement
        db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        later = seed.campaign(3)
        queued_after_cut = True
        try:
            await wait_until(
                lambda: seed.statuses(later.run_id) == {"queued": 3}, what="rows queued after the cut"
            )
        except AssertionError:
            queued_after_cut = False
        process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(process.wait, 30)
    finally:
        process.kill()
        _, err = process.communicate()
    assert queued_after_cut, f"no rows queued after the cut; the producer said: {err}"
    assert code == 0, err
    assert "lost the database" not in err and "prepared statement" not in err, err
    assert queue_count(db) == 4


def test_migrate_through_pgbouncer_is_refused_in_one_line(database_url: str) -> None:
    result = run_cli(
        "migrate", database_url=pg.through_pooler(database_url), env={"CAMPAIGNQ_DB_POOLER": "transaction"}
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "needs a direct connection" in result.stderr


async def test_a_consumer_on_the_poolers_own_port_switches_to_pooled_mode_with_one_warning(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str
) -> None:
    """PgBouncer on a port that is not Supabase's 6543 and no CAMPAIGNQ_DB_POOLER: the consumer
    used to loop on "unsupported startup parameter: options" until its pool gave up."""
    campaign = seed.campaign(4)
    db.execute("SELECT enqueue_due_campaign_messages(100)")
    env = {**subprocess_env(database_url, sim), "CAMPAIGNQ_DB_POOLER": "auto"}
    assert conninfo_to_dict(env["DATABASE_URL"])["port"] == pg.pgbouncer_port() != "6543"
    process = spawn_cli("consume", "--concurrency", "2", env=env)
    try:
        await wait_until(
            lambda: seed.statuses(campaign.run_id) == {"sent": 4}, what="4 sent through the pooler"
        )
        process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(process.wait, 60)
    finally:
        process.kill()
        _, err = process.communicate()
    assert code == 0, err
    assert err.count("refused the startup parameter `options`") == 1, err
    assert "CAMPAIGNQ_DB_POOLER=transaction" in err
    assert "unsupported startup parameter" not in err, err
    assert sim.duplicate_sends() == []
