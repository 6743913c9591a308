"""An opt-out stops a message already in flight before its next part (issue 20).

Triage checks `leads.opted_out_at` when a message is read; a split message claimed before the
opt-out is then caught by the write that records each acknowledged part (but the last), which
answers whether the lead opted out meanwhile: nothing more is sent, the row ends `skipped`
(`opted_out`) with `parts_sent` = the parts delivered, and its queue message is archived.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from consumer.devtools.seeding import Seeder
from consumer.devtools.simulator import Faults, Simulator
from tests.harness import consumer_settings, running_worker, wait_until
from tests.integration.test_consumer import message_row, produce, queue_count

PARTS = ["Hello Ana, the first bubble.", "The second bubble, never sent.", "The third, never sent either."]
SEND_LATENCY_S = 1.5  # the opt-out must land while part 1 is at the gateway: ample on a busy box


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(faults=Faults(seed=20, send_latency_s=SEND_LATENCY_S)) as simulator:
        yield simulator


@pytest.mark.parametrize("batch_window_ms", [5, 0], ids=["batched", "single"])
async def test_an_opt_out_stops_a_split_message_before_its_next_part(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str, batch_window_ms: int
) -> None:
    campaign = seed.campaign(1, split=True, max_parts=3, instance="inst-optout")
    [message_id], [phone] = (
        campaign.message_ids,
        [r[0] for r in db.execute("SELECT phone FROM leads WHERE id = ANY(%s)", (campaign.lead_ids,))],
    )
    db.execute(
        "UPDATE campaign_messages SET generated_message = %s, parts = %s WHERE id = %s",
        (" ".join(PARTS), Jsonb(PARTS), message_id),
    )
    produce(db)
    settings = consumer_settings(database_url, sim, outcome_batch_window_ms=batch_window_ms)

    async with running_worker(settings):
        # claimed (triage saw no opt-out), and part 1 is on its way (the gateway takes 1.5 s)
        await wait_until(lambda: message_row(db, message_id)["status"] == "sending", what="message claimed")
        assert db.execute(
            "SELECT campaignq_record_opt_out('inst-optout', %s, 'STOP')", (phone,)
        ).fetchone() == (1,)
        assert message_row(db, message_id)["status"] == "sending"  # in flight: the worker's to stop
        await wait_until(lambda: message_row(db, message_id)["status"] == "skipped", what="message skipped")
        await asyncio.sleep(SEND_LATENCY_S + 0.5)  # room for a part that should not go out

    assert [s.text for s in sim.sends_to(phone)] == PARTS[:1]
    row = message_row(db, message_id)
    assert (row["status"], row["error_class"], row["parts_sent"]) == ("skipped", "opted_out", 1)
    assert queue_count(db) == 0 and queue_count(db, "a_campaign_messages") == 1  # lease released: archived
    run = db.execute("SELECT status, leads_processed FROM campaign_runs WHERE id = %s", (campaign.run_id,))
    assert run.fetchone() == ("completed", 1)
