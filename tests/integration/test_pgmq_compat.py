"""PGMQ as Supabase projects have it: any version from 1.4.4, installed before us, shared.

Under `.ci/run`'s PGMQ matrix (tests/pg.py) these run at 1.4.4, at 1.5.1 and after
1.4.4 → 1.5.1, as a non-superuser owner; without it, on the bundled SQL. Each builds the
state it needs itself, so none skips.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from consumer import sql as sqlfiles
from consumer.devtools.seeding import Seeder
from consumer.ops.migrate import SUPERSEDED_CHECKSUMS, migrate
from tests import pg
from tests.cli import run_cli
from tests.integration.test_consumer import produce

OLD_0004 = Path(__file__).resolve().parent / "data" / "0004_consumer_outcomes.v1.sql"


def _install_pgmq_like_another_app(url: str) -> None:
    """PGMQ (server default extension, else the bundled SQL) and another app's queue + message."""
    with psycopg.connect(url, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'pgmq'").fetchone():
            conn.execute("CREATE EXTENSION pgmq")
        else:
            from pgmq.install import get_embedded_install_sql

            with conn.transaction():
                conn.execute(sqlfiles.cast_literal(get_embedded_install_sql()))
        conn.execute("SELECT pgmq.create(%s)", (pg.FOREIGN_QUEUE,))
        conn.execute("SELECT pgmq.send(%s, %s::jsonb)", (pg.FOREIGN_QUEUE, '{"other_app": "keep me"}'))
        conn.execute(
            "CREATE FUNCTION pgmq.other_app_hello() RETURNS text LANGUAGE sql AS $$ SELECT 'hello' $$"
        )


def _foreign_state(conn: psycopg.Connection[Any]) -> tuple[Any, ...]:
    q = conn.execute(
        sql.SQL("SELECT msg_id, read_ct, message FROM pgmq.{} ORDER BY msg_id").format(
            sql.Identifier(f"q_{pg.FOREIGN_QUEUE}")
        )
    ).fetchall()
    acl = conn.execute(
        "SELECT relname, relacl::text, relowner::regrole::text FROM pg_class "
        "WHERE relnamespace = 'pgmq'::regnamespace AND relname LIKE %s ORDER BY 1",
        (f"%{pg.FOREIGN_QUEUE}%",),
    ).fetchall()
    fn = conn.execute(
        "SELECT md5(prosrc), proacl::text FROM pg_proc WHERE proname = 'other_app_hello'"
    ).fetchall()
    return (q, acl, fn)


def _public_tables(conn: psycopg.Connection[Any]) -> list[str]:
    return [
        r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
    ]


def test_another_apps_queue_and_functions_survive_migrate_roles_and_consumers(
    empty_database_url: str, tmp_path: Path
) -> None:
    _install_pgmq_like_another_app(empty_database_url)
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        before = _foreign_state(conn)
        assert len(before[0]) == 1

        report = migrate(empty_database_url)
        assert report.pgmq_installed_by is None  # found and used, never reinstalled
        result = run_cli("migrate", "--create-roles", database_url=empty_database_url)
        assert result.returncode == 0, result.stderr
        seed = Seeder(conn)
        seed.campaign(2)
        produce(conn)
        acked = conn.execute(
            "SELECT campaignq_archive_leased(msg_id, read_ct) FROM pgmq.read('campaign_messages', 30, 10)"
        ).fetchall()
        assert acked == [(True,), (True,)]
        assert conn.execute("SELECT count(*) FROM pgmq.a_campaign_messages").fetchone() == (2,)

        assert _foreign_state(conn) == before
        assert conn.execute("SELECT pgmq.other_app_hello()").fetchone() == ("hello",)


def test_a_lost_lease_cannot_archive_through_pgmq_archive(db: psycopg.Connection[Any], seed: Seeder) -> None:
    seed.campaign(1)
    produce(db)
    row = db.execute("SELECT msg_id, read_ct FROM pgmq.read('campaign_messages', 0, 1)").fetchone()
    assert row is not None
    msg_id, read_ct = row
    again = db.execute("SELECT read_ct FROM pgmq.read('campaign_messages', 30, 1)").fetchone()  # next holder
    assert again == (read_ct + 1,)

    assert db.execute("SELECT campaignq_archive_leased(%s, %s)", (msg_id, read_ct)).fetchone() == (False,)
    assert db.execute("SELECT campaignq_archive_leased(%s, %s)", (msg_id, read_ct + 1)).fetchone() == (True,)
    archived = db.execute(
        "SELECT read_ct, message ? 'campaign_message_id' FROM pgmq.a_campaign_messages"
    ).fetchall()
    assert archived == [(read_ct + 1, True)]


def test_a_database_migrated_with_the_old_0004_is_brought_up_to_date(database_url: str) -> None:
    old_text = OLD_0004.read_text(encoding="utf-8")
    old_checksum = hashlib.sha256(old_text.encode()).hexdigest()
    assert old_checksum in SUPERSEDED_CHECKSUMS[4]
    with psycopg.connect(database_url, autocommit=True) as conn:
        # What such a database holds: the old checksum and the old function (its body only
        # compiles on PGMQ >= 1.10, so it is stored without checking, as a 1.13 install had it).
        conn.execute(
            "UPDATE campaignq_schema_migrations SET checksum = %s WHERE version = 4", (old_checksum,)
        )
        conn.execute("SET check_function_bodies = off")
        start = old_text.index("CREATE OR REPLACE FUNCTION campaignq_archive_leased")
        conn.execute(sqlfiles.cast_literal(old_text[start : old_text.index("$$;", start) + 3]))

    report = migrate(database_url)

    assert report.reapplied == ["0004_consumer_outcomes"]
    assert report.applied == []
    current = next(m for m in sqlfiles.migrations() if m.version == 4)
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT checksum FROM campaignq_schema_migrations WHERE version = 4").fetchone()
        assert row == (current.checksum,)
        seed = Seeder(conn)
        seed.campaign(1)
        produce(conn)
        acked = conn.execute(
            "SELECT campaignq_archive_leased(msg_id, read_ct) FROM pgmq.read('campaign_messages', 30, 1)"
        ).fetchall()
        assert acked == [(True,)]
    assert migrate(database_url).reapplied == []


def test_a_bundled_install_records_its_version_where_the_next_migrate_reads_it(
    empty_database_url: str,
) -> None:
    from consumer.ops.migrate import _ensure_pgmq, _inspect_pgmq

    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        assert _ensure_pgmq(conn, "bundled-sql") == "bundled-sql"
        found = _inspect_pgmq(conn)
    from pgmq.install import get_embedded_sql_version

    assert found.extension_version is None and found.missing_functions == ()
    assert found.bundled_version == get_embedded_sql_version()
    assert migrate(empty_database_url).pgmq_installed_by is None


def test_a_half_migrated_database_is_completed(empty_database_url: str) -> None:
    """What the old runner left on PGMQ 1.4.4: 0001-0003 applied, 0004 rolled back."""
    first_three = [m for m in sqlfiles.migrations() if m.version <= 3]
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        _install_pgmq_like_another_app(empty_database_url)
        conn.execute(
            "CREATE TABLE campaignq_schema_migrations (version integer PRIMARY KEY, name text NOT NULL, "
            "checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for m in first_three:
            conn.execute(m.sql)
            conn.execute(
                "INSERT INTO campaignq_schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                (m.version, m.name, m.checksum),
            )

    result = run_cli("migrate", database_url=empty_database_url)

    assert result.returncode == 0, result.stderr
    assert "0004_consumer_outcomes" in result.stdout
    with psycopg.connect(empty_database_url) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM campaignq_schema_migrations ORDER BY 1")]
    assert versions == [m.version for m in sqlfiles.migrations()]


def test_a_pgmq_older_than_1_4_4_stops_migrate_before_anything_changes(empty_database_url: str) -> None:
    # A hand-made PGMQ that predates the API we call (no pgmq.archive, no pgmq.read).
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA pgmq")
        conn.execute("CREATE FUNCTION pgmq.create(queue_name text) RETURNS void LANGUAGE sql AS $$ SELECT $$")
        before = _public_tables(conn)

    result = run_cli("migrate", database_url=empty_database_url)

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "lacks pgmq.read" in lines[0] and "1.4.4 or newer" in lines[0]
    assert "Traceback" not in result.stderr
    with psycopg.connect(empty_database_url) as conn:
        assert _public_tables(conn) == before == []


def test_a_migration_that_fails_is_one_line_and_rolled_back(empty_database_url: str) -> None:
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE leads (id integer)")  # someone else's table in the way of 0001

    result = run_cli("migrate", database_url=empty_database_url)

    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("campaignq: error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert errors[0].endswith(
        'migration 0001_schema failed and was rolled back: relation "leads" already exists'
    )
    with psycopg.connect(empty_database_url) as conn:
        assert _public_tables(conn) == ["campaignq_schema_migrations", "leads"]
        assert conn.execute("SELECT count(*) FROM campaignq_schema_migrations").fetchone() == (0,)


def test_migrate_as_a_role_that_does_not_own_the_database_is_one_line(
    pg_admin_url: str, database_url: str
) -> None:
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'cq_stranger'").fetchone():
            with contextlib.suppress(psycopg.errors.DuplicateObject):
                conn.execute("CREATE ROLE cq_stranger LOGIN")

    result = run_cli("migrate", database_url=psycopg.conninfo.make_conninfo(database_url, user="cq_stranger"))

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "migrate lacks a privilege" in lines[0], result.stderr


@pytest.mark.parametrize(
    ("env", "port"),
    [({"CAMPAIGNQ_DB_POOLER": "transaction"}, None), ({}, "6543")],
)
def test_migrate_refuses_a_transaction_pooler_in_one_line(
    empty_database_url: str, env: dict[str, str], port: str | None
) -> None:
    url = psycopg.conninfo.make_conninfo(empty_database_url, port=port) if port else empty_database_url
    result = run_cli("migrate", database_url=url, env=env)

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs a direct connection" in lines[0], result.stderr
    with psycopg.connect(empty_database_url) as conn:
        assert _public_tables(conn) == []
        assert conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'pgmq'").fetchone() is None
