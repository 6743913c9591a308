"""When a busy worker reads again (`core.refill`): batches at high latency, never a slow first read."""

from __future__ import annotations

import pytest

from consumer.core import refill
from consumer.core.refill import REFILL_MAX_WAIT_S, low_water, refill_wait_s


@pytest.mark.parametrize(
    ("concurrency", "batch_size", "configured", "expected"),
    [
        (64, 64, 0, 16),  # a quarter of the slots
        (64, 8, 0, 8),  # at most one batch
        (256, 50, 0, 50),
        (3, 50, 0, 1),  # never below one slot
        (1, 50, 0, 1),
        (64, 64, 5, 5),  # configured wins
        (4, 64, 10, 4),  # but never above the slots there are
    ],
)
def test_low_water(concurrency: int, batch_size: int, configured: int, expected: int) -> None:
    assert low_water(concurrency=concurrency, batch_size=batch_size, configured=configured) == expected


def _wait(**overrides: object) -> float | None:
    args: dict[str, object] = {
        "free": 3,
        "in_flight": 61,
        "low_water": 16,
        "first_freed_age_s": 0.0,
        "max_wait_s": REFILL_MAX_WAIT_S,
        "notified": False,
    }
    args.update(overrides)
    return refill_wait_s(**args)  # type: ignore[arg-type]


def test_all_slots_busy_waits_for_one_to_free() -> None:
    assert _wait(free=0, in_flight=64) is None


def test_idle_worker_reads_at_once() -> None:
    # start-up, or every message finished: the first read is never delayed
    assert _wait(free=64, in_flight=0) == 0.0
    assert _wait(free=1, in_flight=0, low_water=16) == 0.0


def test_notify_reads_at_once() -> None:
    assert _wait(free=1, in_flight=63, notified=True) == 0.0


def test_low_water_reached_reads_at_once() -> None:
    assert _wait(free=16, in_flight=48) == 0.0
    assert _wait(free=40, in_flight=24) == 0.0


def test_few_free_slots_wait_for_others_up_to_the_max_wait() -> None:
    assert _wait(free=1, first_freed_age_s=0.0) == pytest.approx(REFILL_MAX_WAIT_S)
    assert _wait(free=5, first_freed_age_s=0.04) == pytest.approx(REFILL_MAX_WAIT_S - 0.04)


def test_the_first_freed_slot_never_waits_longer_than_the_max_wait() -> None:
    assert _wait(free=2, first_freed_age_s=REFILL_MAX_WAIT_S) == 0.0
    assert _wait(free=2, first_freed_age_s=5.0) == 0.0


def test_zero_max_wait_refills_every_freed_slot_at_once() -> None:
    assert _wait(free=1, max_wait_s=0.0) == 0.0


def test_a_freed_slot_never_idles_more_than_its_share_of_a_message() -> None:
    assert refill.wait_cap_s(max_wait_s=0.1, mean_message_s=None) == 0.1
    assert refill.wait_cap_s(max_wait_s=0.1, mean_message_s=1.0) == pytest.approx(refill.IDLE_SHARE * 1.0)
    assert refill.wait_cap_s(max_wait_s=0.1, mean_message_s=10.0) == 0.1


def test_the_mean_message_time_follows_the_recent_messages() -> None:
    mean = refill.mean_message_s(None, 2.0)
    assert mean == 2.0
    for _ in range(60):
        mean = refill.mean_message_s(mean, 1.0)
    assert mean == pytest.approx(1.0, abs=0.01)
