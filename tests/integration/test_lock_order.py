"""One lock order (issue 20): every function and trigger that touches runs and their messages
takes runs first (in id order), then messages (db/migrations/0015_lock_order.sql). This test
runs the writers that can meet on the same runs — cancel, pause/resume, opt-out, producer ticks
(stale sweep + enqueue), batched and single outcomes, replay — concurrently, iteration after
iteration, with the windows between their locks widened, and asserts that none of them ever
dies of a deadlock and that the runs' counters still agree with their rows.

The windows are widened without touching a production code path: test-only BEFORE UPDATE
triggers (installed in this test's own database, named to fire before campaignq's own) sleep a
little on each run row and each message row an actor updates, while that row is already
locked. Only the actors' sessions enable the sleep (`SET campaignq_test.row_sleep_ms`); the
outcome actors also hold their transaction open a moment after their statement.

`CAMPAIGNQ_TEST_LOCK_ORDER_ITERATIONS` sets the number of iterations (default sized to take
well under 20 s on a busy machine; issue 20's acceptance ran 200).
"""

from __future__ import annotations

import os
import random
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from consumer.devtools.seeding import Seeder

ITERATIONS = int(os.environ.get("CAMPAIGNQ_TEST_LOCK_ORDER_ITERATIONS", "25"))
ROW_SLEEP_MS = float(os.environ.get("CAMPAIGNQ_TEST_LOCK_ORDER_ROW_SLEEP_MS", "4"))

# Test-only: a sleep on every updated row of the two tables, for sessions that ask for one. The
# trigger names sort before campaignq's own triggers, so the row is locked (PostgreSQL locks it
# before BEFORE ROW triggers run) and nothing of the statement's own trigger work has happened
# yet: on campaign_runs that is exactly the cancel trigger's "run held, messages next" window.
SLOW_TRIGGERS = """
CREATE FUNCTION campaignq_test_row_sleep() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_ms double precision :=
        coalesce(nullif(current_setting('campaignq_test.row_sleep_ms', true), ''), '0')::float8;
BEGIN
    IF v_ms > 0 THEN
        -- a run row 8 times longer: the cancel trigger's window between run and rows
        PERFORM pg_sleep(random() * v_ms / 1000.0
                         * CASE WHEN TG_TABLE_NAME = 'campaign_runs' THEN 8 ELSE 1 END);
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER aaa_test_row_sleep BEFORE UPDATE ON campaign_runs
    FOR EACH ROW EXECUTE FUNCTION campaignq_test_row_sleep();
CREATE TRIGGER aaa_test_row_sleep BEFORE UPDATE ON campaign_messages
    FOR EACH ROW EXECUTE FUNCTION campaignq_test_row_sleep();
"""

TERMINAL = ("sent", "failed", "skipped")
PARTS = ["Hello there, part one.", "And part two of it."]

Actor = Callable[[psycopg.Connection[Any]], None]
"""One writer of an iteration, given its own connection."""


@dataclass
class Lease:
    msg_id: int
    read_ct: int
    message_id: uuid.UUID


@dataclass
class RunFixture:
    run_id: uuid.UUID
    sending: list[Lease] = field(default_factory=list)  # generated, in flight: complete them
    generating: list[Lease] = field(default_factory=list)  # claimed, not generated: store them
    singles: list[Lease] = field(default_factory=list)  # one dead letter, one skip


@dataclass
class Iteration:
    runs: list[RunFixture]
    instance: str
    opted_phone: str


def connect(url: str, *, row_sleep_ms: float) -> psycopg.Connection[tuple[Any, ...]]:
    conn = psycopg.connect(url, autocommit=True)
    # just-in-time enqueue off: every due row is queued whatever the queue depth of earlier iterations
    conn.execute("SET campaignq.queue_horizon_s = '0'")
    conn.execute("SET statement_timeout = '60s'")
    conn.execute(f"SET campaignq_test.row_sleep_ms = '{row_sleep_ms:g}'")
    return conn


def lease_all(db: psycopg.Connection[Any], run_ids: list[uuid.UUID]) -> list[Lease]:
    rows = db.execute(
        "SELECT msg_id, read_ct, message FROM pgmq.read('campaign_messages', 600, 10000)"
    ).fetchall()
    return [
        Lease(int(r[0]), int(r[1]), uuid.UUID(r[2]["campaign_message_id"]))
        for r in rows
        if uuid.UUID(r[2]["run_id"]) in run_ids
    ]


def set_up(db: psycopg.Connection[Any], seed: Seeder, k: int) -> Iteration:
    """Two capped runs of one workspace (in random id order), each with messages in flight,
    dead letters, stale and due pending rows, and one lead (in both runs) who will opt out."""
    workspace = uuid.uuid4()
    instance = f"lock-order-{k}"
    inbox = seed.inbox(workspace, instance)
    config = seed.config(workspace, inbox, split=True)
    fixtures = [RunFixture(seed.run(config, leads_total=14)) for _ in range(2)]
    run_ids = [f.run_id for f in fixtures]
    phones = [f"+55219{k:04d}{i:04d}" for i in range(14)]
    leads = seed.leads(workspace, 14, phones=phones)
    # in flight (8 per run: 3 sending, 3 generating, 2 single outcomes) and 2 dead letters per run
    in_flight = {f.run_id: seed.messages(f.run_id, leads[:10]) for f in fixtures}
    db.execute("SELECT enqueue_due_campaign_messages(10000)")
    leases = {lease.message_id: lease for lease in lease_all(db, run_ids)}
    for f in fixtures:
        ids = in_flight[f.run_id]
        f.sending = [leases[i] for i in ids[0:3]]
        f.generating = [leases[i] for i in ids[3:6]]
        f.singles = [leases[i] for i in ids[6:8]]
        db.execute(
            "UPDATE campaign_messages SET status = 'sending', generated_message = 'x', parts = %s "
            "WHERE id = ANY(%s)",
            (Jsonb(PARTS), [lease.message_id for lease in f.sending + f.singles]),
        )
        db.execute(
            "UPDATE campaign_messages SET status = 'generating' WHERE id = ANY(%s)",
            ([lease.message_id for lease in f.generating],),
        )
        for i in ids[8:10]:
            db.execute(
                "SELECT campaignq_dead_letter(%s, %s, %s, 'permanent', 'provider_400', 'bad', 'send', true)",
                (leases[i].msg_id, leases[i].read_ct, i),
            )
        # pending: 2 stale (the sweep's), 1 due (the producer's), and the opting-out lead's
        seed.messages(f.run_id, leads[10:12], scheduled_offset=timedelta(hours=-2))
        seed.messages(f.run_id, leads[12:13])
        seed.messages(f.run_id, leads[13:14], scheduled_offset=timedelta(hours=-2))
    db.execute(
        "UPDATE campaign_runs SET ai_cost_cap_usd = 1000 WHERE id = ANY(%s)", (run_ids,)
    )  # capped: storing a generation updates the run row too
    random.shuffle(fixtures)
    return Iteration(fixtures, instance, phones[13])


def actors(it: Iteration) -> list[Actor]:
    """What runs concurrently in one iteration; each gets its own connection."""
    cancelled, paused = it.runs[0], it.runs[1]
    both = [f for f in sorted(it.runs, key=lambda f: f.run_id, reverse=random.random() < 0.5)]

    def producer_tick(conn: psycopg.Connection[Any]) -> None:
        conn.execute("SELECT enqueue_due_campaign_messages(10000)")

    def cancel(conn: psycopg.Connection[Any]) -> None:
        conn.execute("UPDATE campaign_runs SET status = 'cancelled' WHERE id = %s", (cancelled.run_id,))

    def pause_resume(conn: psycopg.Connection[Any]) -> None:
        conn.execute("UPDATE campaign_runs SET status = 'paused' WHERE id = %s", (paused.run_id,))
        conn.execute("UPDATE campaign_runs SET status = 'running' WHERE id = %s", (paused.run_id,))

    def opt_out(conn: psycopg.Connection[Any]) -> None:
        conn.execute("SELECT campaignq_record_opt_out(%s, %s, 'STOP')", (it.instance, it.opted_phone))

    def complete_many(conn: psycopg.Connection[Any]) -> None:
        items = [lease for f in both for lease in f.sending]
        with conn.transaction():
            conn.execute(
                "SELECT count(*) FROM campaignq_complete_sent_many(%s, %s, %s, %s)",
                ([i.msg_id for i in items], [i.read_ct for i in items], [i.message_id for i in items],
                 [5] * len(items)),
            )  # fmt: skip
            conn.execute("SELECT pg_sleep(0.01)")

    def store_many(conn: psycopg.Connection[Any]) -> None:
        items = [lease for f in both for lease in f.generating]
        n = len(items)
        texts = [f"Hello {i.message_id}" for i in items]
        with conn.transaction():
            conn.execute(
                "SELECT count(*) FROM campaignq_store_ai_generations_many("
                "%s, %s, %s, %s, %s::jsonb[], %s, %s, %s::numeric[], %s, %s, %s, %s, %s, %s)",
                ([i.msg_id for i in items], [i.read_ct for i in items], [i.message_id for i in items],
                 texts, [Jsonb([t]) for t in texts], [3] * n, [4] * n, [0.001] * n, [5] * n, [None] * n,
                 [0] * n, [0] * n, [1] * n, ["plain"] * n),
            )  # fmt: skip
            conn.execute("SELECT pg_sleep(0.01)")

    def singles(conn: psycopg.Connection[Any]) -> None:
        for f in both:
            dead, skipped = f.singles
            conn.execute(
                "SELECT campaignq_dead_letter(%s, %s, %s, 'permanent', 'provider_400', 'bad', 'send', true)",
                (dead.msg_id, dead.read_ct, dead.message_id),
            )
            conn.execute(
                "SELECT campaignq_skip_and_finalize(%s, %s, %s, 'opted_out', 'the lead opted out')",
                (skipped.msg_id, skipped.read_ct, skipped.message_id),
            )

    def replay(conn: psycopg.Connection[Any]) -> None:
        # one call, one transaction, per run (the order holds within a transaction: two calls
        # in one transaction would lock the second run after the first whatever their ids)
        for f in both:
            conn.execute("SELECT count(*) FROM campaignq_replay_dead_letters(100, 0, %s)", (f.run_id,))

    return [producer_tick, cancel, pause_resume, opt_out, complete_many, store_many, singles, replay]


def check(db: psycopg.Connection[Any], it: Iteration) -> None:
    """Counters agree with rows (no update lost), and a cancel left nothing pending."""
    for f in it.runs:
        row = db.execute(
            "SELECT r.status, r.leads_processed, r.ai_cost_spent_usd, "
            "  (SELECT count(*) FROM campaign_messages m WHERE m.run_id = r.id AND m.status = ANY(%s)), "
            "  (SELECT coalesce(sum(m.ai_cost_usd), 0) FROM campaign_messages m WHERE m.run_id = r.id), "
            "  (SELECT count(*) FROM campaign_messages m WHERE m.run_id = r.id AND m.status = 'pending') "
            "FROM campaign_runs r WHERE r.id = %s",
            (list(TERMINAL), f.run_id),
        ).fetchone()
        assert row is not None
        status, processed, spent, terminal, cost, pending = row
        assert processed == terminal, f"run {f.run_id}: leads_processed {processed}, terminal rows {terminal}"
        assert spent == cost, f"run {f.run_id}: ai_cost_spent_usd {spent} != {cost} (sum of its rows)"
        if status == "cancelled":
            assert pending == 0, f"cancelled run {f.run_id} kept {pending} pending rows"
    opted = db.execute(
        "SELECT count(*) FROM campaign_messages m JOIN leads l ON l.id = m.lead_id "
        " WHERE l.phone = %s AND m.status IN ('pending', 'queued')",
        (it.opted_phone,),
    ).fetchone()
    assert opted == (0,), "an opted-out lead kept a pending or queued message"


def what_happened(db: psycopg.Connection[Any], it: Iteration) -> Counter[str]:
    """The iteration's row outcomes by kind, so the test can show every writer did its work."""
    rows = db.execute(
        "SELECT m.status, coalesce(m.error_class, ''), "
        '       m.attempt_history @> \'[{"outcome": "replayed"}]\'::jsonb '
        "  FROM campaign_messages m WHERE m.run_id = ANY(%s)",
        ([f.run_id for f in it.runs],),
    ).fetchall()
    seen: Counter[str] = Counter()
    for status, error_class, replayed in rows:
        seen[f"{status}:{error_class}" if error_class else status] += 1
        seen["replayed"] += bool(replayed)
    return seen


def close_out(db: psycopg.Connection[Any], it: Iteration) -> None:
    """Cancel what is left, so the next iterations' producer ticks see only their own runs."""
    db.execute(
        "UPDATE campaign_runs SET status = 'cancelled' "
        "WHERE id = ANY(%s) AND status IN ('running', 'paused')",
        ([f.run_id for f in it.runs],),
    )


def _together(start: threading.Barrier, job: Actor, conn: psycopg.Connection[Any]) -> None:
    start.wait()  # every actor of the iteration starts at the same moment
    job(conn)


@pytest.fixture
def slow_db(db: psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
    db.execute(SLOW_TRIGGERS)
    db.execute("SET campaignq.queue_horizon_s = '0'")
    yield db


def test_writers_never_deadlock_and_lose_no_update(
    slow_db: psycopg.Connection[Any], seed: Seeder, database_url: str
) -> None:
    n_actors = len(actors(Iteration([RunFixture(uuid.uuid4()), RunFixture(uuid.uuid4())], "", "")))
    conns = [connect(database_url, row_sleep_ms=ROW_SLEEP_MS) for _ in range(n_actors)]
    failures: list[str] = []
    seen: Counter[str] = Counter()
    try:
        with ThreadPoolExecutor(max_workers=n_actors) as pool:
            for k in range(ITERATIONS):
                it = set_up(slow_db, seed, k)
                jobs = actors(it)
                start = threading.Barrier(len(jobs))
                futures = [
                    pool.submit(_together, start, job, conn) for job, conn in zip(jobs, conns, strict=True)
                ]
                for job, future in zip(jobs, futures, strict=True):
                    error = future.exception()
                    if error is not None:
                        failures.append(f"iteration {k}: {job.__name__}: {type(error).__name__}: {error}")
                assert not failures, "\n".join(failures)
                check(slow_db, it)
                seen += what_happened(slow_db, it)
                close_out(slow_db, it)
    finally:
        for conn in conns:
            conn.close()
    # every writer really wrote, in some iteration (else the race proved nothing)
    for kind in ("sent", "failed:provider_400", "skipped:stale", "skipped:run_cancelled",
                 "skipped:opted_out", "replayed"):  # fmt: skip
        assert seen[kind] > 0, f"no {kind} row in {ITERATIONS} iterations: {dict(seen)}"
