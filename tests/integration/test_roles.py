"""`campaignq migrate --create-roles`: least-privilege roles, each logged in and proven.

- `campaignq_worker`: the consumer runs as it through every kind of outcome (sent with split,
  a retry, a dead letter, a run paused and one cancelled), and every other statement it
  issues (sampling, the shared budget, the producer) works; it holds no table grant, only
  EXECUTE on SECURITY DEFINER functions (0019), and each attack of issue 22 is refused.
- `campaignq_console`: the console app's reads and every action, `replay` and `limits`.
- `campaignq_reader`: `campaignq stats --json`, and no write of any kind.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from consumer.core.models import ClaimedRow
from consumer.devtools.seeding import Seeder
from consumer.devtools.simulator import Faults, Simulator
from consumer.ops.console.app import PAGES
from consumer.ops.migrate import CONSOLE_ROLE, READER_ROLE, WORKER_ROLE
from consumer.sql import query
from tests.cli import run_cli
from tests.console.helpers import (
    ADMIN_TOKEN,
    READ_TOKEN,
    WEBHOOK_KEY,
    console_process,
    dead_letter_bulk,
    dlq_count,
)
from tests.harness import consumer_settings, running_worker, wait_until
from tests.integration.test_consumer import dead_letters, produce, queue_count, terminal


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(faults=Faults(seed=9)) as simulator:
        yield simulator


ROLES = (WORKER_ROLE, CONSOLE_ROLE, READER_ROLE)


@pytest.fixture
def roles_created(database_url: str) -> str:
    """`migrate --create-roles` twice (idempotent); returns the owner's URL."""
    result = run_cli("migrate", "--create-roles", database_url=database_url)
    assert result.returncode == 0, result.stderr
    again = run_cli("migrate", "--create-roles", database_url=database_url)
    assert again.returncode == 0, again.stderr
    return database_url


@pytest.fixture
def worker_url(roles_created: str) -> str:
    return make_conninfo(roles_created, user=WORKER_ROLE, password="")


@pytest.fixture
def console_url(roles_created: str) -> str:
    return make_conninfo(roles_created, user=CONSOLE_ROLE, password="")


@pytest.fixture
def reader_url(roles_created: str) -> str:
    return make_conninfo(roles_created, user=READER_ROLE, password="")


@pytest.mark.parametrize("role", ROLES)
def test_the_roles_are_not_privileged(db: psycopg.Connection[Any], roles_created: str, role: str) -> None:
    row = db.execute(
        "SELECT rolsuper, rolcreatedb, rolcreaterole, rolbypassrls, rolinherit, rolcanlogin "
        "FROM pg_roles WHERE rolname = %s",
        (role,),
    ).fetchone()
    assert row == (False, False, False, False, True, True)
    members = db.execute(
        "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member WHERE r.rolname = %s",
        (role,),
    ).fetchone()
    assert members == (0,)  # member of no other role: it has only its own grants


def test_every_function_a_role_may_call_is_security_definer_with_a_fixed_search_path(
    db: psycopg.Connection[Any], roles_created: str
) -> None:
    """A later `CREATE OR REPLACE` of one of these that forgets `SECURITY DEFINER` or its
    `SET search_path` fails here (the role would lose its job, or a definer function could
    be steered through the caller's search_path); so does a definer function PUBLIC may call."""
    granted = db.execute(
        """
        SELECT DISTINCT g.rolname, p.oid::regprocedure::text, p.prosecdef,
               coalesce(array_to_string(p.proconfig, ',') LIKE '%%search_path=pg_catalog%%pg_temp%%', false)
          FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace,
               aclexplode(p.proacl) a JOIN pg_roles g ON g.oid = a.grantee
         WHERE n.nspname = 'public' AND g.rolname = ANY (%s) AND a.privilege_type = 'EXECUTE'
         ORDER BY 1, 2
        """,
        (list(ROLES),),
    ).fetchall()
    assert {role for role, *_ in granted} == {WORKER_ROLE, CONSOLE_ROLE}  # the reader calls none
    assert [row for row in granted if not (row[2] and row[3])] == []
    names = {fn.split("(")[0] for role, fn, *_ in granted if role == WORKER_ROLE}
    assert {"campaignq_read_and_claim", "campaignq_complete_sent_many", "campaignq_claim_batch"} <= names
    public_definers = db.execute(
        """
        SELECT p.oid::regprocedure::text
          FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = 'public' AND p.prosecdef AND has_function_privilege('public', p.oid, 'EXECUTE')
        """
    ).fetchall()
    assert public_definers == []


def test_the_worker_role_has_no_table_grant(db: psycopg.Connection[Any], roles_created: str) -> None:
    tables = db.execute(
        """
        SELECT c.relname, p.privilege_type
          FROM pg_class c, aclexplode(c.relacl) p JOIN pg_roles g ON g.oid = p.grantee
         WHERE g.rolname = %s AND c.relkind IN ('r', 'p')
        """,
        (WORKER_ROLE,),
    ).fetchall()
    columns = db.execute(
        "SELECT table_name, column_name, privilege_type FROM information_schema.column_privileges "
        "WHERE grantee = %s AND table_name NOT LIKE 'campaignq\\_%%'",
        (WORKER_ROLE,),
    ).fetchall()
    assert (tables, columns) == ([], [])


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


def test_the_worker_role_runs_every_other_statement_of_the_consumer(
    db: psycopg.Connection[Any], seed: Seeder, worker_url: str
) -> None:
    """What the consumer issues beside the outcomes (metrics sampling, the shared AI budget, the
    fallback claim) and the producer: each works as the worker; the shared cooldown is bounded."""
    campaign = seed.campaign(2)
    db.execute("INSERT INTO rate_limits (name, requests_per_minute) VALUES ('ai', 600)")
    with psycopg.connect(worker_url, autocommit=True) as conn:
        assert conn.execute(query("resume_within_budget")).fetchone() is not None
        assert conn.execute(query("enqueue_due"), {"limit": 10}).fetchone() == (2,)
        depths = {row[0]: row[1] for row in conn.execute(query("sample_queues")).fetchall()}
        assert depths == {"campaign_messages": 2, "campaign_messages_dlq": 0}
        conn.execute(query("sample_run_ai_costs")).fetchall()
        conn.execute(query("sample_workspace_ai_costs")).fetchall()
        lease = {
            "name": "ai", "holder": "h1", "host": "test", "pid": 1, "cap_rpm": 60, "wanted_rpm": 60,
            "used_rpm": 0, "requests": 0, "lease_s": 10.0,
        }  # fmt: skip
        assert conn.execute(query("lease_rate_limit"), lease).fetchone() is not None
        cooldown = {"name": "ai", "seconds": 86_400.0, "holder": "h1", "reason": "a day, please"}
        conn.execute(query("rate_limit_cooldown"), cooldown)
        conn.execute(query("release_rate_limit"), {"name": "ai", "holder": "h1"})
    rows = db.execute(
        "SELECT msg_id, read_ct, message FROM pgmq.read('campaign_messages', 30, 10)"
    ).fetchall()
    params = {
        "msg_ids": [r[0] for r in rows],
        "read_cts": [r[1] for r in rows],
        "message_ids": [r[2]["campaign_message_id"] for r in rows],
        "run_ids": [r[2]["run_id"] for r in rows],
        "lead_ids": [r[2]["lead_id"] for r in rows],
        "cached_config_ids": [],
    }
    with psycopg.connect(worker_url, autocommit=True) as conn, conn.cursor(row_factory=dict_row) as cur:
        claimed = [ClaimedRow.from_row(row) for row in cur.execute(query("claim_batch"), params).fetchall()]
    assert [(row.claimed, row.previous_status) for row in claimed] == [(True, "queued")] * 2
    assert seed.statuses(campaign.run_id) == {"generating": 2}
    left = db.execute("SELECT until - now() FROM rate_limit_cooldowns WHERE name = 'ai'").fetchone()
    assert left is not None and left[0].total_seconds() <= 600
    assert db.execute("SELECT count(*) FROM rate_limit_slices").fetchone() == (0,)


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
    # issue 22: what the worker could still do on the table grants it had before 0019.
    "UPDATE campaign_messages SET generated_message = 'x'",
    "UPDATE campaign_messages SET parts = '[\"x\"]'",
    "UPDATE campaign_messages SET lead_id = lead_id",
    "UPDATE campaign_messages SET run_id = run_id",
    "UPDATE campaign_messages SET status = 'sent'",
    "UPDATE campaign_runs SET status = 'cancelled'",
    "INSERT INTO rate_limit_cooldowns (name, until) VALUES ('ai', now() + interval '1 day')",
    "DELETE FROM pgmq.q_campaign_messages",
    "SELECT * FROM leads",
    "SELECT generated_message FROM campaign_messages",
    "SELECT pgmq.delete('campaign_messages', 1::bigint)",
    "SELECT pgmq.send('campaign_messages', '{}'::jsonb)",
    "DELETE FROM rate_limit_slices",
    "SELECT campaignq_rate_limit_cooldown('ai', 86400, 'x', 'a day')",
    "SELECT * FROM campaignq_replay_dead_letters(p_limit => 1)",
    "SELECT * FROM campaignq_console_set_run_status(gen_random_uuid(), 'cancelled', ARRAY['running'])",
    "SELECT campaignq_revoke_role('campaignq_worker')",
    "SELECT * FROM pgmq.read('campaign_messages', 30, 10)",
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


async def test_campaignq_serve_works_as_the_console_role(
    db: psycopg.Connection[Any], seed: Seeder, console_url: str
) -> None:
    """Every page's read, every action and both webhooks of a real `campaignq serve`, as
    campaignq_console."""
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    read = {"Authorization": f"Bearer {READ_TOKEN}"}
    campaign = seed.campaign(4, instance="inst-r", phones=[f"+55 11 90000-000{i}" for i in range(4)])
    dead_letter_bulk(
        db, campaign, message_ids=campaign.message_ids[:2], reason="permanent", error_class="bad"
    )
    dead_letter_bulk(db, campaign, message_ids=campaign.message_ids[2:3], reason="max_attempts")
    with console_process(console_url, CAMPAIGNQ_WEBHOOK_SECRET=WEBHOOK_KEY) as base:
        async with aiohttp.ClientSession(base) as client:

            async def ok(method: str, path: str, **kwargs: Any) -> Any:
                async with client.request(method, path, **kwargs) as response:
                    assert response.status == 200, (path, response.status, await response.text())
                    return await response.json() if path.startswith(("/api", "/webhooks")) else None

            assert (await ok("GET", "/api/stats", headers=read))["schema_version"]
            snapshot = await ok("GET", "/api/snapshot", headers=read)
            assert snapshot["ok"], snapshot
            assert (await ok("GET", "/api/dead-letters", headers=read))["matching"] == 3
            for page in PAGES:
                await ok("GET", page, headers=read)
            assert (await ok("POST", "/api/replay", json={"dry_run": True}, headers=admin))["examined"] == 3
            by_class = await ok("POST", "/api/replay", json={"error_class": "bad"}, headers=admin)
            assert by_class["by_action"] == {"replayed": 2}
            await ok("POST", "/api/replay", json={"reason": "max_attempts"}, headers=admin)
            assert dlq_count(db) == 0
            run = f"/api/runs/{campaign.run_id}"
            for action in ("pause", "resume", "cancel"):
                await ok("POST", f"{run}/{action}", headers=admin)
            async with client.post(f"{run}/resume", headers=admin) as refused:
                assert refused.status == 409
            weight = f"/api/workspaces/{campaign.workspace_id}/weight"
            await ok("POST", weight, json={"weight": 3}, headers=admin)
            await ok("POST", "/api/rate-limits/ai", json={"requests_per_minute": 120}, headers=admin)
            await ok("POST", "/api/rate-limits/ai", json={"requests_per_minute": None}, headers=admin)
            inbox = f"/api/inboxes/{campaign.inbox_id}"
            await ok("POST", f"{inbox}/pause", json={"reason": "ban risk"}, headers=admin)
            await ok("POST", f"{inbox}/resume", headers=admin)
            hook = {"apikey": WEBHOOK_KEY}
            update = {"event": "connection.update", "instance": "inst-r", "data": {"state": "close"}}
            assert (await ok("POST", "/webhooks/evolution", json=update, headers=hook))["inboxes"] == 1
            stop = {
                "event": "MESSAGES_UPSERT",
                "instance": "inst-r",
                "apikey": WEBHOOK_KEY,
                "data": {"key": {"remoteJid": "5511900000001@s.whatsapp.net", "fromMe": False},
                         "message": {"conversation": "Stop!"}},
            }  # fmt: skip
            assert (await ok("POST", "/webhooks/evolution", json=stop, headers=hook))["opted_out"] == 1
            async with client.post("/login", data={"token": ADMIN_TOKEN}, allow_redirects=False) as login:
                assert login.status == 303
            async with client.post("/logout", allow_redirects=False) as logout:
                assert logout.status == 303
            audit = [row["action"] for row in (await ok("GET", "/api/audit", headers=read))["audit"]]
    assert {"replay", "run_cancel", "workspace_weight", "rate_limit", "inbox_resume", "opt_out"} <= set(audit)
    status = db.execute("SELECT status FROM campaign_runs WHERE id = %s", (campaign.run_id,)).fetchone()
    assert status == ("cancelled",)


def test_replay_and_limits_work_as_the_console_role(
    db: psycopg.Connection[Any], seed: Seeder, console_url: str
) -> None:
    campaign = seed.campaign(2)
    dead_letter_bulk(db, campaign)
    replay = run_cli("replay", "--dry-run", database_url=console_url)
    assert replay.returncode == 0, replay.stderr
    replay = run_cli("replay", database_url=console_url)
    assert replay.returncode == 0, replay.stderr
    assert seed.statuses(campaign.run_id) == {"queued": 2}
    for args in (("set", "ai", "600"), ("weight", str(campaign.workspace_id), "2"), ("show", "--json")):
        result = run_cli("limits", *args, database_url=console_url)
        assert result.returncode == 0, result.stderr


def test_stats_json_works_as_the_reader_role(
    db: psycopg.Connection[Any], seed: Seeder, reader_url: str
) -> None:
    campaign = seed.campaign(3)
    dead_letter_bulk(db, campaign, message_ids=campaign.message_ids[:1])
    result = run_cli("stats", "--json", database_url=reader_url)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert [q["dead_letters"] for q in document["queues"] if q["queue_name"] == "campaign_messages"] == [1]
    assert [run["run_id"] for run in document["runs"]] == [str(campaign.run_id)]


CONSOLE_FORBIDDEN = [
    "UPDATE campaign_messages SET generated_message = 'x'",
    "UPDATE campaign_messages SET status = 'sent'",
    "DELETE FROM campaign_messages",
    "INSERT INTO campaign_messages (run_id, lead_id) SELECT run_id, lead_id FROM campaign_messages LIMIT 1",
    "SELECT generated_message FROM campaign_messages",
    "UPDATE leads SET phone = '+1'",
    "UPDATE leads SET opted_out_at = now()",
    "DELETE FROM leads",
    "INSERT INTO leads (workspace_id) VALUES (gen_random_uuid())",
    "SELECT custom_fields FROM leads",
    "UPDATE campaign_runs SET status = 'completed'",
    "UPDATE campaign_configs SET system_prompt = 'x'",
    "UPDATE inboxes SET instance = 'x'",
    "SELECT pgmq.drop_queue('campaign_messages')",
    "SELECT pgmq.send('campaign_messages', '{}'::jsonb)",
    "DELETE FROM pgmq.q_campaign_messages_dlq",
    "DROP TABLE campaign_messages",
    "CREATE TABLE stolen (x int)",
    "UPDATE campaignq_console_audit SET actor = 'nobody'",
    "DELETE FROM campaignq_console_audit",
    "SELECT campaignq_complete_sent(1, 1, gen_random_uuid(), 1)",
    "SELECT * FROM campaignq_read_and_claim(1, 30, '{}')",
    "SELECT * FROM campaignq_schema_migrations",
]

READER_FORBIDDEN = [
    "UPDATE campaign_messages SET status = 'sent'",
    "SELECT generated_message FROM campaign_messages",
    "SELECT * FROM leads",
    "UPDATE campaign_runs SET status = 'paused'",
    "INSERT INTO rate_limits (name, requests_per_minute) VALUES ('x', 1)",
    "DELETE FROM workspace_weights",
    "UPDATE inboxes SET paused_at = now()",
    "INSERT INTO campaignq_console_audit (actor, action) VALUES ('x', 'y')",
    "SELECT * FROM campaignq_console_set_run_status(gen_random_uuid(), 'cancelled', ARRAY['running'])",
    "SELECT * FROM campaignq_replay_dead_letters(p_limit => 1)",
    "SELECT campaignq_record_opt_out(p_instance => 'i', p_phone => '1', p_reason => 'x')",
    "SELECT * FROM campaignq_read_and_claim(1, 30, '{}')",
    "SELECT pgmq.delete('campaign_messages', 1::bigint)",
    "CREATE TABLE stolen (x int)",
]


@pytest.mark.parametrize(
    ("role", "statements"), [(CONSOLE_ROLE, CONSOLE_FORBIDDEN), (READER_ROLE, READER_FORBIDDEN)]
)
def test_the_console_and_reader_roles_cannot_touch_what_they_do_not_need(
    db: psycopg.Connection[Any], seed: Seeder, roles_created: str, role: str, statements: list[str]
) -> None:
    seed.campaign(1)
    allowed = []
    with psycopg.connect(make_conninfo(roles_created, user=role, password=""), autocommit=True) as conn:
        # The reader's transactions are read-only by default (a second wall): turned off here,
        # so what refuses each statement below is the grants themselves.
        conn.execute("SET default_transaction_read_only = off")
        for statement in statements:
            try:
                conn.execute(sql.SQL(statement))
            except psycopg.errors.InsufficientPrivilege:
                continue
            allowed.append(statement)
    assert allowed == []
    assert db.execute("SELECT count(*) FROM campaign_messages").fetchone() == (1,)
    read_only = db.execute(
        "SELECT 'default_transaction_read_only=on' = ANY (coalesce(rolconfig, '{}')) FROM pg_roles "
        "WHERE rolname = %s",
        (role,),
    ).fetchone()
    assert read_only == (role == READER_ROLE,)
