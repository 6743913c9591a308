"""Load: one `campaignq consume` at concurrency 256 through thousands of messages, 1 s of AI latency each
(1 s ± 0.3 s: a provider's latency varies, and a constant one would march all 256 slots in
lockstep, alternating a second of idle waiting with a burst of database work).

A measurement, not a benchmark: the numbers are printed (and shown in the terminal summary)
and only generous sanity bounds are asserted, so a slow CI machine cannot fail it:

* throughput stays flat: the last quarter of the messages goes at least half as fast as the
  first quarter (a leak, a growing scan or a clogged pool would show as a slowdown);
* memory stays flat: the consumer's RSS grows by less than 50 MB between the first quarter
  and the end;
* the queue tables stay small: every message read is an UPDATE and every ack a DELETE +
  INSERT, so the hot table must be vacuumed back down (aggressive autovacuum, migration
  0001) and the archive, which grows by one row per message, is cut back by
  `campaignq prune --older-than` (its retention).

Every `pytest` runs it at 4,000 messages (windows of 1,000; about half a minute on a 2-CPU
machine), so CI measures it on every submission; the full 20,000 (2-3 minutes) is
``CAMPAIGNQ_TEST_LOAD_MESSAGES=20000 pytest -m load``. Marked `chaos` too, so
``-m "not chaos"`` never picks it up.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest

from consumer.devtools.processes import Simulator, simulator_env
from consumer.devtools.seeding import Seeder
from tests.artifacts import artifact
from tests.cli import run_cli, spawn_logged
from tests.harness import AI_KEY, WHATSAPP_KEY

pytestmark = [
    pytest.mark.load,
    pytest.mark.chaos,
    pytest.mark.timeout(600),
]

MESSAGES = int(os.environ.get("CAMPAIGNQ_TEST_LOAD_MESSAGES", "4000"))
WINDOW = MESSAGES // 4
CONCURRENCY = 256
FIGURES: dict[str, Any] = {}


def _seed(db: psycopg.Connection[Any]) -> None:
    """MESSAGES leads and due messages in one run, queued in one producer call."""
    Seeder(db).campaign(
        MESSAGES,
        instance="load-inbox",
        model="openai/gpt-4o-mini",
        prompt="Write a short friendly message.",
        phones=[f"+5511{900000000 + i}" for i in range(1, MESSAGES + 1)],
        workspace_id=uuid.UUID("00000000-0000-0000-0000-00000000000a"),
    )
    db.execute("SET campaignq.queue_horizon_s = 0")  # all at once: this test is about depth
    row = db.execute("SELECT enqueue_due_campaign_messages(%s)", (MESSAGES,)).fetchone()
    assert row == (MESSAGES,)


def _sent(db: psycopg.Connection[Any]) -> int:
    row = db.execute("SELECT count(*) FROM campaign_messages WHERE status = 'sent'").fetchone()
    return int(row[0]) if row else 0


def _size_kb(db: psycopg.Connection[Any], table: str) -> int:
    row = db.execute("SELECT pg_total_relation_size(%s::regclass) / 1024", (table,)).fetchone()
    return int(row[0]) if row else 0


def test_one_consumer_at_concurrency_256_stays_flat_over_thousands_of_messages(
    db: psycopg.Connection[Any], database_url: str, tmp_path: Path
) -> None:
    load_at_start = os.getloadavg()[0]  # the box's load when it began: figures on a busy box are lower
    _seed(db)
    latency = ["--ai-latency", "1s", "--ai-jitter", "300ms"]
    with Simulator(log_dir=tmp_path, args=["--seed", "1", *latency]) as sim:
        env = {
            "DATABASE_URL": database_url,
            **simulator_env(sim.base_url, ai_key=AI_KEY, whatsapp_key=WHATSAPP_KEY),
            "CAMPAIGNQ_CONCURRENCY": str(CONCURRENCY),
            "CAMPAIGNQ_BATCH_SIZE": "100",
            "CAMPAIGNQ_AI_REQUESTS_PER_MINUTE": "600000",
            "CAMPAIGNQ_DB_POOL_MAX_SIZE": "16",
            "CAMPAIGNQ_LOG_LEVEL": "WARNING",
        }
        consumer = spawn_logged("consumer", ["consume"], env=env, log_dir=tmp_path)
        try:
            process = psutil.Process(consumer.pid)
            started = time.monotonic()
            rss_mb: dict[str, float] = {}
            peak_mb = 0.0
            while (sent := _sent(db)) < MESSAGES:
                assert consumer.alive(), consumer.log()[-3000:]
                assert time.monotonic() - started < 480, f"only {sent} of {MESSAGES} sent after 8 minutes"
                current_mb = process.memory_info().rss / 2**20
                peak_mb = max(peak_mb, current_mb)
                if sent >= WINDOW and "after_first_window" not in rss_mb:
                    rss_mb["after_first_window"] = current_mb
                time.sleep(0.5)
            rss_mb["end"] = process.memory_info().rss / 2**20
            elapsed_s = time.monotonic() - started
            assert consumer.stop() == 0, consumer.log()[-3000:]
        finally:
            consumer.kill()
        sim_stats = sim.stats()

    stamps = [
        r[0].timestamp()
        for r in db.execute("SELECT sent_at FROM campaign_messages WHERE status = 'sent' ORDER BY sent_at")
    ]
    first_rate = WINDOW / (stamps[WINDOW - 1] - stamps[0])
    last_rate = WINDOW / (stamps[-1] - stamps[-WINDOW])
    growth_mb = rss_mb["end"] - rss_mb["after_first_window"]
    queue_kb = _size_kb(db, "pgmq.q_campaign_messages")
    archive_kb = _size_kb(db, "pgmq.a_campaign_messages")
    prune = run_cli("prune", "--older-than", "0s", database_url=database_url)
    assert prune.returncode == 0, prune.stderr
    db.execute("VACUUM pgmq.a_campaign_messages")
    archived_after = db.execute("SELECT count(*) FROM pgmq.a_campaign_messages").fetchone()

    FIGURES.update(
        {
            "messages": MESSAGES,
            "load_average_1m_at_start": round(load_at_start, 2),
            "concurrency": CONCURRENCY,
            "elapsed_s": round(elapsed_s, 1),
            "first_window_msg_per_s": round(first_rate, 1),
            "last_window_msg_per_s": round(last_rate, 1),
            "rss_mb_after_first_window": round(rss_mb["after_first_window"], 1),
            "rss_mb_end": round(rss_mb["end"], 1),
            "rss_mb_peak": round(peak_mb, 1),
            "queue_table_kb": queue_kb,
            "archive_kb_before_prune": archive_kb,
            "archive_kb_after_prune": _size_kb(db, "pgmq.a_campaign_messages"),
            "duplicates": sim_stats["send"]["duplicates"],
        }
    )
    print(f"load figures: {FIGURES}", flush=True)
    artifact("load_summary.json").write_text(json.dumps(FIGURES, indent=2) + "\n", encoding="utf-8")
    assert sim_stats["send"]["accepted"] == MESSAGES and sim_stats["send"]["duplicates"] == 0
    assert last_rate >= 0.5 * first_rate, FIGURES
    assert growth_mb < 50, FIGURES
    assert archived_after == (0,)
    assert queue_kb < 20 * 1024, FIGURES  # an empty hot table after them all
