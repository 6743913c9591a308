"""The WhatsApp edge: an Evolution-API-shaped gateway over aiohttp, translated into `errors` types.

The distinction that matters here is *whose fault* a failure is. A number that is not on
WhatsApp is the lead's (permanent); a dead socket behind an instance that claims to be
"open" is the inbox's (defer every message of that inbox, do not burn their attempts); a
502 page from a proxy is the gateway's (temporary). Each instance gets its own circuit
breaker so one broken inbox cannot slow the others down.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
from loguru import logger
from multidict import CIMultiDict
from yarl import URL

from ..core import evolution
from ..core.breaker import CircuitBreaker
from ..core.evolution import SendAnswer, SendVerdict
from ..core.jid import candidate_jids
from ..errors import (
    FatalError,
    InboxBannedError,
    InboxUnavailableError,
    InvalidConfigError,
    InvalidLeadError,
    ProviderRejectedError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    RateLimitedError,
    ReconcileUnavailableError,
    SendOutcomeUnknownError,
    SendTimedOutError,
    TemplateRequiredError,
)
from ..logs import mask_phone
from ..safejson import UnsafeJSON, loads_object
from ..settings import Settings
from .ai import parse_retry_after_s
from .provider_http import JSON_CONTENT_TYPE, json_body, provider_text

CONNECTED_STATE = "open"
# Reconciliation reads at most this many pages of a chat (newest first), and allows this much
# clock difference between us and the gateway when comparing a record's time with the attempt's.
RECONCILE_MAX_PAGES = 5
RECONCILE_CLOCK_SKEW_S = 30.0


@dataclass(frozen=True)
class SendReceipt:
    message_id: str | None
    status: str
    remote_jid: str | None = None
    """The chat the gateway stored the message under (`key.remoteJid`): Evolution's jid for
    the number, which is not always `<digits>@s.whatsapp.net` (core/jid.py)."""


def typing_delay_ms(text: str, *, words_per_minute: float, cap_s: float) -> int:
    """How long "typing…" shows before a bubble, like Typebot: words / wpm, capped.

    The cap keeps a long bubble from holding a send (and its HTTP call) for ages; callers
    pass 0 for the first bubble, which Typebot sends at once.
    """
    words = len(text.split())
    if words == 0 or words_per_minute <= 0:
        return 0
    return round(min(words / words_per_minute * 60.0, cap_s) * 1000)


@dataclass(frozen=True)
class _CachedState:
    """What the gateway last said about an instance: its state, or why we could not learn it."""

    state: str | None
    unavailable_reason: str | None
    fetched_at: float


class WhatsAppClient:
    """Sends text through one gateway for many instances (inboxes), with per-instance health."""

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        base_url: str,
        api_key: str,
        send_timeout_s: float = 10.0,
        reconcile_timeout_s: float = 5.0,
        state_ttl_s: float = 10.0,
        breaker_failures: int = 3,
        breaker_cooldown_s: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._session = session
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._send_timeout_s = send_timeout_s
        self._reconcile_timeout_s = reconcile_timeout_s
        self._state_ttl_s = state_ttl_s
        self._breaker_failures = breaker_failures
        self._breaker_cooldown_s = breaker_cooldown_s
        self._clock = clock
        self._wall_clock = wall_clock
        self._states: dict[str, _CachedState] = {}
        self._state_locks: dict[str, asyncio.Lock] = {}
        self._breakers: dict[str, CircuitBreaker] = {}
        # Built once, not per request (issue 15, P5).
        # CIMultiDicts, which aiohttp merges as they are (a dict is converted on every request).
        self._get_headers = CIMultiDict({"apikey": api_key})
        self._post_headers = CIMultiDict({"apikey": api_key, "Content-Type": JSON_CONTENT_TYPE})
        # Each instance's send URL, parsed once (a str URL is parsed by yarl on every request).
        # Instances are the inboxes: a handful per gateway.
        self._send_urls: dict[str, URL] = {}
        self._send_timeout = aiohttp.ClientTimeout(total=send_timeout_s)
        self._reconcile_timeout = aiohttp.ClientTimeout(total=reconcile_timeout_s)

    @classmethod
    def from_settings(cls, settings: Settings, session: aiohttp.ClientSession) -> WhatsAppClient:
        return cls(
            session=session,
            base_url=settings.whatsapp_base_url,
            api_key=settings.whatsapp_key(),
            send_timeout_s=settings.send_timeout_s,
            reconcile_timeout_s=settings.reconcile_timeout_s,
            state_ttl_s=settings.inbox_state_ttl_s,
            breaker_failures=settings.inbox_breaker_failures,
            breaker_cooldown_s=settings.inbox_breaker_cooldown_s,
        )

    # --- connection state -----------------------------------------------------------------

    async def ensure_connected(self, instance: str) -> None:
        """Raise unless `instance` can send; asks the gateway at most once per `state_ttl_s`.

        Meant to be called before generating, so no AI budget is spent for an inbox that is
        down. Only a peek at the breaker here: `send_text` claims the half-open trial.
        """
        breaker = self._breakers.get(instance)
        now = self._clock()
        if breaker is not None and breaker.current_state(now) == "open":
            raise InboxUnavailableError(
                f"inbox {instance!r} is failing sends; paused", retry_after_s=breaker.retry_after_s(now)
            )
        # Asked once per message and nearly always answered from the cache: read it here,
        # without the coroutine of `_connection_state` (issue 15).
        cached = self._states.get(instance)
        if cached is not None and cached.state is not None and now - cached.fetched_at < self._state_ttl_s:
            state = cached.state
        else:
            state = await self._connection_state(instance)
        if state != CONNECTED_STATE:
            raise InboxUnavailableError(f"inbox {instance!r} is not connected (state {state!r})")

    def invalidate(self, instance: str) -> None:
        """Forget the cached state so the next `ensure_connected` asks the gateway again."""
        self._states.pop(instance, None)

    def breaker_states(self) -> dict[str, str]:
        now = self._clock()
        return {instance: breaker.current_state(now) for instance, breaker in self._breakers.items()}

    async def _connection_state(self, instance: str) -> str:
        cached = self._fresh_state(instance)
        if cached is None:
            # One request per instance even when a whole batch asks at once: the others
            # wait for it and then read the cache, failures included, so a gateway that
            # times out costs one timeout per TTL, not one per waiting message.
            async with self._state_locks.setdefault(instance, asyncio.Lock()):
                cached = self._fresh_state(instance)
                if cached is None:
                    cached = await self._fetch_and_cache_state(instance)
        if cached.state is None:
            raise InboxUnavailableError(cached.unavailable_reason)
        return cached.state

    async def _fetch_and_cache_state(self, instance: str) -> _CachedState:
        try:
            state = await self._fetch_state(instance)
        except InboxUnavailableError as exc:
            cached = _CachedState(state=None, unavailable_reason=str(exc), fetched_at=self._clock())
        else:
            cached = _CachedState(state=state, unavailable_reason=None, fetched_at=self._clock())
        self._states[instance] = cached
        return cached

    def _fresh_state(self, instance: str) -> _CachedState | None:
        cached = self._states.get(instance)
        if cached is None or self._clock() - cached.fetched_at >= self._state_ttl_s:
            return None
        return cached

    async def _fetch_state(self, instance: str) -> str:
        url = f"{self._base_url}/instance/connectionState/{quote(instance, safe='')}"
        try:
            async with self._session.get(
                url, headers=self._get_headers, timeout=self._send_timeout
            ) as response:
                status, body = response.status, await response.read()
        except TimeoutError as exc:
            raise InboxUnavailableError(f"connection state of {instance!r} timed out") from exc
        except aiohttp.ClientError as exc:
            raise InboxUnavailableError(f"gateway unreachable: {type(exc).__name__}") from exc
        if status == 404:
            raise InvalidConfigError(f"WhatsApp instance {instance!r} does not exist on the gateway")
        if status in (401, 403):
            raise FatalError(f"WhatsApp gateway refused our API key ({status})")
        if status != 200:
            raise InboxUnavailableError(f"connection state of {instance!r} unavailable ({status})")
        data = json_object(body)
        inner = data.get("instance") if data else None
        state = inner.get("state") if isinstance(inner, Mapping) else None
        if not isinstance(state, str):
            raise InboxUnavailableError(f"connection state of {instance!r} unreadable")
        return state

    # --- sending ------------------------------------------------------------------------------

    async def send_text(self, *, instance: str, number: str, text: str, delay_ms: int = 0) -> SendReceipt:
        """Send one bubble. A receipt means the gateway took it: never send that part again."""
        breaker = self._breakers.get(instance)
        if breaker is None:  # not `setdefault`: that builds a breaker on every send
            breaker = self._breakers[instance] = CircuitBreaker(
                failure_threshold=self._breaker_failures, cooldown_s=self._breaker_cooldown_s
            )
        now = self._clock()
        if not breaker.allow(now):
            raise InboxUnavailableError(
                f"inbox {instance!r} is failing sends; paused", retry_after_s=breaker.retry_after_s(now)
            )
        payload: dict[str, Any] = {"number": number, "text": text}
        if delay_ms > 0:
            payload["delay"] = delay_ms
        # Evolution holds the HTTP call open while it shows "typing…" for `delay` ms.
        timeout_s = self._send_timeout_s + max(0, delay_ms) / 1000.0
        try:
            receipt = await self._post_text(instance, number, payload, timeout_s)
        except InboxUnavailableError:
            self._inbox_failed(instance, breaker)
            raise
        except BaseException:
            breaker.record_neutral()
            raise
        breaker.record_success(self._clock())
        return receipt

    # --- reconciling uncertain sends ---------------------------------------------------------

    async def find_sent(
        self,
        *,
        instance: str,
        number: str,
        text: str,
        since_epoch_s: float,
        known_jid: str | None = None,
    ) -> bool:
        """Whether the gateway lists a message from us to `number` with exactly `text`, sent at
        or after `since_epoch_s` (less `RECONCILE_CLOCK_SKEW_S`).

        Evolution API v2 ``POST /chat/findMessages/{instance}`` lists a chat's stored messages,
        newest first, by page, matching ``where.key.remoteJid`` exactly; Evolution stores a
        message under its own jid for the number (issue 21: most Brazilian mobiles lose their
        9th digit). So the chat the gateway named for this message (`known_jid`) is asked
        first, then every jid the number may map to (`core.jid.candidate_jids`).
        True: the uncertain part was delivered (count it sent). False: the gateway answered
        for every chat and has no such message. Raises `ReconcileUnavailableError` when it
        cannot answer (error, timeout, unreadable body): the caller's policy decides.
        Needs a gateway that stores sent messages (Evolution: DATABASE_SAVE_DATA_NEW_MESSAGE).
        """
        jids = list(candidate_jids(number))
        if known_jid:
            jids = [known_jid, *(j for j in jids if j != known_jid)]
        for jid in jids:
            if await self._chat_has(instance, jid, text, since_epoch_s - RECONCILE_CLOCK_SKEW_S):
                return True
        return False

    async def _chat_has(self, instance: str, jid: str, text: str, oldest_wanted: float) -> bool:
        for page in range(1, RECONCILE_MAX_PAGES + 1):
            data = await self._find_messages(instance, {"where": {"key": {"remoteJid": jid}}, "page": page})
            records, pages = _message_records(data)
            if records is None:
                raise ReconcileUnavailableError(f"findMessages on {instance!r} answered an unreadable body")
            oldest_on_page: float | None = None
            for record in records:
                stamp = _record_timestamp(record)
                if stamp is not None:
                    oldest_on_page = stamp if oldest_on_page is None else min(oldest_on_page, stamp)
                if _is_our_copy(record, jid=jid, text=text) and (stamp is None or stamp >= oldest_wanted):
                    return True
            older_than_wanted = oldest_on_page is not None and oldest_on_page < oldest_wanted
            if not records or page >= pages or older_than_wanted:
                return False
        return False

    async def _find_messages(self, instance: str, body: dict[str, Any]) -> dict[str, Any]:
        url = f"{self._base_url}/chat/findMessages/{quote(instance, safe='')}"
        try:
            async with self._session.post(
                url, data=json_body(body), headers=self._post_headers, timeout=self._reconcile_timeout
            ) as response:
                status, raw = response.status, await response.read()
        except TimeoutError as exc:
            raise ReconcileUnavailableError(f"findMessages on {instance!r} timed out") from exc
        except aiohttp.ClientError as exc:
            raise ReconcileUnavailableError(f"findMessages unreachable: {type(exc).__name__}") from exc
        data = json_object(raw)
        if status not in (200, 201) or data is None:
            raise ReconcileUnavailableError(f"findMessages on {instance!r} answered {status}")
        return data

    def _inbox_failed(self, instance: str, breaker: CircuitBreaker) -> None:
        was_open = breaker.state == "open"
        breaker.record_failure(self._clock())
        self.invalidate(instance)
        if breaker.state == "open" and not was_open:
            logger.warning(
                "inbox {!r}: circuit breaker opened after {} dead-socket sends; pausing {}s",
                instance,
                breaker.consecutive_failures,
                breaker.cooldown_s,
            )

    async def _post_text(
        self, instance: str, number: str, payload: dict[str, Any], timeout_s: float
    ) -> SendReceipt:
        url = self._send_urls.get(instance)
        if url is None:
            url = self._send_urls[instance] = URL(
                f"{self._base_url}/message/sendText/{quote(instance, safe='')}"
            )
        # Evolution holds the call open for the typing delay: only a bubble without one (the
        # usual case) can use the timeout built once.
        timeout = (
            self._send_timeout
            if timeout_s == self._send_timeout_s
            else aiohttp.ClientTimeout(total=timeout_s)
        )
        try:
            async with self._session.post(
                url, data=json_body(payload), headers=self._post_headers, timeout=timeout
            ) as response:
                status, body = response.status, await response.read()
                failure = (
                    None
                    if status in (200, 201)
                    # Only an error reads the content type and headers: aiohttp parses the
                    # content type on access (issue 15).
                    else self._send_error(
                        instance, number, status, response.content_type, response.headers, body
                    )
                )
        except aiohttp.ConnectionTimeoutError as exc:
            # Never connected, so nothing was written: a plain timeout, safe to resend.
            raise ProviderTimeoutError(
                f"WhatsApp gateway did not accept a connection within {timeout_s:g}s"
            ) from exc
        except TimeoutError as exc:
            # Ambiguous: the gateway may have sent it. The part is uncertain (reconciled later).
            raise SendTimedOutError(f"WhatsApp send did not answer within {timeout_s:g}s") from exc
        except aiohttp.ClientConnectorError as exc:
            raise ProviderUnavailableError(f"WhatsApp gateway unreachable: {type(exc).__name__}") from exc
        except aiohttp.ClientError as exc:
            # Connected and (at least partly) written, then reset or closed before the answer.
            raise SendOutcomeUnknownError(
                f"WhatsApp send lost its connection before the answer: {type(exc).__name__}"
            ) from exc
        if failure is None:
            return self._receipt(instance, number, status, body)
        raise failure

    def _receipt(self, instance: str, number: str, status: int, body: bytes) -> SendReceipt:
        """A 2xx is an acknowledgement only with a `key.id` (issue 21, point 2)."""
        data = json_object(body)
        answer = evolution.classify_success(data)
        if answer.verdict is SendVerdict.ACKNOWLEDGED:
            return SendReceipt(
                message_id=answer.message_id, status=answer.status or "UNKNOWN", remote_jid=answer.remote_jid
            )
        if answer.verdict is SendVerdict.UNCERTAIN:
            # Decision (docs/providers.md): the gateway may have sent it; reconcile, never resend blindly.
            raise SendOutcomeUnknownError(f"WhatsApp gateway answered {status} without a message key")
        if answer.verdict is SendVerdict.UNAVAILABLE and answer.graph_code is None:
            # An explicit error and no key (a proxy in front of the gateway, or an Evolution
            # error object with a 2xx): it says it did not send. Retried.
            reason = self._provider_text(data, body)
            raise ProviderUnavailableError(f"WhatsApp gateway answered {status} with an error: {reason}")
        raise self._error_for(instance, number, status, answer, None)

    def _send_error(
        self,
        instance: str,
        number: str,
        status: int,
        content_type: str,
        headers: Mapping[str, str],
        body: bytes,
    ) -> Exception:
        data = json_object(body)
        message = self._provider_text(data, body)
        html = content_type == "text/html" or body.lstrip().startswith(b"<")
        answer = evolution.classify_failure(status, data, message, html=html)
        return self._error_for(instance, number, status, answer, headers)

    def _error_for(
        self,
        instance: str,
        number: str,
        status: int,
        answer: SendAnswer,
        headers: Mapping[str, str] | None,
    ) -> Exception:
        """The `errors` type for a classified answer: the policy decides on types."""
        verdict, detail = answer.verdict, answer.detail
        if verdict is SendVerdict.RATE_LIMITED:
            retry_after_s = answer.retry_after_s
            if headers is not None:
                retry_after_s = parse_retry_after_s(headers, now_epoch_s=self._wall_clock()) or retry_after_s
            return RateLimitedError(
                f"WhatsApp gateway rate limited ({status}): {detail}", retry_after_s=retry_after_s
            )
        lead = mask_phone(number)
        factories: dict[SendVerdict, Callable[[], Exception]] = {
            SendVerdict.BANNED: lambda: InboxBannedError(f"inbox {instance!r} is banned: {detail}"),
            SendVerdict.LOGGED_OUT: lambda: InboxBannedError(
                f"inbox {instance!r} was logged out: {detail}", kind="logged_out"
            ),
            # Paused for an operator like a ban (report_inbox_trouble knows banned/logged_out).
            SendVerdict.CREDENTIALS: lambda: InboxBannedError(
                f"inbox {instance!r}: the Cloud API refused its token or permission ({detail})"
            ),
            SendVerdict.AUTH: lambda: FatalError(f"WhatsApp gateway refused our API key ({status})"),
            SendVerdict.INBOX_DOWN: lambda: InboxUnavailableError(
                f"inbox {instance!r} lost its WhatsApp connection ({status}): {detail}"
            ),
            SendVerdict.MISSING_INSTANCE: lambda: InvalidConfigError(
                f"WhatsApp instance {instance!r} does not exist on the gateway"
            ),
            SendVerdict.NOT_ON_WHATSAPP: lambda: InvalidLeadError(f"{lead} is not on WhatsApp"),
            SendVerdict.UNDELIVERABLE: lambda: InvalidLeadError(f"{lead} cannot receive it: {detail}"),
            SendVerdict.NEEDS_TEMPLATE: lambda: TemplateRequiredError(
                f"{lead}: a template is needed ({detail})"
            ),
            SendVerdict.REJECTED: lambda: ProviderRejectedError(
                f"WhatsApp gateway rejected the message ({status}): {detail}"
            ),
        }
        factory = factories.get(verdict)
        if factory is not None:
            return factory()
        return ProviderUnavailableError(f"WhatsApp gateway answered {status}: {detail}")

    def _provider_text(self, data: Mapping[str, Any] | None, body: bytes) -> str:
        """Evolution nests its reason in ``response.message`` (a string or a list); mask phones."""
        text = ""
        if data is not None:
            response = data.get("response")
            reason = response.get("message") if isinstance(response, Mapping) else data.get("message")
            if reason is None:
                reason = data.get("error")
            if reason is not None:
                text = reason if isinstance(reason, str) else json.dumps(reason, ensure_ascii=False)
        return provider_text(text, body, api_key=self._api_key)


def _message_records(data: Mapping[str, Any]) -> tuple[list[Mapping[str, Any]] | None, int]:
    """``{"messages": {"pages", "records": [...]}}`` → (records, pages); None when unreadable."""
    messages = data.get("messages")
    if not isinstance(messages, Mapping):
        return None, 0
    records = messages.get("records")
    if not isinstance(records, list):
        return None, 0
    pages = messages.get("pages")
    return [r for r in records if isinstance(r, Mapping)], pages if isinstance(pages, int) else 1


def _record_timestamp(record: Mapping[str, Any]) -> float | None:
    stamp = record.get("messageTimestamp")
    if isinstance(stamp, bool) or not isinstance(stamp, int | float | str):
        return None
    try:
        return float(stamp)
    except ValueError:
        return None


def _is_our_copy(record: Mapping[str, Any], *, jid: str, text: str) -> bool:
    key = record.get("key")
    if not isinstance(key, Mapping) or key.get("fromMe") is not True:
        return False
    remote = key.get("remoteJid")
    if isinstance(remote, str) and remote != jid:
        return False
    message = record.get("message")
    if not isinstance(message, Mapping):
        return False
    extended = message.get("extendedTextMessage")
    extended_text = extended.get("text") if isinstance(extended, Mapping) else None
    return text in (message.get("conversation"), extended_text)


def json_object(body: bytes) -> dict[str, Any] | None:
    """A gateway answer as a JSON object through `safejson` (size and nesting checked before
    parsing); None when it is not one."""
    try:
        return loads_object(body)
    except UnsafeJSON:
        return None
