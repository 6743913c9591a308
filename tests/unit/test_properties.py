"""Properties of the pure core that the table tests do not reach (hypothesis, no I/O, no sleeping).

The splitter, validator, prompt and single-decision policy already have property tests in
their own files; these cover what was missing: whatever a queue holds, a payload either
parses or is rejected the documented way; triage never processes what it must not; a split
answer from the model never breaks the parser; a Retry-After header never yields a nonsense
wait; a message walked through any sequence of failures ends, with attempts that only go
up and waits that stay bounded; a registered secret never survives redaction.
"""

from __future__ import annotations

import math
import random
import uuid
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.core import policy
from consumer.core.models import (
    InvalidPayloadError,
    MessageContext,
    QueueMessage,
    QueuePayload,
    parse_payload,
)
from consumer.core.split import parse_split_answer
from consumer.core.triage import (
    ArchiveOnly,
    DeadLetterNow,
    LeaseLost,
    Process,
    ReleaseToPending,
    Skip,
    triage,
)
from consumer.core.validation import normalize_phone
from consumer.errors import (
    CircuitOpenError,
    InboxUnavailableError,
    InvalidAIOutputError,
    InvalidLeadError,
    ProviderRejectedError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    RateLimitedError,
)
from consumer.logs import redact, register_secret
from consumer.runtime.ai import parse_retry_after_s
from consumer.runtime.whatsapp import typing_delay_ms
from consumer.vocabulary import IN_FLIGHT_STATUSES, TERMINAL_STATUSES

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=20), inner, max_size=5),
    max_leaves=20,
)
uuid_texts = st.uuids().map(str)
payload_like = st.fixed_dictionaries(
    {},
    optional={
        "v": st.sampled_from([1, 2, "1", None, 1.0, True]),
        "campaign_message_id": uuid_texts | st.text(max_size=10) | st.integers(),
        "run_id": uuid_texts | st.none(),
        "lead_id": uuid_texts | st.just(""),
        "extra": json_values,
    },
)


@settings(max_examples=150, deadline=None)
@given(raw=json_values | payload_like)
def test_any_queue_payload_parses_or_is_rejected_as_invalid(raw: Any) -> None:
    try:
        payload = parse_payload(raw)
    except InvalidPayloadError as exc:
        assert str(exc)  # a reason for the dead letter
        return
    assert payload.v == 1
    assert isinstance(payload.campaign_message_id, uuid.UUID)
    assert isinstance(raw, dict)
    assert uuid.UUID(str(raw["campaign_message_id"])) == payload.campaign_message_id


STATUSES = ["pending", "queued", "generating", "sending", "sent", "failed", "skipped", None]
RUN_STATUSES = ["scheduled", "running", "paused", "completed", "cancelled", None]


@st.composite
def contexts(draw: st.DrawFn) -> MessageContext:
    run_id, lead_id = uuid.uuid4(), uuid.uuid4()
    payload = draw(
        st.none()
        | st.just(QueuePayload(v=1, campaign_message_id=uuid.uuid4(), run_id=run_id, lead_id=lead_id))
    )
    msg = QueueMessage(
        msg_id=1,
        read_ct=draw(st.integers(1, 10)),
        enqueued_at=datetime.now(UTC),
        vt=datetime.now(UTC),
        message={},
    )
    matching = draw(st.booleans())
    return MessageContext(
        msg=msg,
        payload=payload,
        payload_error=None if payload else "bad",
        found=draw(st.booleans()),
        claimed=draw(st.booleans()),
        previous_status=draw(st.sampled_from(STATUSES)),
        run_status=draw(st.sampled_from(RUN_STATUSES)),
        run_id=run_id if matching else uuid.uuid4(),
        lead_id=lead_id if matching or draw(st.booleans()) else uuid.uuid4(),
        retry_count=draw(st.integers(0, 6)),
    )


@settings(max_examples=250, deadline=None)
@given(ctx=contexts(), max_attempts=st.integers(1, 5))
def test_triage_never_processes_what_it_must_not(ctx: MessageContext, max_attempts: int) -> None:
    action = triage(ctx, max_attempts=max_attempts)
    matches = ctx.payload is not None and (ctx.run_id, ctx.lead_id) == (
        ctx.payload.run_id,
        ctx.payload.lead_id,
    )
    if isinstance(action, Process):
        # only a message this worker claimed, of a running run, whose row is still open
        assert ctx.payload is not None and ctx.found and ctx.claimed and matches
        assert ctx.run_status == "running"
        assert ctx.previous_status not in TERMINAL_STATUSES | {"pending"}
        assert not (ctx.previous_status in IN_FLIGHT_STATUSES and ctx.retry_count >= max_attempts)
    if ctx.payload is None:
        assert action == DeadLetterNow("invalid_payload", "invalid_payload", "bad")
    elif ctx.found and not matches:
        assert isinstance(action, DeadLetterNow) and not action.fails_row  # never someone else's row
    if ctx.previous_status in TERMINAL_STATUSES and ctx.found and matches:
        assert isinstance(action, ArchiveOnly)  # a finished row is never redone nor re-finished
    if isinstance(action, Skip | ReleaseToPending | LeaseLost):
        assert ctx.payload is not None and ctx.found


@settings(max_examples=150, deadline=None)
@given(
    content=st.none()
    | st.text(max_size=200)
    | st.builds(
        lambda parts: '{"parts": ' + str(parts).replace("'", '"') + "}", st.lists(st.text(max_size=30))
    )
    | st.builds(lambda s: "```json\n" + s + "\n```", st.text(max_size=60)),
    max_parts=st.integers(1, 5),
    max_chars=st.integers(1, 50),
)
def test_a_split_answer_never_breaks_the_parser_and_usable_parts_respect_the_limits(
    content: str | None, max_parts: int, max_chars: int
) -> None:
    parts = parse_split_answer(content, max_parts=max_parts, max_chars=max_chars)
    if parts is not None:
        assert 1 <= len(parts) <= max_parts
        assert all(part and part == part.strip() and len(part) <= max_chars for part in parts)


header_values = (
    st.text(max_size=40)
    | st.floats(allow_nan=True, allow_infinity=True).map(str)
    | st.integers(-(10**12), 10**12).map(str)
    | st.datetimes().map(lambda d: d.strftime("%a, %d %b %Y %H:%M:%S GMT"))
)


@settings(max_examples=150, deadline=None)
@given(
    headers=st.dictionaries(
        st.sampled_from(["retry-after", "Retry-After", "retry-after-ms", "x"]), header_values
    ),
    now=st.floats(min_value=0, max_value=4e9),
)
def test_retry_after_is_none_or_a_finite_non_negative_wait(headers: dict[str, str], now: float) -> None:
    wait_s = parse_retry_after_s(headers, now_epoch_s=now)
    assert wait_s is None or (math.isfinite(wait_s) and wait_s >= 0)


FAILURES = [
    lambda _: ProviderTimeoutError(),
    lambda _: ProviderUnavailableError(),
    lambda _: InvalidAIOutputError(),
    lambda _: RuntimeError("a bug"),
    lambda retry_after: RateLimitedError(retry_after_s=retry_after),
    lambda retry_after: CircuitOpenError(retry_after_s=retry_after),
    lambda _: InboxUnavailableError(),
]


@settings(max_examples=120, deadline=None)
@given(
    failures=st.lists(
        st.tuples(st.sampled_from(FAILURES), st.none() | st.floats(0, 500)), min_size=1, max_size=60
    ),
    permanent_at=st.none() | st.integers(0, 60),
    max_attempts=st.integers(1, 6),
    max_deferral_s=st.floats(1, 3600),
    seed=st.integers(0, 2**32),
)
def test_a_message_walked_through_any_failures_ends_with_monotonic_attempts_and_bounded_waits(
    failures: list[tuple[Any, float | None]],
    permanent_at: int | None,
    max_attempts: int,
    max_deferral_s: float,
    seed: int,
) -> None:
    """What the worker does between attempts, as a loop: the attempt count only grows, each
    wait is bounded, total deferral is bounded, and the message ends (sent or dead-lettered)."""
    rng = random.Random(seed)
    attempts, deferred_s, backoff_max_s, max_retry_after_s = 0, 0.0, 30.0, 120.0
    for step, (make, retry_after) in enumerate(failures):
        error = ProviderRejectedError() if step == permanent_at else make(retry_after)
        decision = policy.decide(
            error,
            attempts_made=attempts
            + (0 if isinstance(error, RateLimitedError | CircuitOpenError | InboxUnavailableError) else 1),
            max_attempts=max_attempts,
            deferred_for_s=deferred_s,
            max_deferral_s=max_deferral_s,
            backoff_base_s=1.0,
            backoff_max_s=backoff_max_s,
            rng=rng,
            max_retry_after_s=max_retry_after_s,
        )
        if isinstance(decision, policy.DeadLetter):
            assert decision.reason in policy.DEAD_LETTER_REASONS
            if decision.reason == policy.REASON_MAX_ATTEMPTS:
                assert attempts + 1 == max_attempts
            return
        before = attempts
        attempts += int(decision.burns_attempt)
        assert before <= attempts <= max_attempts - 1  # monotonic, and below the limit while retrying
        assert 0 <= decision.delay_s <= max(backoff_max_s, max_retry_after_s)
        if not decision.burns_attempt:
            deferred_s += decision.delay_s
            assert deferred_s <= max_deferral_s
    # the failures ran out first: the next attempt may still succeed, nothing is stuck


@settings(max_examples=120, deadline=None)
@given(before=st.text(max_size=50), after=st.text(max_size=50))
def test_a_registered_secret_never_survives_redaction(before: str, after: str) -> None:
    secret = "sk-or-v1-5f0c2a9e1d7b4c3a"  # noqa: S105 (a made-up key to hunt for)
    register_secret(secret)
    assert secret not in redact(before + secret + after)


@settings(max_examples=120, deadline=None)
@given(raw=st.text(alphabet="+0123456789 -().", min_size=1, max_size=25))
def test_a_normalised_phone_is_a_fixed_point(raw: str) -> None:
    try:
        digits = normalize_phone(raw)
    except InvalidLeadError:
        return
    assert normalize_phone(digits) == digits == "".join(ch for ch in raw if ch.isdigit())


@settings(max_examples=120, deadline=None)
@given(text=st.text(max_size=500), wpm=st.floats(1, 2000), cap_s=st.floats(0, 10))
def test_the_typing_delay_is_bounded_by_its_cap(text: str, wpm: float, cap_s: float) -> None:
    delay_ms = typing_delay_ms(text, words_per_minute=wpm, cap_s=cap_s)
    assert 0 <= delay_ms <= round(cap_s * 1000)
