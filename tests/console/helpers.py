"""Shared by the console's API and browser tests: tokens, bulk dead letters, a running console."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from consumer.devtools.seeding import Campaign, Seeder
from tests.cli import campaignq_env

ADMIN_TOKEN = "admin-token-0123456789"  # noqa: S105 (test token)
READ_TOKEN = "read-token-0123456789"  # noqa: S105 (test token)
WEBHOOK_KEY = "wa-test-key-0123456789"


def dead_letter_bulk(
    db: psycopg.Connection[Any],
    campaign: Campaign,
    *,
    reason: str = "max_attempts",
    error_class: str = "timeout",
    error: str = "simulated failure",
    message_ids: list[uuid.UUID] | None = None,
) -> int:
    """Fail the campaign's rows and put one dead letter each in the DLQ, in one statement.

    The consumer's path (campaignq_dead_letter per message) is tested elsewhere; here only the
    letters' shape matters, and 10,000 of them must be quick to make.
    """
    ids = message_ids if message_ids is not None else campaign.message_ids
    row = db.execute(
        """
        WITH failed AS (
            UPDATE campaign_messages SET status = 'failed', retry_count = 3, finished_at = now(),
                   error_class = %(error_class)s::text, error_message = %(error)s::text
             WHERE id = ANY (%(ids)s::uuid[])
            RETURNING id, run_id, lead_id
        )
        SELECT count(*) FROM failed,
               LATERAL pgmq.send('campaign_messages_dlq', jsonb_build_object(
                   'v', 1, 'campaign_message_id', failed.id, 'run_id', failed.run_id,
                   'lead_id', failed.lead_id, 'reason', %(reason)s::text,
                   'error_class', %(error_class)s::text,
                   'error', %(error)s::text, 'attempts', 3))
        """,
        {"ids": ids, "reason": reason, "error_class": error_class, "error": error},
    ).fetchone()
    db.execute(
        "UPDATE campaign_runs SET leads_processed = leads_processed + %s WHERE id = %s",
        (len(ids), campaign.run_id),
    )
    return int(row[0]) if row else 0


def dlq_count(db: psycopg.Connection[Any], run_id: uuid.UUID | None = None) -> int:
    if run_id is None:
        row = db.execute("SELECT count(*) FROM pgmq.q_campaign_messages_dlq").fetchone()
    else:
        row = db.execute(
            "SELECT count(*) FROM campaignq_dead_letters WHERE run_id = %s", (run_id,)
        ).fetchone()
    return int(row[0]) if row else 0


def seed_campaign(seed: Seeder, n: int, **kwargs: Any) -> Campaign:
    return seed.campaign(n, **kwargs)


@contextmanager
def console_process(database_url: str, **env: str) -> Iterator[str]:
    """`campaignq serve --port 0` as a real process; yields its base URL (no trailing slash)."""
    full_env = {
        "CAMPAIGNQ_CONSOLE_TOKEN": ADMIN_TOKEN,
        "CAMPAIGNQ_CONSOLE_READ_TOKEN": READ_TOKEN,
        "CAMPAIGNQ_WHATSAPP_API_KEY": WEBHOOK_KEY,
        "CAMPAIGNQ_CONSOLE_SAMPLE_INTERVAL_S": "0.5",
        **env,
    }
    with cli_process(
        ["serve", "--port", "0"], database_url, full_env, r"campaignq console: (http://\S+?)/?$"
    ) as url:
        yield url


@contextmanager
def cli_process(args: list[str], database_url: str, env: dict[str, str], ready: str) -> Iterator[str]:
    """A `campaignq` subprocess; yields the first group of the first output line matching `ready`."""
    process = subprocess.Popen(
        [sys.executable, "-m", "consumer.cli", *args],
        env=campaignq_env(database_url, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    drain = threading.Thread(target=_drain, args=(process,), daemon=True)
    try:
        found = _wait_for(process, ready)
        drain.start()  # keep reading its output, or a chatty process fills the pipe and blocks
        yield found
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if drain.is_alive():
            drain.join(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def _drain(process: subprocess.Popen[str]) -> None:
    assert process.stdout is not None
    for _line in process.stdout:
        pass


def _wait_for(process: subprocess.Popen[str], ready: str) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    seen: list[str] = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            if process.poll() is not None:
                break
            continue
        seen.append(line)
        match = re.search(ready, line.strip())
        if match:
            return match.group(1) if match.groups() else line
    raise AssertionError(f"no line matching {ready!r}:\n" + "".join(seen))
