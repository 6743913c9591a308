"""Pure decisions behind fair share and the shared AI budget (no I/O, no clock of its own).

Two consumers of the same maths:

* the producer (SQL, `campaignq_fair_split` in db/migrations/0008) splits each tick's room in
  the queue over workspaces by weight, then each workspace's part over its running runs;
* the AI budget lease (SQL, `campaignq_lease_rate_limit`) splits a `rate_limits` row over the
  processes that hold slices of it, by what each wants.

Both are *weighted max-min fair* ("water-filling"): nobody gets more than it asks for, what
one does not need goes at once to the others in proportion to their weights, and the
integer remainders go by largest fractional part with a rotating tie-break, so that over
many ticks no key is favoured by its position (deficit round robin with a quantum of one
tick). The SQL functions implement the same steps; `tests/integration/test_fair_share.py`
checks that both agree on the unit-test tables below.

Also here: how much budget a process asks for (`wanted_rpm`) and the adjustable token
bucket that enforces a slice (`TokenBucket`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

# An idle process still asks for a little budget, so its first request after a quiet spell
# does not wait for a refresh; one request every 10 s is negligible against any budget.
MIN_WANTED_RPM = 6
# A busy-but-not-saturated process asks for twice what it used: room to grow until the
# next refresh (≤ 1 s away), without parking budget another process is waiting for.
WANTED_HEADROOM = 2


def fair_split(
    total: int, weights: Sequence[float | int], demands: Sequence[int], *, rotation: int = 0
) -> list[int]:
    """Split `total` units over keys by weight, never giving a key more than it demands.

    Water-filling: every key still unsatisfied gets `remaining * weight / sum(weights)`;
    keys whose demand fits are given exactly their demand and leave; repeat until nobody
    leaves. Exact fractions, then floors, then the leftover units one by one to the keys
    with the largest fractional part (ties: the first key at or after `rotation`).
    Keys with zero demand or zero weight get nothing.
    """
    if len(weights) != len(demands):
        raise ValueError("weights and demands must have the same length")
    if total < 0:
        raise ValueError("total must not be negative")
    count = len(demands)
    if sum(max(0, d) for d in demands) <= total:
        return [max(0, d) for d in demands]
    shares: list[Fraction] = [Fraction(0)] * count
    active = [i for i in range(count) if demands[i] > 0 and weights[i] > 0]
    remaining = Fraction(total)
    while active:
        weight_sum = sum(Fraction(weights[i]) for i in active)
        fitting = [i for i in active if demands[i] <= remaining * Fraction(weights[i]) / weight_sum]
        if not fitting:
            for i in active:
                shares[i] = remaining * Fraction(weights[i]) / weight_sum
            break
        for i in fitting:
            shares[i] = Fraction(demands[i])
            remaining -= demands[i]
        active = [i for i in active if i not in fitting]
    allocated = [math.floor(s) for s in shares]
    leftover = total - sum(allocated)
    order = sorted(
        (i for i in range(count) if allocated[i] < demands[i] and shares[i] > allocated[i]),
        key=lambda i: (-(shares[i] - allocated[i]), (i - rotation) % count),
    )
    for i in order[:leftover]:
        allocated[i] += 1
    return allocated


def wanted_rpm(*, cap_rpm: int, used_rpm: float, saturated: bool) -> int:
    """Requests per minute a process asks the shared budget for at its next refresh.

    Saturated (a request had to wait for the slice since the last refresh): everything its
    own cap allows, so that the water-filling gives it its fair part. Otherwise twice what
    it used, at least `MIN_WANTED_RPM`: idle processes leave the budget to busy ones.
    """
    if saturated:
        return cap_rpm
    return max(1, min(cap_rpm, max(MIN_WANTED_RPM, math.ceil(used_rpm * WANTED_HEADROOM))))


def grant_rpm(*, target_rpm: int, budget_rpm: int, others_granted_rpm: int) -> int:
    """A slice never takes budget another live holder still has: join without overshoot.

    The holder's fair target only becomes its grant once the others have given the budget
    back at their own refresh, so the sum of grants stays within the budget at all times.
    """
    return max(0, min(target_rpm, budget_rpm - others_granted_rpm))


@dataclass
class TokenBucket:
    """A token bucket whose rate can change while it runs; the caller passes `now`.

    Capacity is one second of rate (at least one token): the "1 s of burst" the shared budget
    allows. A new bucket starts empty so a process joining a busy budget cannot burst.
    """

    rate_per_s: float
    now: float
    tokens: float = 0.0

    @property
    def capacity(self) -> float:
        return max(1.0, self.rate_per_s)

    def _refill(self, now: float) -> None:
        if now > self.now:
            self.tokens = min(self.capacity, self.tokens + (now - self.now) * self.rate_per_s)
        self.now = max(self.now, now)

    def set_rate(self, rate_per_s: float, now: float) -> None:
        """Tokens earned so far stay earned (up to the new capacity); the new rate starts now."""
        self._refill(now)
        self.rate_per_s = max(0.0, rate_per_s)
        self.tokens = min(self.tokens, self.capacity)

    def try_take(self, now: float) -> float:
        """0.0 and one token taken, or the seconds until a token exists (inf at rate 0)."""
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        if self.rate_per_s <= 0:
            return math.inf
        return (1.0 - self.tokens) / self.rate_per_s
