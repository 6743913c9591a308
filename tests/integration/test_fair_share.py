"""Fair share in the SQL producer (db/migrations/0008) on a real PostgreSQL with PGMQ.

The queue is drained by deleting what the producer queued (no archive, so the measured
throughput stays 0 and every tick's room is exactly `campaignq.queue_min_depth`): the
counts below then follow from the configuration alone.
"""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter
from typing import Any

import psycopg
import pytest

from consumer import sql as sqlfiles
from consumer.core.fairshare import fair_split
from consumer.devtools.seeding import Campaign, Seeder
from tests.cli import run_cli
from tests.unit.test_fairshare import FAIR_SPLIT_TABLE

ROOM = 30


@pytest.mark.parametrize(("total", "weights", "demands", "rotation", "expected"), FAIR_SPLIT_TABLE)
def test_sql_fair_split_agrees_with_the_python_core(
    db: psycopg.Connection[Any],
    total: int,
    weights: list[int],
    demands: list[int],
    rotation: int,
    expected: list[int],
) -> None:
    row = db.execute(
        "SELECT campaignq_fair_split(%s, %s::numeric[], %s::integer[], %s)",
        (total, weights, demands, rotation),
    ).fetchone()
    assert row is not None
    assert list(row[0]) == expected == fair_split(total, weights, demands, rotation=rotation)


def _tick(db: psycopg.Connection[Any]) -> tuple[int, list[dict[str, Any]]]:
    """One producer call, then drain: returns (queued, payloads in queue order)."""
    queued = db.execute("SELECT enqueue_due_campaign_messages(5000)").fetchone()
    payloads = [r[0] for r in db.execute("SELECT message FROM pgmq.q_campaign_messages ORDER BY msg_id")]
    db.execute("DELETE FROM pgmq.q_campaign_messages")
    db.execute("UPDATE campaign_messages SET status = 'sent' WHERE status = 'queued'")
    return int(queued[0]) if queued else 0, payloads


def _by_run(payloads: list[dict[str, Any]]) -> Counter[str]:
    return Counter(p["run_id"] for p in payloads)


@pytest.fixture
def jit_db(db: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    db.execute(f"SET campaignq.queue_min_depth = {ROOM}")
    return db


def test_three_workspaces_biggest_first_share_each_tick_equally(
    jit_db: psycopg.Connection[Any], seed: Seeder
) -> None:
    big, mid, small = seed.campaign(1000), seed.campaign(100), seed.campaign(10)
    ticks = [_tick(jit_db) for _ in range(8)]

    first = _by_run(ticks[0][1])
    assert first == {str(big.run_id): 10, str(mid.run_id): 10, str(small.run_id): 10}
    # The small workspace is done after one tick; the two others split its part at once.
    assert _by_run(ticks[1][1]) == {str(big.run_id): 15, str(mid.run_id): 15}
    # mid (100) is done after 10 + 6 * 15 = 100, i.e. at the 7th tick; big gets everything after.
    done_mid = sum(_by_run(p)[str(mid.run_id)] for _, p in ticks[:7])
    assert done_mid == 100
    assert _by_run(ticks[7][1]) == {str(big.run_id): ROOM}
    assert all(queued == ROOM for queued, _ in ticks)


def test_a_tick_is_queued_interleaved_so_fifo_reads_serve_every_workspace(
    jit_db: psycopg.Connection[Any], seed: Seeder
) -> None:
    campaigns = [seed.campaign(n) for n in (100, 100, 5)]
    _, payloads = _tick(jit_db)
    # Round robin: one of each workspace per turn; the small one's part is queued first.
    assert [{p["run_id"] for p in payloads[i : i + 3]} for i in (0, 3, 6, 9, 12)] == [
        {str(c.run_id) for c in campaigns}
    ] * 5
    assert str(campaigns[2].run_id) not in {p["run_id"] for p in payloads[15:]}


def test_weights_change_the_share(jit_db: psycopg.Connection[Any], seed: Seeder) -> None:
    heavy, light = seed.campaign(500), seed.campaign(500)
    jit_db.execute(
        "INSERT INTO workspace_weights (workspace_id, weight) VALUES (%s, 2)", (heavy.workspace_id,)
    )
    counts: Counter[str] = Counter()
    for _ in range(5):
        counts += _by_run(_tick(jit_db)[1])
    assert counts == {str(heavy.run_id): 100, str(light.run_id): 50}


def test_ten_runs_of_one_workspace_buy_no_more_than_one_run(
    jit_db: psycopg.Connection[Any], seed: Seeder
) -> None:
    split = seed.campaign(0)
    runs = [seed.run(split.config_id) for _ in range(10)]
    leads = seed.leads(split.workspace_id, 100)
    for run_id in runs:
        seed.messages(run_id, leads)
    single = seed.campaign(1000)
    counts: Counter[str] = Counter()
    for _ in range(4):
        counts += _by_run(_tick(jit_db)[1])
    assert counts[str(single.run_id)] == 4 * ROOM // 2
    per_run = [counts[str(r)] for r in runs]
    # 15 a tick over 10 runs: 1 each plus 5 remainders that rotate; the workspace as a whole
    # gets exactly what the single run gets.
    assert sum(per_run) == 4 * ROOM // 2
    assert all(4 <= n <= 8 for n in per_run), per_run


def test_just_in_time_keeps_the_visible_depth_at_the_target(
    jit_db: psycopg.Connection[Any], seed: Seeder
) -> None:
    seed.campaign(100)
    calls = [jit_db.execute("SELECT enqueue_due_campaign_messages(5000)").fetchone() for _ in range(2)]
    assert calls == [(ROOM,), (0,)]
    jit_db.execute(
        "SELECT pgmq.read('campaign_messages', 60, 10)"
    )  # 10 taken by a consumer: 10 more may be queued
    assert jit_db.execute("SELECT enqueue_due_campaign_messages(5000)").fetchone() == (10,)


def test_depth_follows_measured_throughput(jit_db: psycopg.Connection[Any], seed: Seeder) -> None:
    seed.campaign(2000)
    jit_db.execute("SET campaignq.queue_horizon_s = 2")
    # 1000 archived in the last 10 s = 100 msg/s; 2 s of horizon = 200 > the 30 floor.
    jit_db.execute(
        "INSERT INTO pgmq.a_campaign_messages (msg_id, read_ct, enqueued_at, vt, message) "
        "SELECT g, 1, now(), now(), '{}'::jsonb FROM generate_series(1, 1000) g"
    )
    assert jit_db.execute("SELECT enqueue_due_campaign_messages(5000)").fetchone() == (200,)


def test_horizon_zero_turns_just_in_time_off(db: psycopg.Connection[Any], seed: Seeder) -> None:
    seed.campaign(700)
    db.execute("SET campaignq.queue_horizon_s = 0")
    assert db.execute("SELECT enqueue_due_campaign_messages(5000)").fetchone() == (700,)


def _plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    nodes = [plan]
    for child in plan.get("Plans", []):
        nodes.extend(_plan_nodes(child))
    return nodes


def _statement(pattern: str, campaign: Campaign, room: int) -> str:
    source = next(m.sql for m in sqlfiles.migrations() if m.name == "fair_share_budget")
    found = re.search(pattern, source, re.DOTALL)
    assert found is not None, "the producer's statement moved; update this test"
    return (
        found.group(0)
        .replace("v_now", "now()")
        .replace("v_cutoff", "(now() - interval '1 hour')")
        .replace("v_room", str(room))
        .replace("v_run_ids", f"ARRAY['{campaign.run_id}']::uuid[]")
        .replace("v_run_allocs", f"ARRAY[{room}]")
        .replace("v_run_ws", f"ARRAY['{campaign.workspace_id}']::uuid[]")
    )


def test_demand_and_selection_use_the_pending_index_and_no_seq_scan_on_200k_rows(
    db: psycopg.Connection[Any], seed: Seeder
) -> None:
    campaign = seed.campaign(0)
    others = [seed.run(campaign.config_id, status="completed") for _ in range(20)]
    db.execute(
        "INSERT INTO leads (workspace_id, name, phone, custom_fields) "
        "SELECT %s, 'Lead ' || g, '+5511' || (900000000 + g), '{}'::jsonb FROM generate_series(1, 200000) g",
        (campaign.workspace_id,),
    )
    db.execute(
        """INSERT INTO campaign_messages (run_id, lead_id, status, scheduled_at)
           SELECT CASE WHEN row_number() OVER () <= 3000 THEN %(run)s
                       ELSE (%(others)s::uuid[])[1 + (random() * 19)::int] END,
                  id, CASE WHEN row_number() OVER () <= 3000 THEN 'pending' ELSE 'sent' END,
                  now() - interval '5 minutes'
             FROM leads""",
        {"run": campaign.run_id, "others": others},
    )
    db.execute("ANALYZE")
    demand = _statement(r"SELECT r\.id AS run_id, c\.workspace_id.*?AND due\.n > 0", campaign, 5000)
    selection = (
        "WITH alloc AS (SELECT * FROM unnest("
        f"ARRAY['{campaign.run_id}']::uuid[], ARRAY[5000], ARRAY['{campaign.workspace_id}']::uuid[], "
        "ARRAY[1]) AS a(run_id, n, ws, w)) "
        + _statement(r"SELECT due\.id, alloc\.ws, alloc\.w.*?\) due", campaign, 5000)
    )
    for statement, rows in ((demand, 1), (selection, 3000)):
        with db.transaction():
            row = db.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + statement).fetchone()
        assert row is not None
        nodes = _plan_nodes(row[0][0]["Plan"])
        on_messages = [n for n in nodes if n.get("Relation Name") == "campaign_messages"]
        assert on_messages, json.dumps(row[0], indent=1)[:2000]
        assert all(n["Node Type"] != "Seq Scan" for n in on_messages)
        assert any(n.get("Index Name") == "campaign_messages_pending_due_idx" for n in nodes)
        assert nodes[0]["Actual Rows"] == rows


def test_each_row_queued_once_with_fairness_across_many_calls(
    db: psycopg.Connection[Any], seed: Seeder
) -> None:
    campaigns = [seed.campaign(n) for n in (300, 30, 3)]
    db.execute("SET campaignq.queue_horizon_s = 0")
    while db.execute("SELECT enqueue_due_campaign_messages(50)").fetchone() != (0,):
        pass
    ids = [r[0] for r in db.execute("SELECT message->>'campaign_message_id' FROM pgmq.q_campaign_messages")]
    assert len(ids) == len(set(ids)) == 333
    assert set(ids) == {str(m) for c in campaigns for m in c.message_ids}
    assert uuid.UUID(ids[0])


@pytest.mark.parametrize(("env", "expected"), [({"CAMPAIGNQ_QUEUE_MIN_DEPTH": "7"}, 7), ({}, 12)])
def test_produce_once_applies_the_just_in_time_target_from_its_settings(
    database_url: str, seed: Seeder, env: dict[str, str], expected: int
) -> None:
    """`campaignq produce` hands its settings to the SQL for its own transaction only (one
    statement, pooler-safe): a floor of 7 queues 7 of 12 due; the default floor (500) all."""
    seed.campaign(12)
    result = run_cli("produce", "--once", database_url=database_url, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(expected)
