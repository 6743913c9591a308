"""One vocabulary: the names campaignq writes into rows, the DLQ, logs and metrics labels.

Each is a `StrEnum`, so a member *is* its string (a metrics label, a JSON value, a bind
parameter) and a typo is a name error instead of a new label. The SQL side keeps the same
strings in CHECK constraints and functions; `tests/unit/test_vocabulary.py` holds the two
together.
"""

from __future__ import annotations

from enum import StrEnum


class MessageStatus(StrEnum):
    """`campaign_messages.status` (the CHECK in db/migrations/0001_schema.sql)."""

    PENDING = "pending"
    QUEUED = "queued"
    GENERATING = "generating"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"


TERMINAL_STATUSES = frozenset({MessageStatus.SENT, MessageStatus.FAILED, MessageStatus.SKIPPED})
IN_FLIGHT_STATUSES = frozenset({MessageStatus.GENERATING, MessageStatus.SENDING})


class RunStatus(StrEnum):
    """`campaign_runs.status` (the CHECK in db/migrations/0001_schema.sql)."""

    SCHEDULED = "scheduled"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class Outcome(StrEnum):
    """How one delivery of a queue message ended: the `outcome` of logs and of
    `campaignq_outcomes_total`."""

    SENT = "sent"
    RETRY = "retry"
    """Failed with a temporary error or a bug: an attempt burnt, back after a backoff."""
    DEFERRED = "deferred"
    """Not the message's fault (rate limit, breaker, inbox down): back without burning an attempt."""
    DEAD_LETTER = "dead_letter"
    SKIPPED = "skipped"
    RELEASED_TO_PENDING = "released_to_pending"
    ARCHIVED = "archived"
    """The row was already terminal: the queue message is archived, nothing sent."""
    LEASE_LOST = "lease_lost"
    HELD = "held"
    """Sender safety: inbox paused or outside its send window; handed back untouched."""
    RELEASED = "released"
    """Shutdown: handed back at once (logged only; the task is cancelled before it is counted)."""


class DeadLetterReason(StrEnum):
    """The DLQ payload's ``reason`` (`replay --reason` filters on it)."""

    PERMANENT = "permanent"
    """The error says retrying cannot help (provider 400, invalid phone, bad config)."""
    MAX_ATTEMPTS = "max_attempts"
    """Every allowed attempt failed with a temporary error or a bug (or the holder crashed)."""
    DEFERRED_TOO_LONG = "deferred_too_long"
    """Deferred (rate limit, breaker, inbox down) for longer than `max_deferral_s` in total."""
    INVALID_PAYLOAD = "invalid_payload"
    """The queue message does not parse, or names a row of another run or lead."""
    UNKNOWN_MESSAGE = "unknown_message"
    """The payload's campaign message does not exist; dead-lettered by triage."""
    SEND_UNCERTAIN = "send_uncertain"
    """A part's delivery is unknown, the gateway cannot tell, and the inbox's policy is `hold`."""
    CONTENT_BLOCKED = "content_blocked"
    """The AI provider refused this lead's request (moderation flag or guardrail, issue 21)."""


class ErrorClass(StrEnum):
    """Stable, low-cardinality `error_class` of rows, the DLQ, logs and metrics labels."""

    ERROR = "error"
    CONFIGURATION = "configuration"
    DATABASE_UNAVAILABLE = "database_unavailable"
    TEMPORARY = "temporary"
    TIMEOUT = "timeout"
    PROVIDER_UNAVAILABLE = "provider_unavailable"
    SEND_UNCERTAIN = "send_uncertain"
    INVALID_AI_OUTPUT = "invalid_ai_output"
    DEFERRED = "deferred"
    RATE_LIMITED = "rate_limited"
    PROVIDER_OVERLOADED = "provider_overloaded"
    CIRCUIT_OPEN = "circuit_open"
    INBOX_UNAVAILABLE = "inbox_unavailable"
    RECONCILE_UNAVAILABLE = "reconcile_unavailable"
    INBOX_BANNED = "inbox_banned"
    HELD = "held"
    PERMANENT = "permanent"
    PROVIDER_REJECTED = "provider_rejected"
    CONTENT_BLOCKED = "content_blocked"
    INVALID_LEAD = "invalid_lead"
    INVALID_CONFIG = "invalid_config"
    NEEDS_TEMPLATE = "needs_template"
    """The Cloud API accepts only a template for this lead now (#131047)."""
    SEND_UNCERTAIN_HELD = "send_uncertain_held"
    FATAL = "fatal"
    LEASE_LOST = "lease_lost"
    STRUCTURED_OUTPUT_UNSUPPORTED = "structured_output_unsupported"
    INTERNAL = "internal"
    """Any exception that is not a `CampaignqError`: a bug, or an untranslated error."""
    # decided by triage, before any work
    INVALID_PAYLOAD = "invalid_payload"
    UNKNOWN_MESSAGE = "unknown_message"
    RUN_CANCELLED = "run_cancelled"
    RUN_COMPLETED = "run_completed"
    OPTED_OUT = "opted_out"
    CRASHED = "crashed"
    """The holder stopped mid-message (row found generating/sending) too many times."""


class RetryReason(StrEnum):
    """Why a message went back to the queue (logs and metrics)."""

    BACKOFF = "backoff"
    """A temporary error or a bug: an attempt was burnt, wait an exponential backoff."""
    DEFERRED = "deferred"
    """Not the message's fault: no attempt burnt, wait Retry-After or a deferral backoff."""
    PROCESS_STOPPING = "process_stopping"
    """Fatal error (bad API key) or cancellation: the worker stops, another one takes over."""
