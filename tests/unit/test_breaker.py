"""The circuit breaker is pure: time is an argument, so none of these tests sleeps."""

from __future__ import annotations

import pytest

from consumer.core.breaker import CircuitBreaker

COOLDOWN_S = 30.0


def tripped(at: float = 100.0, failures: int = 3) -> CircuitBreaker:
    breaker = CircuitBreaker(failure_threshold=failures, cooldown_s=COOLDOWN_S)
    for _ in range(failures):
        assert breaker.allow(at)
        breaker.record_failure(at)
    assert breaker.state == "open"
    return breaker


def test_stays_closed_below_the_threshold_of_consecutive_failures() -> None:
    breaker = CircuitBreaker(failure_threshold=3, cooldown_s=COOLDOWN_S)
    breaker.record_failure(0.0)
    breaker.record_failure(0.0)
    assert breaker.state == "closed"
    assert breaker.allow(0.0)


def test_a_success_resets_the_count_so_failures_must_be_consecutive() -> None:
    breaker = CircuitBreaker(failure_threshold=3, cooldown_s=COOLDOWN_S)
    for _ in range(2):
        breaker.record_failure(0.0)
    breaker.record_success(0.0)
    for _ in range(2):
        breaker.record_failure(0.0)
    assert breaker.current_state(0.0) == "closed"
    breaker.record_failure(0.0)
    assert breaker.current_state(0.0) == "open"


def test_open_refuses_calls_and_reports_the_remaining_cooldown() -> None:
    breaker = tripped(at=100.0)
    assert not breaker.allow(110.0)
    assert breaker.retry_after_s(110.0) == pytest.approx(20.0)
    assert breaker.current_state(110.0) == "open"


def test_after_the_cooldown_exactly_one_trial_call_is_allowed() -> None:
    breaker = tripped(at=100.0)
    assert breaker.current_state(130.0) == "half_open"
    assert breaker.state == "open"  # current_state only peeks
    assert breaker.allow(130.0)
    assert breaker.current_state(130.0) == "half_open"
    assert not breaker.allow(130.5)
    assert not breaker.allow(140.0)
    assert breaker.retry_after_s(140.0) == pytest.approx(20.0)


def test_a_successful_trial_closes_the_breaker() -> None:
    breaker = tripped(at=100.0)
    assert breaker.allow(130.0)
    breaker.record_success(131.0)
    assert breaker.state == "closed"
    assert breaker.consecutive_failures == 0
    assert breaker.allow(131.0)
    assert breaker.allow(131.0)


def test_a_failed_trial_opens_it_again_for_a_full_cooldown() -> None:
    breaker = tripped(at=100.0)
    assert breaker.allow(130.0)
    breaker.record_failure(132.0)
    assert breaker.state == "open"
    assert not breaker.allow(161.0)
    assert breaker.retry_after_s(161.0) == pytest.approx(1.0)
    assert breaker.allow(162.0)


def test_a_neutral_trial_outcome_frees_the_slot_for_another_trial() -> None:
    breaker = tripped(at=100.0)
    assert breaker.allow(130.0)
    breaker.record_neutral()
    assert breaker.state == "half_open"
    assert breaker.allow(130.1)
    assert not breaker.allow(130.2)


def test_a_trial_that_never_reports_back_lapses_after_one_cooldown() -> None:
    breaker = tripped(at=100.0)
    assert breaker.allow(130.0)
    assert not breaker.allow(159.9)
    assert breaker.allow(160.0)


def test_late_failures_while_open_do_not_extend_the_cooldown() -> None:
    breaker = tripped(at=100.0)
    breaker.record_failure(125.0)
    assert breaker.allow(130.0)


def test_neutral_outcomes_do_not_count_as_failures_or_successes() -> None:
    breaker = CircuitBreaker(failure_threshold=2, cooldown_s=COOLDOWN_S)
    breaker.record_failure(0.0)
    breaker.record_neutral()
    assert breaker.consecutive_failures == 1
    breaker.record_failure(0.0)
    assert breaker.state == "open"


def test_retry_after_is_zero_when_a_call_may_start() -> None:
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=COOLDOWN_S)
    assert breaker.retry_after_s(0.0) == 0.0
    breaker.record_failure(0.0)
    assert breaker.retry_after_s(COOLDOWN_S) == 0.0


@pytest.mark.parametrize(("failures", "cooldown_s"), [(0, 1.0), (1, 0.0), (1, -1.0)])
def test_rejects_nonsense_configuration(failures: int, cooldown_s: float) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(failure_threshold=failures, cooldown_s=cooldown_s)
