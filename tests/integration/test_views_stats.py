"""The operator views and `campaignq stats` on a seeded database with known numbers."""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from consumer.devtools.seeding import Campaign, Seeder
from tests.cli import run_cli, spawn_cli

# The documented JSON contract (docs/operations.md): a key may be added, never renamed.
TOP_LEVEL = {
    "schema_version",
    "generated_at",
    "queues",
    "runs",
    "workspaces",
    "dead_letters",
    "dead_letters_by_run",
    "ai_costs",  # issue 14
    "workspace_ai_costs",
    "inboxes",  # issue 13
    "budgets",
    "budget_holders",
    "fair_share",
}
QUEUE = {
    "queue_name",
    "role",
    "depth",
    "visible",
    "in_flight",
    "delayed",
    "oldest_age_s",
    "dead_letters",
    "archived_estimate",
}
RUN = {
    "run_id",
    "workspace_id",
    "config_id",
    "campaign",
    "ai_model",
    "run_status",
    "leads_total",
    "leads_processed",
    "messages",
    "pending",
    "queued",
    "in_progress",
    "sent",
    "failed",
    "skipped",
    "done_pct",
    "retries",
    "retried_messages",
    "deferrals",
    "tokens",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "unpriced_messages",
    "ai_ms_p50",
    "ai_ms_p95",
    "split_ms_p50",
    "split_ms_p95",
    "send_ms_p50",
    "send_ms_p95",
    "sent_last_minute",
    "sent_per_minute",
    "started_at",
    "finished_at",
    "last_sent_at",
}
WORKSPACE = {
    "workspace_id",
    "period",
    "finished",
    "sent",
    "failed",
    "skipped",
    "retries",
    "timeouts",
    "rate_limited",
    "tokens",
    "cost_usd",
    "unpriced_messages",
    "ai_ms_p50",
    "ai_ms_p95",
    "send_ms_p50",
    "send_ms_p95",
    "sent_per_minute",
}
DEAD_LETTER = {"reason", "error_class", "dead_letters", "runs", "oldest_at", "newest_at"}
DEAD_LETTER_RUN = {"run_id", "workspace_id", "reason", "dead_letters", "oldest_at", "newest_at"}

PRICED_MODEL = "openai/gpt-4o-mini"  # in Settings' default price table: 0.15 / 0.60 USD per M tokens


def set_row(db: psycopg.Connection[Any], message_id: uuid.UUID, **values: Any) -> None:
    assignments = sql.SQL(", ").join(
        sql.SQL("{} = {}").format(sql.Identifier(column), sql.Placeholder(column)) for column in values
    )
    statement = sql.SQL("UPDATE campaign_messages SET {} WHERE id = {}").format(
        assignments, sql.Placeholder("message_id")
    )
    db.execute(statement, {**values, "message_id": message_id})


def history(*error_classes: str) -> Jsonb:
    return Jsonb([{"error_class": error_class, "burned": True} for error_class in error_classes])


@pytest.fixture
def seeded(db: psycopg.Connection[Any], seed: Seeder) -> tuple[Campaign, Campaign]:
    """Ten messages in every state with known timings and costs, queues with known shapes."""
    main = seed.campaign(10, model=PRICED_MODEL)
    m = main.message_ids
    sent_ago = "now() - interval '10 minutes'"
    for index, (ai_ms, send_ms) in enumerate([(100, 10), (200, 20), (300, 30), (400, 40)]):
        set_row(
            db,
            m[index],
            status="sent",
            ai_ms=ai_ms,
            send_ms=send_ms,
            ai_prompt_tokens=60,
            ai_completion_tokens=40,
            ai_tokens_used=100,
            ai_cost_usd=0.001 if index < 3 else None,  # the 4th is priced from the table by stats
            retry_count=1 if index < 2 else 0,
            deferral_count=1 if index == 2 else 0,
            attempt_history=history("rate_limited") if index == 2 else history(),
        )
    db.execute(
        sql.SQL("UPDATE campaign_messages SET sent_at = {t}, finished_at = {t} WHERE id = ANY(%s)").format(
            t=sql.SQL(sent_ago)
        ),
        (m[:4],),
    )
    for failed in m[4:6]:
        set_row(
            db,
            failed,
            status="failed",
            retry_count=3,
            attempt_history=history("timeout", "timeout", "timeout"),
        )
    db.execute(
        "UPDATE campaign_messages SET finished_at = now() - interval '2 hours' WHERE id = ANY(%s)", (m[4:6],)
    )
    set_row(db, m[6], status="skipped")
    db.execute(
        "UPDATE campaign_messages SET finished_at = now() - interval '5 minutes' WHERE id = %s", (m[6],)
    )
    # m[7] stays pending
    set_row(db, m[8], status="queued")
    set_row(db, m[9], status="generating")

    other = seed.campaign(1, model="acme/unpriced")
    set_row(
        db, other.message_ids[0], status="sent", ai_ms=50, send_ms=5, ai_tokens_used=10, ai_prompt_tokens=5
    )
    db.execute(
        "UPDATE campaign_messages SET sent_at = now(), finished_at = now() WHERE id = %s",
        (other.message_ids[0],),
    )

    # main queue: one in flight, one visible (2 minutes old), one delayed
    db.execute("SELECT pgmq.send('campaign_messages', '{\"n\": 1}'::jsonb)")
    db.execute("SELECT * FROM pgmq.read('campaign_messages', 30, 1)")
    visible = db.execute("SELECT pgmq.send('campaign_messages', '{\"n\": 2}'::jsonb)").fetchone()
    assert visible is not None
    db.execute(
        "UPDATE pgmq.q_campaign_messages SET enqueued_at = now() - interval '120 seconds' WHERE msg_id = %s",
        (visible[0],),
    )
    db.execute("SELECT pgmq.send('campaign_messages', '{\"n\": 3}'::jsonb, 60)")
    for message_id, reason, error_class in (
        (m[4], "max_attempts", "timeout"),
        (m[5], "permanent", "provider_rejected"),
    ):
        letter = {
            "v": 1,
            "campaign_message_id": str(message_id),
            "run_id": str(main.run_id),
            "lead_id": str(main.lead_ids[0]),
            "reason": reason,
            "error_class": error_class,
            "attempts": 3,
        }
        db.execute("SELECT pgmq.send('campaign_messages_dlq', %s)", (Jsonb(letter),))
    return main, other


def view(db: psycopg.Connection[Any], name: str, run_id: uuid.UUID | None = None) -> list[dict[str, Any]]:
    cur = db.cursor(row_factory=dict_row)
    if run_id is None:
        return cur.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(name))).fetchall()
    statement = sql.SQL("SELECT * FROM {} WHERE run_id = %s").format(sql.Identifier(name))
    return cur.execute(statement, (run_id,)).fetchall()


def test_views_return_the_seeded_numbers(
    db: psycopg.Connection[Any], seeded: tuple[Campaign, Campaign]
) -> None:
    main, other = seeded

    queues = {q["queue_name"]: q for q in view(db, "campaignq_queue_overview")}
    q = queues["campaign_messages"]
    assert (q["depth"], q["visible"], q["in_flight"], q["delayed"], q["dead_letters"]) == (3, 1, 1, 1, 2)
    assert 119 <= q["oldest_age_s"] <= 130
    dlq = queues["campaign_messages_dlq"]
    assert (dlq["role"], dlq["depth"], dlq["visible"], dlq["dead_letters"]) == ("dead_letter", 2, 2, None)

    [run] = view(db, "campaignq_run_progress", main.run_id)
    counts = {
        k: run[k] for k in ("messages", "pending", "queued", "in_progress", "sent", "failed", "skipped")
    }
    assert counts == {
        "messages": 10,
        "pending": 1,
        "queued": 1,
        "in_progress": 1,
        "sent": 4,
        "failed": 2,
        "skipped": 1,
    }
    assert float(run["done_pct"]) == 70.0
    assert (run["retries"], run["retried_messages"], run["deferrals"]) == (8, 4, 1)
    assert (run["tokens"], run["prompt_tokens"], run["completion_tokens"]) == (400, 240, 160)
    assert float(run["cost_usd"]) == pytest.approx(0.003)
    assert (run["unpriced_messages"], run["unpriced_prompt_tokens"], run["unpriced_completion_tokens"]) == (
        1,
        60,
        40,
    )
    assert (run["ai_ms_p50"], run["ai_ms_p95"], run["send_ms_p50"], run["send_ms_p95"]) == (200, 400, 20, 40)
    assert (run["split_ms_p50"], run["split_ms_p95"], run["sent_last_minute"]) == (None, None, 0)

    totals = {(w["workspace_id"], w["period"]): w for w in view(db, "campaignq_workspace_totals")}
    hour = totals[(main.workspace_id, "1h")]
    day = totals[(main.workspace_id, "24h")]
    assert (hour["finished"], hour["sent"], hour["failed"], hour["skipped"]) == (5, 4, 0, 1)
    assert (day["finished"], day["sent"], day["failed"], day["skipped"]) == (7, 4, 2, 1)
    assert (hour["retries"], hour["timeouts"], hour["rate_limited"]) == (2, 0, 1)
    assert (day["retries"], day["timeouts"], day["rate_limited"]) == (8, 6, 1)
    assert (hour["ai_ms_p50"], hour["ai_ms_p95"], hour["send_ms_p95"]) == (200, 400, 40)
    assert float(hour["sent_per_minute"]) == pytest.approx(0.07)
    assert totals[(other.workspace_id, "1h")]["sent"] == 1

    by_reason = {
        (d["reason"], d["error_class"]): d["dead_letters"]
        for d in view(db, "campaignq_dead_letters_by_reason")
    }
    assert by_reason == {("max_attempts", "timeout"): 1, ("permanent", "provider_rejected"): 1}
    by_run = {(d["run_id"], d["reason"]): d for d in view(db, "campaignq_dead_letters_by_run")}
    assert set(by_run) == {(main.run_id, "max_attempts"), (main.run_id, "permanent")}
    assert {d["workspace_id"] for d in by_run.values()} == {main.workspace_id}


def test_stats_json_keys_and_values_through_the_cli(
    database_url: str, seeded: tuple[Campaign, Campaign]
) -> None:
    main, other = seeded

    result = run_cli("stats", "--json", database_url=database_url)

    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert set(stats) == TOP_LEVEL and stats["schema_version"] == 1
    assert all(set(q) == QUEUE for q in stats["queues"])
    assert all(set(r) == RUN for r in stats["runs"]) and len(stats["runs"]) == 2
    assert all(set(w) == WORKSPACE for w in stats["workspaces"])
    assert all(set(d) == DEAD_LETTER for d in stats["dead_letters"])
    assert all(set(d) == DEAD_LETTER_RUN for d in stats["dead_letters_by_run"])

    queue = {q["queue_name"]: q for q in stats["queues"]}["campaign_messages"]
    assert (
        queue["depth"],
        queue["visible"],
        queue["in_flight"],
        queue["delayed"],
        queue["dead_letters"],
    ) == (
        3,
        1,
        1,
        1,
        2,
    )
    runs = {r["run_id"]: r for r in stats["runs"]}
    run = runs[str(main.run_id)]
    assert (run["sent"], run["failed"], run["skipped"], run["pending"], run["retries"], run["tokens"]) == (
        4,
        2,
        1,
        1,
        8,
        400,
    )
    # 3 stored costs of 0.001 + the 4th priced from the table: (60 * 0.15 + 40 * 0.60) / 1e6
    assert run["cost_usd"] == pytest.approx(0.003033)
    assert run["unpriced_messages"] == 0
    assert (run["ai_ms_p50"], run["ai_ms_p95"], run["done_pct"]) == (200, 400, 70.0)
    unpriced = runs[str(other.run_id)]
    assert (unpriced["cost_usd"], unpriced["unpriced_messages"]) == (0.0, 1)  # no price known: said so
    hour = {(w["workspace_id"], w["period"]): w for w in stats["workspaces"]}[(str(main.workspace_id), "1h")]
    assert (hour["sent"], hour["skipped"], hour["rate_limited"]) == (4, 1, 1)
    assert hour["cost_usd"] == pytest.approx(0.003033) and hour["unpriced_messages"] == 0
    assert {(d["reason"], d["dead_letters"]) for d in stats["dead_letters"]} == {
        ("max_attempts", 1),
        ("permanent", 1),
    }

    only = json.loads(
        run_cli("stats", "--json", "--run", str(other.run_id), database_url=database_url).stdout
    )
    assert [r["run_id"] for r in only["runs"]] == [str(other.run_id)]
    assert {w["workspace_id"] for w in only["workspaces"]} == {str(other.workspace_id)}
    assert only["dead_letters_by_run"] == []


def test_stats_table_and_watch(database_url: str, seeded: tuple[Campaign, Campaign]) -> None:
    main, _ = seeded

    table = run_cli("stats", database_url=database_url)

    assert table.returncode == 0, table.stderr
    for heading in ("Queues", "Runs: progress", "Runs: cost and stage latency", "Workspaces", "Dead letters"):
        assert heading in table.stdout
    assert str(main.run_id)[:8] in table.stdout and "max_attempts" in table.stdout

    watch = spawn_cli("stats", "--watch", "0.2", "--json", database_url=database_url)
    try:
        assert watch.stdout is not None
        documents = [json.loads(watch.stdout.readline()) for _ in range(2)]
    finally:
        watch.terminate()
        watch.communicate(timeout=10)
    assert [d["schema_version"] for d in documents] == [1, 1]
    assert documents[0]["generated_at"] < documents[1]["generated_at"]
