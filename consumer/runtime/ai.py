"""The LLM edge: OpenAI-compatible chat completions over aiohttp, translated into `errors` types.

Everything the provider can do to us ends here as one of our error classes, so the worker
and the policy never look at HTTP statuses. Three guards sit in front of every request:

1. a shared 429 cooldown: after the provider says "slow down", the whole client stops
   sending until the Retry-After has passed, instead of every task finding out alone;
2. a circuit breaker that stops calling a provider that keeps timing out or failing;
3. an `aiolimiter.AsyncLimiter` that keeps us under `requests_per_minute`;
4. when given one, a `budget.SharedBudget`: this process's slice of the AI budget shared by
   every process (rate_limits row 'ai'), whose 429 cooldown is shared through the database.

Issue 21 (OpenRouter's errors page): a 503 with a Retry-After cools down like a 429; a 403
with moderation or guardrail metadata fails that message only (`ContentBlockedError`), and
only plain 403s on several different requests in a row are fatal, like a 401.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC
from typing import Any

import aiohttp
from aiolimiter import AsyncLimiter
from loguru import logger
from multidict import CIMultiDict
from yarl import URL

from .. import safejson
from ..core.breaker import CircuitBreaker
from ..core.llmcost import is_structured_output_rejection, parts_response_format
from ..core.providers import ForbiddenStreak, classify_forbidden
from ..errors import (
    CircuitOpenError,
    ContentBlockedError,
    FatalError,
    InvalidAIOutputError,
    ProviderOverloadedError,
    ProviderRejectedError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    RateLimitedError,
)
from ..settings import Settings
from ..vocabulary import ErrorClass
from .budget import SharedBudget
from .provider_http import JSON_CONTENT_TYPE, json_body, json_object, provider_text

DEFAULT_RETRY_AFTER_S = 5.0
# A cooldown this short is cheaper to sleep through than to hand back to the queue.
WAIT_OUT_COOLDOWN_UP_TO_S = 2.0
IN_FLIGHT_BUDGET_LIMIT_SOURCE = "openrouter_in_flight_budget"

_REJECTED_STATUSES = frozenset({400, 404, 413, 422})


class _UnexpectedStatusError(ProviderUnavailableError):
    """409 or a status we do not know: worth retrying, but no sign that the provider is down."""


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_usd: float | None
    cached_tokens: int = 0
    """``usage.prompt_tokens_details.cached_tokens``: prompt tokens read from the provider's cache."""
    cache_write_tokens: int = 0
    """``usage.prompt_tokens_details.cache_write_tokens`` where reported (OpenRouter, Anthropic)."""


class StructuredOutputUnsupportedError(ProviderRejectedError):
    """The model (or every provider of it) refuses ``response_format: json_schema``."""

    error_class: str = ErrorClass.STRUCTURED_OUTPUT_UNSUPPORTED


@dataclass(frozen=True)
class Completion:
    content: str
    usage: Usage
    model: str
    latency_ms: int


def parse_retry_after_s(headers: Mapping[str, str], *, now_epoch_s: float) -> float | None:
    """Seconds the server asked us to wait, or None when it did not say (or said nonsense).

    Same precedence as openai-python: ``retry-after-ms`` first, then ``Retry-After`` as
    seconds or as an HTTP date (RFC 9110). A date in the past means "now": 0.
    """
    milliseconds = _header(headers, "retry-after-ms")
    if milliseconds is not None and (value := _finite_float(milliseconds)) is not None:
        return max(0.0, value / 1000.0)
    raw = _header(headers, "retry-after")
    if raw is None:
        return None
    if (value := _finite_float(raw)) is not None:
        return max(0.0, value)
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" parses naive; HTTP dates are always UTC
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now_epoch_s)


def _finite_float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # aiohttp's CIMultiDictProxy is case-insensitive; a plain dict (tests, callers) may not be.
    value = headers.get(name)
    if value is None:
        for key, candidate in headers.items():
            if key.lower() == name:
                return candidate.strip()
        return None
    return value.strip()


def rate_limiter_for(requests_per_minute: int) -> AsyncLimiter:
    """A limiter that holds `requests_per_minute` while allowing at most ~1 s worth of burst.

    ``AsyncLimiter(1, 60 / rpm)`` (strict spacing) serialises requests completely: at
    600 rpm a request may only start every 100 ms, so a batch of 32 ready messages waits
    3 s for no reason. ``AsyncLimiter(rpm, 60)`` is the other extreme: an idle client
    fires a whole minute's budget at once and collects 429s. A per-second bucket
    (``rpm / 60`` per 1 s) keeps bursts to one second of budget. Below 60 rpm the
    period stretches so that the bucket still holds one whole request (``acquire(1)``
    needs ``max_rate >= 1``) without exceeding the rate: 30 rpm → 1 per 2 s.
    """
    period_s = max(1.0, 60.0 / requests_per_minute)
    return AsyncLimiter(requests_per_minute * period_s / 60.0, period_s)


class AIClient:
    """Chat completions with a shared 429 cooldown, a circuit breaker and a request-rate limit.

    One instance per process, shared by every task: the cooldown, breaker and limiter only
    protect the provider if all callers go through the same object.
    """

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        base_url: str,
        api_key: str,
        requests_per_minute: int,
        timeout_s: float = 30.0,
        split_timeout_s: float = 20.0,
        max_retry_after_s: float = 120.0,
        default_retry_after_s: float = DEFAULT_RETRY_AFTER_S,
        breaker_failures: int = 10,
        breaker_cooldown_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        openrouter_fields: bool = True,
        prompt_cache_key_field: bool = True,
        budget: SharedBudget | None = None,
    ) -> None:
        self._openrouter_fields = openrouter_fields
        self._prompt_cache_key_field = prompt_cache_key_field
        self._session = session
        self._budget = budget
        # Parsed once (issue 15): a str URL is parsed by yarl on every request.
        self._url = URL(f"{base_url.rstrip('/')}/chat/completions")
        self._api_key = api_key
        self._timeout_s = timeout_s
        self._split_timeout_s = split_timeout_s
        self._max_retry_after_s = max_retry_after_s
        self._default_retry_after_s = min(default_retry_after_s, max_retry_after_s)
        self._limiter = rate_limiter_for(requests_per_minute)
        self._breaker = CircuitBreaker(failure_threshold=breaker_failures, cooldown_s=breaker_cooldown_s)
        self._clock = clock
        self._wall_clock = wall_clock
        self._cooldown_until = 0.0
        # Plain 403s (no moderation metadata) on different requests in a row: the key's, not a lead's.
        self._forbidden = ForbiddenStreak()
        # Built once, not per request (issue 15, P5): the headers and the two timeouts used.
        # A CIMultiDict, which aiohttp merges as it is (a dict is converted on every request).
        self._headers = CIMultiDict({"Authorization": f"Bearer {api_key}", "Content-Type": JSON_CONTENT_TYPE})
        self._timeouts = {
            seconds: aiohttp.ClientTimeout(total=seconds) for seconds in (timeout_s, split_timeout_s)
        }

    @classmethod
    def from_settings(
        cls, settings: Settings, session: aiohttp.ClientSession, *, budget: SharedBudget | None = None
    ) -> AIClient:
        return cls(
            budget=budget,
            session=session,
            base_url=settings.ai_base_url,
            api_key=settings.ai_key(),
            requests_per_minute=settings.ai_requests_per_minute,
            timeout_s=settings.ai_timeout_s,
            split_timeout_s=settings.split_timeout_s,
            max_retry_after_s=settings.ai_max_retry_after_s,
            breaker_failures=settings.ai_breaker_failures,
            breaker_cooldown_s=settings.ai_breaker_cooldown_s,
            openrouter_fields=settings.ai_openrouter_fields,
            prompt_cache_key_field=settings.ai_prompt_cache_key,
        )

    @property
    def breaker_state(self) -> str:
        return self._breaker.current_state(self._clock())

    def cooldown_remaining_s(self) -> float:
        """Seconds before any request may go out after a 429 (ours or another process's)."""
        shared_s = self._budget.cooldown_remaining_s() if self._budget is not None else 0.0
        return max(0.0, self._cooldown_until - self._clock(), shared_s)

    async def generate(
        self,
        *,
        model: str,
        system_prompt: str,
        user_prompt: str,
        max_tokens: int,
        cache_key: str | None = None,
    ) -> Completion:
        messages: list[dict[str, str]] = []
        if system_prompt.strip():
            messages.append({"role": "system", "content": system_prompt})
        messages.append({"role": "user", "content": user_prompt})
        payload = {"model": model, "messages": messages, "max_tokens": max_tokens}
        return await self._complete(self._with_cache_key(payload, cache_key), timeout_s=self._timeout_s)

    def chat_body(
        self,
        *,
        model: str,
        messages: list[dict[str, Any]],
        max_tokens: int,
        response_format: dict[str, Any] | None = None,
        cache_key: str | None = None,
    ) -> dict[str, Any]:
        """The request body of one chat completion, as sent here and as put in a batch file.

        With a schema and OpenRouter fields on, ``provider.require_parameters`` routes only to
        providers that honour ``response_format``; others would ignore it and answer prose.
        """
        payload: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens}
        if response_format is not None:
            payload["response_format"] = response_format
            if self._openrouter_fields:
                payload["provider"] = {"require_parameters": True}
        return self._with_cache_key(payload, cache_key)

    async def compose(
        self,
        *,
        model: str,
        messages: list[dict[str, Any]],
        response_format: dict[str, Any],
        max_tokens: int,
        cache_key: str | None = None,
    ) -> Completion:
        """One call that writes the message already cut into bubbles (strict JSON schema).

        A rejection that names the schema becomes `StructuredOutputUnsupportedError`, so the
        caller can fall back for this model; any other rejection stays what it was.
        """
        payload = self.chat_body(
            model=model,
            messages=messages,
            max_tokens=max_tokens,
            response_format=response_format,
            cache_key=cache_key,
        )
        return await self.complete_chat(payload, structured=True)

    async def complete_chat(self, payload: dict[str, Any], *, structured: bool) -> Completion:
        """Send a body built by `chat_body` as it is (the generation path builds it once).

        ``structured``: the body carries a strict schema, so a rejection that names the schema
        becomes `StructuredOutputUnsupportedError` (the caller falls back for this model).
        """
        if not structured:
            return await self._complete(payload, timeout_s=self._timeout_s)
        try:
            return await self._complete(payload, timeout_s=self._timeout_s)
        except ProviderRejectedError as exc:
            if is_structured_output_rejection(str(exc)):
                raise StructuredOutputUnsupportedError(str(exc)) from exc
            raise

    def _with_cache_key(self, payload: dict[str, Any], cache_key: str | None) -> dict[str, Any]:
        """Sticky routing for the provider's prompt cache: one key per campaign prompt."""
        if cache_key:
            if self._openrouter_fields:
                payload["session_id"] = cache_key
            if self._prompt_cache_key_field:
                payload["prompt_cache_key"] = cache_key
        return payload

    async def split(
        self, *, model: str, text: str, max_parts: int, max_chars: int, max_tokens: int
    ) -> Completion:
        """Ask the model to cut `text` into WhatsApp bubbles; the content is the raw JSON text.

        The character limit travels in the instructions, not the schema: strict structured
        outputs accept ``maxItems`` but not ``maxLength``. Parsing and checking the parts is
        `consumer.core.split`'s job, so a bad answer there can be retried or degraded as a whole.
        """
        instructions = (
            "Split the user's WhatsApp message into at most "
            f"{max_parts} consecutive messages of at most {max_chars} characters each. "
            "Cut at paragraph or sentence boundaries, keep every word and the original order, "
            "do not add, translate or rephrase anything. "
            'Answer only with JSON: {"parts": ["first message", "second message"]}.'
        )
        payload = {
            "model": model,
            "messages": [
                {"role": "system", "content": instructions},
                {"role": "user", "content": text},
            ],
            "max_tokens": max_tokens,
            "response_format": parts_response_format(max_parts=max_parts, name="whatsapp_parts"),
        }
        return await self._complete(payload, timeout_s=self._split_timeout_s)

    # --- one request ------------------------------------------------------------------------

    async def _complete(self, payload: dict[str, Any], *, timeout_s: float) -> Completion:
        await self._wait_for_admission()
        outcome_recorded = False
        try:
            completion = await self._request(payload, timeout_s=timeout_s)
        except (ProviderTimeoutError, ProviderUnavailableError, InvalidAIOutputError) as exc:
            if not isinstance(exc, _UnexpectedStatusError):
                self._record_failure(exc)
                outcome_recorded = True
            raise
        else:
            self._breaker.record_success(self._clock())
            self._forbidden.succeeded()
            outcome_recorded = True
            return completion
        finally:
            if not outcome_recorded:
                # 429, 4xx, cancellation: nothing learnt about the provider's health, but a
                # half-open trial slot must be handed back or no one could try again.
                self._breaker.record_neutral()

    async def _wait_for_admission(self) -> None:
        # `_respect_cooldown` is only awaited when there is a cooldown: no coroutine per
        # request for the usual case (issue 15).
        if self.cooldown_remaining_s() > 0:
            await self._respect_cooldown()
        self._refuse_if_circuit_open(claim_trial=False)
        await self._limiter.acquire()
        if self._budget is not None:
            # After our own cap: the shared slice is never above it, so it is the tighter
            # limit and no shared token is spent on a request our own limiter would hold.
            await self._budget.acquire()
        # Critical section: a 429 may have arrived while we queued in the limiter; check
        # again, then claim the breaker (possibly the half-open trial) with no await before
        # the request goes out.
        if self.cooldown_remaining_s() > 0:
            await self._respect_cooldown()
        self._refuse_if_circuit_open(claim_trial=True)

    async def _respect_cooldown(self) -> None:
        while (remaining := self.cooldown_remaining_s()) > 0:
            if remaining > WAIT_OUT_COOLDOWN_UP_TO_S:
                raise RateLimitedError(
                    f"AI provider cooling down after a rate limit ({remaining:.1f}s left); no request made",
                    retry_after_s=remaining,
                )
            # Loop: another 429 may have pushed the cooldown further while we slept.
            await asyncio.sleep(remaining)

    def _refuse_if_circuit_open(self, *, claim_trial: bool) -> None:
        now = self._clock()
        allowed = self._breaker.allow(now) if claim_trial else self._breaker.current_state(now) != "open"
        if not allowed:
            raise CircuitOpenError(
                f"AI circuit breaker {self._breaker.current_state(now)}; no request made",
                retry_after_s=self._breaker.retry_after_s(now),
            )

    def _record_failure(self, exc: Exception) -> None:
        was_open = self._breaker.state == "open"
        self._breaker.record_failure(self._clock())
        if self._breaker.state == "open" and not was_open:
            logger.warning(
                "AI circuit breaker opened after {} consecutive failures (last: {}); pausing {}s",
                self._breaker.consecutive_failures,
                type(exc).__name__,
                self._breaker.cooldown_s,
            )

    async def _request(self, payload: dict[str, Any], *, timeout_s: float) -> Completion:
        timeout = self._timeouts.get(timeout_s) or aiohttp.ClientTimeout(total=timeout_s)
        request_body = json_body(payload)
        started = time.perf_counter()
        try:
            async with self._session.post(
                self._url, data=request_body, headers=self._headers, timeout=timeout
            ) as response:
                body = await response.read()
                status = response.status
                response_headers = response.headers
        except TimeoutError as exc:  # aiohttp's timeouts subclass TimeoutError (and ClientError)
            raise ProviderTimeoutError(f"AI provider did not answer within {timeout_s:g}s") from exc
        except aiohttp.ClientError as exc:
            raise ProviderUnavailableError(f"AI provider unreachable: {type(exc).__name__}") from exc
        latency_ms = round((time.perf_counter() - started) * 1000)
        if status == 200:
            return self._completion_from(body, requested_model=str(payload["model"]), latency_ms=latency_ms)
        raise self._error_for(status, response_headers, body, request_key=hash(request_body))

    # --- translation --------------------------------------------------------------------------

    def _error_for(
        self, status: int, headers: Mapping[str, str], body: bytes, *, request_key: int = 0
    ) -> Exception:
        error = json_object(body)
        message = self._provider_text(error, body)
        if status == 429:
            return self._rate_limited(headers, f"AI provider rate limited (429): {message}")
        if status == 402:
            if _is_in_flight_budget(error):
                return self._rate_limited(headers, f"AI provider in-flight budget exhausted (402): {message}")
            return FatalError(f"AI provider refused payment (402): {message}")
        if status == 401:
            return FatalError(f"AI provider refused our credentials (401): {message}")
        if status == 403:
            return self._forbidden_error(error, message, request_key=request_key)
        if status in _REJECTED_STATUSES:
            return ProviderRejectedError(f"AI provider rejected the request ({status}): {message}")
        retry_after_s = parse_retry_after_s(headers, now_epoch_s=self._wall_clock())
        hint = f"; retry after {retry_after_s:g}s" if retry_after_s is not None else ""
        if status == 503 and retry_after_s is not None:
            # OpenRouter: "no provider available" may come with a Retry-After, which the docs
            # ask clients to honour exactly as on 429 (issue 21, point 8).
            return self._rate_limited(
                headers, f"AI provider unavailable (503): {message}{hint}", overloaded=True
            )
        if status == 408 or status >= 500:
            return ProviderUnavailableError(f"AI provider unavailable ({status}): {message}{hint}")
        # 409 and anything unexpected (3xx, 418…): temporary, so a few attempts decide, not us.
        return _UnexpectedStatusError(f"AI provider answered {status}: {message}{hint}")

    def _forbidden_error(
        self, error: Mapping[str, Any] | None, message: str, *, request_key: int
    ) -> Exception:
        """A 403 is a moderation flag or guardrail block of this request (the lead's text), or
        a permission the key lacks; only the second, seen on several different requests in a
        row, stops the process (`consumer.core.providers`)."""
        forbidden = classify_forbidden(error)
        if forbidden.kind == "content_blocked":
            # The provider's words, masked like every provider text (a pattern may quote the lead).
            reasons = provider_text("; ".join(forbidden.reasons) or "none given", b"", api_key=self._api_key)
            return ContentBlockedError(
                f"AI provider blocked this request's content (403): {message} [reasons: {reasons}]",
                reasons=forbidden.reasons,
            )
        if self._forbidden.refused(str(request_key)):
            return FatalError(
                f"AI provider refused {self._forbidden.threshold} different requests in a row (403) "
                f"without a moderation reason: our key lacks permission? {message}"
            )
        return _UnexpectedStatusError(f"AI provider refused this request (403): {message}")

    def _rate_limited(
        self, headers: Mapping[str, str], message: str, *, overloaded: bool = False
    ) -> RateLimitedError:
        """Put the whole client into cooldown: every task shares the provider's budget."""
        asked_s = parse_retry_after_s(headers, now_epoch_s=self._wall_clock())
        retry_after_s = min(
            self._max_retry_after_s, self._default_retry_after_s if asked_s is None else asked_s
        )
        self._cooldown_until = max(self._cooldown_until, self._clock() + retry_after_s)
        if self._budget is not None:
            self._budget.report_cooldown(retry_after_s, message[:200])
        logger.warning("AI provider rate limit: all AI calls pause for {:.1f}s", retry_after_s)
        if overloaded:
            return ProviderOverloadedError(message, retry_after_s=retry_after_s)
        return RateLimitedError(message, retry_after_s=retry_after_s)

    def parse_completion(self, body: bytes, *, requested_model: str) -> Completion:
        """Validate a chat completion body obtained some other way (a batch output line)."""
        return self._completion_from(body, requested_model=requested_model, latency_ms=0)

    def _completion_from(self, body: bytes, *, requested_model: str, latency_ms: int) -> Completion:
        """Validate a 200: providers report some failures inside a successful HTTP answer."""
        try:
            data = safejson.loads(body)
        except safejson.UnsafeJSON as exc:
            raise InvalidAIOutputError(
                f"AI provider answered 200 with a body we do not accept: {exc}"
            ) from None
        if not isinstance(data, dict):
            raise InvalidAIOutputError("AI provider answered 200 with a JSON body that is not an object")
        if data.get("error"):
            raise InvalidAIOutputError(
                f"AI provider answered 200 with an error: {self._provider_text(data, b'')}"
            )
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise InvalidAIOutputError("AI provider answered 200 without choices")
        choice = choices[0]
        if choice.get("error"):
            raise InvalidAIOutputError(f"AI choice carries an error: {self._provider_text(choice, b'')}")
        if choice.get("finish_reason") == "error":
            raise InvalidAIOutputError("AI choice finished with finish_reason=error")
        message = choice.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str) or not content.strip():
            reason = choice.get("finish_reason")
            raise InvalidAIOutputError(f"AI answered with empty content (finish_reason={reason})")
        model = data.get("model")
        return Completion(
            content=content,
            usage=_usage_from(data.get("usage")),
            model=model if isinstance(model, str) and model else requested_model,
            latency_ms=latency_ms,
        )

    def _provider_text(self, container: Mapping[str, Any] | None, body: bytes) -> str:
        """The provider's own words for an error, short, with our key and any phone masked."""
        text = ""
        if container is not None:
            error = container.get("error", container)
            if isinstance(error, Mapping):
                text = str(error.get("message") or error.get("code") or "")
            elif error:
                text = str(error)
        return provider_text(text, body, api_key=self._api_key)


def _is_in_flight_budget(error: Mapping[str, Any] | None) -> bool:
    inner = error.get("error") if error else None
    metadata = inner.get("metadata") if isinstance(inner, Mapping) else None
    if not isinstance(metadata, Mapping):
        return False
    return IN_FLIGHT_BUDGET_LIMIT_SOURCE in (metadata.get("limit_source"), metadata.get("error_type"))


def _usage_from(raw: object) -> Usage:
    usage = raw if isinstance(raw, Mapping) else _EMPTY
    prompt, completion = _count(usage, "prompt_tokens"), _count(usage, "completion_tokens")
    cost = usage.get("cost")
    details = usage.get("prompt_tokens_details")
    details = details if isinstance(details, Mapping) else _EMPTY
    cached = _count(details, "cached_tokens")
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=_count(usage, "total_tokens") or prompt + completion,
        cost_usd=float(cost) if isinstance(cost, int | float) and not isinstance(cost, bool) else None,
        cached_tokens=min(cached, prompt) if prompt else cached,
        cache_write_tokens=_count(details, "cache_write_tokens"),
    )


_EMPTY: Mapping[str, Any] = {}


def _count(container: Mapping[str, Any], name: str) -> int:
    """A token count as reported, or 0 when it is missing or not a count (bool, negative, text)."""
    value = container.get(name)
    return value if type(value) is int and value >= 0 else 0


def usage_from(raw: object) -> Usage:
    """`Usage` from a chat completion's ``usage`` object (also used for batch output lines)."""
    return _usage_from(raw)
