"""One error hierarchy: the policy decides on these types, never on message strings.

Driver and HTTP errors are translated into these classes at the edges (`db.py`, `ai.py`,
`whatsapp.py`), so the pure core only ever sees a `CampaignqError`.
"""

from __future__ import annotations

from .vocabulary import ErrorClass


class CampaignqError(Exception):
    """Base of every error campaignq raises on purpose."""

    error_class: str = ErrorClass.ERROR

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or self.__class__.__name__).strip())


class ConfigurationError(CampaignqError):
    """Bad settings or command-line input; reported as one line, exit status 2."""

    error_class: str = ErrorClass.CONFIGURATION


class DatabaseUnavailableError(CampaignqError):
    """The database cannot be reached."""

    error_class: str = ErrorClass.DATABASE_UNAVAILABLE


class TemporaryError(CampaignqError):
    """Worth retrying later: timeouts, 5xx, connection resets, invalid AI output."""

    error_class: str = ErrorClass.TEMPORARY


class ProviderTimeoutError(TemporaryError):
    """A provider call exceeded its timeout."""

    error_class: str = ErrorClass.TIMEOUT


class ProviderUnavailableError(TemporaryError):
    """A provider answered 5xx or the connection failed."""

    error_class: str = ErrorClass.PROVIDER_UNAVAILABLE


class SendOutcomeUnknownError(TemporaryError):
    """A send whose request was written but whose answer never came (connection reset or
    closed mid-call): the gateway may have delivered the bubble. The part is *uncertain*:
    it is reconciled with the gateway before any resend, never blindly repeated."""

    error_class: str = ErrorClass.SEND_UNCERTAIN


class SendTimedOutError(SendOutcomeUnknownError, ProviderTimeoutError):
    """A send that did not answer within its timeout: uncertain, like a reset (see above)."""

    error_class: str = ErrorClass.TIMEOUT


class InvalidAIOutputError(TemporaryError):
    """The AI answered 200 but the content failed validation (empty, too short, error body)."""

    error_class: str = ErrorClass.INVALID_AI_OUTPUT


class DeferralError(TemporaryError):
    """Not the message's fault (rate limit, inbox down): retry later without burning an attempt."""

    error_class: str = ErrorClass.DEFERRED

    def __init__(self, message: str | None = None, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RateLimitedError(DeferralError):
    """The provider said 429 (or 402 in-flight budget): wait `retry_after_s`, no attempt burnt."""

    error_class: str = ErrorClass.RATE_LIMITED


class ProviderOverloadedError(RateLimitedError):
    """The provider said 503 *with* a Retry-After (OpenRouter: no provider available right now):
    honoured like a 429 — the client cools down, the message waits, no attempt burnt."""

    error_class: str = ErrorClass.PROVIDER_OVERLOADED


class CircuitOpenError(DeferralError):
    """A circuit breaker is open for this provider or inbox; the call was not made."""

    error_class: str = ErrorClass.CIRCUIT_OPEN


class InboxUnavailableError(DeferralError):
    """The WhatsApp instance is disconnected or its socket is dead."""

    error_class: str = ErrorClass.INBOX_UNAVAILABLE


class ReconcileUnavailableError(DeferralError):
    """The gateway could not say whether an uncertain part was delivered, and the policy is
    `verify`: check again later, without sending and without burning an attempt."""

    error_class: str = ErrorClass.RECONCILE_UNAVAILABLE


class InboxBannedError(InboxUnavailableError):
    """The gateway says the number was banned or logged out: the inbox is paused for an
    operator (issue 13); its messages wait in the queue without burning attempts."""

    error_class: str = ErrorClass.INBOX_BANNED

    def __init__(self, message: str | None = None, *, kind: str = "banned") -> None:
        super().__init__(message)
        self.kind = kind


class SendHeldError(CampaignqError):
    """Not now, and not a failure: the inbox's pace or daily cap, a paused inbox or the lead's
    send window says later. The message goes back to the queue until `delay_s` has passed,
    burning no attempt and not running the `deferred_too_long` clock (issue 13)."""

    error_class: str = ErrorClass.HELD

    def __init__(self, message: str | None = None, *, reason: str, delay_s: float) -> None:
        super().__init__(message)
        self.reason = reason
        self.delay_s = delay_s


class PermanentError(CampaignqError):
    """Retrying cannot help: dead-letter at once."""

    error_class: str = ErrorClass.PERMANENT


class ProviderRejectedError(PermanentError):
    """The provider answered 400/404/422 for this request."""

    error_class: str = ErrorClass.PROVIDER_REJECTED


class ContentBlockedError(PermanentError):
    """The provider refused this request's content (OpenRouter 403 with moderation metadata or
    a guardrail block): this message fails alone (reason `content_blocked`), the process goes
    on. `reasons` are the provider's (flagged categories, guardrail patterns, provider name),
    kept in the dead letter's error text for the operator."""

    error_class: str = ErrorClass.CONTENT_BLOCKED

    def __init__(self, message: str | None = None, *, reasons: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.reasons = reasons


class InvalidLeadError(PermanentError):
    """The lead cannot be messaged (no phone, phone not E.164-like, not on WhatsApp)."""

    error_class: str = ErrorClass.INVALID_LEAD


class TemplateRequiredError(PermanentError):
    """The Cloud API will only deliver a template to this lead (#131047: outside the 24 h
    customer-service window); free text cannot go (issue 21)."""

    error_class: str = ErrorClass.NEEDS_TEMPLATE


class InvalidConfigError(PermanentError):
    """The campaign config cannot produce a message (empty prompt, missing inbox)."""

    error_class: str = ErrorClass.INVALID_CONFIG


class UncertainSendHeldError(PermanentError):
    """The gateway could not say whether an uncertain part was delivered, and the policy is
    `hold`: park the message in the dead-letter queue (reason `send_uncertain`) for an
    operator to check the chat and replay it, instead of risking a duplicate."""

    error_class: str = ErrorClass.SEND_UNCERTAIN_HELD


class FatalError(CampaignqError):
    """The whole process cannot go on (bad API key, no credits): stop reading, exit non-zero."""

    error_class: str = ErrorClass.FATAL


class LeadOptedOutError(CampaignqError):
    """The lead opted out while its message was in flight (issue 20): the answer to recording
    an acknowledged part says so, and no further part is sent — the message ends `skipped`
    (`opted_out`) with the parts already delivered counted in `parts_sent`."""

    error_class: str = ErrorClass.OPTED_OUT


class LeaseLostError(CampaignqError):
    """This worker no longer holds the queue message (its visibility timeout ran out and
    another worker read it): stop touching it, the new holder carries on."""

    error_class: str = ErrorClass.LEASE_LOST


def one_line(exc: BaseException) -> str:
    """An exception as one log line: its text with whitespace folded, else its type's name."""
    return " ".join(str(exc).split()) or type(exc).__name__
