"""Per-inbox pacing maths: jittered gaps, a message's send plan, the daily cap and warm-up.

Pure (no clock, no I/O; `now` and the random generator are passed in), so every rule is a
row in a parametrize table. The shared state (the inbox's next free send time) lives in
PostgreSQL (`inbox_pacing`, db/migrations/0009_sender_safety.sql); `sender_safety.py`
carries these decisions out.

Why the shapes below:
* Unofficial gateways get numbers banned for bursts *and* for fixed intervals, so the gap
  between two bubbles of an inbox is never shorter than ``60 / max_sends_per_minute`` and is
  stretched by a random factor in ``[1, 1 + jitter]`` (the limit stays a true maximum).
* A message books its whole span at once (every remaining bubble plus the gap after the
  last), so its bubbles stay together, in order, with their typing delays, and a send that
  is late by a little never collides with the next message's slot.
* The typing delay of bubble *i* is shown *before* it lands, so the request starts
  ``delay`` before the bubble's planned time.
"""

from __future__ import annotations

import math
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

SECONDS_PER_MINUTE = 60.0
SEND_MARGIN_S = 0.25
"""Room between two bubbles of one message beyond the typing delay (the HTTP round trip)."""


@dataclass(frozen=True)
class InboxSafety:
    """The inbox's sender-safety settings, read fresh with every batch (never cached)."""

    inbox_id: uuid.UUID
    max_sends_per_minute: int | None = None
    daily_send_cap: int | None = None
    paused_at: datetime | None = None
    pause_reason: str | None = None
    warmup_started_at: datetime | None = None
    warmup_first_day_cap: int | None = None
    warmup_daily_growth: float = 1.5

    def needs_booking(self, now: datetime) -> bool:
        """Only paced or capped inboxes touch the shared pacing row (no cost for the others)."""
        return self.max_sends_per_minute is not None or daily_cap(self, now) is not None


@dataclass(frozen=True)
class SendPlan:
    """Where each remaining bubble of a message lands, relative to its booked slot."""

    first_index: int
    offsets_s: tuple[float, ...]
    """Seconds after the slot at which bubble ``first_index + k`` should land."""
    span_s: float
    """Seconds the message occupies the inbox (its bubbles plus the gap after the last)."""

    def start_after_s(self, index: int, delay_s: float) -> float:
        """When (seconds after the slot) to start the request of bubble `index`: its landing
        time minus its typing delay, which the gateway shows before delivering it."""
        return max(0.0, self.offsets_s[index - self.first_index] - delay_s)


def pace_gap_s(max_sends_per_minute: int, *, jitter: float, rng: random.Random) -> float:
    """One gap between two bubbles of an inbox: the minimum interval, stretched at random."""
    base = SECONDS_PER_MINUTE / max_sends_per_minute
    return base * (1.0 + max(0.0, jitter) * rng.random())


def plan_message(
    *,
    first_index: int,
    typing_delays_s: list[float],
    max_sends_per_minute: int | None,
    jitter: float,
    rng: random.Random,
) -> SendPlan:
    """Plan the remaining bubbles of one message.

    `typing_delays_s[k]` is the typing delay of bubble ``first_index + k`` (0 for the first
    bubble of a message). Unpaced inboxes (a daily cap only) get no gaps: bubbles go as soon
    as their typing delay allows, exactly as without sender safety.
    """
    offsets: list[float] = []
    at = 0.0
    for k, delay_s in enumerate(typing_delays_s):
        if k > 0:
            gap = pace_gap_s(max_sends_per_minute, jitter=jitter, rng=rng) if max_sends_per_minute else 0.0
            at += max(gap, delay_s + SEND_MARGIN_S)
        offsets.append(at)
    trailing = pace_gap_s(max_sends_per_minute, jitter=jitter, rng=rng) if max_sends_per_minute else 0.0
    return SendPlan(first_index=first_index, offsets_s=tuple(offsets), span_s=at + trailing)


def daily_cap(inbox: InboxSafety, now: datetime) -> int | None:
    """Today's cap: the inbox's `daily_send_cap`, lowered by the warm-up curve while it lasts.

    Warm-up (community practice for new numbers): day 0 allows `warmup_first_day_cap`
    messages, each following day `warmup_daily_growth` times more, rounded up.
    """
    caps: list[int] = []
    if inbox.daily_send_cap is not None:
        caps.append(inbox.daily_send_cap)
    if inbox.warmup_started_at is not None and inbox.warmup_first_day_cap is not None:
        days = max(0, (now - inbox.warmup_started_at) // timedelta(days=1))
        growth = max(1.0, inbox.warmup_daily_growth)
        # Past ~60 days any curve is far above every real cap; stop before floats overflow.
        exponent = min(days, 60)
        caps.append(math.ceil(inbox.warmup_first_day_cap * growth**exponent))
    return min(caps) if caps else None


def next_utc_midnight(now: datetime) -> datetime:
    """When the daily cap resets (the cap counts messages per UTC day)."""
    today = now.astimezone(UTC).date()
    return datetime(today.year, today.month, today.day, tzinfo=UTC) + timedelta(days=1)


def booking_usable(*, wait_s: float | None, max_wait_s: float, late_tolerance_s: float) -> bool:
    """May a message that comes back with a booking use it (instead of booking again)?

    Yes when the slot is near (we wait for it in-process) or only a little late (sending now
    still keeps clear of the next message's slot, which starts a whole span later). A slot
    long past belongs to an old attempt: book a new one.
    """
    if wait_s is None:
        return False
    return -late_tolerance_s <= wait_s <= max_wait_s


def hold_delay_s(wait_s: float, *, early_s: float) -> float:
    """How long a message whose slot is far away waits in the queue: until a little before
    its slot, so a polling consumer has read and claimed it by then."""
    return max(0.0, wait_s - early_s)
