"""Plan shapes of the operator reads 0020 made independent of history (issue 25).

The figures live in bench/out/scale.json (`python -m bench scale`); these tests only pin the
plans that make them, at a modest size, with the planner's settings untouched: a read that
should walk an index bound must not fall back to a sequential scan of campaign_messages, and
the producer's functions must not JIT-compile.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from bench.scale import Sizes, seed
from consumer.sql import query

SMALL = Sizes(
    workspaces=4,
    leads=2_000,
    running_runs=20,
    pending=5_000,
    history_runs=30,
    history=30_000,
    history_days=30,  # the last day (and today) is a few percent of the history
    archived=0,
    dead=300,
)


@pytest.fixture
def seeded(database_url: str, db: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    seed(database_url, SMALL)
    return db


def plan(db: psycopg.Connection[Any], statement: str, params: dict[str, Any] | None = None) -> str:
    return "\n".join(str(r[0]) for r in db.execute("EXPLAIN " + statement, params or {}))


@pytest.mark.parametrize(
    ("name", "params", "index"),
    [
        ("sample_workspace_ai_costs", {}, "campaign_messages_generated_day_idx"),
        ("stats_workspace_ai_costs", {"workspace_id": None}, "campaign_messages_generated_day_idx"),
        # PostgreSQL 15 probes the plain run index at this small size; 18 the covering one.
        ("sample_run_ai_costs", {}, "campaign_messages_run_ai_idx|campaign_messages_run_idx"),
        ("stats_workspaces", {"workspace_id": None}, "campaign_messages_finished_idx"),
        ("stats_workspace_unpriced", {"workspace_id": None}, "campaign_messages_unpriced_idx"),
        ("stats_inboxes", {"limit": 100}, "campaign_messages_opted_out_idx"),
    ],
)
def test_history_bound_reads_walk_their_index_not_the_table(
    seeded: psycopg.Connection[Any], name: str, params: dict[str, Any], index: str
) -> None:
    shape = plan(seeded, query(name), params)

    assert any(name in shape for name in index.split("|")), shape
    assert "Seq Scan on campaign_messages" not in shape, shape


def test_stats_runs_aggregates_only_the_runs_it_shows(seeded: psycopg.Connection[Any]) -> None:
    # The runs are picked from campaign_runs first (an InitPlan), then the view's per-run
    # aggregate runs once per picked run: never a scan over every unfinished run's messages.
    shape = plan(seeded, query("stats_runs"), {"run_id": None, "limit": 5})

    assert "InitPlan" in shape, shape
    assert "Seq Scan on campaign_messages" not in shape, shape
    rows = seeded.execute(query("stats_runs"), {"run_id": None, "limit": 5}).fetchall()
    assert len(rows) == 5


def test_producer_functions_never_jit(db: psycopg.Connection[Any]) -> None:
    settings = dict(
        db.execute(
            "SELECT p.oid::regprocedure::text, array_to_string(p.proconfig, ',') FROM pg_proc p "
            "WHERE p.proname IN ('enqueue_due_campaign_messages', 'campaignq_sweep_stale_pending')"
        ).fetchall()
    )

    # Other settings may stand beside it (0019's fixed search_path for the worker role).
    assert set(settings) == {
        "enqueue_due_campaign_messages(integer)",
        "campaignq_sweep_stale_pending(integer)",
    }
    assert all("jit=off" in (config or "").split(",") for config in settings.values()), settings
