"""Batched outcome writes (issue 15, P1/P2): the set-based functions of 0013 and the
`OutcomeBatcher` in front of them, against a real PostgreSQL with PGMQ."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from consumer.core.models import QueueMessage
from consumer.devtools.seeding import Campaign, Seeder
from consumer.devtools.simulator import Faults, Simulator
from consumer.runtime.db import WRITES_IN_FLIGHT, Database
from tests.harness import consumer_settings, running_worker
from tests.integration.test_consumer import message_row, produce

PARTS = ["Hello there, part one.", "And part two of it."]


def read_all(db: psycopg.Connection[Any]) -> dict[uuid.UUID, QueueMessage]:
    """Read every visible message as a worker would, and claim its row (`sending`, generated)."""
    rows = db.execute(
        "SELECT msg_id, read_ct, enqueued_at, vt, message FROM pgmq.read('campaign_messages', 60, 1000)"
    ).fetchall()
    leases = {
        uuid.UUID(r[4]["campaign_message_id"]): QueueMessage(
            msg_id=r[0], read_ct=r[1], enqueued_at=r[2], vt=r[3], message=r[4]
        )
        for r in rows
    }
    db.execute(
        "UPDATE campaign_messages SET status = 'sending', generated_message = 'x', parts = %s "
        "WHERE id = ANY(%s)",
        (Jsonb(PARTS), list(leases)),
    )
    return leases


def steal(db: psycopg.Connection[Any], msg: QueueMessage) -> None:
    """What the next holder's pgmq.read does: a new read_ct (PGMQ 1.4.4 tables: no last_read_at)."""
    db.execute("UPDATE pgmq.q_campaign_messages SET read_ct = read_ct + 1 WHERE msg_id = %s", (msg.msg_id,))


def run_row(db: psycopg.Connection[Any], run_id: uuid.UUID) -> tuple[Any, ...]:
    row = db.execute(
        "SELECT status, leads_processed, finished_at FROM campaign_runs WHERE id = %s", (run_id,)
    ).fetchone()
    assert row is not None
    return tuple(row)


def complete_many(
    db: psycopg.Connection[Any], items: list[tuple[QueueMessage, uuid.UUID]]
) -> list[tuple[int, int, bool]]:
    return [
        (int(o), int(m), bool(ok))
        for o, m, ok in db.execute(
            "SELECT ord, msg_id, ok FROM campaignq_complete_sent_many(%s, %s, %s, %s)",
            (
                [m.msg_id for m, _ in items],
                [m.read_ct for m, _ in items],
                [i for _, i in items],
                [7] * len(items),
            ),
        ).fetchall()
    ]


def test_complete_sent_many_refuses_only_the_lost_lease_and_counts_each_run_once(
    db: psycopg.Connection[Any], seed: Seeder
) -> None:
    campaigns = [seed.campaign(4) for _ in range(3)]
    produce(db)
    leases = read_all(db)
    lost_id = campaigns[1].message_ids[2]
    steal(db, leases[lost_id])
    items = [(leases[mid], mid) for c in campaigns for mid in c.message_ids]
    items.reverse()  # input order is not msg_id order: answers still come back in input order

    answers = complete_many(db, items)

    assert [o for o, _, _ in answers] == list(range(1, len(items) + 1))
    assert [m for _, m, _ in answers] == [m.msg_id for m, _ in items]
    assert {mid for (_, mid), (_, _, ok) in zip(items, answers, strict=True) if not ok} == {lost_id}
    lost = message_row(db, lost_id)
    assert lost["status"] == "sending"  # untouched: the new holder owns it
    assert db.execute(
        "SELECT count(*) FROM pgmq.q_campaign_messages WHERE msg_id = %s", (leases[lost_id].msg_id,)
    ).fetchone() == (1,)
    sent = message_row(db, campaigns[0].message_ids[0])
    assert (sent["status"], sent["parts_sent"], sent["send_ms"]) == ("sent", 2, 7)
    assert db.execute("SELECT count(*) FROM pgmq.a_campaign_messages").fetchone() == (11,)
    # counters right per run; a run with a message still in flight is not completed
    first, second, third = (run_row(db, c.run_id) for c in campaigns)
    assert first[:2] == ("completed", 4) and first[2] is not None
    assert second[:2] == ("running", 3) and second[2] is None
    assert third[:2] == ("completed", 4)

    # the same batch again (a retried commit whose answer was lost): nothing counted twice
    again = complete_many(db, items)
    assert not any(ok for _, _, ok in again)
    assert run_row(db, campaigns[0].run_id) == first
    assert run_row(db, campaigns[1].run_id)[:2] == ("running", 3)

    # the new holder completes the last one (single-message function): the run completes once
    stolen = db.execute(
        "SELECT read_ct FROM pgmq.q_campaign_messages WHERE msg_id = %s", (leases[lost_id].msg_id,)
    ).fetchone()
    assert stolen is not None
    assert db.execute(
        "SELECT campaignq_complete_sent(%s, %s, %s, 1)", (leases[lost_id].msg_id, stolen[0], lost_id)
    ).fetchone() == (True,)
    assert run_row(db, campaigns[1].run_id)[:2] == ("completed", 4)


def test_finalize_probes_without_touching_a_run_that_is_not_complete(
    db: psycopg.Connection[Any], seed: Seeder
) -> None:
    campaign = seed.campaign(2)
    before = db.execute("SELECT xmin::text FROM campaign_runs WHERE id = %s", (campaign.run_id,)).fetchone()
    assert db.execute("SELECT finalize_campaign_run_if_complete(%s)", (campaign.run_id,)).fetchone() == (
        False,
    )
    after = db.execute("SELECT xmin::text FROM campaign_runs WHERE id = %s", (campaign.run_id,)).fetchone()
    assert before == after  # no new row version: the run was not updated (nor locked)
    db.execute("UPDATE campaign_messages SET status = 'sent' WHERE run_id = %s", (campaign.run_id,))
    assert db.execute("SELECT finalize_campaign_run_if_complete(%s)", (campaign.run_id,)).fetchone() == (
        True,
    )
    assert db.execute("SELECT finalize_campaign_run_if_complete(%s)", (campaign.run_id,)).fetchone() == (
        False,
    )


def test_record_parts_sent_many_is_monotonic(db: psycopg.Connection[Any], seed: Seeder) -> None:
    campaign = seed.campaign(2)
    a, b = campaign.message_ids
    db.execute("UPDATE campaign_messages SET parts_sent = 2 WHERE id = %s", (b,))
    db.execute("SELECT campaignq_record_parts_sent_many(%s, %s)", ([a, a, b], [1, 3, 1]))
    assert message_row(db, a)["parts_sent"] == 3  # the highest of its two
    assert message_row(db, b)["parts_sent"] == 2  # never goes back


# --- the batcher ----------------------------------------------------------------------------------


@pytest.fixture
async def open_db(database_url: str) -> Any:
    opened: list[Database] = []

    async def make(**kwargs: Any) -> Database:
        database = await Database.open(database_url, max_size=4, **kwargs)
        opened.append(database)
        return database

    yield make
    for database in opened:
        await database.close()


def leased(
    db: psycopg.Connection[Any], seed: Seeder, n: int
) -> tuple[Campaign, dict[uuid.UUID, QueueMessage]]:
    campaign = seed.campaign(n)
    produce(db)
    return campaign, read_all(db)


async def test_concurrent_callers_share_one_statement_and_each_gets_its_own_answer(
    db: psycopg.Connection[Any], seed: Seeder, open_db: Any
) -> None:
    campaign, leases = leased(db, seed, 6)
    lost_id = campaign.message_ids[3]
    steal(db, leases[lost_id])
    database: Database = await open_db(outcome_batch_window_s=0.05, outcome_batch_max=64)

    answers = await asyncio.gather(
        *(database.complete_sent(leases[mid], mid, send_ms=3) for mid in campaign.message_ids)
    )

    assert answers == [mid != lost_id for mid in campaign.message_ids]
    assert database.completions.flushes == 1
    assert database.statements["complete_sent"] == 1
    assert run_row(db, campaign.run_id)[:2] == ("running", 5)


async def test_a_batch_is_sent_when_full_and_when_its_window_ends(
    db: psycopg.Connection[Any], seed: Seeder, open_db: Any
) -> None:
    campaign, leases = leased(db, seed, 9)
    full: Database = await open_db(outcome_batch_window_s=30.0, outcome_batch_max=4)
    started = time.monotonic()
    answers = await asyncio.wait_for(
        asyncio.gather(
            *(full.complete_sent(leases[mid], mid, send_ms=1) for mid in campaign.message_ids[:8])
        ),
        timeout=10,
    )
    assert answers == [True] * 8
    assert full.completions.flushes == 2  # two full batches, no 30 s wait
    assert time.monotonic() - started < 10

    timed: Database = await open_db(outcome_batch_window_s=0.2, outcome_batch_max=64)
    last = campaign.message_ids[8]
    started = time.monotonic()
    assert await timed.complete_sent(leases[last], last, send_ms=1) is True
    assert time.monotonic() - started >= 0.19  # waited for company, then went alone
    assert timed.completions.flushes == 1
    assert run_row(db, campaign.run_id)[:2] == ("completed", 9)


async def test_a_database_error_reaches_every_caller_of_the_flush(
    db: psycopg.Connection[Any], seed: Seeder, open_db: Any, database_url: str
) -> None:
    campaign, leases = leased(db, seed, 3)
    database: Database = await open_db(
        outcome_batch_window_s=0.05, outcome_batch_max=64, statement_timeout_ms=300
    )
    with psycopg.connect(database_url) as holder:  # the run row held: the batch times out
        holder.execute("SELECT 1 FROM campaign_runs WHERE id = %s FOR UPDATE", (campaign.run_id,))
        results = await asyncio.gather(
            *(database.complete_sent(leases[mid], mid, send_ms=1) for mid in campaign.message_ids),
            return_exceptions=True,
        )
    assert all(isinstance(r, psycopg.OperationalError) for r in results), results
    assert database.completions.flushes == 1
    assert db.execute("SELECT count(*) FROM pgmq.a_campaign_messages").fetchone() == (0,)  # rolled back
    # each caller's retry (what `persist` does) goes through once the lock is gone
    again = await asyncio.gather(
        *(database.complete_sent(leases[mid], mid, send_ms=1) for mid in campaign.message_ids)
    )
    assert again == [True, True, True]
    assert run_row(db, campaign.run_id)[:2] == ("completed", 3)


async def test_a_refused_element_fails_only_its_own_caller(
    db: psycopg.Connection[Any], seed: Seeder, open_db: Any
) -> None:
    campaign = seed.campaign(3)
    produce(db)
    rows = db.execute(
        "SELECT msg_id, read_ct, enqueued_at, vt, message FROM pgmq.read('campaign_messages', 60, 10)"
    ).fetchall()
    leases = {
        uuid.UUID(r[4]["campaign_message_id"]): QueueMessage(
            msg_id=r[0], read_ct=r[1], enqueued_at=r[2], vt=r[3], message=r[4]
        )
        for r in rows
    }
    db.execute("UPDATE campaign_messages SET status = 'generating' WHERE run_id = %s", (campaign.run_id,))
    database: Database = await open_db(outcome_batch_window_s=0.05, outcome_batch_max=64)
    bad = campaign.message_ids[1]

    async def store(mid: uuid.UUID) -> bool:
        text = "bad \x00 text" if mid == bad else f"Hello {mid}"
        return await database.store_generation(
            leases[mid], mid, text=text, parts=[text], prompt_tokens=3, completion_tokens=4,
            cost_usd=0.001 if mid != bad else None, ai_ms=5, split_ms=None,
        )  # fmt: skip

    results = await asyncio.gather(*(store(mid) for mid in campaign.message_ids), return_exceptions=True)

    assert results[0] is True and results[2] is True
    assert isinstance(results[1], psycopg.DataError)  # NUL in text: its own caller only
    assert message_row(db, campaign.message_ids[0])["parts"] == [f"Hello {campaign.message_ids[0]}"]
    assert message_row(db, bad)["parts"] is None
    # a stored row is never overwritten (the `parts IS NULL` guard answers False here; the lease
    # guard itself is proven by test_a_lost_lease_stores_nothing_on_a_row_not_generated_yet)
    steal(db, leases[bad])
    again = await asyncio.gather(*(store(mid) for mid in (campaign.message_ids[0], campaign.message_ids[2])))
    assert again == [False, False]


def store_many(db: psycopg.Connection[Any], items: list[tuple[QueueMessage, uuid.UUID]]) -> list[bool]:
    n = len(items)
    texts = [f"Hello {mid}" for _, mid in items]
    rows = db.execute(
        "SELECT ord, ok FROM campaignq_store_ai_generations_many("
        "%s, %s, %s, %s, %s::jsonb[], %s, %s, %s::numeric[], %s, %s, %s, %s, %s, %s)",
        ([m.msg_id for m, _ in items], [m.read_ct for m, _ in items], [mid for _, mid in items], texts,
         [Jsonb([t]) for t in texts], [3] * n, [4] * n, [0.001] * n, [5] * n, [None] * n, [0] * n, [0] * n,
         [1] * n, ["plain"] * n),
    ).fetchall()  # fmt: skip
    assert [int(o) for o, _ in rows] == list(range(1, n + 1))
    return [bool(ok) for _, ok in rows]


def test_a_lost_lease_stores_nothing_on_a_row_not_generated_yet(
    db: psycopg.Connection[Any], seed: Seeder
) -> None:
    """The lease guard itself (issue 20): a row whose parts are still NULL — so the "never
    overwrite" guard would let a write through — but whose queue message another worker has
    read since (read_ct moved on) is not written by the old holder, batched or not."""
    campaign = seed.campaign(3)
    produce(db)
    rows = db.execute(
        "SELECT msg_id, read_ct, enqueued_at, vt, message FROM pgmq.read('campaign_messages', 60, 10)"
    ).fetchall()
    leases = {
        uuid.UUID(r[4]["campaign_message_id"]): QueueMessage(
            msg_id=r[0], read_ct=r[1], enqueued_at=r[2], vt=r[3], message=r[4]
        )
        for r in rows
    }
    db.execute("UPDATE campaign_messages SET status = 'generating' WHERE run_id = %s", (campaign.run_id,))
    held, lost, lost_single = campaign.message_ids
    steal(db, leases[lost])
    steal(db, leases[lost_single])

    assert store_many(db, [(leases[held], held), (leases[lost], lost)]) == [True, False]
    single = db.execute(
        "SELECT campaignq_store_ai_generation("
        "%s, %s, %s, 'Hello there', %s, 3, 4, 0.001, 5, NULL, 0, 0, 1, 'plain')",
        (leases[lost_single].msg_id, leases[lost_single].read_ct, lost_single, Jsonb(["Hello there"])),
    ).fetchone()
    assert single == (False,)

    assert message_row(db, held)["parts"] == [f"Hello {held}"]
    for mid in (lost, lost_single):
        row = message_row(db, mid)
        assert (row["parts"], row["generated_message"], row["status"]) == (None, None, "generating")


async def test_window_zero_uses_the_single_message_functions(
    db: psycopg.Connection[Any], seed: Seeder, open_db: Any
) -> None:
    campaign, leases = leased(db, seed, 2)
    database: Database = await open_db(outcome_batch_window_s=0)
    await database.record_part_sent(campaign.message_ids[0], 1)
    answers = [await database.complete_sent(leases[mid], mid, send_ms=1) for mid in campaign.message_ids]
    assert answers == [True, True]
    assert database.completions.flushes == 0
    assert database.statements["complete_sent"] == 2
    assert run_row(db, campaign.run_id)[:2] == ("completed", 2)


# --- P4: batched writes need no shield of their own -------------------------------------------------


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(faults=Faults(seed=15)) as simulator:
        yield simulator


class GatedCompletionDatabase(Database):
    """The real database, except that a batch of successes waits for `gate` (a slow commit)."""

    gate: asyncio.Event
    entered: asyncio.Event

    async def _complete_sent_many(self, items: list[Any]) -> list[bool]:
        self.entered.set()
        await self.gate.wait()
        return await super()._complete_sent_many(items)


def visible_count(db: psycopg.Connection[Any]) -> int:
    row = db.execute("SELECT count(*) FROM pgmq.q_campaign_messages WHERE vt <= clock_timestamp()").fetchone()
    return int(row[0]) if row else 0


async def test_a_task_cancelled_while_its_batched_success_is_on_the_way_waits_for_it(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str
) -> None:
    """The drain timeout cancels a message whose success is in a batch not yet committed. The
    write is not the task's (no shield): the task must still wait for it before releasing the
    message, and the message ends sent, once, with nothing visible in the queue."""
    campaign = seed.campaign(1)
    produce(db)
    GatedCompletionDatabase.gate = asyncio.Event()
    GatedCompletionDatabase.entered = asyncio.Event()
    settings = consumer_settings(database_url, sim, drain_timeout_s=0.2)
    async with running_worker(settings, db_class=GatedCompletionDatabase) as running:
        await asyncio.wait_for(GatedCompletionDatabase.entered.wait(), timeout=30)
        running.worker.stop()
        await asyncio.sleep(1.0)  # the drain timeout passed: the task is cancelled and waiting
        assert visible_count(db) == 0  # not released while its success is on its way
        assert message_row(db, campaign.message_ids[0])["status"] == "sending"
        GatedCompletionDatabase.gate.set()
        await asyncio.wait_for(running.task, timeout=30)

    row = message_row(db, campaign.message_ids[0])
    assert (row["status"], row["retry_count"]) == ("sent", 0)
    assert db.execute("SELECT count(*) FROM pgmq.q_campaign_messages").fetchone() == (0,)
    assert len(sim.sends) == 1
    assert run_row(db, campaign.run_id)[:2] == ("completed", 1)


async def test_a_caller_that_stops_waiting_does_not_stop_its_write(
    db: psycopg.Connection[Any], seed: Seeder, open_db: Any
) -> None:
    campaign, leases = leased(db, seed, 2)
    database: Database = await open_db(outcome_batch_window_s=0.1, outcome_batch_max=64)
    writes: list[asyncio.Future[Any]] = []

    async def caller(mid: uuid.UUID) -> bool:
        WRITES_IN_FLIGHT.set(writes)
        return await database.complete_sent(leases[mid], mid, send_ms=1)

    first, second = campaign.message_ids
    cancelled = asyncio.create_task(caller(first))
    other = asyncio.create_task(caller(second))
    await asyncio.sleep(0.02)
    cancelled.cancel()
    assert await other is True
    assert cancelled.cancelled()
    assert writes and all(w.done() for w in writes)  # what a cancelled handler waits for
    assert message_row(db, first)["status"] == "sent"  # its write went through all the same
    assert run_row(db, campaign.run_id)[:2] == ("completed", 2)
