"""Sender safety end to end (issue 13): two `campaignq consume` processes, a real PostgreSQL,
the simulator over loopback. Pacing across processes, send windows across time zones,
opt-outs before any AI spend, daily cap, automatic pause on ban and on repeated 429s.

No assertion on a wall-clock duration: counts, order, and margins derived from the
configured limits (the busiest window of a paced inbox holds at most its limit + 1).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest

from consumer.devtools.seeding import Campaign, Seeder
from consumer.devtools.simulator import Faults, SentMessage, Simulator
from tests.cli import run_cli, spawn_logged
from tests.harness import AI_KEY, subprocess_env, wait_until
from tests.integration.test_consumer import message_row, produce, terminal


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(faults=Faults(seed=13), ai_api_key=AI_KEY) as simulator:
        yield simulator


@asynccontextmanager
async def consumers(
    database_url: str, sim: Simulator, log_dir: Path, n: int = 2, **env: str
) -> AsyncIterator[list[subprocess.Popen[bytes]]]:
    """`n` consumer processes sharing one database; stopped with SIGTERM, must exit 0.

    Every wait here yields to the event loop: the simulator answers from this same loop, so
    a blocking wait would stall the consumers' requests (and turn them into timeouts)."""
    defaults = {"CAMPAIGNQ_WINDOW_OPEN_SPREAD_S": "1", "CAMPAIGNQ_PAUSED_INBOX_RECHECK_S": "1"}
    settings = subprocess_env(database_url, sim, **{**defaults, **env})
    processes = [
        spawn_logged(f"consumer-{i}", ["consume", "--concurrency", "8"], env=settings, log_dir=log_dir)
        for i in range(n)
    ]
    try:
        # Started means reading (its signal handlers installed): a SIGTERM before that would
        # kill a slow starter on a loaded box, not stop it.
        deadline = time.monotonic() + 90
        for p in processes:
            while "consumer started" not in p.log_path.read_text(errors="replace"):
                assert p.process.poll() is None, p.log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, f"{p.name} did not start"
                await asyncio.sleep(0.05)
        yield [p.process for p in processes]
    finally:
        for p in processes:
            if p.process.poll() is None:
                p.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 60
        while any(p.process.poll() is None for p in processes) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for p in processes:
            if p.process.poll() is None:
                p.process.kill()
            code = p.process.wait()
            assert code == 0, p.log_path.read_text()[-3000:]


def busiest(sends: list[SentMessage], window_s: float) -> int:
    times = sorted(s.monotonic_s for s in sends)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - window_s:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def sends_of(sim: Simulator, instance: str) -> list[SentMessage]:
    return [s for s in sim.sends if s.instance == instance]


def set_inbox(db: psycopg.Connection[Any], campaign: Campaign, **columns: Any) -> None:
    for name, value in columns.items():
        db.execute(f"UPDATE inboxes SET {name} = %s WHERE id = %s", (value, campaign.inbox_id))


def pause_reason(db: psycopg.Connection[Any], campaign: Campaign) -> str | None:
    row = db.execute("SELECT pause_reason FROM inboxes WHERE id = %s", (campaign.inbox_id,)).fetchone()
    return None if row is None or row[0] is None else str(row[0])


def burnt_nothing(db: psycopg.Connection[Any], campaign: Campaign) -> bool:
    rows = db.execute(
        "SELECT retry_count, deferral_count FROM campaign_messages WHERE run_id = %s", (campaign.run_id,)
    ).fetchall()
    return all(r == (0, 0) for r in rows)


async def test_a_paced_inbox_holds_its_pace_across_processes_and_never_delays_an_unpaced_one(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str, tmp_path: Path
) -> None:
    per_minute = 60
    paced = seed.campaign(12, instance="paced", split=True, max_parts=2)
    free = seed.campaign(30, instance="free")
    set_inbox(db, paced, max_sends_per_minute=per_minute)
    # The gateway enforces the number's own limit too: our pace must never trip it.
    sim.set_faults(instance_rate_limits={"paced": per_minute // 6 + 1}, instance_rate_window_s=10.0)
    produce(db)

    async with consumers(database_url, sim, tmp_path):
        await wait_until(
            lambda: terminal(seed, paced) and terminal(seed, free), timeout_s=120, what="all sent"
        )

    assert seed.statuses(paced.run_id) == {"sent": 12}
    assert seed.statuses(free.run_id) == {"sent": 30}
    paced_sends, free_sends = sends_of(sim, "paced"), sends_of(sim, "free")
    assert busiest(paced_sends, 10.0) <= per_minute // 6 + 1
    assert sim.send_outcomes("paced").get("rate_limited_130429", 0) == 0
    # Jittered, not a fixed interval.
    times = sorted(s.monotonic_s for s in paced_sends)
    gaps = [round(b - a, 2) for a, b in itertools.pairwise(times)]
    assert len(set(gaps)) > len(gaps) // 2
    # The unpaced inbox did not queue behind the paced backlog: it finished while the paced
    # one still had most of its bubbles to send.
    last_free = max(s.monotonic_s for s in free_sends)
    assert sum(1 for t in times if t > last_free) >= len(times) // 2
    # Bubbles of one message stayed in order; nothing was sent twice; no attempt burnt.
    for message_id in paced.message_ids:
        row = message_row(db, message_id)
        lead_phone = db.execute(
            "SELECT regexp_replace(phone, '\\D', '', 'g') FROM leads WHERE id = %s", (row["lead_id"],)
        ).fetchone()
        assert lead_phone is not None
        # (both campaigns use the same phone numbers: look at this inbox's sends only)
        assert [s.text for s in sim.sends_to(str(lead_phone[0])) if s.instance == "paced"] == row["parts"]
    assert sim.duplicate_sends() == []
    assert burnt_nothing(db, paced) and burnt_nothing(db, free)
    held = db.execute(
        "SELECT count(*) FROM campaign_messages WHERE run_id = %s AND held_reason = 'pace'", (paced.run_id,)
    ).fetchone()
    assert held is not None and held[0] > 0  # they waited in the queue, not in a consumer slot


def _local_window(zone: str, *, opens_in_s: float, lasts_s: float) -> tuple[str, str]:
    now = datetime.now(ZoneInfo(zone))
    start = now + timedelta(seconds=opens_in_s)
    end = start + timedelta(seconds=lasts_s)
    return start.strftime("%H:%M:%S"), end.strftime("%H:%M:%S")


async def test_send_windows_in_each_leads_zone_hold_without_burning_and_drain_at_the_pace(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str, tmp_path: Path
) -> None:
    # Tokyo leads by their phone's zone, São Paulo leads by their own column; one window in
    # local time that opens a few seconds from now in each zone.
    tokyo = seed.campaign(6, instance="tokyo", phones=[f"+8131234{5670 + i}" for i in range(6)])
    brazil = seed.campaign(6, instance="brazil")
    db.execute("UPDATE leads SET timezone = 'America/Sao_Paulo' WHERE id = ANY(%s)", (brazil.lead_ids,))
    per_minute = 30
    set_inbox(db, tokyo, max_sends_per_minute=per_minute)
    # Long enough for two consumer processes to start and hold all 12 on a loaded machine
    # (6 s was not, under a parallel load of 5+ on 2 cores).
    opens_in_s = 12
    opens_at = datetime.now(UTC) + timedelta(seconds=opens_in_s)
    for campaign, zone in ((tokyo, "Asia/Tokyo"), (brazil, "America/Sao_Paulo")):
        start, end = _local_window(zone, opens_in_s=opens_in_s, lasts_s=3600)
        db.execute(
            "UPDATE campaign_configs SET send_window_start = %s, send_window_end = %s, timezone = 'UTC' "
            "WHERE id = %s",
            (start, end, campaign.config_id),
        )
    produce(db)

    async with consumers(database_url, sim, tmp_path):
        await wait_until(
            lambda: (
                db.execute(
                    "SELECT count(*) FROM campaign_messages WHERE held_reason = 'send_window'"
                ).fetchone()
                == (12,)
            ),
            timeout_s=30,
            what="every message held for its window",
        )
        assert sim.ai_request_count == 0  # nothing generated outside the window
        # Waiting for the window is not "stale": the producer's sweep leaves queued rows alone.
        db.execute("UPDATE campaign_messages SET scheduled_at = now() - interval '3 hours'")
        produce(db)
        assert seed.statuses() == {"queued": 12}
        await wait_until(
            lambda: terminal(seed, tokyo) and terminal(seed, brazil), timeout_s=120, what="sent once open"
        )

    assert seed.statuses() == {"sent": 12}
    # The window opens at whole seconds: no send before it (the epoch clock is the one both share).
    window_open_epoch = opens_at.replace(microsecond=0).timestamp() - 1
    assert all(s.at >= window_open_epoch for s in sim.sends)
    assert busiest(sends_of(sim, "tokyo"), 10.0) <= per_minute // 6 + 1  # drained at the pace
    assert burnt_nothing(db, tokyo) and burnt_nothing(db, brazil)
    rows = db.execute("SELECT first_deferred_at FROM campaign_messages").fetchall()
    assert all(r == (None,) for r in rows)


async def test_opted_out_leads_are_skipped_before_any_ai_call(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str, tmp_path: Path
) -> None:
    campaign = seed.campaign(6, instance="optout")
    opted = campaign.lead_ids[:3]
    db.execute("UPDATE leads SET opted_out_at = now() WHERE id = ANY(%s)", (opted,))
    produce(db)
    # A STOP arriving through the one ingestion path while a message is still pending:
    later = seed.messages(campaign.run_id, [campaign.lead_ids[4]], scheduled_offset=timedelta(hours=1))
    campaign.message_ids.extend(later)
    phone = db.execute("SELECT phone FROM leads WHERE id = %s", (campaign.lead_ids[4],)).fetchone()
    assert phone is not None
    changed = db.execute("SELECT campaignq_record_opt_out('optout', %s, 'reply')", (phone[0],)).fetchone()
    assert changed == (1,)
    assert message_row(db, later[0])["status"] == "skipped"  # suppressed at once
    assert message_row(db, campaign.message_ids[4])["status"] == "skipped"  # queued one too

    async with consumers(database_url, sim, tmp_path):
        await wait_until(lambda: terminal(seed, campaign), timeout_s=60, what="all terminal")

    for message_id in [*campaign.message_ids[:3], campaign.message_ids[4], later[0]]:
        row = message_row(db, message_id)
        assert (row["status"], row["error_class"]) == ("skipped", "opted_out")
        assert row["generated_message"] is None
    assert sim.ai_request_count == 2  # only the two leads still opted in
    assert len(sim.sends) == 2
    run = db.execute("SELECT status, leads_processed FROM campaign_runs WHERE id = %s", (campaign.run_id,))
    assert run.fetchone() == ("completed", 7)


async def test_a_run_whose_last_messages_are_opted_out_completes(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str, tmp_path: Path
) -> None:
    campaign = seed.campaign(3, instance="all-out")
    produce(db)
    # Opted out in the table after queueing (not through the function): the consumers skip.
    db.execute("UPDATE leads SET opted_out_at = now() WHERE id = ANY(%s)", (campaign.lead_ids,))
    async with consumers(database_url, sim, tmp_path):
        await wait_until(lambda: terminal(seed, campaign), timeout_s=60, what="all skipped")
        await wait_until(
            lambda: (
                db.execute("SELECT status FROM campaign_runs WHERE id = %s", (campaign.run_id,)).fetchone()
                == ("completed",)
            ),
            timeout_s=30,
            what="the run completed by the consumer's last skip",
        )
    assert seed.statuses(campaign.run_id) == {"skipped": 3}
    assert sim.ai_request_count == 0 and sim.sends == []


async def test_a_daily_cap_holds_the_rest_for_tomorrow_without_burning_attempts(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str, tmp_path: Path
) -> None:
    campaign = seed.campaign(8, instance="capped")
    set_inbox(db, campaign, daily_send_cap=3)
    produce(db)
    async with consumers(database_url, sim, tmp_path):
        await wait_until(
            lambda: (
                seed.statuses(campaign.run_id) == {"sent": 3, "queued": 5}
                and db.execute(
                    "SELECT count(*) FROM campaign_messages "
                    "WHERE held_reason = 'daily_cap' AND status = 'queued'"
                ).fetchone()
                == (5,)
            ),
            timeout_s=60,
            what="three sent, five held for tomorrow",
        )
    assert len(sim.sends) == 3
    assert burnt_nothing(db, campaign)
    view = db.execute(
        "SELECT messages_today, held_daily_cap FROM campaignq_inbox_safety WHERE inbox_id = %s",
        (campaign.inbox_id,),
    ).fetchone()
    assert view == (3, 5)


async def test_a_banned_number_pauses_its_inbox_and_its_messages_wait_until_resumed(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str, tmp_path: Path
) -> None:
    banned = seed.campaign(5, instance="banned")
    other = seed.campaign(5, instance="fine")
    sim.set_faults(banned_instances=frozenset({"banned"}))
    produce(db)
    async with consumers(database_url, sim, tmp_path):
        await wait_until(lambda: terminal(seed, other), timeout_s=60, what="the healthy inbox done")
        await wait_until(
            lambda: pause_reason(db, banned) is not None,
            timeout_s=60,
            what="the banned inbox paused",
        )
        assert str(pause_reason(db, banned)).startswith("banned:")
        # The reason is in `campaignq stats --json` (and its table), beside the waiting count.
        result = await asyncio.to_thread(run_cli, "stats", "--json", database_url=database_url)
        assert result.returncode == 0, result.stderr
        (entry,) = [i for i in json.loads(result.stdout)["inboxes"] if i["instance"] == "banned"]
        assert entry["pause_reason"].startswith("banned:") and entry["paused_at"] is not None
        await asyncio.sleep(0)  # the others keep waiting: none fails while the inbox is paused
        assert seed.statuses(banned.run_id).get("failed", 0) == 0
        # The operator fixes the number and resumes the inbox.
        sim.set_faults(banned_instances=frozenset())
        set_inbox(db, banned, paused_at=None, pause_reason=None)
        await wait_until(lambda: terminal(seed, banned), timeout_s=60, what="sent after resume")
    assert seed.statuses(banned.run_id) == {"sent": 5}
    rows = db.execute("SELECT retry_count FROM campaign_messages WHERE run_id = %s", (banned.run_id,))
    assert all(r == (0,) for r in rows.fetchall())  # the ban was not the messages' fault


async def test_repeated_rate_limits_from_the_gateway_pause_the_inbox(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str, tmp_path: Path
) -> None:
    campaign = seed.campaign(12, instance="hot")
    sim.set_faults(instance_rate_limits={"hot": 2}, instance_rate_window_s=600.0)
    produce(db)
    async with consumers(database_url, sim, tmp_path, CAMPAIGNQ_PAUSE_AFTER_RATE_LIMITS="3"):
        await wait_until(
            lambda: pause_reason(db, campaign) is not None,
            timeout_s=60,
            what="the inbox paused after repeated 429s",
        )
    assert str(pause_reason(db, campaign)).startswith("rate_limited:")
    assert len(sim.sends) == 2
    statuses = seed.statuses(campaign.run_id)
    assert statuses.get("failed", 0) == 0 and statuses["sent"] == 2
    rows = db.execute(
        "SELECT retry_count, attempt_history FROM campaign_messages WHERE run_id = %s", (campaign.run_id,)
    ).fetchall()
    assert all(r[0] == 0 for r in rows), rows


# --- the SQL edge on its own (0009): exact, no consumer needed ----------------------------------


def test_hold_back_burns_nothing_and_stops_the_deferral_clock_for_the_time_held(
    db: psycopg.Connection[Any], seed: Seeder
) -> None:
    campaign = seed.campaign(1)
    produce(db)
    read = db.execute("SELECT msg_id, read_ct FROM pgmq.read('campaign_messages', 30, 1)").fetchone()
    assert read is not None
    db.execute(
        "UPDATE campaign_messages SET status = 'generating', retry_count = 1, deferral_count = 2, "
        "first_deferred_at = now() - interval '1 hour' WHERE id = %s",
        (campaign.message_ids[0],),
    )
    before = message_row(db, campaign.message_ids[0])
    wrong = db.execute(
        "SELECT campaignq_hold_back(%s, %s, %s, 600, 'send_window', 'closed')",
        (read[0], read[1] + 1, campaign.message_ids[0]),
    ).fetchone()
    assert wrong == (False,)  # a lease that is not ours changes nothing
    held = db.execute(
        "SELECT campaignq_hold_back(%s, %s, %s, 600, 'send_window', 'closed')",
        (read[0], read[1], campaign.message_ids[0]),
    ).fetchone()
    assert held == (True,)
    after = message_row(db, campaign.message_ids[0])
    assert (after["status"], after["retry_count"], after["deferral_count"]) == ("queued", 1, 2)
    assert after["first_deferred_at"] - before["first_deferred_at"] == timedelta(seconds=600)
    assert after["held_reason"] == "send_window" and after["held_until"] is not None
    visible = db.execute(
        "SELECT vt - now() > interval '590 seconds' FROM pgmq.q_campaign_messages WHERE msg_id = %s",
        (read[0],),
    ).fetchone()
    assert visible == (True,)


def test_bookings_from_many_connections_never_share_a_slot_and_respect_the_cap(
    seed: Seeder, database_url: str
) -> None:
    import threading

    campaign = seed.campaign(40, instance="booked")
    slots: list[datetime] = []
    refused: list[uuid.UUID] = []
    lock = threading.Lock()

    def book(message_ids: list[uuid.UUID], cap: int | None) -> None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            for message_id in message_ids:
                row = conn.execute(
                    "SELECT booked, slot_at FROM campaignq_book_send_slot(%s, %s, 1.0, %s, true, 1)",
                    (campaign.inbox_id, message_id, cap),
                ).fetchone()
                assert row is not None
                with lock:
                    (slots.append(row[1]) if row[0] else refused.append(message_id))

    ids = campaign.message_ids
    threads = [threading.Thread(target=book, args=(ids[i * 8 : i * 8 + 8], 30)) for i in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(slots) == 30 and len(refused) == 10  # the daily cap, exactly, across connections
    ordered = sorted(slots)
    assert all(b - a >= timedelta(seconds=1.0) for a, b in itertools.pairwise(ordered))
    # A message booked today does not count toward the cap again when it books anew.
    book(ids[:1], 30)
    assert len(slots) == 31


# --- the gateway's answers (simulator ↔ WhatsAppClient) ----------------------------------------


async def test_the_client_reads_the_numbers_own_limit_ban_and_logout_without_blaming_our_key(
    sim: Simulator,
) -> None:
    import aiohttp

    from consumer.errors import FatalError, InboxBannedError, RateLimitedError
    from consumer.runtime.whatsapp import WhatsAppClient

    sim.set_faults(
        instance_rate_limits={"limited": 2},
        instance_rate_window_s=60.0,
        banned_instances=frozenset({"banned"}),
        logged_out_instances=frozenset({"gone"}),
    )
    async with aiohttp.ClientSession() as session:
        client = WhatsAppClient(session=session, base_url=sim.whatsapp_base_url, api_key="k")
        for _ in range(2):
            await client.send_text(instance="limited", number="5511987654321", text="hello there")
        with pytest.raises(RateLimitedError) as limited:
            await client.send_text(instance="limited", number="5511987654321", text="third")
        assert limited.value.retry_after_s is not None and 1 <= limited.value.retry_after_s <= 60
        assert "130429" in str(limited.value)
        with pytest.raises(InboxBannedError) as banned:
            await client.send_text(instance="banned", number="5511987654321", text="hello")
        assert banned.value.kind == "banned" and not isinstance(banned.value, FatalError)
        with pytest.raises(InboxBannedError) as gone:
            await client.send_text(instance="gone", number="5511987654321", text="hello")
        assert gone.value.kind == "logged_out"
    assert sim.send_outcomes("limited") == {"accepted": 2, "rate_limited_130429": 1}
    assert len(sim.sends) == 2
