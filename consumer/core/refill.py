"""When a busy worker reads again: refill freed slots in batches, not one read per slot.

Every read is a round trip for ``pgmq.read`` plus one for the batch's claim. Refilling each
slot the moment it frees costs those two round trips per message or two, which at a 2 s AI
latency was most of the consumer's CPU (6 to 11 ms per message against 2.2 ms at zero latency).
So a worker with messages still in flight waits until a *low-water mark* of slots is free
(``min(batch_size, concurrency // 4)`` by default), or until the first freed slot has waited
``max_wait_s`` (0.1 s), and never longer than ``IDLE_SHARE`` of a message's usual time
(`wait_cap_s`): a slot that works 1 s per message must not idle 0.1 s of it (10 %), while one
that works 4 s may wait the whole 0.1 s (2.5 %), saving most of the round trips.

A worker with nothing in flight, or woken by NOTIFY (new messages: the queue was drained,
so freed slots were waiting for work, not for each other), reads at once: the first message
of an idle worker never waits for this window.
"""

from __future__ import annotations

REFILL_MAX_WAIT_S = 0.1
"""Default longest wait of a freed slot for others (`Settings.refill_max_wait_s`)."""
IDLE_SHARE = 0.02
"""The most of a message's usual time a freed slot may idle waiting for others."""
MESSAGE_S_WEIGHT = 0.1
"""Weight of the newest message in the running mean of message times (`mean_message_s`)."""


def wait_cap_s(*, max_wait_s: float, mean_message_s: float | None) -> float:
    """The longest a freed slot waits: ``max_wait_s``, or less when messages are short enough
    that it would idle more than ``IDLE_SHARE`` of a message's time (unknown yet: no cap)."""
    if mean_message_s is None:
        return max_wait_s
    return min(max_wait_s, IDLE_SHARE * mean_message_s)


def mean_message_s(previous: float | None, latest_s: float) -> float:
    """Running (exponentially weighted) mean of message times; the first one starts it."""
    if previous is None:
        return latest_s
    return previous + MESSAGE_S_WEIGHT * (latest_s - previous)


def low_water(*, concurrency: int, batch_size: int, configured: int = 0) -> int:
    """Free slots that trigger a read while others are busy: ``configured`` when set (>0), else
    a quarter of the slots, at most one batch; never below 1 nor above ``concurrency``."""
    mark = configured if configured > 0 else min(batch_size, concurrency // 4)
    return max(1, min(mark, concurrency))


def refill_wait_s(
    *, free: int, in_flight: int, low_water: int, first_freed_age_s: float, max_wait_s: float, notified: bool
) -> float | None:
    """How long to wait before reading: 0.0 = read now; None = wait until a slot frees.

    ``free``: slots without a message; ``in_flight``: messages being processed;
    ``first_freed_age_s``: how long the oldest free slot has been waiting (0 when unknown);
    ``notified``: NOTIFY said new messages arrived since the last read.
    """
    if free <= 0:
        return None
    if in_flight == 0 or notified or free >= low_water:
        return 0.0
    return max(0.0, max_wait_s - first_freed_age_s)
