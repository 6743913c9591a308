"""`campaignq migrate --create-roles`: a least-privilege `campaignq_worker` the consumer runs as.

The consumer runs once as that role through every kind of outcome (sent with split, a retry,
a dead letter, a run paused and one cancelled); then the role is shown unable to do anything
a worker has no business doing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from consumer.devtools.seeding import Seeder
from consumer.devtools.simulator import Faults, Simulator
from consumer.ops.migrate import READER_ROLE, WORKER_ROLE
from tests.cli import run_cli
from tests.harness import consumer_settings, running_worker, wait_until
from tests.integration.test_consumer import dead_letters, produce, queue_count, terminal


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(faults=Faults(seed=9)) as simulator:
        yield simulator


@pytest.fixture
def worker_url(database_url: str) -> str:
    result = run_cli("migrate", "--create-roles", database_url=database_url)
    assert result.returncode == 0, result.stderr
    again = run_cli("migrate", "--create-roles", database_url=database_url)  # idempotent
    assert again.returncode == 0, again.stderr
    return make_conninfo(database_url, user=WORKER_ROLE, password="")


def test_the_worker_role_is_not_privileged(db: psycopg.Connection[Any], worker_url: str) -> None:
    row = db.execute(
        "SELECT rolsuper, rolcreatedb, rolcreaterole, rolbypassrls, rolinherit, rolcanlogin "
        "FROM pg_roles WHERE rolname = %s",
        (WORKER_ROLE,),
    ).fetchone()
    assert row == (False, False, False, False, True, True)
    members = db.execute(
        "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member WHERE r.rolname = %s",
        (WORKER_ROLE,),
    ).fetchone()
    assert members == (0,)  # member of no other role: it has only its own grants


async def test_the_consumer_runs_as_the_worker_role_through_every_outcome(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, worker_url: str
) -> None:
    split = seed.campaign(3, split=True, max_parts=3)
    bad = seed.campaign(1, phones=["not a phone"])
    retried = seed.campaign(1, phones=["+5511987651111"])
    paused = seed.campaign(1, phones=["+5511987652222"])
    cancelled = seed.campaign(1, phones=["+5511987653333"])
    produce(db)
    db.execute("UPDATE campaign_runs SET status = 'paused' WHERE id = %s", (paused.run_id,))
    db.execute("UPDATE campaign_runs SET status = 'cancelled' WHERE id = %s", (cancelled.run_id,))
    sim.fail_next_send("500", number="+5511987651111")

    settings = consumer_settings(worker_url, sim, metrics_port=None)
    async with running_worker(settings) as running:
        await wait_until(
            lambda: all(terminal(seed, c) for c in (split, bad, retried, cancelled)) and queue_count(db) == 0,
            what="every outcome recorded by the worker role",
        )
        assert not running.task.done()
        with psycopg.connect(worker_url) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (WORKER_ROLE,)

    assert seed.statuses(split.run_id) == {"sent": 3}
    assert seed.statuses(bad.run_id) == {"failed": 1}
    assert seed.statuses(retried.run_id) == {"sent": 1}
    assert seed.statuses(paused.run_id) == {"pending": 1}
    assert seed.statuses(cancelled.run_id) == {"skipped": 1}
    assert [letter["reason"] for letter in dead_letters(db)] == ["permanent"]
    runs = db.execute("SELECT status FROM campaign_runs WHERE id = %s", (split.run_id,)).fetchone()
    assert runs == ("completed",)


FORBIDDEN = [
    "DROP TABLE campaign_messages",
    "TRUNCATE campaign_messages",
    "TRUNCATE leads",
    "DELETE FROM campaign_messages",
    "DELETE FROM leads",
    "DELETE FROM campaign_runs",
    "UPDATE leads SET phone = '+1'",
    "UPDATE campaign_configs SET system_prompt = 'x'",
    "UPDATE campaign_runs SET config_id = config_id",
    "INSERT INTO campaign_messages (run_id, lead_id) SELECT run_id, lead_id FROM campaign_messages LIMIT 1",
    "INSERT INTO leads (workspace_id) VALUES (gen_random_uuid())",
    "CREATE TABLE stolen (x int)",
    "CREATE FUNCTION evil() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "ALTER TABLE campaign_messages ADD COLUMN x int",
    "DROP SCHEMA pgmq CASCADE",
    "SELECT pgmq.drop_queue('campaign_messages')",
    "DELETE FROM pgmq.a_campaign_messages",
    "DELETE FROM pgmq.q_campaign_messages_dlq",
    "SELECT * FROM campaignq_schema_migrations",
    "SELECT * FROM campaignq_console_sessions",
    "CREATE ROLE sneaky",
]


def test_the_worker_role_cannot_touch_what_it_does_not_need(
    db: psycopg.Connection[Any], seed: Seeder, worker_url: str
) -> None:
    seed.campaign(1)
    allowed = []
    with psycopg.connect(worker_url, autocommit=True) as conn:
        for statement in FORBIDDEN:
            try:
                conn.execute(sql.SQL(statement))
            except psycopg.errors.InsufficientPrivilege:
                continue
            allowed.append(statement)
    assert allowed == []
    assert db.execute("SELECT count(*) FROM campaign_messages").fetchone() == (1,)
    assert db.execute("SELECT count(*) FROM leads").fetchone() == (1,)


READER_FORBIDDEN = [
    *FORBIDDEN,
    "UPDATE campaign_messages SET generated_message = 'x'",
    "UPDATE campaign_messages SET lead_id = lead_id",
    "UPDATE campaign_runs SET status = 'cancelled'",
    "INSERT INTO rate_limit_cooldowns SELECT * FROM rate_limit_cooldowns LIMIT 0",
    "DELETE FROM pgmq.q_campaign_messages",
    "SELECT pgmq.send('campaign_messages', '{}'::jsonb)",
    "SELECT campaignq_replay_dead_letters()",
    "SET default_transaction_read_only = off; UPDATE campaign_runs SET status = 'cancelled'",
]


def test_the_reader_role_reads_and_cannot_write_anything(
    db: psycopg.Connection[Any], seed: Seeder, worker_url: str
) -> None:
    """Issue 22: a read-only `campaignq_reader` for dashboards and `stats` (made by the same
    `migrate --create-roles`); every write a worker or an intruder might try is refused."""
    campaign = seed.campaign(2)
    produce(db)
    reader_url = make_conninfo(worker_url, user=READER_ROLE)
    row = db.execute(
        "SELECT rolsuper, rolcreatedb, rolcreaterole, rolbypassrls, rolcanlogin"
        " FROM pg_roles WHERE rolname = %s",
        (READER_ROLE,),
    ).fetchone()
    assert row == (False, False, False, False, True)
    with psycopg.connect(reader_url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM campaign_messages").fetchone() == (2,)
        assert conn.execute("SELECT count(*) FROM pgmq.q_campaign_messages").fetchone() == (2,)
        assert conn.execute("SELECT count(*) FROM leads").fetchone() == (2,)
        allowed = []
        for statement in READER_FORBIDDEN:
            try:
                conn.execute(sql.SQL(statement))
            except (psycopg.errors.InsufficientPrivilege, psycopg.errors.ReadOnlySqlTransaction):
                continue
            except psycopg.errors.UndefinedFunction:
                continue  # a signature that needs arguments: refused before any privilege check
            allowed.append(statement)
    assert allowed == []
    assert seed.statuses(campaign.run_id) == {"queued": 2}
    stats = run_cli("stats", "--json", database_url=reader_url)
    assert stats.returncode == 0, stats.stderr
