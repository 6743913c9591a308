"""The SQL producer `enqueue_due_campaign_messages` on a real PostgreSQL with PGMQ."""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from consumer.devtools.seeding import Seeder
from tests.cli import run_cli, spawn_cli


def _queue_payloads(db: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    return [r[0] for r in db.execute("SELECT message FROM pgmq.q_campaign_messages ORDER BY msg_id")]


def _status(db: psycopg.Connection[Any], message_id: uuid.UUID) -> str:
    row = db.execute("SELECT status FROM campaign_messages WHERE id = %s", (message_id,)).fetchone()
    assert row is not None
    return str(row[0])


def test_each_kind_of_row_ends_where_the_contract_says(db: psycopg.Connection[Any], seed: Seeder) -> None:
    running = seed.campaign(0)
    paused = seed.campaign(0, run_status="paused")
    cancelled = seed.campaign(0, run_status="cancelled")
    lead = seed.leads(running.workspace_id, 1)[0]
    due = seed.messages(running.run_id, [lead])[0]
    not_due = seed.messages(running.run_id, [lead], scheduled_offset=timedelta(minutes=10))[0]
    stale = seed.messages(running.run_id, [lead], scheduled_offset=timedelta(hours=-2))[0]
    paused_due = seed.messages(paused.run_id, [lead])[0]
    paused_stale = seed.messages(paused.run_id, [lead], scheduled_offset=timedelta(hours=-2))[0]
    cancelled_due = seed.messages(cancelled.run_id, [lead])[0]

    queued = db.execute("SELECT enqueue_due_campaign_messages(100)").fetchone()

    assert queued == (1,)
    assert _status(db, due) == "queued"
    assert _status(db, not_due) == "pending"
    assert _status(db, stale) == "skipped"
    assert _status(db, paused_due) == "pending"
    assert _status(db, paused_stale) == "pending"
    assert _status(db, cancelled_due) == "pending"
    assert _queue_payloads(db) == [
        {"v": 1, "campaign_message_id": str(due), "run_id": str(running.run_id), "lead_id": str(lead)}
    ]
    processed = db.execute("SELECT leads_processed FROM campaign_runs WHERE id = %s", (running.run_id,))
    assert processed.fetchone() == (1,)  # the stale row counts as processed


def test_queue_holds_one_message_per_queued_row_and_limit_is_respected(
    db: psycopg.Connection[Any], seed: Seeder
) -> None:
    campaign = seed.campaign(25)

    first = db.execute("SELECT enqueue_due_campaign_messages(10)").fetchone()
    second = db.execute("SELECT enqueue_due_campaign_messages(100)").fetchone()
    third = db.execute("SELECT enqueue_due_campaign_messages(100)").fetchone()

    assert (first, second, third) == ((10,), (15,), (0,))
    payloads = _queue_payloads(db)
    assert sorted(p["campaign_message_id"] for p in payloads) == sorted(map(str, campaign.message_ids))
    assert seed.statuses(campaign.run_id) == {"queued": 25}


@pytest.mark.parametrize("bad_limit", ["0", "-5", "NULL"])
def test_a_non_positive_limit_is_rejected_with_a_clear_error(
    db: psycopg.Connection[Any], bad_limit: str
) -> None:
    statement = {
        "0": "SELECT enqueue_due_campaign_messages(0)",
        "-5": "SELECT enqueue_due_campaign_messages(-5)",
        "NULL": "SELECT enqueue_due_campaign_messages(NULL)",
    }[bad_limit]
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="p_limit must be a positive integer"):
        db.execute(statement)


def test_two_producers_racing_queue_each_row_exactly_once(database_url: str, seed: Seeder) -> None:
    campaign = seed.campaign(10_000)
    start = threading.Barrier(2)
    counts: list[int] = []

    def producer() -> None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            # Just-in-time queueing (0008) would stop at the target depth with no consumer
            # draining: turn it off, this test is about SKIP LOCKED between two producers.
            conn.execute("SET campaignq.queue_horizon_s = 0")
            start.wait()
            while (n := conn.execute("SELECT enqueue_due_campaign_messages(700)").fetchone()[0]) > 0:  # type: ignore[index]
                counts.append(n)

    threads = [threading.Thread(target=producer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)

    assert sum(counts) == 10_000
    with psycopg.connect(database_url) as conn:
        ids = [
            r[0] for r in conn.execute("SELECT message->>'campaign_message_id' FROM pgmq.q_campaign_messages")
        ]
    assert len(ids) == 10_000
    assert set(ids) == set(map(str, campaign.message_ids))
    assert seed.statuses(campaign.run_id) == {"queued": 10_000}


def _seed_large(
    db: psycopg.Connection[Any], seed: Seeder, total: int, due: int, *, pending_elsewhere: int = 0
) -> uuid.UUID:
    """`total` leads with one message each: `due` pending and due in one running run, the
    rest `sent` in 2,000 finished runs, except `pending_elsewhere` rows that stay pending in
    a paused run (scheduled two hours ago: stale if that run were running). Enough runs
    that the planner has a reason to use the running-runs index."""
    campaign = seed.campaign(0)
    other_runs = [
        r[0]
        for r in db.execute(
            "INSERT INTO campaign_runs (config_id, status, leads_total) "
            "SELECT %s, 'completed', 0 FROM generate_series(1, 2000) RETURNING id",
            (campaign.config_id,),
        ).fetchall()
    ]
    paused = seed.run(campaign.config_id, status="paused")
    db.execute(
        """
        INSERT INTO leads (workspace_id, name, phone, custom_fields)
        SELECT %(ws)s, 'Lead ' || g, '+5511' || (900000000 + g), '{}'::jsonb FROM generate_series(1, %(n)s) g
        """,
        {"ws": campaign.workspace_id, "n": total},
    )
    db.execute(
        """
        INSERT INTO campaign_messages (run_id, lead_id, status, scheduled_at)
        SELECT CASE WHEN n <= %(due)s THEN %(run)s
                    WHEN n <= %(due)s + %(elsewhere)s THEN %(paused)s
                    ELSE (%(others)s::uuid[])[1 + ((n * 7919) %% 2000)] END,
               id,
               CASE WHEN n <= %(due)s + %(elsewhere)s THEN 'pending' ELSE 'sent' END,
               CASE WHEN n <= %(due)s THEN now() - interval '5 minutes' ELSE now() - interval '2 hours' END
          FROM (SELECT id, row_number() OVER () AS n FROM leads) l
        """,
        {
            "due": due,
            "elsewhere": pending_elsewhere,
            "run": campaign.run_id,
            "paused": paused,
            "others": other_runs,
        },
    )
    db.execute("ANALYZE")
    return campaign.run_id


def _scan_counts(db: psycopg.Connection[Any]) -> dict[str, int]:
    """Index and sequential scans so far on the producer's tables, as the server counted them.

    `pg_stat_force_next_flush()` makes this backend publish its pending counters before it
    answers, so the figures include every statement this connection ran before.
    """
    db.execute("SELECT pg_stat_force_next_flush()")
    counts: dict[str, int] = {}
    for name, scans in db.execute(
        "SELECT indexrelname, idx_scan FROM pg_stat_user_indexes "
        "WHERE relname IN ('campaign_messages', 'campaign_runs')"
    ):
        counts[str(name)] = int(scans)
    for name, scans in db.execute(
        "SELECT relname, seq_scan FROM pg_stat_user_tables "
        "WHERE relname IN ('campaign_messages', 'campaign_runs')"
    ):
        counts[f"seq:{name}"] = int(scans)
    return counts


def _scans_during(db: psycopg.Connection[Any], statement: str) -> tuple[Any, dict[str, int]]:
    """Run `statement` (a real call of the function) and return its result and the scans it made."""
    before = _scan_counts(db)
    row = db.execute(statement).fetchone()
    after = _scan_counts(db)
    delta = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    return (row[0] if row else None), delta


AUDIT_INDEXES = ("campaign_runs_running_idx", "campaign_messages_pending_due_idx")


@pytest.mark.parametrize(
    ("horizon_s", "expected"),
    [("0", 3_000), ("15", 500)],  # just-in-time (0008) off: all due; on: its 500-row floor
)
def test_producer_call_uses_both_audit_indexes_and_no_seq_scan_on_200k_rows(
    db: psycopg.Connection[Any], seed: Seeder, horizon_s: str, expected: int
) -> None:
    _seed_large(db, seed, total=200_000, due=3_000, pending_elsewhere=20_000)
    db.execute("SELECT set_config('campaignq.queue_horizon_s', %s, false)", (horizon_s,))

    queued, scans = _scans_during(db, "SELECT enqueue_due_campaign_messages(5000)")

    assert queued == expected
    assert scans.get("seq:campaign_messages", 0) == 0, scans
    for index in AUDIT_INDEXES:
        assert scans.get(index, 0) >= 1, scans


def test_stale_sweep_probes_the_audit_indexes_and_skips_nothing_fresh(
    db: psycopg.Connection[Any], seed: Seeder
) -> None:
    # 20,000 pending rows in the partial index: 5,000 due and fresh in the running run,
    # 15,000 two hours old in a paused run (stale only if that run were running).
    _seed_large(db, seed, total=50_000, due=5_000, pending_elsewhere=15_000)

    skipped, scans = _scans_during(db, "SELECT campaignq_sweep_stale_pending()")

    assert skipped == 0
    assert scans.get("seq:campaign_messages", 0) == 0, scans
    for index in AUDIT_INDEXES:
        assert scans.get(index, 0) >= 1, scans
    assert seed.statuses() == {"pending": 20_000, "sent": 30_000}


def test_stale_sweep_skips_exactly_the_stale_rows(db: psycopg.Connection[Any], seed: Seeder) -> None:
    run_id = _seed_large(db, seed, total=20_000, due=1_000, pending_elsewhere=0)
    db.execute(
        "UPDATE campaign_messages SET scheduled_at = now() - interval '3 hours' "
        "WHERE id IN (SELECT id FROM campaign_messages WHERE run_id = %s LIMIT 400)",
        (run_id,),
    )
    db.execute("ANALYZE campaign_messages")

    skipped, scans = _scans_during(db, "SELECT campaignq_sweep_stale_pending()")

    assert skipped == 400
    assert scans.get("seq:campaign_messages", 0) == 0, scans
    assert seed.statuses(run_id) == {"pending": 600, "skipped": 400}


def test_finalize_completes_a_run_only_when_every_message_is_terminal(
    db: psycopg.Connection[Any], seed: Seeder
) -> None:
    campaign = seed.campaign(3)
    finalize = "SELECT finalize_campaign_run_if_complete(%s)"
    db.execute("UPDATE campaign_messages SET status = 'sent' WHERE id = ANY(%s)", (campaign.message_ids[:2],))
    assert db.execute(finalize, (campaign.run_id,)).fetchone() == (False,)

    db.execute("UPDATE campaign_messages SET status = 'failed' WHERE id = %s", (campaign.message_ids[2],))
    assert db.execute(finalize, (campaign.run_id,)).fetchone() == (True,)
    assert db.execute(finalize, (campaign.run_id,)).fetchone() == (False,)  # already completed
    status, finished = db.execute(
        "SELECT status, finished_at IS NOT NULL FROM campaign_runs WHERE id = %s", (campaign.run_id,)
    ).fetchone()  # type: ignore[misc]
    assert (status, finished) == ("completed", True)


def test_finalize_leaves_paused_runs_alone(db: psycopg.Connection[Any], seed: Seeder) -> None:
    campaign = seed.campaign(1, run_status="paused")
    db.execute("UPDATE campaign_messages SET status = 'sent'")
    assert db.execute("SELECT finalize_campaign_run_if_complete(%s)", (campaign.run_id,)).fetchone() == (
        False,
    )


def test_updated_at_is_maintained(db: psycopg.Connection[Any], seed: Seeder) -> None:
    campaign = seed.campaign(1)
    before = db.execute("SELECT updated_at FROM campaign_messages").fetchone()
    time.sleep(0.01)
    db.execute("UPDATE campaign_messages SET retry_count = 1 WHERE id = %s", (campaign.message_ids[0],))
    after = db.execute("SELECT updated_at FROM campaign_messages").fetchone()
    assert before is not None and after is not None and after[0] > before[0]


def test_database_rejects_a_status_outside_the_contract(db: psycopg.Connection[Any], seed: Seeder) -> None:
    campaign = seed.campaign(1)
    with pytest.raises(psycopg.errors.CheckViolation):
        db.execute("UPDATE campaign_messages SET status = 'done' WHERE id = %s", (campaign.message_ids[0],))


def test_produce_once_cli_prints_the_count(database_url: str, seed: Seeder) -> None:
    seed.campaign(7)
    result = run_cli("produce", "--once", database_url=database_url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "7"


def test_produce_every_loop_queues_new_rows_and_stops_cleanly(database_url: str, seed: Seeder) -> None:
    process = spawn_cli("produce", "--every", "200ms", database_url=database_url)
    try:
        campaign = seed.campaign(5)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and seed.statuses(campaign.run_id) != {"queued": 5}:
            time.sleep(0.1)
        assert seed.statuses(campaign.run_id) == {"queued": 5}
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    assert "queued 5 messages" in out


def test_a_half_sent_row_is_never_skipped_as_stale_and_is_queued(
    db: psycopg.Connection[Any], seed: Seeder
) -> None:
    """Issue 9 defect 4: part 1 of 3 went out, the row went back to pending (run paused),
    and hours passed. The lead must get parts 2 and 3, not be left half-sent."""
    campaign = seed.campaign(3, scheduled_offset=timedelta(hours=-3))
    half_sent, maybe_sent, untouched = campaign.message_ids
    parts = json.dumps(["part one", "part two", "part three"])
    db.execute(
        "UPDATE campaign_messages SET parts = %s, generated_message = 'a b c', parts_sent = 1 WHERE id = %s",
        (parts, half_sent),
    )
    # part 1 went out with no answer: uncertain, so maybe delivered — completed, not skipped
    db.execute(
        "UPDATE campaign_messages SET parts = %s, generated_message = 'a b c', uncertain_part = 0, "
        "uncertain_since = now() - interval '3 hours' WHERE id = %s",
        (parts, maybe_sent),
    )

    queued = db.execute("SELECT enqueue_due_campaign_messages(100)").fetchone()

    assert queued == (2,)
    assert (_status(db, half_sent), _status(db, maybe_sent)) == ("queued", "queued")
    assert _status(db, untouched) == "skipped"
    queued_ids = sorted(p["campaign_message_id"] for p in _queue_payloads(db))
    assert queued_ids == sorted([str(half_sent), str(maybe_sent)])


def test_a_resume_restarts_the_stale_clock(db: psycopg.Connection[Any], seed: Seeder) -> None:
    """A run paused overnight and resumed: its messages (scheduled 10 h ago) are queued, not
    skipped; the window counts from the later of scheduled_at and the last resume."""
    campaign = seed.campaign(3, run_status="paused", scheduled_offset=timedelta(hours=-10))
    assert db.execute("SELECT enqueue_due_campaign_messages(100)").fetchone() == (0,)

    db.execute("UPDATE campaign_runs SET status = 'running' WHERE id = %s", (campaign.run_id,))
    resumed = db.execute("SELECT resumed_at IS NOT NULL FROM campaign_runs WHERE id = %s", (campaign.run_id,))
    assert resumed.fetchone() == (True,)

    assert db.execute("SELECT enqueue_due_campaign_messages(100)").fetchone() == (3,)
    assert seed.statuses(campaign.run_id) == {"queued": 3}


def test_a_resume_more_than_the_window_ago_no_longer_protects_the_rows(
    db: psycopg.Connection[Any], seed: Seeder
) -> None:
    campaign = seed.campaign(2, run_status="paused", scheduled_offset=timedelta(hours=-10))
    db.execute("UPDATE campaign_runs SET status = 'running' WHERE id = %s", (campaign.run_id,))
    # The resume happened 61 minutes ago and the rows were never queued since.
    db.execute(
        "UPDATE campaign_runs SET resumed_at = now() - interval '61 minutes' WHERE id = %s",
        (campaign.run_id,),
    )

    assert db.execute("SELECT campaignq_sweep_stale_pending()").fetchone() == (2,)
    assert seed.statuses(campaign.run_id) == {"skipped": 2}
