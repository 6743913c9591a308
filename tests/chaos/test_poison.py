"""Issue 22's chaos case: one poison message among 1,000 good ones, real processes.

A contract payload with a 3,000-deep array in an extra field (6 KB) made `campaignq consume`
exit with RecursionError while it decoded the batch, on every start, so nothing was sent
again. Here the poison goes in first (it is in the first batch read), a producer and a
consumer run as real processes against the simulator, and: every good message is sent, the
poison is dead-lettered with reason `invalid_payload`, the row it names is never claimed nor
charged a crash, and the consumer is alive at every poll and at the end.

Kept separate from test_chaos.py: its invariants read every letter with Python's json, which
the poison letter would itself break, and its 2,000 messages under faults take minutes.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from consumer.devtools.processes import Simulator, simulator_env
from consumer.devtools.seeding import Seeder
from tests.chaos.test_chaos import Probe, wait_for
from tests.chaos.tools import processes
from tests.cli import spawn_logged
from tests.harness import AI_KEY, WHATSAPP_KEY

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(300)]

GOOD = 1000
CONSUMER_ENV = {
    "CAMPAIGNQ_CONCURRENCY": "32",
    "CAMPAIGNQ_BATCH_SIZE": "32",
    "CAMPAIGNQ_VISIBILITY_TIMEOUT_S": "20",
    "CAMPAIGNQ_AI_REQUESTS_PER_MINUTE": "600000",
    "CAMPAIGNQ_POLL_INTERVAL_S": "0.2",
    "CAMPAIGNQ_TYPING_DELAY_CAP_S": "0",
}


def test_a_poison_message_among_a_thousand_good_ones_stops_nothing(
    db: psycopg.Connection[Any], database_url: str, tmp_path: Path
) -> None:
    seeder = Seeder(db)
    good = seeder.campaign(GOOD, instance="poison-good")
    named = seeder.campaign(1, instance="poison-named", scheduled_offset=timedelta(hours=1))  # never due
    poison = (
        f'{{"v": 1, "campaign_message_id": "{named.message_ids[0]}", "run_id": "{named.run_id}", '
        f'"lead_id": "{named.lead_ids[0]}", "extra": {"[" * 3000 + "]" * 3000}}}'
    )
    db.execute("SELECT pgmq.send('campaign_messages', %s::jsonb)", (poison,))
    probe = Probe(database_url)

    with (
        Simulator(log_dir=tmp_path, args=["--ai-key", AI_KEY, "--whatsapp-key", WHATSAPP_KEY]) as sim,
        processes() as procs,
    ):
        env = {
            "DATABASE_URL": database_url,
            **simulator_env(sim.base_url, ai_key=AI_KEY, whatsapp_key=WHATSAPP_KEY),
            **CONSUMER_ENV,
        }
        consumer = spawn_logged("consumer", ["consume"], env=env, log_dir=tmp_path)
        procs.append(consumer)
        producer = spawn_logged("producer", ["produce", "--every", "1s"], env=env, log_dir=tmp_path)
        procs.append(producer)
        wait_for(
            f"{GOOD} sent",
            lambda: probe.statuses().get("sent", 0) >= GOOD and probe.count("q_campaign_messages") == 0,
            timeout_s=240,
            watch=[consumer, producer],
            probe=probe,
        )
        assert consumer.alive(), consumer.log()[-3000:]

    assert seeder.statuses(good.run_id) == {"sent": GOOD}
    letters = probe.rows(
        "SELECT message->>'reason' AS reason, message->>'error' AS error, "
        "message->>'campaign_message_id' AS named FROM pgmq.q_campaign_messages_dlq"
    )
    assert len(letters) == 1, letters
    assert letters[0]["reason"] == "invalid_payload" and letters[0]["named"] == str(named.message_ids[0])
    assert "larger than" in letters[0]["error"] or "deeper than" in letters[0]["error"]
    row = probe.rows(
        "SELECT status, retry_count FROM campaign_messages WHERE id = %s", (named.message_ids[0],)
    )
    assert row == [{"status": "pending", "retry_count": 0}]
    assert "RecursionError" not in consumer.log()
