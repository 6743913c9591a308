"""Issue 22: `campaignq serve` as the least-privilege `campaignq_console` role.

The console API's own tests (test_console_api.py) run again here with the console's store
connected as `campaignq_console` (made by `migrate --create-roles`); the test data is set up
as the owner, as in production. Then the role is shown unable to do what a console never
does: rewrite a message's text, lead or run, change a lead's phone, delete business rows or
queue messages, touch the schema.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from psycopg import sql
from psycopg.conninfo import make_conninfo

from consumer.devtools.seeding import Seeder
from consumer.ops.console import auth
from consumer.ops.console.app import ConsoleConfig, create_app
from consumer.ops.console.store import Store
from consumer.ops.migrate import CONSOLE_ROLE
from consumer.settings import DEFAULT_MODEL_PRICES
from tests.cli import run_cli
from tests.console import test_console_api as api
from tests.console.helpers import ADMIN_TOKEN, READ_TOKEN, WEBHOOK_KEY


@pytest.fixture
def console_url(database_url: str) -> str:
    result = run_cli("migrate", "--create-roles", database_url=database_url)
    assert result.returncode == 0, result.stderr
    return make_conninfo(database_url, user=CONSOLE_ROLE, password="")


@pytest.fixture
async def client(console_url: str) -> AsyncIterator[TestClient[Any, Any]]:
    """test_console_api's client, its store connected as the console role."""
    store = Store(console_url, prices=DEFAULT_MODEL_PRICES)
    config = ConsoleConfig(
        tokens=auth.Tokens(admin=ADMIN_TOKEN, read=READ_TOKEN),
        webhook_secret=WEBHOOK_KEY,
        sample_interval_s=0.3,
    )
    async with TestClient(TestServer(create_app(store, config))) as test_client:
        yield test_client


# Every read and action of the console, as the console role (fixtures: this module's client).
test_stats_is_the_stats_json_document = api.test_stats_is_the_stats_json_document
test_replay_preview_then_replay_exactly_what_matches = (
    api.test_replay_preview_then_replay_exactly_what_matches
)
test_dead_letter_list_filters_masks_phones_and_redacts_errors = (
    api.test_dead_letter_list_filters_masks_phones_and_redacts_errors
)
test_run_pause_resume_cancel = api.test_run_pause_resume_cancel
test_weights_budget_and_inbox_pause = api.test_weights_budget_and_inbox_pause
test_login_cookie_csrf_and_origin = api.test_login_cookie_csrf_and_origin
test_webhook_connection_state_and_opt_out = api.test_webhook_connection_state_and_opt_out


CONSOLE_FORBIDDEN = [
    "UPDATE campaign_messages SET generated_message = 'x'",
    "UPDATE campaign_messages SET parts = '[]'::jsonb",
    "UPDATE campaign_messages SET lead_id = lead_id",
    "UPDATE campaign_messages SET run_id = run_id",
    "UPDATE leads SET phone = '+1'",
    "UPDATE leads SET name = 'x'",
    "UPDATE campaign_configs SET system_prompt = 'x'",
    "UPDATE campaign_runs SET config_id = config_id",
    "INSERT INTO campaign_messages (run_id, lead_id) SELECT run_id, lead_id FROM campaign_messages LIMIT 1",
    "INSERT INTO leads (workspace_id) VALUES (gen_random_uuid())",
    "DELETE FROM campaign_messages",
    "DELETE FROM leads",
    "DELETE FROM campaign_runs",
    "DELETE FROM campaignq_console_audit",
    "UPDATE campaignq_console_audit SET actor = 'someone else'",
    "DELETE FROM pgmq.q_campaign_messages",
    "UPDATE pgmq.q_campaign_messages SET vt = now()",
    "DELETE FROM pgmq.a_campaign_messages",
    "INSERT INTO rate_limit_cooldowns SELECT * FROM rate_limit_cooldowns LIMIT 0",
    "TRUNCATE campaign_messages",
    "CREATE TABLE stolen (x int)",
    "ALTER TABLE campaign_messages ADD COLUMN x int",
    "SELECT pgmq.drop_queue('campaign_messages')",
    "SELECT * FROM campaignq_schema_migrations",
    "CREATE ROLE sneaky",
]


def test_the_console_role_cannot_do_what_a_console_never_does(
    db: psycopg.Connection[Any], seed: Seeder, console_url: str
) -> None:
    seed.campaign(1)
    row = db.execute(
        "SELECT rolsuper, rolcreatedb, rolcreaterole, rolbypassrls FROM pg_roles WHERE rolname = %s",
        (CONSOLE_ROLE,),
    ).fetchone()
    assert row == (False, False, False, False)
    allowed = []
    with psycopg.connect(console_url, autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (CONSOLE_ROLE,)
        for statement in CONSOLE_FORBIDDEN:
            try:
                conn.execute(sql.SQL(statement))
            except psycopg.errors.InsufficientPrivilege:
                continue
            allowed.append(statement)
    assert allowed == []
    assert db.execute("SELECT count(*) FROM campaign_messages").fetchone() == (1,)
