"""A circuit breaker as a pure state machine: every method takes ``now`` instead of reading a clock.

Keeping the clock outside (like psycopg_pool's backoff) lets the tests walk through
closed → open → half-open → closed without sleeping, and lets the HTTP clients decide
which outcomes count as failures: the breaker only counts what it is told.

Half-open admits exactly ONE trial call. A trial whose caller never reports back (the
task was cancelled, or the outcome said nothing about the provider's health and was
reported with `record_neutral`) must not wedge the breaker half-open forever, so a
trial's claim lapses after one cooldown and the next caller becomes the trial.
"""

from __future__ import annotations

from typing import Literal

BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Opens after `failure_threshold` consecutive failures; tries one call again after `cooldown_s`."""

    def __init__(self, *, failure_threshold: int, cooldown_s: float) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if cooldown_s <= 0:
            raise ValueError("cooldown_s must be positive")
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self._state: BreakerState = "closed"
        self._consecutive_failures = 0
        self._opened_at = 0.0
        self._trial_started_at: float | None = None

    @property
    def state(self) -> BreakerState:
        """The state as of the last call to `allow` or `record_*` (a cooldown ends lazily)."""
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._consecutive_failures

    def current_state(self, now: float) -> BreakerState:
        """What the state is at `now`, without claiming the half-open trial (for metrics, peeks)."""
        if self._state == "open" and now >= self._opened_at + self.cooldown_s:
            return "half_open"
        return self._state

    def allow(self, now: float) -> bool:
        """May a call start now? In half-open, True claims the single trial: report its outcome."""
        if self._state == "closed":
            return True
        if self._state == "open":
            if now < self._opened_at + self.cooldown_s:
                return False
            self._state = "half_open"
            self._trial_started_at = None
        if self._trial_started_at is None or now >= self._trial_started_at + self.cooldown_s:
            self._trial_started_at = now
            return True
        return False

    def retry_after_s(self, now: float) -> float:
        """How long until `allow` may say yes again; 0 when it would say yes now."""
        if self._state == "open":
            return max(0.0, self._opened_at + self.cooldown_s - now)
        if self._state == "half_open" and self._trial_started_at is not None:
            return max(0.0, self._trial_started_at + self.cooldown_s - now)
        return 0.0

    def record_success(self, now: float) -> None:
        """Any success proves the far side works: close and forget past failures."""
        self._state = "closed"
        self._consecutive_failures = 0
        self._trial_started_at = None

    def record_failure(self, now: float) -> None:
        self._consecutive_failures += 1
        if self._state == "half_open":
            self._open(now)  # the trial failed: another full cooldown
        elif self._state == "closed" and self._consecutive_failures >= self.failure_threshold:
            self._open(now)
        # Already open: a late failure from a call started before opening adds no news, and
        # extending the cooldown for it would keep the breaker open longer than configured.

    def record_neutral(self) -> None:
        """The call ended without telling us about health (429, 4xx): free the trial slot."""
        self._trial_started_at = None

    def _open(self, now: float) -> None:
        self._state = "open"
        self._opened_at = now
        self._trial_started_at = None
