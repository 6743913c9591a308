"""`triage`: every odd case of a freshly read message, one row each (like test_policy's tables)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from consumer.core.models import MessageContext, QueueMessage, QueuePayload, SenderContext
from consumer.core.triage import (
    Action,
    ArchiveOnly,
    DeadLetterNow,
    LeaseLost,
    Process,
    ReleaseToPending,
    Skip,
    triage,
)
from consumer.vocabulary import DeadLetterReason, ErrorClass

RUN = uuid.uuid4()
LEAD = uuid.uuid4()
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _ctx(**changes: Any) -> MessageContext:
    """A message triage lets through (found, claimed, queued, running run); `changes` on top."""
    payload = QueuePayload(v=1, campaign_message_id=uuid.uuid4(), run_id=RUN, lead_id=LEAD)
    values: dict[str, Any] = {
        "msg": QueueMessage(msg_id=1, read_ct=1, enqueued_at=NOW, vt=NOW, message={}),
        "payload": payload,
        "found": True,
        "claimed": True,
        "previous_status": "queued",
        "run_status": "running",
        "run_id": RUN,
        "lead_id": LEAD,
        "retry_count": 0,
    }
    values.update(changes)
    return MessageContext(**values)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, Process()),
        ({"previous_status": "generating", "retry_count": 2}, Process()),
        ({"previous_status": "sending", "retry_count": 2}, Process()),
        (
            {"payload": None, "payload_error": "bad json"},
            DeadLetterNow(DeadLetterReason.INVALID_PAYLOAD, ErrorClass.INVALID_PAYLOAD, "bad json"),
        ),
        ({"payload": None}, DeadLetterNow("invalid_payload", "invalid_payload", "unparsable payload")),
        ({"found": False}, "unknown_message"),
        (
            {"context_error": "custom_fields cannot be read: too deep"},
            DeadLetterNow(
                DeadLetterReason.PERMANENT, ErrorClass.INVALID_LEAD, "custom_fields cannot be read: too deep"
            ),
        ),
        ({"run_id": uuid.uuid4()}, "mismatch"),
        ({"lead_id": uuid.uuid4()}, "mismatch"),
        ({"previous_status": "sent"}, ArchiveOnly("row is already sent")),
        ({"previous_status": "failed"}, ArchiveOnly("row is already failed")),
        ({"previous_status": "skipped", "run_status": "cancelled"}, ArchiveOnly("row is already skipped")),
        ({"run_status": "cancelled"}, Skip("run_cancelled", "the run was cancelled")),
        ({"run_status": "completed"}, Skip("run_completed", "the run was already completed")),
        ({"run_status": "paused"}, ReleaseToPending("run is paused, row was queued")),
        ({"run_status": "scheduled"}, ReleaseToPending("run is scheduled, row was queued")),
        ({"previous_status": "pending"}, ReleaseToPending("run is running, row was pending")),
        ({"claimed": False}, LeaseLost()),
        ({"sender": SenderContext(opted_out_at=NOW)}, Skip("opted_out", "the lead opted out")),
        (
            {"previous_status": "generating", "retry_count": 3},
            DeadLetterNow(
                "max_attempts", "crashed", "the holder stopped mid-message 3 times", burns_attempt=False
            ),
        ),
        (
            {"previous_status": "sending", "retry_count": 4},
            DeadLetterNow(
                "max_attempts", "crashed", "the holder stopped mid-message 4 times", burns_attempt=False
            ),
        ),
        ({"previous_status": "queued", "retry_count": 9}, Process()),
    ],
)
def test_triage_table(changes: dict[str, Any], expected: Action | str) -> None:
    ctx = _ctx(**changes)
    action = triage(ctx, max_attempts=3)
    if expected == "unknown_message":
        assert ctx.payload is not None
        expected = DeadLetterNow(
            "unknown_message",
            "unknown_message",
            f"campaign message {ctx.payload.campaign_message_id} does not exist",
        )
    elif expected == "mismatch":
        expected = DeadLetterNow(
            "invalid_payload",
            "invalid_payload",
            "payload run_id/lead_id do not match the campaign message",
            fails_row=False,
        )
    assert action == expected


def test_every_dead_letter_triage_produces_is_a_reason_of_the_vocabulary() -> None:
    for changes in ({"payload": None}, {"found": False}, {"run_id": uuid.uuid4()}):
        action = triage(_ctx(**changes), max_attempts=3)
        assert isinstance(action, DeadLetterNow)
        assert action.reason in set(DeadLetterReason)
        assert action.error_class in set(ErrorClass)


def test_payload_text_is_parsed_under_the_guard() -> None:
    """Issue 22: the payload arrives as text; too large or too deep is an invalid payload,
    never a RecursionError, and the bound agrees with 0016's `campaignq_payload_ok`."""
    from consumer.core.models import PAYLOAD_MAX_BYTES, InvalidPayloadError, parse_payload

    ids = f'"campaign_message_id": "{uuid.uuid4()}", "run_id": "{RUN}", "lead_id": "{LEAD}"'
    assert parse_payload(f'{{"v": 1, {ids}}}').run_id == RUN
    deep = "[" * 3000 + "]" * 3000
    for text in (f'{{"v": 1, {ids}, "x": {deep}}}', f'{{"v": 1, {ids}, "x": "{"y" * PAYLOAD_MAX_BYTES}"}}'):
        with pytest.raises(InvalidPayloadError, match="payload: JSON document"):
            parse_payload(text)
    # anything within the size bound is accepted whatever its nesting
    half = (PAYLOAD_MAX_BYTES - 200) // 2
    assert parse_payload(f'{{"v": 1, {ids}, "x": {"[" * half + "]" * half}}}').lead_id == LEAD
