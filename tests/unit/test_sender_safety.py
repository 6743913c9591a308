"""Pure sender-safety maths (issue 13): pace gaps and plans, daily cap and warm-up, send
windows across time zones and midnight, the lead's zone, and the STOP classifier."""

from __future__ import annotations

import itertools
import random
import uuid
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from consumer.core.models import SenderContext
from consumer.core.optout import is_opt_out_reply, normalize_reply
from consumer.core.pacing import (
    InboxSafety,
    booking_usable,
    daily_cap,
    hold_delay_s,
    next_utc_midnight,
    pace_gap_s,
    plan_message,
)
from consumer.core.send_window import is_open, lead_zone, next_opening, zone_of_phone
from consumer.runtime.sender_safety import HOLD_INBOX_PAUSED, HOLD_SEND_WINDOW, paused_hold, window_hold

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
INBOX = uuid.uuid4()


# --- pacing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("per_minute", [1, 6, 30, 60, 600])
@pytest.mark.parametrize("jitter", [0.0, 0.3, 1.0])
def test_a_gap_is_never_shorter_than_the_limit_allows_and_stretches_at_most_by_the_jitter(
    per_minute: int, jitter: float
) -> None:
    rng = random.Random(1)
    gaps = [pace_gap_s(per_minute, jitter=jitter, rng=rng) for _ in range(500)]
    base = 60.0 / per_minute
    assert min(gaps) >= base
    assert max(gaps) <= base * (1 + jitter) + 1e-9
    if jitter > 0:
        assert len({round(g, 6) for g in gaps}) > 400  # not a fixed interval


@pytest.mark.parametrize(
    ("delays", "per_minute", "expected_min_gaps"),
    [
        ([0.0], 30, []),
        ([0.0, 1.0, 3.0], 30, [2.0, 3.25]),  # the typing delay wins over a shorter pace gap
        ([0.0, 0.5], 6, [10.0]),  # the pace wins over a short typing delay
        ([0.0, 1.0], None, [1.25]),  # unpaced (cap only): bubbles as soon as typing allows
    ],
)
def test_a_plan_keeps_bubbles_in_order_with_gaps_at_least_pace_and_typing(
    delays: list[float], per_minute: int | None, expected_min_gaps: list[float]
) -> None:
    plan = plan_message(
        first_index=0,
        typing_delays_s=delays,
        max_sends_per_minute=per_minute,
        jitter=0.3,
        rng=random.Random(2),
    )
    gaps = [b - a for a, b in itertools.pairwise(plan.offsets_s)]
    assert plan.offsets_s[0] == 0.0
    assert all(g >= m - 1e-9 for g, m in zip(gaps, expected_min_gaps, strict=True))
    trailing = plan.span_s - plan.offsets_s[-1]
    assert trailing >= (60.0 / per_minute if per_minute else 0.0)
    # The request of bubble i starts its typing delay before its landing time.
    for k, delay in enumerate(delays):
        assert plan.start_after_s(k, delay) == pytest.approx(max(0.0, plan.offsets_s[k] - delay))


def test_a_resumed_message_plans_only_its_remaining_bubbles() -> None:
    plan = plan_message(
        first_index=2, typing_delays_s=[0.4, 0.4], max_sends_per_minute=60, jitter=0.0, rng=random.Random(3)
    )
    assert plan.start_after_s(2, 0.4) == 0.0
    assert plan.start_after_s(3, 0.4) == pytest.approx(1.0 - 0.4)
    assert plan.span_s == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("inbox", "now", "expected"),
    [
        (InboxSafety(INBOX), NOW, None),
        (InboxSafety(INBOX, daily_send_cap=200), NOW, 200),
        (InboxSafety(INBOX, warmup_started_at=NOW, warmup_first_day_cap=20), NOW, 20),
        (InboxSafety(INBOX, warmup_started_at=NOW, warmup_first_day_cap=20), NOW + timedelta(days=1), 30),
        (InboxSafety(INBOX, warmup_started_at=NOW, warmup_first_day_cap=20), NOW + timedelta(days=2), 45),
        (
            InboxSafety(INBOX, daily_send_cap=100, warmup_started_at=NOW, warmup_first_day_cap=20),
            NOW + timedelta(days=30),
            100,
        ),
        (
            InboxSafety(INBOX, warmup_started_at=NOW, warmup_first_day_cap=10, warmup_daily_growth=2.0),
            NOW + timedelta(days=3, hours=23),
            80,
        ),
        (InboxSafety(INBOX, warmup_started_at=NOW, warmup_first_day_cap=10), NOW - timedelta(days=2), 10),
        (
            InboxSafety(INBOX, warmup_started_at=NOW, warmup_first_day_cap=1),
            NOW + timedelta(days=10_000),
            None,
        ),
    ],
)
def test_daily_cap_with_warm_up(inbox: InboxSafety, now: datetime, expected: int | None) -> None:
    cap = daily_cap(inbox, now)
    if expected is None and inbox.warmup_started_at is not None:
        assert cap is not None and cap > 10**9  # a long finished warm-up: effectively uncapped, finite
    else:
        assert cap == expected


def test_only_paced_or_capped_inboxes_need_the_shared_row() -> None:
    assert not InboxSafety(INBOX).needs_booking(NOW)
    assert InboxSafety(INBOX, max_sends_per_minute=30).needs_booking(NOW)
    assert InboxSafety(INBOX, daily_send_cap=5).needs_booking(NOW)


@pytest.mark.parametrize(
    ("wait_s", "usable"),
    [(None, False), (0.0, True), (2.9, True), (3.1, False), (-0.9, True), (-1.1, False), (-3600.0, False)],
)
def test_a_booking_is_reused_only_when_near_or_a_little_late(wait_s: float | None, usable: bool) -> None:
    assert booking_usable(wait_s=wait_s, max_wait_s=3.0, late_tolerance_s=1.0) is usable


@pytest.mark.parametrize(("wait_s", "expected"), [(10.0, 8.5), (1.0, 0.0), (0.0, 0.0)])
def test_a_held_message_comes_back_a_little_before_its_slot(wait_s: float, expected: float) -> None:
    assert hold_delay_s(wait_s, early_s=1.5) == expected


def test_the_cap_resets_at_utc_midnight() -> None:
    late_in_sao_paulo = datetime(2026, 11, 29, 23, 59, tzinfo=ZoneInfo("America/Sao_Paulo"))
    assert next_utc_midnight(late_in_sao_paulo) == datetime(2026, 12, 1, tzinfo=UTC)
    assert next_utc_midnight(NOW) == datetime(2026, 11, 30, tzinfo=UTC)


# --- send windows ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("local", "start", "end", "open_"),
    [
        (time(12, 0), None, None, True),
        (time(12, 0), time(9, 0), time(20, 0), True),
        (time(9, 0), time(9, 0), time(20, 0), True),
        (time(20, 0), time(9, 0), time(20, 0), False),
        (time(8, 59, 59), time(9, 0), time(20, 0), False),
        (time(23, 0), time(22, 0), time(6, 0), True),  # wraps midnight
        (time(3, 0), time(22, 0), time(6, 0), True),
        (time(6, 0), time(22, 0), time(6, 0), False),
        (time(12, 0), time(22, 0), time(6, 0), False),
        (time(12, 0), time(9, 0), time(9, 0), True),  # start == end: the whole day
    ],
)
def test_is_open(local: time, start: time | None, end: time | None, open_: bool) -> None:
    assert is_open(local, start, end) is open_


SAO_PAULO = ZoneInfo("America/Sao_Paulo")  # UTC-3, no DST since 2019
TOKYO = ZoneInfo("Asia/Tokyo")  # UTC+9
NEW_YORK = ZoneInfo("America/New_York")


@pytest.mark.parametrize(
    ("now", "start", "end", "zone", "expected"),
    [
        # 12:00 UTC = 09:00 in São Paulo: inside 09-20
        (NOW, time(9), time(20), SAO_PAULO, None),
        # 12:00 UTC = 21:00 in Tokyo: closed; opens tomorrow 09:00 JST = 00:00 UTC on the 30th
        (NOW, time(9), time(20), TOKYO, datetime(2026, 11, 30, 0, 0, tzinfo=UTC)),
        # 11:00 UTC = 08:00 São Paulo: opens today 09:00 local = 12:00 UTC
        (NOW - timedelta(hours=1), time(9), time(20), SAO_PAULO, datetime(2026, 11, 29, 12, tzinfo=UTC)),
        # window wrapping midnight 22-06 in Tokyo; 12:00 UTC = 21:00 JST: opens 22:00 JST = 13:00 UTC
        (NOW, time(22), time(6), TOKYO, datetime(2026, 11, 29, 13, tzinfo=UTC)),
        (NOW, time(9), time(20), UTC, None),
        # DST: New York springs forward on 2026-03-08; a 09:00 opening is 13:00 UTC that day
        (
            datetime(2026, 3, 8, 3, 0, tzinfo=UTC),
            time(9),
            time(17),
            NEW_YORK,
            datetime(2026, 3, 8, 13, 0, tzinfo=UTC),
        ),
        # ... and 14:00 UTC the day before (still EST)
        (
            datetime(2026, 3, 7, 3, 0, tzinfo=UTC),
            time(9),
            time(17),
            NEW_YORK,
            datetime(2026, 3, 7, 14, 0, tzinfo=UTC),
        ),
    ],
)
def test_next_opening(
    now: datetime, start: time, end: time, zone: ZoneInfo, expected: datetime | None
) -> None:
    assert next_opening(now, start, end, zone) == expected


@pytest.mark.parametrize("minutes", range(0, 24 * 60, 37))
@pytest.mark.parametrize("zone", [SAO_PAULO, TOKYO, NEW_YORK, UTC])
def test_the_opening_is_in_the_future_and_inside_the_window(minutes: int, zone: ZoneInfo) -> None:
    now = NOW + timedelta(minutes=minutes)
    start, end = time(22, 30), time(7, 15)
    opening = next_opening(now, start, end, zone)
    if opening is None:
        assert is_open(now.astimezone(zone).time(), start, end)
    else:
        assert now < opening <= now + timedelta(days=1)
        assert opening.astimezone(zone).time() == start


@pytest.mark.parametrize(
    ("lead_tz", "phone", "config_tz", "expected"),
    [
        ("Asia/Tokyo", "+5511999990000", "Europe/Lisbon", "Asia/Tokyo"),
        (None, "+5511999990000", "Europe/Lisbon", "America/Sao_Paulo"),
        (None, "+4915112345678", None, "Europe/Berlin"),
        (None, "+81312345678", None, "Asia/Tokyo"),
        ("Not/AZone", "+4915112345678", None, "Europe/Berlin"),  # a typo falls through
        (None, "+7 912 345 67 89", "Europe/Lisbon", "Europe/Lisbon"),  # Russia: several zones
        (None, "not a phone", "Europe/Lisbon", "Europe/Lisbon"),
        (None, None, None, "UTC"),
        (None, "", "", "UTC"),
    ],
)
def test_lead_zone(lead_tz: str | None, phone: str | None, config_tz: str | None, expected: str) -> None:
    assert str(lead_zone(lead_timezone=lead_tz, phone=phone, config_timezone=config_tz)) == expected


def test_phone_zone_is_cached() -> None:
    zone_of_phone.cache_clear()
    for _ in range(3):
        zone_of_phone("+5511999990000")
    assert zone_of_phone.cache_info().hits == 2


def test_window_hold_waits_until_the_opening_plus_a_spread() -> None:
    sender = SenderContext(window_start=time(9), window_end=time(20), config_timezone="Asia/Tokyo")
    held = window_hold(sender, None, NOW, spread_s=60.0, rng=random.Random(4))
    assert held is not None and held.reason == HOLD_SEND_WINDOW
    assert 12 * 3600 <= held.delay_s <= 12 * 3600 + 60
    assert window_hold(SenderContext(), None, NOW, spread_s=60.0, rng=random.Random(4)) is None


def test_a_paused_inbox_holds_for_about_the_recheck_interval() -> None:
    sender = SenderContext(inbox=InboxSafety(INBOX, paused_at=NOW, pause_reason="banned: x"))
    held = paused_hold(sender, recheck_s=100.0, rng=random.Random(5))
    assert held is not None and held.reason == HOLD_INBOX_PAUSED and 75 <= held.delay_s <= 125
    assert "banned" in str(held)
    assert paused_hold(SenderContext(inbox=InboxSafety(INBOX)), recheck_s=100, rng=random.Random(5)) is None


# --- opt-out replies ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "stop"),
    [
        ("STOP", True),
        ("stop.", True),
        ("  Stop!! ", True),
        ("Unsubscribe", True),
        ("PARAR", True),
        ("Não quero mais", True),
        ("nao quero", True),
        ("Sair", True),
        ("baja", True),
        ("No más mensajes", True),
        ("stop 🙏", True),
        ("please stop", True),
        ("don't stop, this is great", False),
        ("Can you stop by tomorrow at the store?", False),
        ("stopped", False),
        ("obrigado!", False),
        ("", False),
        (None, False),
        ("🙏", False),
    ],
)
def test_is_opt_out_reply(text: str | None, stop: bool) -> None:
    assert is_opt_out_reply(text) is stop


def test_normalize_reply() -> None:
    assert normalize_reply("  Não QUERO — mais!! ") == "nao quero mais"


def test_a_started_message_is_completed_even_after_its_window_closed() -> None:
    from consumer.core.models import MessageContext, QueueMessage
    from consumer.runtime.sender_safety import SenderSafety
    from consumer.settings import Settings

    sender = SenderContext(window_start=time(9), window_end=time(20), config_timezone="Asia/Tokyo")
    msg = QueueMessage(msg_id=1, read_ct=1, enqueued_at=NOW, vt=NOW, message={})
    safety = SenderSafety(db=None, settings=Settings(), rng=random.Random(6), clock=lambda: NOW)  # type: ignore[arg-type]
    fresh = MessageContext(msg=msg, payload=None, sender=sender)
    started = MessageContext(msg=msg, payload=None, sender=sender, parts_sent=1)
    assert safety._pause_or_window(fresh, NOW) is not None  # 21:00 in Tokyo: wait
    assert safety._pause_or_window(started, NOW) is None  # half-sent: finish it
    paused = SenderContext(inbox=InboxSafety(INBOX, paused_at=NOW))
    started_paused = MessageContext(msg=msg, payload=None, sender=paused, parts_sent=1)
    assert safety._pause_or_window(started_paused, NOW) is not None  # a paused inbox sends nothing
