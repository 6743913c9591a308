"""Typed shapes of what crosses a boundary: queue payloads and the per-batch context rows."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from .pacing import InboxSafety, SendPlan

PAYLOAD_VERSION = 1


class QueuePayload(BaseModel):
    """The contract's queue payload: ``{"v": 1, "campaign_message_id", "run_id", "lead_id"}``."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    v: Literal[1]
    campaign_message_id: uuid.UUID
    run_id: uuid.UUID
    lead_id: uuid.UUID


class InvalidPayloadError(ValueError):
    """A queue message whose payload is not a contract payload; it is dead-lettered, never retried."""


def parse_payload(raw: Any) -> QueuePayload:
    try:
        return QueuePayload.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "payload"
        raise InvalidPayloadError(f"{where}: {first['msg']}") from exc


@dataclass(frozen=True)
class QueueMessage:
    """One PGMQ read: (msg_id, read_ct) is this worker's lease on the message."""

    msg_id: int
    read_ct: int
    enqueued_at: datetime
    vt: datetime
    message: Any


@dataclass(frozen=True)
class CampaignConfig:
    id: uuid.UUID
    workspace_id: uuid.UUID
    ai_model: str
    system_prompt: str
    split_messages: bool
    max_parts: int
    max_tokens: int
    inbox_id: uuid.UUID
    instance: str
    uncertain_send_policy: str | None = None
    """The inbox's own policy for uncertain parts (None: the consumer's setting)."""


@dataclass
class SenderContext:
    """Sender-safety facts of one message (issue 13), read fresh with every batch: the lead's
    opt-out and zone, the campaign's send window, the inbox's pace/cap/pause, the message's
    pace booking (`slot_wait_s`: seconds until it, in the database's clock; negative = late)."""

    opted_out_at: datetime | None = None
    lead_timezone: str | None = None
    config_timezone: str | None = None
    window_start: time | None = None
    window_end: time | None = None
    inbox: InboxSafety | None = None
    slot_wait_s: float | None = None
    read_monotonic: float = 0.0
    # State of the attempt in progress (set by sender_safety.before_bubble):
    checked: bool = False
    plan: SendPlan | None = None
    slot_monotonic: float | None = None


@dataclass
class MessageContext:
    """What the batch query knows about one queue message, before any work is done.

    ``previous_status`` is the row's status before this read claimed it: ``generating`` or
    ``sending`` there means the previous holder crashed mid-message.
    """

    msg: QueueMessage
    payload: QueuePayload | None
    payload_error: str | None = None
    found: bool = False
    claimed: bool = False
    previous_status: str | None = None
    run_status: str | None = None
    run_id: uuid.UUID | None = None
    lead_id: uuid.UUID | None = None
    retry_count: int = 0
    deferral_count: int = 0
    first_deferred_at: datetime | None = None
    generated_message: str | None = None
    parts: list[str] | None = None
    parts_sent: int = 0
    uncertain_part: int | None = None
    """A part (0-based) whose send's outcome is unknown: reconciled before any resend."""
    uncertain_since: datetime | None = None
    last_progress_at: datetime | None = None
    """The row's last change before this read (a previous holder's last recorded step)."""
    attempt_history: list[dict[str, Any]] = field(default_factory=list)
    lead_name: str | None = None
    phone: str | None = None
    custom_fields: dict[str, Any] | None = None
    config_id: uuid.UUID | None = None
    config: CampaignConfig | None = None
    last_error_class: str | None = None
    sender: SenderContext = field(default_factory=SenderContext)  # issue 13

    @property
    def message_id(self) -> uuid.UUID | None:
        return self.payload.campaign_message_id if self.payload else None

    def require_message_id(self) -> uuid.UUID:
        if self.payload is None:
            raise InvalidPayloadError(self.payload_error or "no payload")
        return self.payload.campaign_message_id
