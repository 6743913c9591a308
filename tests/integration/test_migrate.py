"""`campaignq migrate` on a real PostgreSQL: empty database, twice, concurrently, bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from consumer import sql as sqlfiles
from consumer.errors import ConfigurationError
from consumer.ops.migrate import migrate
from tests.cli import campaignq_env, run_cli, spawn_cli

# The team's shared checker when this checkout sits beside ../shared, else the vendored copy.
_SHARED_CHECK = Path(__file__).resolve().parents[3] / "shared" / "contract" / "check_schema.py"
CONTRACT_CHECK = (
    _SHARED_CHECK
    if _SHARED_CHECK.exists()
    else Path(__file__).resolve().parents[1] / "contract" / "check_schema.py"
)


def _applied_versions(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT version FROM campaignq_schema_migrations ORDER BY 1")]


def test_migrate_empty_database_creates_every_contract_object(empty_database_url: str) -> None:
    report = migrate(empty_database_url)

    assert report.pgmq_installed_by in {"extension", "bundled-sql"}
    assert len(report.applied) == len(sqlfiles.migrations())
    with psycopg.connect(empty_database_url) as conn:
        queues = {r[0] for r in conn.execute("SELECT queue_name FROM pgmq.list_queues()")}
        indexes = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")}
    assert {"campaign_messages", "campaign_messages_dlq"} <= queues
    assert {"campaign_messages_pending_due_idx", "campaign_runs_running_idx"} <= indexes


def test_migrated_database_passes_the_contract_checker(database_url: str) -> None:
    result = subprocess.run(
        [sys.executable, str(CONTRACT_CHECK)],
        env=campaignq_env(database_url),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "contract: OK" in result.stdout


def test_second_migrate_is_a_no_op(empty_database_url: str) -> None:
    migrate(empty_database_url)
    again = migrate(empty_database_url)

    assert again.applied == []
    assert again.pgmq_installed_by is None
    assert _applied_versions(empty_database_url) == [m.version for m in sqlfiles.migrations()]


def test_two_concurrent_migrates_do_not_collide(empty_database_url: str) -> None:
    first = spawn_cli("migrate", database_url=empty_database_url)
    second = spawn_cli("migrate", database_url=empty_database_url)
    outputs = [p.communicate(timeout=120) for p in (first, second)]

    assert [first.returncode, second.returncode] == [0, 0], outputs
    assert _applied_versions(empty_database_url) == [m.version for m in sqlfiles.migrations()]
    up_to_date = [out for out, _ in outputs if "none (up to date)" in out]
    assert len(up_to_date) == 1, outputs


def test_an_edited_released_migration_is_refused(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE campaignq_schema_migrations SET checksum = 'edited' WHERE version = 1")

    with pytest.raises(ConfigurationError, match="edited after it was applied"):
        migrate(database_url)


def test_migrate_against_unreachable_database_fails_with_one_clear_line() -> None:
    result = run_cli("migrate", database_url="postgresql://campaignq@127.0.0.1:1/nowhere", timeout=60)

    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("campaignq: error: cannot connect to the database")
    assert "Traceback" not in result.stderr


def test_schedule_producer_without_pg_cron_is_a_clear_error(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        has_cron = conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_cron'").fetchone()
    if has_cron:
        pytest.skip("this server has pg_cron; the cron test covers it")
    result = run_cli("migrate", "--schedule-producer", database_url=database_url)

    assert result.returncode == 2
    assert "pg_cron is not available" in result.stderr
    assert "Traceback" not in result.stderr
