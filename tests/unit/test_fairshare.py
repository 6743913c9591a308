"""The pure maths of fair share and the shared AI budget (consumer.core.fairshare)."""

from __future__ import annotations

import math

import pytest

from consumer.core.fairshare import MIN_WANTED_RPM, TokenBucket, fair_split, grant_rpm, wanted_rpm

# (total, weights, demands, rotation, expected) — also run against the SQL twin in
# tests/integration/test_fair_share.py, so keep every row meaningful for both.
FAIR_SPLIT_TABLE = [
    pytest.param(90, [1, 1, 1], [1000, 1000, 1000], 0, [30, 30, 30], id="equal-share"),
    pytest.param(90, [1, 1, 1], [1000, 1000, 5], 0, [43, 42, 5], id="small-demand-gives-back"),
    pytest.param(90, [1, 1, 1], [1000, 1000, 5], 1, [42, 43, 5], id="rotation-moves-the-remainder"),
    pytest.param(100, [3, 1], [1000, 1000], 0, [75, 25], id="weights"),
    pytest.param(100, [1, 1], [10, 20], 0, [10, 20], id="room-for-all"),
    pytest.param(10, [1, 1, 1], [0, 50, 50], 0, [0, 5, 5], id="no-demand-no-share"),
    pytest.param(10, [1, 1, 1], [50, 50, 50], 0, [4, 3, 3], id="remainder-first"),
    pytest.param(10, [1, 1, 1], [50, 50, 50], 2, [3, 3, 4], id="remainder-rotated"),
    pytest.param(0, [1, 1], [5, 5], 0, [0, 0], id="nothing-to-split"),
    pytest.param(7, [1000, 1], [3, 100], 0, [3, 4], id="heavy-but-small"),
    pytest.param(600, [1, 1, 1], [600, 600, 6], 0, [297, 297, 6], id="budget-idle-holder"),
    pytest.param(5, [], [], 0, [], id="empty"),
]


@pytest.mark.parametrize(("total", "weights", "demands", "rotation", "expected"), FAIR_SPLIT_TABLE)
def test_fair_split(
    total: int, weights: list[int], demands: list[int], rotation: int, expected: list[int]
) -> None:
    got = fair_split(total, weights, demands, rotation=rotation)
    assert got == expected
    assert sum(got) == min(total, sum(demands))
    assert all(0 <= g <= d for g, d in zip(got, demands, strict=True))


def test_ten_runs_of_one_workspace_get_one_workspaces_share() -> None:
    # Workspaces first (A has ten runs, B one), then A's part over its runs.
    workspaces = fair_split(100, [1, 1], [10 * 1000, 1000])
    runs_of_a = fair_split(workspaces[0], [1] * 10, [1000] * 10)
    assert workspaces == [50, 50]
    assert runs_of_a == [5] * 10


def test_rotation_spreads_remainders_evenly_over_ticks() -> None:
    totals = [0, 0, 0]
    for tick in range(300):
        for i, n in enumerate(fair_split(10, [1, 1, 1], [99, 99, 99], rotation=tick)):
            totals[i] += n
    assert max(totals) - min(totals) <= 1


@pytest.mark.parametrize(
    ("cap", "used", "saturated", "expected"),
    [
        (600, 0.0, True, 600),
        (600, 0.0, False, MIN_WANTED_RPM),
        (600, 100.0, False, 200),
        (600, 400.0, False, 600),
        (3, 0.0, False, 3),
        (1, 0.0, False, 1),
    ],
)
def test_wanted_rpm(cap: int, used: float, saturated: bool, expected: int) -> None:
    assert wanted_rpm(cap_rpm=cap, used_rpm=used, saturated=saturated) == expected


@pytest.mark.parametrize(
    ("target", "budget", "others", "expected"),
    [
        (300, 600, 600, 0),  # a newcomer waits until the others give budget back
        (300, 600, 300, 300),
        (300, 600, 450, 150),
        (200, 600, 0, 200),  # never more than its fair target
        (300, 300, 600, 0),  # budget lowered below what others still hold
    ],
)
def test_grant_never_takes_what_others_hold(target: int, budget: int, others: int, expected: int) -> None:
    assert grant_rpm(target_rpm=target, budget_rpm=budget, others_granted_rpm=others) == expected


def test_token_bucket_starts_empty_and_bursts_at_most_one_second() -> None:
    bucket = TokenBucket(rate_per_s=10.0, now=0.0)
    assert bucket.try_take(0.0) == pytest.approx(0.1)
    taken = sum(1 for _ in range(100) if bucket.try_take(100.0) == 0.0)
    assert taken == 10  # a long idle spell earns one second of rate, not more


@pytest.mark.parametrize(("rate", "capacity"), [(0.1, 1.0), (5.0, 5.0), (100.0, 100.0)])
def test_token_bucket_capacity_is_one_second_but_at_least_one(rate: float, capacity: float) -> None:
    assert TokenBucket(rate_per_s=rate, now=0.0).capacity == capacity


def test_token_bucket_rate_change_keeps_earned_tokens_and_zero_rate_waits_forever() -> None:
    bucket = TokenBucket(rate_per_s=10.0, now=0.0)
    bucket.set_rate(2.0, now=0.5)  # 5 tokens earned, capacity now 2
    assert bucket.tokens == 2.0
    bucket.set_rate(0.0, now=0.5)
    assert bucket.try_take(0.5) == 0.0
    assert bucket.try_take(0.5) == math.inf


def test_fair_split_rejects_mismatched_input() -> None:
    with pytest.raises(ValueError, match="same length"):
        fair_split(1, [1], [1, 2])
