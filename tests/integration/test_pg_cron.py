"""`campaignq migrate --schedule-producer` really queues messages through pg_cron.

Needs a server with pg_cron preloaded whose ``cron.database_name`` is the database in
``CAMPAIGNQ_TEST_CRON_DATABASE_URL`` (`.ci/run` starts one: Debian PG 15 + pg_cron 1.4).
pg_cron 1.4 fires once a minute at most, so this test may wait up to ~70 s.
"""

from __future__ import annotations

import os
import time

import psycopg
import pytest

from consumer.devtools.seeding import Seeder
from tests.cli import run_cli

CRON_URL = os.environ.get("CAMPAIGNQ_TEST_CRON_DATABASE_URL")

pytestmark = [
    pytest.mark.pg_cron,
    pytest.mark.skipif(not CRON_URL, reason="CAMPAIGNQ_TEST_CRON_DATABASE_URL is not set"),
    pytest.mark.timeout(180),
]


@pytest.fixture
def cron_database_url() -> str:
    assert CRON_URL
    with psycopg.connect(CRON_URL, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_cron'").fetchone():
            conn.execute("DELETE FROM cron.job WHERE jobname = 'campaignq-producer'")
        conn.execute("DROP SCHEMA IF EXISTS pgmq CASCADE")
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    return CRON_URL


def test_pg_cron_job_queues_due_messages(cron_database_url: str) -> None:
    result = run_cli("migrate", "--schedule-producer", database_url=cron_database_url)
    assert result.returncode == 0, result.stderr
    assert "producer scheduled with pg_cron" in result.stdout

    with psycopg.connect(cron_database_url, autocommit=True) as conn:
        seeder = Seeder(conn)
        campaign = seeder.campaign(4)
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and seeder.statuses(campaign.run_id) != {"queued": 4}:
            time.sleep(1)
        runs = conn.execute(
            "SELECT count(*) FROM cron.job_run_details d JOIN cron.job j USING (jobid) "
            "WHERE j.jobname = 'campaignq-producer'"
        ).fetchone()
        queued = conn.execute("SELECT count(*) FROM pgmq.q_campaign_messages").fetchone()
        statuses = seeder.statuses(campaign.run_id)
        conn.execute("SELECT cron.unschedule('campaignq-producer')")

    assert statuses == {"queued": 4}
    assert queued == (4,)
    assert runs is not None and runs[0] >= 1
