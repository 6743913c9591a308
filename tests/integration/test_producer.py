"""The SQL producer `enqueue_due_campaign_messages` on a real PostgreSQL with PGMQ."""

from __future__ import annotations

import json
import re
import signal
import threading
import time
import uuid
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from consumer import sql as sqlfiles
from tests.cli import run_cli, spawn_cli
from tests.factories import Seeder


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


def _seed_large(db: psycopg.Connection[Any], seed: Seeder, total: int, due: int) -> None:
    campaign = seed.campaign(0)
    other_runs = [seed.run(campaign.config_id, status="completed") for _ in range(20)]
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
        SELECT CASE WHEN row_number() OVER () <= %(due)s THEN %(run)s
                    ELSE (%(others)s::uuid[])[1 + (random() * 19)::int] END,
               id,
               CASE WHEN row_number() OVER () <= %(due)s THEN 'pending' ELSE 'sent' END,
               now() - interval '5 minutes'
          FROM leads
        """,
        {"due": due, "run": campaign.run_id, "others": other_runs},
    )
    db.execute("ANALYZE")


def _plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    nodes = [plan]
    for child in plan.get("Plans", []):
        nodes.extend(_plan_nodes(child))
    return nodes


def _selection_statement() -> str:
    """The producer's selection exactly as written in the migration, with its variables bound."""
    source = next(m.sql for m in sqlfiles.migrations() if m.name == "producer")
    selection = re.search(r"WITH picked AS \(.*?\n    \), marked AS", source, re.DOTALL)
    assert selection is not None, "the producer's selection CTE moved; update this test"
    body = selection.group(0)[len("WITH picked AS (") : -len("), marked AS")]
    return (
        body.replace("v_now", "now()")
        .replace("v_cutoff", "(now() - interval '1 hour')")
        .replace("p_limit", "5000")
    )


def test_selection_uses_the_partial_index_and_no_seq_scan_on_200k_rows(
    db: psycopg.Connection[Any], seed: Seeder
) -> None:
    _seed_large(db, seed, total=200_000, due=3_000)

    with db.transaction():
        row = db.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + _selection_statement()).fetchone()  # type: ignore[operator]
    assert row is not None
    nodes = _plan_nodes(row[0][0]["Plan"])
    on_messages = [n for n in nodes if n.get("Relation Name") == "campaign_messages"]
    assert on_messages, json.dumps(row[0], indent=1)[:2000]
    assert all(n["Node Type"] != "Seq Scan" for n in on_messages)
    used = [(n["Node Type"], n.get("Relation Name"), n.get("Index Name")) for n in nodes]
    assert any(n.get("Index Name") == "campaign_messages_pending_due_idx" for n in nodes), str(used)
    limit_rows = nodes[0]["Actual Rows"]
    assert limit_rows == 3_000


def test_stale_sweep_does_no_work_when_nothing_is_stale(db: psycopg.Connection[Any], seed: Seeder) -> None:
    _seed_large(db, seed, total=50_000, due=0)
    source = next(m.sql for m in sqlfiles.migrations() if m.name == "producer")
    stale = re.search(
        r"SELECT m\.id\s+FROM campaign_messages m\s+WHERE m\.status = 'pending'\s+"
        r"AND m\.scheduled_at < v_cutoff.*?SKIP LOCKED",
        source,
        re.DOTALL,
    )
    assert stale is not None
    statement = stale.group(0).replace("v_cutoff", "(now() - interval '1 hour')")

    with db.transaction():
        row = db.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement).fetchone()  # type: ignore[operator]
    assert row is not None
    nodes = _plan_nodes(row[0][0]["Plan"])
    assert all(n["Node Type"] != "Seq Scan" for n in nodes if n.get("Relation Name") == "campaign_messages")
    assert any(n.get("Index Name") == "campaign_messages_pending_due_idx" for n in nodes)
    assert nodes[0]["Actual Rows"] == 0


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
