"""What to do with a message whose attempt failed: retry later or dead-letter it.

Pure on purpose (no clock, no I/O, randomness injected): the worker only carries out a
`Decision`, and every branch of the policy is a row in a parametrize table. The policy
decides on error *types* (see `consumer.errors`), never on message strings.

Attempt accounting follows the design's invariant: deferrals that are not the message's
fault (rate limit, open breaker, inbox down) and a stopping process do not burn an
attempt; real errors and bugs do. Deferrals are bounded in total time instead, so
nothing cycles forever.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal, get_args

from ..errors import (
    CampaignqError,
    ContentBlockedError,
    DeferralError,
    FatalError,
    PermanentError,
    UncertainSendHeldError,
)
from ..vocabulary import DeadLetterReason, ErrorClass, RetryReason

# The names below are the vocabulary's (consumer/vocabulary.py), kept here under the names
# the policy's readers know.
REASON_PERMANENT = DeadLetterReason.PERMANENT
REASON_MAX_ATTEMPTS = DeadLetterReason.MAX_ATTEMPTS
REASON_DEFERRED_TOO_LONG = DeadLetterReason.DEFERRED_TOO_LONG
REASON_INVALID_PAYLOAD = DeadLetterReason.INVALID_PAYLOAD
REASON_UNKNOWN_MESSAGE = DeadLetterReason.UNKNOWN_MESSAGE
REASON_SEND_UNCERTAIN = DeadLetterReason.SEND_UNCERTAIN
REASON_CONTENT_BLOCKED = DeadLetterReason.CONTENT_BLOCKED
DEAD_LETTER_REASONS: frozenset[str] = frozenset(DeadLetterReason)
"""Every reason a dead letter can carry: the policy's (here) and triage's (`consumer.core.triage`)."""

RETRY_REASON_BACKOFF = RetryReason.BACKOFF
RETRY_REASON_DEFERRED = RetryReason.DEFERRED
RETRY_REASON_PROCESS_STOPPING = RetryReason.PROCESS_STOPPING

ERROR_CLASS_INTERNAL = ErrorClass.INTERNAL
"""`error_class` of any exception that is not a `CampaignqError`: a bug, or an untranslated error."""

MIN_RETRY_DELAY_S = 1.0
"""Floor of every backoff, so a retry never hammers a provider that just failed."""
PROCESS_STOPPING_DELAY_S = 5.0
"""Release delay when the process stops: long enough not to spin, short enough for a healthy peer."""
DEFAULT_MAX_RETRY_AFTER_S = 120.0
"""Cap on a server's Retry-After (openai-python uses the same); matches `Settings.ai_max_retry_after_s`."""

# 2.0 ** 512 is far above any cap yet far below float overflow, so huge attempt counts stay finite.
_MAX_BACKOFF_EXPONENT = 512


@dataclass(frozen=True)
class Retry:
    """Make the queue message visible again after `delay_s`; `burns_attempt` says whether it counts."""

    delay_s: float
    burns_attempt: bool
    reason: str


@dataclass(frozen=True)
class DeadLetter:
    """Move the message to the DLQ and mark its row `failed`."""

    reason: str
    error_class: str


Decision = Retry | DeadLetter


def error_class_of(error: BaseException) -> str:
    """Stable, low-cardinality label for metrics and the DLQ; never the message text."""
    if isinstance(error, CampaignqError):
        return error.error_class
    return ERROR_CLASS_INTERNAL


def backoff_delay_s(attempt: int, *, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter (AWS architecture blog): spreads retries of a
    burst of failures evenly instead of in synchronised waves.

    ``uniform(0, min(cap_s, base_s * 2 ** (attempt - 1)))`` raised to a floor of
    `MIN_RETRY_DELAY_S` (or `cap_s` when the cap is smaller), so the result is always in
    ``[min(MIN_RETRY_DELAY_S, cap_s), cap_s]``.
    """
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    if not (base_s > 0 and cap_s > 0):
        raise ValueError(f"base_s and cap_s must be positive, got {base_s} and {cap_s}")
    ceiling_s = min(cap_s, math.ldexp(base_s, min(attempt - 1, _MAX_BACKOFF_EXPONENT)))
    return max(min(MIN_RETRY_DELAY_S, cap_s), rng.uniform(0.0, ceiling_s))


def decide(
    error: BaseException,
    *,
    attempts_made: int,
    max_attempts: int,
    deferred_for_s: float,
    max_deferral_s: float,
    backoff_base_s: float,
    backoff_max_s: float,
    rng: random.Random,
    max_retry_after_s: float = DEFAULT_MAX_RETRY_AFTER_S,
) -> Decision:
    """The outcome of one failed attempt.

    `attempts_made` counts the attempts burnt so far *including* the one that just failed
    when `error` burns one. `deferred_for_s` is the time the message already spent
    deferred (the sum of earlier non-burning delays). Every `Retry.delay_s` is at most
    ``max(backoff_max_s, max_retry_after_s)`` and never negative.

    Order matters: `DeferralError` is a `TemporaryError`, so it is matched first.
    """
    error_class = error_class_of(error)
    if isinstance(error, UncertainSendHeldError):
        return DeadLetter(reason=REASON_SEND_UNCERTAIN, error_class=error_class)
    if isinstance(error, ContentBlockedError):
        return DeadLetter(reason=REASON_CONTENT_BLOCKED, error_class=error_class)
    if isinstance(error, PermanentError):
        return DeadLetter(reason=REASON_PERMANENT, error_class=error_class)
    if isinstance(error, FatalError) or not isinstance(error, Exception):
        # The process is going down (bad key, cancellation, interpreter exit); the
        # message is not at fault, so it goes back untouched for a healthy worker.
        delay_s = min(PROCESS_STOPPING_DELAY_S, backoff_max_s)
        return Retry(delay_s=delay_s, burns_attempt=False, reason=RETRY_REASON_PROCESS_STOPPING)
    if isinstance(error, DeferralError):
        delay_s = _deferral_delay_s(
            error.retry_after_s,
            deferred_for_s=deferred_for_s,
            base_s=backoff_base_s,
            cap_s=backoff_max_s,
            max_retry_after_s=max_retry_after_s,
            rng=rng,
        )
        if deferred_for_s + delay_s > max_deferral_s:
            return DeadLetter(reason=REASON_DEFERRED_TOO_LONG, error_class=error_class)
        return Retry(delay_s=delay_s, burns_attempt=False, reason=RETRY_REASON_DEFERRED)
    # TemporaryError, and any other exception: a bug must not lose a message, but it
    # must not loop forever either, so it burns attempts like a temporary error.
    if attempts_made >= max_attempts:
        return DeadLetter(reason=REASON_MAX_ATTEMPTS, error_class=error_class)
    delay_s = backoff_delay_s(max(1, attempts_made), base_s=backoff_base_s, cap_s=backoff_max_s, rng=rng)
    return Retry(delay_s=delay_s, burns_attempt=True, reason=RETRY_REASON_BACKOFF)


def _deferral_delay_s(
    retry_after_s: float | None,
    *,
    deferred_for_s: float,
    base_s: float,
    cap_s: float,
    max_retry_after_s: float,
    rng: random.Random,
) -> float:
    """The server's Retry-After when it gave one (it knows best), else a backoff that grows
    with the time already deferred.

    Deferrals burn no attempt, so the attempt count cannot drive the backoff; waiting up
    to as long as the message has already waited roughly doubles the total each time —
    exponential without a deferral counter — and jitter spreads a whole batch of messages
    deferred by the same outage.
    """
    if retry_after_s is not None and not math.isnan(retry_after_s):
        return min(max(retry_after_s, MIN_RETRY_DELAY_S), max(cap_s, max_retry_after_s))
    ceiling_s = min(cap_s, max(base_s, deferred_for_s))
    return max(min(MIN_RETRY_DELAY_S, cap_s), rng.uniform(0.0, ceiling_s))


# --- uncertain sends ---------------------------------------------------------------------------

UncertainSendPolicy = Literal["verify", "resend", "hold"]
"""What to do with an uncertain part when the gateway cannot say whether it was delivered:
`verify` (default) checks again later and never sends blind; `resend` sends it again,
accepting a possible duplicate bubble; `hold` dead-letters the message for an operator."""
UNCERTAIN_SEND_POLICIES: tuple[str, ...] = get_args(UncertainSendPolicy)


@dataclass(frozen=True)
class Acknowledged:
    """The gateway has the part (fromMe, same text, sent after the attempt began): count it sent."""


@dataclass(frozen=True)
class SendAgain:
    """Send the part (again): the gateway does not have it, or the policy accepts the risk."""

    why: str


@dataclass(frozen=True)
class CheckLater:
    """Do not send now: put the message back and reconcile on the next attempt."""

    why: str
    burns_attempt: bool


@dataclass(frozen=True)
class Hold:
    """Dead-letter with reason `send_uncertain` for an operator (policy `hold`)."""

    why: str


UncertainDecision = Acknowledged | SendAgain | CheckLater | Hold


def uncertain_send_policy(name: str) -> UncertainSendPolicy:
    """The policy named (from a setting or an inbox row); unknown names mean `verify`, the safe one."""
    if name == "resend":
        return "resend"
    if name == "hold":
        return "hold"
    return "verify"


def decide_uncertain(
    found: bool | None, *, just_sent: bool, policy: UncertainSendPolicy
) -> UncertainDecision:
    """What to do with a part whose send may or may not have been delivered.

    `found`: what the gateway's message list said — True (it has the part), False (it does
    not), None (it could not answer). `just_sent`: the uncertain send happened in this very
    attempt, seconds ago; a part not (yet) listed then is not resent at once, because a
    gateway still working on the timed-out request may deliver it a moment later — the
    message goes back with backoff (burning an attempt, as a timeout always did) and the
    next attempt reconciles again before sending. The policy only speaks when the gateway
    cannot answer on that later attempt.
    """
    if found is True:
        return Acknowledged()
    if just_sent:
        return CheckLater("the send's outcome is unknown; reconcile on the next attempt", burns_attempt=True)
    if found is False:
        return SendAgain("the gateway does not have the part")
    if policy == "resend":
        return SendAgain("the gateway cannot tell; policy resend accepts a possible duplicate")
    if policy == "hold":
        return Hold("the gateway cannot tell whether the part was delivered; held for an operator")
    return CheckLater(
        "the gateway cannot tell whether the part was delivered; checking again later", burns_attempt=False
    )
