"""Typed shapes of what crosses a boundary: queue payloads and the per-batch context rows."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, time
from time import monotonic
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from .. import safejson
from .pacing import InboxSafety, SendPlan

PAYLOAD_VERSION = 1
PAYLOAD_MAX_BYTES = 1024
"""The largest queue payload accepted, as PostgreSQL prints it (a contract payload is about
170 bytes). `campaignq_payload_ok` (db/migrations/0016) trusts only payloads this short, so
every payload the claim trusts, `parse_payload` accepts."""
PAYLOAD_MAX_DEPTH = PAYLOAD_MAX_BYTES // 2
"""Any JSON text of `PAYLOAD_MAX_BYTES` nests at most this deep: the size bound decides."""


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
    """The contract payload of a queue message, or `InvalidPayloadError` saying why not.

    `raw` is the payload's JSON text as read (str or bytes, parsed here under the size and
    nesting guard: one hostile message must not stop the batch, issue 22) or a decoded value.
    """
    if isinstance(raw, str | bytes):
        try:
            raw = safejson.loads(raw, max_bytes=PAYLOAD_MAX_BYTES, max_depth=PAYLOAD_MAX_DEPTH)
        except safejson.UnsafeJSON as exc:
            raise InvalidPayloadError(f"payload: {exc}") from None
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

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> CampaignConfig:
        """The config and inbox columns of a `claim_batch` row (db/queries.sql)."""
        return cls(
            id=row["config_id"],
            workspace_id=row["workspace_id"],
            ai_model=row["ai_model"],
            system_prompt=row["system_prompt"],
            split_messages=bool(row["split_messages"]),
            max_parts=int(row["max_parts"]),
            max_tokens=int(row["max_tokens"]),
            inbox_id=row["inbox_id"],
            instance=row["instance"],
            uncertain_send_policy=row["uncertain_send_policy"],
        )


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

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> SenderContext:
        """The sender-safety columns of a `claim_batch` row (db/queries.sql, issue 13)."""
        inbox = None
        if row.get("safety_inbox_id") is not None:
            inbox = InboxSafety(
                inbox_id=row["safety_inbox_id"],
                max_sends_per_minute=row.get("max_sends_per_minute"),
                daily_send_cap=row.get("daily_send_cap"),
                paused_at=row.get("inbox_paused_at"),
                pause_reason=row.get("inbox_pause_reason"),
                warmup_started_at=row.get("warmup_started_at"),
                warmup_first_day_cap=row.get("warmup_first_day_cap"),
                warmup_daily_growth=float(row.get("warmup_daily_growth") or 1.5),
            )
        wait_s = row.get("send_slot_wait_s")
        return cls(
            opted_out_at=row.get("opted_out_at"),
            lead_timezone=row.get("lead_timezone"),
            config_timezone=row.get("config_timezone"),
            window_start=row.get("send_window_start"),
            window_end=row.get("send_window_end"),
            inbox=inbox,
            slot_wait_s=float(wait_s) if wait_s is not None else None,
            read_monotonic=monotonic(),
        )


@dataclass(frozen=True)
class ClaimedRow:
    """One row of `Database.claim_batch`: what the database knows about one queue message.

    `config` is set when the batch sent the config's columns (it was not in the caller's
    cache) and the inbox exists; `config_sent` says whether they were sent at all.
    """

    msg_id: int
    found: bool
    claimed: bool
    previous_status: str | None
    run_status: str | None
    run_id: uuid.UUID | None
    lead_id: uuid.UUID | None
    retry_count: int
    deferral_count: int
    first_deferred_at: datetime | None
    generated_message: str | None
    parts: list[str] | None
    parts_sent: int
    uncertain_part: int | None
    uncertain_since: datetime | None
    last_progress_at: datetime | None
    attempt_history: list[dict[str, Any]]
    lead_name: str | None
    phone: str | None
    custom_fields: dict[str, Any] | None
    config_id: uuid.UUID | None
    config_sent: bool
    config: CampaignConfig | None
    sender: SenderContext
    context_error: str | None = None
    """A JSON column of the row or its lead that could not be read (too deep, too large):
    the message is dead-lettered, never processed with half its context."""

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ClaimedRow:
        """A claim's row; its JSON columns may come as text (read under the guard here)."""
        row, context_error = _decode_json_columns(row)
        config_sent = row["ai_model"] is not None
        return cls(
            msg_id=int(row["msg_id"]),
            found=bool(row["found"]),
            claimed=bool(row["claimed"]),
            previous_status=row["previous_status"],
            run_status=row["run_status"],
            run_id=row["run_id"],
            lead_id=row["lead_id"],
            retry_count=int(row["retry_count"] or 0),
            deferral_count=int(row["deferral_count"] or 0),
            first_deferred_at=row["first_deferred_at"],
            generated_message=row["generated_message"],
            parts=list(row["parts"]) if row["parts"] is not None else None,
            parts_sent=int(row["parts_sent"] or 0),
            uncertain_part=row["uncertain_part"],
            uncertain_since=row["uncertain_since"],
            last_progress_at=row["last_progress_at"],
            attempt_history=list(row["attempt_history"] or []),
            lead_name=row["lead_name"],
            phone=row["phone"],
            custom_fields=row["custom_fields"],
            config_id=row["config_id"],
            config_sent=config_sent,
            config=(
                CampaignConfig.from_row(row)
                if config_sent and row["config_id"] is not None and row["instance"] is not None
                else None
            ),
            sender=SenderContext.from_row(row),
            context_error=context_error,
        )


CONTEXT_MAX_BYTES = 256 * 1024 * 1024
"""Our own columns (a lead's custom_fields may hold megabytes): size is not the risk there."""
CONTEXT_MAX_DEPTH = 128
"""Deeper than any custom_fields a planner writes; deeper than this stops Python's parser."""
_JSON_COLUMNS = ("parts", "attempt_history", "custom_fields")


def _decode_json_columns(row: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """`row` with its JSON columns parsed when they came as text, and the first refusal.

    The database hands jsonb over as text (consumer/runtime/db.py) so that one lead whose
    custom_fields nest 3,000 deep costs its own message, not the whole batch (issue 22)."""
    if not any(isinstance(row.get(column), str | bytes) for column in _JSON_COLUMNS):
        return row, None
    decoded = dict(row)
    error: str | None = None
    for column in _JSON_COLUMNS:
        value = decoded.get(column)
        if not isinstance(value, str | bytes):
            continue
        try:
            decoded[column] = safejson.loads(value, max_bytes=CONTEXT_MAX_BYTES, max_depth=CONTEXT_MAX_DEPTH)
        except safejson.UnsafeJSON as exc:
            decoded[column] = None
            error = error or f"{column} cannot be read: {exc}"
    return decoded, error


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
    whatsapp_jid: str | None = None
    """The chat the gateway named for this message (`key.remoteJid`, issue 21), once known in
    this attempt (recorded in `campaign_messages.whatsapp_jid`, read back to reconcile)."""
    context_error: str | None = None
    """See `ClaimedRow.context_error` (issue 22)."""

    def apply(self, row: ClaimedRow, config: CampaignConfig | None) -> None:
        """What the batch claim found (`config`: the row's, or the caller's cached copy)."""
        self.found = row.found
        self.claimed = row.claimed
        self.previous_status = row.previous_status
        self.run_status = row.run_status
        self.run_id = row.run_id
        self.lead_id = row.lead_id
        self.retry_count = row.retry_count
        self.deferral_count = row.deferral_count
        self.first_deferred_at = row.first_deferred_at
        self.generated_message = row.generated_message
        self.parts = row.parts
        self.parts_sent = row.parts_sent
        self.uncertain_part = row.uncertain_part
        self.uncertain_since = row.uncertain_since
        self.last_progress_at = row.last_progress_at
        self.attempt_history = row.attempt_history
        self.lead_name = row.lead_name
        self.phone = row.phone
        self.custom_fields = row.custom_fields
        self.config_id = row.config_id
        self.config = config
        self.sender = row.sender  # issue 13
        self.context_error = row.context_error

    @property
    def message_id(self) -> uuid.UUID | None:
        return self.payload.campaign_message_id if self.payload else None

    def require_message_id(self) -> uuid.UUID:
        if self.payload is None:
            raise InvalidPayloadError(self.payload_error or "no payload")
        return self.payload.campaign_message_id
