"""Uncertain sends and leases: the pure decisions (issue 9)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from consumer.core import policy
from consumer.core.models import MessageContext, QueueMessage, QueuePayload
from consumer.core.policy import (
    Acknowledged,
    CheckLater,
    DeadLetter,
    Hold,
    Retry,
    SendAgain,
    decide_uncertain,
)
from consumer.core.triage import parts_to_reconcile
from consumer.errors import (
    LeaseLostError,
    ProviderTimeoutError,
    ReconcileUnavailableError,
    SendOutcomeUnknownError,
    SendTimedOutError,
    UncertainSendHeldError,
)
from consumer.runtime.lease import Lease, has_room

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("found", "just_sent", "rule", "expected"),
    [
        (True, True, "verify", Acknowledged()),
        (True, False, "hold", Acknowledged()),
        (True, False, "resend", Acknowledged()),
        # right after the uncertain send, never resend at once, whatever the gateway says
        (False, True, "resend", CheckLater),
        (None, True, "resend", CheckLater),
        (None, True, "hold", CheckLater),
        # a later attempt: the gateway said "not there" -> send; cannot tell -> the policy
        (False, False, "verify", SendAgain),
        (None, False, "verify", CheckLater),
        (None, False, "resend", SendAgain),
        (None, False, "hold", Hold),
    ],
)
def test_decide_uncertain_table(
    found: bool | None, just_sent: bool, rule: policy.UncertainSendPolicy, expected: object
) -> None:
    decision = decide_uncertain(found, just_sent=just_sent, policy=rule)
    if isinstance(expected, type):
        assert isinstance(decision, expected)
    else:
        assert decision == expected


def test_check_later_burns_an_attempt_only_right_after_the_send() -> None:
    right_after = decide_uncertain(None, just_sent=True, policy="verify")
    later = decide_uncertain(None, just_sent=False, policy="verify")
    assert isinstance(right_after, CheckLater) and right_after.burns_attempt
    assert isinstance(later, CheckLater) and not later.burns_attempt


def test_unknown_policy_names_mean_verify() -> None:
    assert [policy.uncertain_send_policy(n) for n in ("verify", "resend", "hold", "", "x")] == [
        "verify",
        "resend",
        "hold",
        "verify",
        "verify",
    ]
    assert set(policy.UNCERTAIN_SEND_POLICIES) == {"verify", "resend", "hold"}


def test_the_retry_policy_maps_the_uncertain_errors() -> None:
    common = {
        "attempts_made": 1,
        "max_attempts": 3,
        "deferred_for_s": 0.0,
        "max_deferral_s": 100.0,
        "backoff_base_s": 1.0,
        "backoff_max_s": 10.0,
    }
    import random

    rng = random.Random(1)
    held = policy.decide(UncertainSendHeldError(), rng=rng, **common)  # type: ignore[arg-type]
    assert held == DeadLetter("send_uncertain", "send_uncertain_held")
    later = policy.decide(ReconcileUnavailableError(), rng=rng, **common)  # type: ignore[arg-type]
    assert isinstance(later, Retry) and not later.burns_attempt
    timeout = policy.decide(SendTimedOutError(), rng=rng, **common)  # type: ignore[arg-type]
    assert isinstance(timeout, Retry) and timeout.burns_attempt
    assert isinstance(SendTimedOutError(), ProviderTimeoutError | SendOutcomeUnknownError)
    assert policy.error_class_of(SendTimedOutError()) == "timeout"


# --- the lease ----------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _lease(clock: FakeClock, vt_s: float = 30.0) -> Lease:
    msg = QueueMessage(msg_id=1, read_ct=1, enqueued_at=T0, vt=T0, message={})
    return Lease.taken(msg, uuid.uuid4(), asked_at=clock.now, vt_s=vt_s, clock=clock)


def test_has_room_is_inclusive() -> None:
    assert has_room(deadline=10.0, now=5.0, needed_s=5.0)
    assert not has_room(deadline=10.0, now=5.0, needed_s=5.01)


async def test_a_send_needs_room_for_its_whole_duration() -> None:
    clock = FakeClock()
    lease = _lease(clock, vt_s=30.0)
    await lease.ensure_room(12.0)
    clock.now += 18.5  # 11.5 s left
    with pytest.raises(LeaseLostError, match=r"11\.5 s left"):
        await lease.ensure_room(12.0)
    lease.confirm(asked_at=clock.now - 1.0, vt_s=30.0)  # heartbeat issued a second ago
    await lease.ensure_room(12.0)
    assert lease.room_s() == pytest.approx(29.0)


async def test_a_short_lease_is_extended_before_a_send_or_refused_when_it_cannot_be() -> None:
    clock = FakeClock()
    answers: list[bool | Exception] = [True, ConnectionError("down"), False]

    async def renew(_: Lease) -> bool:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    lease = _lease(clock, vt_s=30.0)
    lease.renew = renew
    clock.now += 25.0
    await lease.ensure_room(12.0)  # renewed: 30 s from now
    assert lease.room_s() == pytest.approx(30.0)
    clock.now += 25.0
    with pytest.raises(LeaseLostError, match="could not extend"):
        await lease.ensure_room(12.0)
    assert lease.lost is None  # unconfirmed, not known lost: the heartbeat decides at the deadline
    with pytest.raises(LeaseLostError, match="another worker"):
        await lease.ensure_room(12.0)
    assert lease.lost is not None


async def test_a_revoked_lease_refuses_every_send_and_ignores_confirmations() -> None:
    clock = FakeClock()
    lease = _lease(clock)
    assert lease.revoke("lost") is True
    assert lease.revoke("again") is False
    lease.confirm(asked_at=clock.now, vt_s=300.0)
    with pytest.raises(LeaseLostError, match="lost"):
        await lease.ensure_room(0.0)


async def test_revoke_cancels_the_task_unless_a_send_is_in_flight() -> None:
    clock = FakeClock()
    started = asyncio.Event()

    async def work() -> str:
        started.set()
        await asyncio.sleep(60)
        return "done"

    idle = _lease(clock)
    idle.task = asyncio.create_task(work())
    await started.wait()
    idle.revoke("lost")
    with pytest.raises(asyncio.CancelledError):
        await idle.task

    busy = _lease(clock)
    release = asyncio.Event()

    async def sending() -> str:
        with busy.sending():
            await release.wait()
        return "sent"

    busy.task = asyncio.create_task(sending())
    await asyncio.sleep(0)
    busy.revoke("lost")
    release.set()
    assert await busy.task == "sent"


# --- which parts are reconciled --------------------------------------------------------------------


def _ctx(**fields: object) -> MessageContext:
    msg = QueueMessage(msg_id=1, read_ct=2, enqueued_at=T0, vt=T0, message={})
    payload = QueuePayload(v=1, campaign_message_id=uuid.uuid4(), run_id=uuid.uuid4(), lead_id=uuid.uuid4())
    ctx = MessageContext(msg=msg, payload=payload, parts=["a", "b", "c"])
    for name, value in fields.items():
        setattr(ctx, name, value)
    return ctx


def test_a_clean_message_has_nothing_to_reconcile() -> None:
    assert parts_to_reconcile(_ctx(previous_status="queued", parts_sent=1, last_progress_at=T0)) == {}
    assert parts_to_reconcile(_ctx(parts=None, previous_status="sending", last_progress_at=T0)) == {}


def test_a_holder_that_stopped_mid_send_leaves_its_next_part_unknown() -> None:
    ctx = _ctx(previous_status="sending", parts_sent=1, last_progress_at=T0)
    assert parts_to_reconcile(ctx) == {1: T0}
    assert parts_to_reconcile(_ctx(previous_status="sending", parts_sent=3, last_progress_at=T0)) == {}


def test_an_uncertain_part_is_reconciled_from_its_earliest_attempt() -> None:
    earlier = T0 - timedelta(minutes=5)
    ctx = _ctx(
        previous_status="sending",
        parts_sent=1,
        last_progress_at=T0,
        uncertain_part=1,
        uncertain_since=earlier,
    )
    assert parts_to_reconcile(ctx) == {1: earlier}
    stale_mark = _ctx(previous_status="queued", parts_sent=2, uncertain_part=1, uncertain_since=earlier)
    assert parts_to_reconcile(stale_mark) == {}


def test_settings_refuse_a_lease_that_cannot_fit_one_send() -> None:
    from pydantic import ValidationError

    from consumer.settings import Settings

    ok = Settings(visibility_timeout_s=16, send_timeout_s=10, typing_delay_cap_s=3, lease_margin_s=2)
    assert ok.visibility_timeout_s == 16
    with pytest.raises(ValidationError, match="a lease must fit a whole send"):
        Settings(visibility_timeout_s=15, send_timeout_s=10, typing_delay_cap_s=3, lease_margin_s=2)
