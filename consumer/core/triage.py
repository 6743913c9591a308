"""What to do with a message as soon as its batch context is loaded, before any work.

Pure: decided from the row as it was when read, so every odd case (paused run, row already
sent, unknown id, a crash left behind) has one obvious place and a unit test.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ..vocabulary import (
    IN_FLIGHT_STATUSES,
    TERMINAL_STATUSES,
    DeadLetterReason,
    ErrorClass,
    MessageStatus,
    RunStatus,
)
from .models import MessageContext


@dataclass(frozen=True)
class Process:
    """Generate (unless already generated), split, send the missing parts."""


@dataclass(frozen=True)
class ReleaseToPending:
    """Run paused or not started: row back to pending, queue message removed."""

    why: str


@dataclass(frozen=True)
class Skip:
    """Run cancelled (or already completed): row skipped, queue message archived."""

    error_class: str
    why: str


@dataclass(frozen=True)
class ArchiveOnly:
    """The row is already terminal (a duplicate delivery or a replay of a sent message)."""

    why: str


@dataclass(frozen=True)
class DeadLetterNow:
    reason: str
    error_class: str
    why: str
    burns_attempt: bool = False
    fails_row: bool = True
    """False when the row named is not this message's to fail (the payload does not match it)."""


@dataclass(frozen=True)
class LeaseLost:
    """Another worker read the message after this read: leave it to that worker."""


Action = Process | ReleaseToPending | Skip | ArchiveOnly | DeadLetterNow | LeaseLost


def triage(ctx: MessageContext, *, max_attempts: int) -> Action:
    if ctx.payload is None:
        return DeadLetterNow(
            DeadLetterReason.INVALID_PAYLOAD,
            ErrorClass.INVALID_PAYLOAD,
            ctx.payload_error or "unparsable payload",
        )
    if not ctx.found:
        return DeadLetterNow(
            DeadLetterReason.UNKNOWN_MESSAGE,
            ErrorClass.UNKNOWN_MESSAGE,
            f"campaign message {ctx.payload.campaign_message_id} does not exist",
        )
    if ctx.run_id != ctx.payload.run_id or ctx.lead_id != ctx.payload.lead_id:
        return DeadLetterNow(
            DeadLetterReason.INVALID_PAYLOAD,
            ErrorClass.INVALID_PAYLOAD,
            "payload run_id/lead_id do not match the campaign message",
            fails_row=False,
        )
    if ctx.previous_status in TERMINAL_STATUSES:
        return ArchiveOnly(f"row is already {ctx.previous_status}")
    if ctx.run_status == RunStatus.CANCELLED:
        return Skip(ErrorClass.RUN_CANCELLED, "the run was cancelled")
    if ctx.run_status == RunStatus.COMPLETED:
        return Skip(ErrorClass.RUN_COMPLETED, "the run was already completed")
    if ctx.run_status != RunStatus.RUNNING or ctx.previous_status == MessageStatus.PENDING:
        return ReleaseToPending(f"run is {ctx.run_status}, row was {ctx.previous_status}")
    if not ctx.claimed:
        return LeaseLost()
    if ctx.sender.opted_out_at is not None:  # issue 13: before any AI spend
        return Skip(ErrorClass.OPTED_OUT, "the lead opted out")
    if ctx.context_error is not None:  # issue 22: a lead's JSON too deep to read
        return DeadLetterNow(DeadLetterReason.PERMANENT, ErrorClass.INVALID_LEAD, ctx.context_error)
    if ctx.previous_status in IN_FLIGHT_STATUSES and ctx.retry_count >= max_attempts:
        return DeadLetterNow(
            DeadLetterReason.MAX_ATTEMPTS,
            ErrorClass.CRASHED,
            f"the holder stopped mid-message {ctx.retry_count} times",
            burns_attempt=False,
        )
    return Process()


def parts_to_reconcile(ctx: MessageContext) -> dict[int, datetime]:
    """Parts (0-based) whose delivery is unknown as this attempt starts, each with the
    earliest moment it may have been sent; the pipeline asks the gateway before sending them.

    * a part recorded *uncertain* (a send that timed out or lost its connection);
    * the next part of a message a previous holder left mid-send (row found `sending`: it
      crashed or lost its lease, maybe between the gateway's answer and our commit). It
      cannot have sent that part before the row's last recorded change.
    """
    if ctx.parts is None or ctx.parts_sent >= len(ctx.parts):
        return {}
    unknown: dict[int, datetime] = {}
    if ctx.previous_status == MessageStatus.SENDING and ctx.last_progress_at is not None:
        unknown[ctx.parts_sent] = ctx.last_progress_at
    part, since = ctx.uncertain_part, ctx.uncertain_since
    if part is not None and since is not None and ctx.parts_sent <= part < len(ctx.parts):
        unknown[part] = min(since, unknown.get(part, since))
    return unknown
