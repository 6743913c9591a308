from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from consumer.devtools.seeding import Seeder
from consumer.devtools.simulator import Simulator
from tests import pg
from tests.openrouter_contract import chat_request_schema

# Issue 21: every chat-completions body any test sends to a simulator is checked against
# OpenRouter's own request schema (tests/contract/openrouter/); an invalid one gets 400.
Simulator.request_contract = chat_request_schema()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect (visibly, in the summary's "deselected" count) the PgBouncer tests when no
    PgBouncer runs: `.ci/run` starts one and sets CAMPAIGNQ_TEST_PGBOUNCER_PORT."""
    if pg.pgbouncer_port():
        return
    deselected = [item for item in items if item.get_closest_marker("pgbouncer")]
    if deselected:
        items[:] = [item for item in items if not item.get_closest_marker("pgbouncer")]
        config.hook.pytest_deselected(items=deselected)


@pytest.fixture(scope="session")
def pg_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with pg.admin_url(Path(tmp_path_factory.mktemp("pg"))) as url:
        yield url


@pytest.fixture(scope="session")
def template_db(pg_admin_url: str) -> Iterator[str]:
    name = pg.create_template(pg_admin_url)
    yield name
    pg.drop_database(pg_admin_url, name)


@pytest.fixture
def database_url(pg_admin_url: str, template_db: str) -> Iterator[str]:
    """A fresh, migrated database of its own for this test."""
    name = pg.clone_template(pg_admin_url, template_db)
    yield pg.as_app_role(pg.with_dbname(pg_admin_url, name))
    pg.drop_database(pg_admin_url, name)


@pytest.fixture
def empty_database_url(pg_admin_url: str) -> Iterator[str]:
    """A database with nothing in it (not even PGMQ); owned by the app role under the matrix."""
    import uuid

    name = f"cq_empty_{uuid.uuid4().hex[:12]}"
    pg.create_app_database(pg_admin_url, name)
    yield pg.as_app_role(pg.with_dbname(pg_admin_url, name))
    pg.drop_database(pg_admin_url, name)


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def seed(db: psycopg.Connection[tuple[object, ...]]) -> Seeder:
    return Seeder(db)
