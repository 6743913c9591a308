"""`campaignq limits`: show and set the shared budgets and workspace weights."""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg

from tests.cli import run_cli


def test_limits_show_set_and_unset(db: psycopg.Connection[Any], database_url: str) -> None:
    empty = run_cli("limits", "--json", database_url=database_url)
    assert empty.returncode == 0, empty.stderr
    assert json.loads(empty.stdout) == {"rate_limits": [], "holders": [], "workspace_weights": []}

    result = run_cli("limits", "set", "ai", "6000", "--json", database_url=database_url)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["changed"] == {"action": "set", "name": "ai", "requests_per_minute": 6000}
    assert [(b["name"], b["requests_per_minute"], b["holders"]) for b in document["rate_limits"]] == [
        ("ai", 6000, 0)
    ]
    assert db.execute("SELECT requests_per_minute FROM rate_limits WHERE name = 'ai'").fetchone() == (6000,)

    text = run_cli("limits", database_url=database_url)
    assert text.returncode == 0 and "ai: 6000 rpm" in text.stdout

    assert run_cli("limits", "unset", "ai", database_url=database_url).returncode == 0
    assert db.execute("SELECT count(*) FROM rate_limits").fetchone() == (0,)


def test_limits_weights(db: psycopg.Connection[Any], database_url: str) -> None:
    workspace = uuid.uuid4()
    result = run_cli("limits", "weight", str(workspace), "3", "--json", database_url=database_url)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["workspace_weights"][0]["weight"] == 3
    assert run_cli("limits", "unweight", str(workspace), database_url=database_url).returncode == 0
    assert db.execute("SELECT count(*) FROM workspace_weights").fetchone() == (0,)


def test_limits_bad_input_is_one_line_and_non_zero(database_url: str) -> None:
    for args in (
        ["set", "ai", "0"],
        ["set", "Bad Name", "5"],
        ["weight", str(uuid.uuid4()), "5000"],
        ["unset", "ai"],
    ):
        result = run_cli("limits", *args, database_url=database_url)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        assert result.stderr.strip().count("\n") <= 1 or "usage:" in result.stderr


def test_stats_shows_budgets_holders_and_fair_share(db: psycopg.Connection[Any], database_url: str) -> None:
    db.execute("INSERT INTO rate_limits (name, requests_per_minute) VALUES ('ai', 600)")
    db.execute(
        "INSERT INTO rate_limit_slices (name, holder, host, pid, cap_rpm, wanted_rpm, granted_rpm, used_rpm, "
        "expires_at) VALUES ('ai', 'h:1:x', 'h', 1, 600, 600, 600, 540, now() + interval '1 hour')"
    )
    result = run_cli("stats", "--json", database_url=database_url)
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert [(b["name"], b["holders"], b["used_pct"]) for b in stats["budgets"]] == [("ai", 1, 90.0)]
    assert [h["holder"] for h in stats["budget_holders"]] == ["h:1:x"]
    assert stats["fair_share"] == []
    table = run_cli("stats", database_url=database_url)
    assert table.returncode == 0, table.stderr
    assert "Shared budgets" in table.stdout and "h:1:x" in table.stdout
