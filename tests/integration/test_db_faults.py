"""Database faults: a connection killed mid-transaction, a statement timeout, a server restart.

Nothing may be lost, nothing sent twice, and no process may exit: a state change either
committed or it did not, and the consumer retries what it must record (a part the gateway
acknowledged, an outcome) until the database answers again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from typing import Any

import psycopg
import pytest

from consumer.devtools.seeding import Seeder
from consumer.devtools.simulator import Faults, Simulator
from consumer.runtime.db import PERSIST_MAX_DELAY_S
from consumer.settings import Settings
from tests.chaos.tools import can_restart_server, restart_server
from tests.cli import spawn_logged
from tests.harness import RunningWorker, consumer_settings, running_worker, subprocess_env, wait_until
from tests.integration.test_consumer import message_row, produce, terminal


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(faults=Faults(seed=5)) as simulator:
        yield simulator


def running(settings: Settings) -> AbstractAsyncContextManager[RunningWorker]:
    """A worker whose clean stop must exit 0: faults here must never end the process."""
    return running_worker(settings, expect_exit_code=0)


@contextmanager
def row_lock(url: str, statement: str, params: tuple[Any, ...]) -> Iterator[psycopg.Connection[Any]]:
    """Hold a row lock in an open transaction until the block ends (then commit)."""
    with psycopg.connect(url) as conn:
        conn.execute(statement, params)
        yield conn
        conn.commit()


def blocked_backends(db: psycopg.Connection[Any]) -> list[int]:
    """Backends of this database waiting for a lock: the worker's statement we are holding up."""
    rows = db.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
    ).fetchall()
    return [int(r[0]) for r in rows]


async def wait_blocked(db: psycopg.Connection[Any], what: str) -> list[int]:
    await wait_until(lambda: bool(blocked_backends(db)), timeout_s=30, what=what)
    return blocked_backends(db)


def sent_once(sim: Simulator, db: psycopg.Connection[Any], message_id: Any) -> None:
    row = message_row(db, message_id)
    assert row["status"] == "sent"
    assert [s.text for s in sim.sends if s.text in row["parts"]] == row["parts"]
    assert sim.duplicate_sends() == []


async def test_connection_killed_while_recording_success_loses_nothing_and_sends_once(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str
) -> None:
    campaign = seed.campaign(1)
    produce(db)
    settings = consumer_settings(database_url, sim)
    async with running(settings) as handle:
        # complete_sent updates the run's counter: holding the run row holds the success
        # transaction mid-way (queue message already archived inside it, not committed).
        with row_lock(
            database_url, "SELECT 1 FROM campaign_runs WHERE id = %s FOR UPDATE", (campaign.run_id,)
        ):
            [pid] = await wait_blocked(db, "the success transaction waiting on the run row")
            assert len(sim.sends) == 1  # the part is out; only its record is pending
            db.execute("SELECT pg_terminate_backend(%s)", (pid,))
            await wait_blocked(db, "the retried success transaction")
        await wait_until(lambda: terminal(seed, campaign), what="sent")
        assert not handle.task.done()
        assert handle.db.statements["complete_sent"] >= 2
        # the pool recovered: the next campaign goes through the same worker
        later = seed.campaign(2)
        produce(db)
        await wait_until(lambda: terminal(seed, later), what="next campaign sent")

    sent_once(sim, db, campaign.message_ids[0])
    row = message_row(db, campaign.message_ids[0])
    assert (row["retry_count"], row["deferral_count"]) == (0, 0)
    assert sim.ai_request_count == 3  # one generation per message: the first was not redone
    assert db.execute("SELECT count(*) FROM pgmq.a_campaign_messages").fetchone() == (3,)


@pytest.mark.parametrize("fault", ["terminate", "statement_timeout"])
async def test_claim_killed_mid_transaction_the_message_reappears(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str, fault: str
) -> None:
    campaign = seed.campaign(1)
    produce(db)
    settings = consumer_settings(
        database_url,
        sim,
        visibility_timeout_s=5,
        send_timeout_s=2.0,
        db_statement_timeout_ms=500 if fault != "terminate" else 15_000,
    )
    async with running(settings) as handle:
        # The batch claim updates the row: holding it holds the claim mid-statement.
        with row_lock(
            database_url,
            "SELECT 1 FROM campaign_messages WHERE id = %s FOR UPDATE",
            (campaign.message_ids[0],),
        ):
            [pid] = await wait_blocked(db, "the claim waiting on the message row")
            if fault == "terminate":
                db.execute("SELECT pg_terminate_backend(%s)", (pid,))
            else:
                await wait_until(lambda: pid not in blocked_backends(db), what="statement timeout")
            # nothing was claimed: the row is untouched and nothing was generated or sent
            assert message_row(db, campaign.message_ids[0])["status"] == "queued"
            assert sim.ai_request_count == 0
        await wait_until(
            lambda: terminal(seed, campaign), timeout_s=30, what="sent after the visibility timeout"
        )
        assert not handle.task.done()

    sent_once(sim, db, campaign.message_ids[0])
    row = message_row(db, campaign.message_ids[0])
    assert row["retry_count"] == 0  # a failed claim is not the message's fault
    [(read_ct,)] = db.execute("SELECT read_ct FROM pgmq.a_campaign_messages").fetchall()
    # The read and the claim are one statement (0014 `campaignq_read_and_claim`): the killed
    # claim took its read with it, so the message was visible again at once (not only after
    # its visibility timeout) and only the read that succeeded counts.
    assert read_ct == 1


async def test_statement_timeout_on_the_success_write_is_retried_and_the_worker_goes_on(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str
) -> None:
    campaign = seed.campaign(1)
    produce(db)
    # Long enough that an ordinary statement never hits it on a loaded machine; the locked
    # write always does. Three tries take 3 x (timeout + the longest persist backoff).
    statement_timeout_s = 1.5
    settings = consumer_settings(
        database_url, sim, db_statement_timeout_ms=int(statement_timeout_s * 1000), visibility_timeout_s=60
    )
    async with running(settings) as handle:
        with row_lock(
            database_url, "SELECT 1 FROM campaign_runs WHERE id = %s FOR UPDATE", (campaign.run_id,)
        ):
            await wait_until(
                lambda: handle.db.statements["complete_sent"] >= 3,
                timeout_s=max(30.0, 3 * (statement_timeout_s + PERSIST_MAX_DELAY_S) * 3),
                what="timed-out retries",
            )
            assert message_row(db, campaign.message_ids[0])["status"] == "sending"
        await wait_until(lambda: terminal(seed, campaign), what="sent once the lock is gone")
        assert not handle.task.done()
        later = seed.campaign(2)
        produce(db)
        await wait_until(lambda: terminal(seed, later), what="next campaign sent")

    sent_once(sim, db, campaign.message_ids[0])
    assert message_row(db, campaign.message_ids[0])["retry_count"] == 0


async def test_producer_and_consumer_survive_a_postgres_restart(
    db: psycopg.Connection[Any],
    seed: Seeder,
    sim: Simulator,
    database_url: str,
    pg_admin_url: str,
    tmp_path: Any,
) -> None:
    why_not = can_restart_server(pg_admin_url)
    if why_not:
        pytest.skip(f"cannot restart the test server: {why_not}")
    before = seed.campaign(3)
    producer = spawn_logged(
        "producer",
        ["produce", "--every", "200ms"],
        env=subprocess_env(database_url, sim),
        log_dir=tmp_path,
    )
    try:
        async with running(consumer_settings(database_url, sim)) as handle:
            await wait_until(lambda: terminal(seed, before), what="first campaign sent")
            db.close()
            started = time.monotonic()
            await asyncio.to_thread(restart_server, pg_admin_url, down_s=3.0)
            with psycopg.connect(database_url, autocommit=True) as conn:
                after = Seeder(conn).campaign(3)  # due now: only a live producer queues it
                await wait_until(
                    lambda: terminal(Seeder(conn), after), timeout_s=60, what="sent after restart"
                )
            recovered_s = time.monotonic() - started
            assert not handle.task.done()
            assert producer.alive(), producer.log()
    finally:
        code = producer.stop()
    assert code == 0, producer.log()
    assert "producer lost the database" in producer.log()
    assert "producer reconnected to the database" in producer.log()
    print(f"consumer and producer recovered {recovered_s:.1f} s after the restart began")
