"""The consumer end to end: real PostgreSQL + PGMQ, the simulator over loopback HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from consumer.devtools.seeding import Campaign, Seeder
from consumer.devtools.simulator import Faults, Simulator
from tests.harness import consumer_settings, running_worker, wait_until


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(faults=Faults(seed=7)) as simulator:
        yield simulator


def produce(db: psycopg.Connection[Any]) -> int:
    row = db.execute("SELECT enqueue_due_campaign_messages(10000)").fetchone()
    assert row is not None
    return int(row[0])


def terminal(seed: Seeder, campaign: Campaign) -> bool:
    statuses = seed.statuses(campaign.run_id)
    return sum(statuses.get(s, 0) for s in ("sent", "failed", "skipped")) == len(campaign.message_ids)


def message_row(db: psycopg.Connection[Any], message_id: Any) -> dict[str, Any]:
    cur = db.cursor(row_factory=psycopg.rows.dict_row)
    row = cur.execute("SELECT * FROM campaign_messages WHERE id = %s", (message_id,)).fetchone()
    assert row is not None
    return row


def dead_letters(db: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    return [r[0] for r in db.execute("SELECT message FROM pgmq.q_campaign_messages_dlq ORDER BY msg_id")]


def queue_count(db: psycopg.Connection[Any], table: str = "q_campaign_messages") -> int:
    row = db.execute(f"SELECT count(*) FROM pgmq.{table}").fetchone()
    assert row is not None
    return int(row[0])


async def test_success_with_split_sends_every_part_in_order(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str
) -> None:
    campaign = seed.campaign(6, split=True, max_parts=3)
    produce(db)

    async with running_worker(consumer_settings(database_url, sim)):
        await wait_until(lambda: terminal(seed, campaign), what="all messages terminal")

    assert seed.statuses(campaign.run_id) == {"sent": 6}
    for message_id, lead_phone in zip(campaign.message_ids, _phones(db, campaign), strict=True):
        row = message_row(db, message_id)
        sent_texts = [s.text for s in sim.sends_to(lead_phone)]
        assert sent_texts == row["parts"]
        assert 1 <= len(row["parts"]) <= 3
        assert row["parts_sent"] == len(row["parts"])
        assert " ".join(row["parts"]).split() == row["generated_message"].split()
        assert row["ai_tokens_used"] and row["ai_tokens_used"] > 0
        assert row["ai_ms"] is not None and row["send_ms"] is not None
        # One call writes the bubbles (issue 14): no separate split stage.
        assert row["generation_mode"] == "structured" and row["ai_calls"] == 1 and row["split_ms"] is None
        assert row["sent_at"] is not None and row["retry_count"] == 0
    assert sim.duplicate_sends() == []
    assert queue_count(db) == 0 and queue_count(db, "a_campaign_messages") == 6
    run = db.execute("SELECT status, leads_processed FROM campaign_runs WHERE id = %s", (campaign.run_id,))
    assert run.fetchone() == ("completed", 6)


def _phones(db: psycopg.Connection[Any], campaign: Campaign) -> list[str]:
    rows = db.execute(
        "SELECT regexp_replace(l.phone, '\\D', '', 'g') "
        "FROM campaign_messages m JOIN leads l ON l.id = m.lead_id "
        "WHERE m.id = ANY(%s) ORDER BY array_position(%s, m.id)",
        (campaign.message_ids, campaign.message_ids),
    ).fetchall()
    return [r[0] for r in rows]


async def test_rate_limited_then_success_does_not_burn_an_attempt(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str
) -> None:
    campaign = seed.campaign(1)
    produce(db)
    sim.fail_next_ai("429", retry_after_s=1)

    async with running_worker(consumer_settings(database_url, sim)):
        await wait_until(lambda: terminal(seed, campaign), what="message sent")

    row = message_row(db, campaign.message_ids[0])
    assert row["status"] == "sent"
    assert row["retry_count"] == 0
    assert row["deferral_count"] == 1
    assert [h["error_class"] for h in row["attempt_history"]] == ["rate_limited"]


async def test_three_timeouts_dead_letter_with_history(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str
) -> None:
    campaign = seed.campaign(1)
    produce(db)
    sim.set_faults(hang_s=3.0)
    sim.fail_next_ai("hang", times=3)

    settings = consumer_settings(database_url, sim, ai_timeout_s=0.3, backoff_base_s=0.1)
    async with running_worker(settings):
        await wait_until(lambda: terminal(seed, campaign), timeout_s=60, what="dead letter")

    row = message_row(db, campaign.message_ids[0])
    assert row["status"] == "failed"
    assert row["retry_count"] == 3
    [letter] = dead_letters(db)
    assert letter["campaign_message_id"] == str(campaign.message_ids[0])
    assert letter["reason"] == "max_attempts"
    assert letter["error_class"] == "timeout"
    assert letter["attempts"] == 3
    assert [h["error_class"] for h in letter["history"]] == ["timeout", "timeout", "timeout"]
    assert sim.sends == []


async def test_permanent_400_dead_letters_at_once(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str
) -> None:
    campaign = seed.campaign(1)
    produce(db)
    sim.fail_next_ai("400")

    async with running_worker(consumer_settings(database_url, sim)):
        await wait_until(lambda: terminal(seed, campaign), what="dead letter")

    row = message_row(db, campaign.message_ids[0])
    assert (row["status"], row["retry_count"]) == ("failed", 1)
    [letter] = dead_letters(db)
    assert (letter["reason"], letter["error_class"], letter["attempts"]) == (
        "permanent",
        "provider_rejected",
        1,
    )
    assert sim.ai_request_count == 1


async def test_part_two_failing_once_never_resends_part_one(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str
) -> None:
    campaign = seed.campaign(1, split=True, max_parts=3)
    parts = [
        "Hello Ana, first bubble here.",
        "Second bubble, the one that fails once.",
        "Third and last bubble.",
    ]
    db.execute(
        "UPDATE campaign_messages SET generated_message = %s, parts = %s WHERE id = %s",
        (" ".join(parts), Jsonb(parts), campaign.message_ids[0]),
    )
    produce(db)
    sim.fail_next_send("500", text_contains="fails once")

    async with running_worker(consumer_settings(database_url, sim)):
        await wait_until(lambda: terminal(seed, campaign), what="message sent")

    [phone] = _phones(db, campaign)
    assert [s.text for s in sim.sends_to(phone)] == parts  # each part exactly once, in order
    row = message_row(db, campaign.message_ids[0])
    assert (row["status"], row["parts_sent"], row["retry_count"]) == ("sent", 3, 1)
    assert sim.ai_request_count == 0  # stored text is never regenerated


async def test_paused_and_cancelled_runs(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str
) -> None:
    paused = seed.campaign(2)
    cancelled = seed.campaign(2)
    assert produce(db) == 4
    db.execute("UPDATE campaign_runs SET status = 'paused' WHERE id = %s", (paused.run_id,))
    db.execute("UPDATE campaign_runs SET status = 'cancelled' WHERE id = %s", (cancelled.run_id,))

    async with running_worker(consumer_settings(database_url, sim)):
        await wait_until(lambda: queue_count(db) == 0, what="queue drained")

    assert seed.statuses(paused.run_id) == {"pending": 2}
    assert seed.statuses(cancelled.run_id) == {"skipped": 2}
    assert sim.sends == [] and sim.ai_request_count == 0
    # resuming the paused run lets the producer queue it again
    db.execute("UPDATE campaign_runs SET status = 'running' WHERE id = %s", (paused.run_id,))
    assert produce(db) == 2


async def test_invalid_payloads_are_dead_lettered_and_the_worker_goes_on(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str
) -> None:
    db.execute("""SELECT pgmq.send('campaign_messages', '"not an object"'::jsonb)""")
    db.execute("""SELECT pgmq.send('campaign_messages', '{"v": 2, "campaign_message_id": "x"}'::jsonb)""")
    db.execute(
        "SELECT pgmq.send('campaign_messages', %s)",
        (
            Jsonb(
                {
                    "v": 1,
                    "campaign_message_id": "00000000-0000-0000-0000-000000000001",
                    "run_id": "00000000-0000-0000-0000-000000000002",
                    "lead_id": "00000000-0000-0000-0000-000000000003",
                }
            ),
        ),
    )
    campaign = seed.campaign(1)
    produce(db)

    async with running_worker(consumer_settings(database_url, sim)):
        await wait_until(lambda: terminal(seed, campaign) and queue_count(db) == 0, what="all settled")

    reasons = sorted(letter["reason"] for letter in dead_letters(db))
    assert reasons == ["invalid_payload", "invalid_payload", "unknown_message"]
    assert seed.statuses(campaign.run_id) == {"sent": 1}


async def test_disconnected_inbox_defers_without_burning_attempts_then_sends(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str
) -> None:
    campaign = seed.campaign(2, instance="inst-down")
    produce(db)
    sim.set_faults(disconnected_instances=frozenset({"inst-down"}))

    async with running_worker(consumer_settings(database_url, sim)):
        await wait_until(
            lambda: db.execute("SELECT min(deferral_count) FROM campaign_messages").fetchone() >= (1,),  # type: ignore[operator]
            what="deferrals",
        )
        assert sim.sends == [] and sim.ai_request_count == 0  # no AI spend while the inbox is down
        sim.set_faults(disconnected_instances=frozenset())
        await wait_until(lambda: terminal(seed, campaign), timeout_s=30, what="sent after reconnect")

    assert seed.statuses(campaign.run_id) == {"sent": 2}
    rows = db.execute("SELECT retry_count FROM campaign_messages").fetchall()
    assert rows == [(0,), (0,)]


async def test_batch_of_50_loads_context_in_one_query(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str
) -> None:
    campaign = seed.campaign(50)
    produce(db)

    # The simulator answers these 50 about 100 ms apart: a window of 250 ms lets their outcome
    # writes share statements (the default of a few ms does so at full speed).
    settings = consumer_settings(
        database_url, sim, concurrency=50, batch_size=50, outcome_batch_window_ms=250
    )
    async with running_worker(settings) as running:
        await wait_until(lambda: terminal(seed, campaign), what="all sent")
        statements = dict(running.db.statements)

    assert seed.statuses(campaign.run_id) == {"sent": 50}
    assert statements["claim_batch"] == 1
    # The outcome writes are batched (OutcomeBatcher, 0013): each statement stores several
    # generations / completes several messages, still answering each message on its own.
    assert statements["store_generation"] <= 25
    assert statements["complete_sent"] <= 25


async def test_a_lost_lease_can_neither_ack_nor_extend(db: psycopg.Connection[Any], seed: Seeder) -> None:
    campaign = seed.campaign(1)
    produce(db)
    first = db.execute("SELECT msg_id, read_ct FROM pgmq.read('campaign_messages', 0, 1)").fetchone()
    second = db.execute("SELECT msg_id, read_ct FROM pgmq.read('campaign_messages', 30, 1)").fetchone()
    assert first is not None and second is not None and first[0] == second[0] and second[1] == first[1] + 1
    msg_id, stale_read_ct = first
    message_id = campaign.message_ids[0]

    checks = {
        "complete": "SELECT campaignq_complete_sent(%s, %s, %s, 0)",
        "retry": "SELECT campaignq_retry_later(%s, %s, %s, 0, true, 'timeout', 'x', 'generate')",
        "dead_letter": "SELECT campaignq_dead_letter(%s, %s, %s, 'permanent', 'x', 'x', 'x', true)",
        "release": "SELECT campaignq_release_now(%s, %s, %s)",
        "pending": "SELECT campaignq_release_to_pending(%s, %s, %s)",
    }
    for name, statement in checks.items():
        result = db.execute(statement, (msg_id, stale_read_ct, message_id)).fetchone()
        assert result in {(False,), (None,)}, name
    extended = db.execute(
        "SELECT campaignq_extend_leases(%s, %s, 60)", ([msg_id], [stale_read_ct])
    ).fetchall()
    assert extended == []
    vt_row = db.execute(
        "SELECT read_ct, vt > now() + interval '20 seconds' FROM pgmq.q_campaign_messages"
    ).fetchone()
    assert vt_row == (second[1], True)  # untouched: still the second holder's lease
    assert seed.statuses(campaign.run_id) == {"queued": 1}
    assert dead_letters(db) == []
    # the current holder can
    assert db.execute(checks["complete"], (msg_id, second[1], message_id)).fetchone() == (True,)


async def test_a_message_deferred_too_long_is_dead_lettered(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str
) -> None:
    campaign = seed.campaign(1, instance="inst-gone")
    produce(db)
    sim.set_faults(disconnected_instances=frozenset({"inst-gone"}))

    settings = consumer_settings(database_url, sim, max_deferral_s=1.5, backoff_base_s=0.2, backoff_max_s=0.5)
    async with running_worker(settings):
        await wait_until(lambda: terminal(seed, campaign), timeout_s=30, what="dead letter")

    row = message_row(db, campaign.message_ids[0])
    assert row["status"] == "failed"
    assert row["retry_count"] == 0 and row["deferral_count"] >= 1
    [letter] = dead_letters(db)
    assert (letter["reason"], letter["error_class"]) == ("deferred_too_long", "inbox_unavailable")
