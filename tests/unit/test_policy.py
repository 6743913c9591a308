from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.core import policy
from consumer.core.policy import DeadLetter, Decision, Retry, backoff_delay_s, decide, error_class_of
from consumer.errors import (
    CircuitOpenError,
    ContentBlockedError,
    FatalError,
    InboxUnavailableError,
    InvalidAIOutputError,
    InvalidConfigError,
    InvalidLeadError,
    PermanentError,
    ProviderOverloadedError,
    ProviderRejectedError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    RateLimitedError,
    TemporaryError,
)

BASE_S = 2.0
CAP_S = 300.0
MAX_ATTEMPTS = 3
MAX_DEFERRAL_S = 6 * 3600.0
HOUR_S = 3600.0


class EdgeRandom(random.Random):
    """A Random whose `uniform` always returns the top (or bottom) of its range, to pin jitter."""

    def __init__(self, *, top: bool) -> None:
        super().__init__(0)
        self.top = top

    def uniform(self, a: float, b: float) -> float:
        return b if self.top else a


TOP = EdgeRandom(top=True)
BOTTOM = EdgeRandom(top=False)


def _decide(
    error: BaseException, *, attempts_made: int = 1, deferred_for_s: float = 0.0, **kw: Any
) -> Decision:
    args: dict[str, Any] = {
        "attempts_made": attempts_made,
        "max_attempts": MAX_ATTEMPTS,
        "deferred_for_s": deferred_for_s,
        "max_deferral_s": MAX_DEFERRAL_S,
        "backoff_base_s": BASE_S,
        "backoff_max_s": CAP_S,
        "rng": TOP,
    }
    args.update(kw)
    return decide(error, **args)


# --- the decision table ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "attempts_made", "deferred_for_s", "expected"),
    [
        # permanent: dead-letter at once, whatever the attempt count
        (ProviderRejectedError(), 1, 0.0, DeadLetter("permanent", "provider_rejected")),
        (InvalidLeadError(), 0, 0.0, DeadLetter("permanent", "invalid_lead")),
        (InvalidConfigError(), 1, 0.0, DeadLetter("permanent", "invalid_config")),
        (PermanentError(), 1, 0.0, DeadLetter("permanent", "permanent")),
        # temporary: burns an attempt, backoff 2 * 2**(n-1) (rng pinned to the top)
        (ProviderTimeoutError(), 1, 0.0, Retry(2.0, True, "backoff")),
        (ProviderUnavailableError(), 2, 0.0, Retry(4.0, True, "backoff")),
        (InvalidAIOutputError(), 2, 0.0, Retry(4.0, True, "backoff")),
        (TemporaryError(), 3, 0.0, DeadLetter("max_attempts", "temporary")),
        (ProviderTimeoutError(), 3, 0.0, DeadLetter("max_attempts", "timeout")),
        (InvalidAIOutputError(), 7, 0.0, DeadLetter("max_attempts", "invalid_ai_output")),
        # a bug is retried like a temporary error, never lost, never looping forever
        (ValueError("bug"), 1, 0.0, Retry(2.0, True, "backoff")),
        (KeyError("x"), 3, 0.0, DeadLetter("max_attempts", "internal")),
        (TimeoutError(), 3, 0.0, DeadLetter("max_attempts", "internal")),
        # deferrals: no attempt burnt, not even at the attempt limit; Retry-After honoured
        (RateLimitedError(retry_after_s=30.0), 3, 0.0, Retry(30.0, False, "deferred")),
        (RateLimitedError(retry_after_s=30.0), 99, 0.0, Retry(30.0, False, "deferred")),
        (CircuitOpenError(retry_after_s=12.5), 1, 0.0, Retry(12.5, False, "deferred")),
        (RateLimitedError(retry_after_s=0.0), 1, 0.0, Retry(1.0, False, "deferred")),
        (RateLimitedError(retry_after_s=-5.0), 1, 0.0, Retry(1.0, False, "deferred")),
        (RateLimitedError(retry_after_s=10_000.0), 1, 0.0, Retry(CAP_S, False, "deferred")),
        (RateLimitedError(retry_after_s=math.inf), 1, 0.0, Retry(CAP_S, False, "deferred")),
        # no Retry-After: wait up to as long as already deferred (base first, cap last)
        (InboxUnavailableError(), 1, 0.0, Retry(BASE_S, False, "deferred")),
        (InboxUnavailableError(), 1, 100.0, Retry(100.0, False, "deferred")),
        (InboxUnavailableError(), 1, 5 * HOUR_S, Retry(CAP_S, False, "deferred")),
        (RateLimitedError(retry_after_s=math.nan), 1, 10.0, Retry(10.0, False, "deferred")),
        # a 503 with Retry-After waits like a 429 (issue 21), no attempt burnt
        (ProviderOverloadedError(retry_after_s=30.0), 3, 0.0, Retry(30.0, False, "deferred")),
        # a moderated lead fails alone, at once, under its own reason
        (
            ContentBlockedError(reasons=("violence",)),
            1,
            0.0,
            DeadLetter("content_blocked", "content_blocked"),
        ),
        # deferred too long in total: dead-letter instead of cycling forever
        (
            RateLimitedError(retry_after_s=30.0),
            1,
            MAX_DEFERRAL_S - 29.0,
            DeadLetter("deferred_too_long", "rate_limited"),
        ),
        (RateLimitedError(retry_after_s=30.0), 1, MAX_DEFERRAL_S - 30.0, Retry(30.0, False, "deferred")),
        (InboxUnavailableError(), 1, MAX_DEFERRAL_S, DeadLetter("deferred_too_long", "inbox_unavailable")),
        (
            CircuitOpenError(retry_after_s=1.0),
            0,
            MAX_DEFERRAL_S,
            DeadLetter("deferred_too_long", "circuit_open"),
        ),
        # the process is stopping: the message is not at fault
        (FatalError(), 1, 0.0, Retry(5.0, False, "process_stopping")),
        (FatalError(), 3, 0.0, Retry(5.0, False, "process_stopping")),
        (FatalError(), 3, MAX_DEFERRAL_S, Retry(5.0, False, "process_stopping")),
        (asyncio.CancelledError(), 3, 0.0, Retry(5.0, False, "process_stopping")),
        (KeyboardInterrupt(), 3, 0.0, Retry(5.0, False, "process_stopping")),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else None,
)
def test_decide_table(
    error: BaseException, attempts_made: int, deferred_for_s: float, expected: Decision
) -> None:
    assert _decide(error, attempts_made=attempts_made, deferred_for_s=deferred_for_s) == expected


def test_retry_after_cap_is_the_larger_of_backoff_cap_and_retry_after_cap() -> None:
    error = RateLimitedError(retry_after_s=1_000.0)
    assert _decide(error, backoff_max_s=60.0, max_retry_after_s=120.0) == Retry(120.0, False, "deferred")
    assert _decide(error, backoff_max_s=600.0, max_retry_after_s=120.0) == Retry(600.0, False, "deferred")


def test_temporary_backoff_is_capped_and_floored() -> None:
    assert _decide(ProviderTimeoutError(), attempts_made=2, max_attempts=50) == Retry(4.0, True, "backoff")
    assert _decide(ProviderTimeoutError(), attempts_made=40, max_attempts=50) == Retry(CAP_S, True, "backoff")
    assert _decide(ProviderTimeoutError(), rng=BOTTOM) == Retry(policy.MIN_RETRY_DELAY_S, True, "backoff")


def test_fatal_delay_never_exceeds_the_backoff_cap() -> None:
    assert _decide(FatalError(), backoff_max_s=0.5) == Retry(0.5, False, "process_stopping")


# --- backoff ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "base_s", "cap_s", "top_s", "bottom_s"),
    [
        (1, 2.0, 300.0, 2.0, 1.0),
        (2, 2.0, 300.0, 4.0, 1.0),
        (3, 2.0, 300.0, 8.0, 1.0),
        (8, 2.0, 300.0, 256.0, 1.0),
        (9, 2.0, 300.0, 300.0, 1.0),
        (10_000, 2.0, 300.0, 300.0, 1.0),  # no float overflow on absurd counts
        (1, 0.1, 300.0, 1.0, 1.0),  # the floor wins over a tiny base
        (5, 2.0, 0.5, 0.5, 0.5),  # a cap below the floor wins: never above the cap
    ],
)
def test_backoff_bounds(attempt: int, base_s: float, cap_s: float, top_s: float, bottom_s: float) -> None:
    assert backoff_delay_s(attempt, base_s=base_s, cap_s=cap_s, rng=TOP) == top_s
    assert backoff_delay_s(attempt, base_s=base_s, cap_s=cap_s, rng=BOTTOM) == bottom_s


@pytest.mark.parametrize(
    ("attempt", "base_s", "cap_s"), [(0, 2.0, 300.0), (-1, 2.0, 300.0), (1, 0.0, 300.0), (1, 2.0, 0.0)]
)
def test_backoff_rejects_nonsense(attempt: int, base_s: float, cap_s: float) -> None:
    with pytest.raises(ValueError, match=r"attempt|must be positive"):
        backoff_delay_s(attempt, base_s=base_s, cap_s=cap_s, rng=TOP)


def test_backoff_jitter_is_full_and_reproducible() -> None:
    """Full jitter spreads a burst over the whole window; a seeded rng replays it exactly."""
    draws = [backoff_delay_s(6, base_s=2.0, cap_s=300.0, rng=random.Random(seed)) for seed in range(200)]
    assert min(draws) < 0.25 * 64 and max(draws) > 0.75 * 64
    assert all(1.0 <= draw <= 64.0 for draw in draws)
    again = [backoff_delay_s(6, base_s=2.0, cap_s=300.0, rng=random.Random(seed)) for seed in range(200)]
    assert draws == again


# --- error classes and reasons ----------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (RateLimitedError(), "rate_limited"),
        (InvalidLeadError(), "invalid_lead"),
        (FatalError(), "fatal"),
        (ValueError(), "internal"),
        (asyncio.CancelledError(), "internal"),
    ],
)
def test_error_class_of(error: BaseException, expected: str) -> None:
    assert error_class_of(error) == expected


def test_reasons_are_distinct_documented_constants() -> None:
    reasons = {
        policy.REASON_PERMANENT: "permanent",
        policy.REASON_MAX_ATTEMPTS: "max_attempts",
        policy.REASON_DEFERRED_TOO_LONG: "deferred_too_long",
        policy.REASON_INVALID_PAYLOAD: "invalid_payload",
        policy.REASON_UNKNOWN_MESSAGE: "unknown_message",
        policy.REASON_SEND_UNCERTAIN: "send_uncertain",
        policy.REASON_CONTENT_BLOCKED: "content_blocked",
    }
    assert all(constant == value for constant, value in reasons.items())
    assert set(reasons) == policy.DEAD_LETTER_REASONS


# --- properties -------------------------------------------------------------------------

ERROR_FACTORIES: list[Callable[[float | None], BaseException]] = [
    lambda _: ProviderTimeoutError(),
    lambda _: InvalidAIOutputError(),
    lambda _: RuntimeError("bug"),
    lambda _: ProviderRejectedError(),
    lambda _: FatalError(),
    lambda _: asyncio.CancelledError(),
    lambda retry_after: RateLimitedError(retry_after_s=retry_after),
    lambda retry_after: CircuitOpenError(retry_after_s=retry_after),
    lambda retry_after: InboxUnavailableError(retry_after_s=retry_after),
]
DEFERRALS = (RateLimitedError, CircuitOpenError, InboxUnavailableError)
positive = st.floats(min_value=0.01, max_value=10_000.0)


@settings(max_examples=200, deadline=None)
@given(
    make_error=st.sampled_from(ERROR_FACTORIES),
    retry_after_s=st.none() | st.floats(allow_nan=True, allow_infinity=True),
    attempts_made=st.integers(min_value=0, max_value=30),
    max_attempts=st.integers(min_value=1, max_value=10),
    deferred_for_s=st.floats(min_value=0.0, max_value=100_000.0),
    max_deferral_s=positive,
    base_s=positive,
    cap_s=positive,
    max_retry_after_s=positive,
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_decide_properties(
    make_error: Callable[[float | None], BaseException],
    retry_after_s: float | None,
    attempts_made: int,
    max_attempts: int,
    deferred_for_s: float,
    max_deferral_s: float,
    base_s: float,
    cap_s: float,
    max_retry_after_s: float,
    seed: int,
) -> None:
    error = make_error(retry_after_s)
    decision = decide(
        error,
        attempts_made=attempts_made,
        max_attempts=max_attempts,
        deferred_for_s=deferred_for_s,
        max_deferral_s=max_deferral_s,
        backoff_base_s=base_s,
        backoff_max_s=cap_s,
        rng=random.Random(seed),
        max_retry_after_s=max_retry_after_s,
    )
    burning_error = isinstance(error, Exception) and not isinstance(
        error, (*DEFERRALS, FatalError, PermanentError)
    )
    if isinstance(decision, Retry):
        assert 0.0 <= decision.delay_s <= max(cap_s, max_retry_after_s)
        assert decision.burns_attempt == burning_error
        if decision.burns_attempt:
            assert attempts_made < max_attempts
            assert decision.delay_s <= cap_s
        if isinstance(error, DEFERRALS):
            assert deferred_for_s + decision.delay_s <= max_deferral_s  # total deferral stays bounded
    else:
        assert decision.error_class == error_class_of(error)
        assert decision.reason in policy.DEAD_LETTER_REASONS
        # only a burning error dead-letters for attempts, and exactly at the limit
        assert (decision.reason == policy.REASON_MAX_ATTEMPTS) == (
            burning_error and attempts_made >= max_attempts
        )
    if burning_error:
        assert isinstance(decision, DeadLetter) == (attempts_made >= max_attempts)


@settings(max_examples=50, deadline=None)
@given(max_attempts=st.integers(min_value=1, max_value=10), seed=st.integers(min_value=0, max_value=2**32))
def test_a_message_that_always_fails_is_tried_exactly_max_attempts_times(
    max_attempts: int, seed: int
) -> None:
    rng = random.Random(seed)
    attempts = 0
    while True:
        attempts += 1
        decision = _decide(ProviderTimeoutError(), attempts_made=attempts, max_attempts=max_attempts, rng=rng)
        if isinstance(decision, DeadLetter):
            break
        assert decision.burns_attempt
    assert attempts == max_attempts
    assert decision == DeadLetter("max_attempts", "timeout")


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**32))
def test_an_inbox_down_forever_is_dead_lettered_within_the_deferral_bound(seed: int) -> None:
    rng = random.Random(seed)
    deferred_for_s = 0.0
    for _ in range(10_000):
        decision = _decide(InboxUnavailableError(), attempts_made=0, deferred_for_s=deferred_for_s, rng=rng)
        if isinstance(decision, DeadLetter):
            break
        assert not decision.burns_attempt
        deferred_for_s += decision.delay_s
    assert decision == DeadLetter("deferred_too_long", "inbox_unavailable")
    # a deferral is cut only when the next wait would not fit the bound
    assert MAX_DEFERRAL_S - CAP_S <= deferred_for_s <= MAX_DEFERRAL_S
