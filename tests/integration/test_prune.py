"""`campaignq prune`: archived messages older than the retention go, in batches; newer ones stay."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

from consumer.ops.prune import prune_archives
from tests.cli import run_cli


def archive(db: psycopg.Connection[Any], table: str, *, n: int, age: str) -> None:
    """Put `n` messages in an archive table as if PGMQ had archived them `age` ago."""
    statement = sql.SQL(
        "INSERT INTO pgmq.{} (msg_id, read_ct, enqueued_at, archived_at, vt, message) "
        "SELECT nextval('cq_prune_ids'), 1, now() - %(age)s::interval, now() - %(age)s::interval, "
        "now(), '{{}}' FROM generate_series(1, %(n)s)"
    ).format(sql.Identifier(table))
    db.execute(statement, {"age": age, "n": n})


def archived_ages(db: psycopg.Connection[Any]) -> dict[str, list[bool]]:
    """Per archive, one boolean per row: archived more than a day ago."""
    return {
        "main": [
            r[0]
            for r in db.execute("SELECT archived_at < now() - interval '1 day' FROM pgmq.a_campaign_messages")
        ],
        "dlq": [
            r[0]
            for r in db.execute(
                "SELECT archived_at < now() - interval '1 day' FROM pgmq.a_campaign_messages_dlq"
            )
        ],
    }


@pytest.fixture
def archives(db: psycopg.Connection[Any]) -> None:
    db.execute("CREATE SEQUENCE cq_prune_ids")
    archive(db, "a_campaign_messages", n=7, age="10 days")
    archive(db, "a_campaign_messages", n=3, age="1 hour")
    archive(db, "a_campaign_messages_dlq", n=2, age="30 days")
    archive(db, "a_campaign_messages_dlq", n=1, age="2 minutes")


def test_prune_deletes_only_what_is_older_than_the_retention_in_batches(
    db: psycopg.Connection[Any], database_url: str, archives: None
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        results = prune_archives(conn, older_than_s=7 * 86400, batch_size=2)

    assert {r.queue_name: r.deleted for r in results} == {"campaign_messages": 7, "campaign_messages_dlq": 2}
    assert archived_ages(db) == {"main": [False] * 3, "dlq": [False]}


def test_prune_cli_dry_run_then_real_then_nothing_left(
    db: psycopg.Connection[Any], database_url: str, archives: None
) -> None:
    dry = run_cli("prune", "--older-than", "7d", "--dry-run", database_url=database_url)

    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert lines[0].startswith("pgmq.a_campaign_messages: would delete 7 archived before ")
    assert lines[1].startswith("pgmq.a_campaign_messages_dlq: would delete 2 archived before ")
    assert len(archived_ages(db)["main"]) == 10  # nothing deleted

    real = run_cli("prune", "--older-than", "7d", database_url=database_url)

    assert [line.split(" archived")[0] for line in real.stdout.splitlines()] == [
        "pgmq.a_campaign_messages: deleted 7",
        "pgmq.a_campaign_messages_dlq: deleted 2",
    ]
    assert archived_ages(db) == {"main": [False] * 3, "dlq": [False]}
    with psycopg.connect(database_url, autocommit=True) as conn:
        again = prune_archives(conn, older_than_s=7 * 86400)
    assert [r.deleted for r in again] == [0, 0]


def test_prune_requires_a_retention(capsys: pytest.CaptureFixture[str]) -> None:
    from consumer.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["prune"])
    assert exited.value.code == 2
    assert "the following arguments are required: --older-than" in capsys.readouterr().err
