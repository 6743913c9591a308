"""When a busy worker reads again: refill freed slots in batches, not one read per slot.

Every read is a round trip for ``pgmq.read`` plus one for the batch's claim. Refilling each
slot the moment it frees costs those two round trips per message or two, which at a 2 s AI
latency was most of the consumer's CPU (6 to 11 ms per message against 2.2 ms at zero latency).
So a worker with messages still in flight waits until a *low-water mark* of slots is free
(``min(batch_size, concurrency // 4)`` by default), or until the first freed slot has waited
``max_wait_s`` (0.1 s: a slot busy for seconds idles a few per cent of its time at most).

A worker with nothing in flight, or woken by NOTIFY (new messages: the queue was drained,
so freed slots were waiting for work, not for each other), reads at once: the first message
of an idle worker never waits for this window.
"""

from __future__ import annotations

REFILL_MAX_WAIT_S = 0.1
"""Default longest wait of a freed slot for others (`Settings.refill_max_wait_s`)."""


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
