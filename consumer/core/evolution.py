"""What an Evolution API 2.3 answer to `sendText` means (pure; the WhatsApp edge acts on it).

The question is whose trouble a failure is, and Evolution's status codes do not say it:

- Baileys channel: `sendMessageWithTyping` wraps *every* exception of the send as
  `400 {"status":400,"error":"Bad Request","response":{"message":["Error: Connection Closed"]}}`
  (whatsapp.baileys.service.ts, tag 2.3.6). A dead socket is the inbox's trouble, not the
  message's: defer without burning an attempt and count it toward the inbox's breaker.
  Only 400s that are the message's fault are permanent: our body failed Evolution's JSON
  schema (the router's `validate`, messages like "Invalid format"), or the number is not
  on WhatsApp (`[{"exists": false, "jid", "number"}]`).
- WHATSAPP-BUSINESS channel (Meta Cloud API): `post()` returns Graph's `error` object as the
  send result, so the gateway answers 201 with `{"message":"(#130429) Rate limit hit",
  "type":"OAuthException","code":130429,"error_data":{…},"fbtrace_id":…}`
  (whatsapp.business.service.ts). A 2xx is an acknowledgement only with a `key.id`; a Graph
  error is classified by its code (Meta, "WhatsApp error codes",
  developers.facebook.com/documentation/business-messaging/whatsapp/support/error-codes/).
- A 2xx with neither a `key.id` nor a recognisable error: decision (docs/providers.md) —
  treated as uncertain, reconciled with `findMessages` before any resend, because the
  gateway may well have sent it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class SendVerdict(StrEnum):
    ACKNOWLEDGED = "acknowledged"
    UNCERTAIN = "uncertain"
    """No proof either way (2xx without key.id): reconcile before any resend."""
    INBOX_DOWN = "inbox_down"
    """The instance's socket is dead: defer, count toward the inbox's breaker."""
    BANNED = "banned"
    LOGGED_OUT = "logged_out"
    CREDENTIALS = "credentials"
    """The Cloud API refused the inbox's token or permission (#190, #10, #200-299): pause it."""
    RATE_LIMITED = "rate_limited"
    NOT_ON_WHATSAPP = "not_on_whatsapp"
    UNDELIVERABLE = "undeliverable"
    """The Cloud API cannot deliver to this recipient (#131026, #131021): the lead's fault."""
    NEEDS_TEMPLATE = "needs_template"
    """Outside the 24 h customer-service window (#131047): only a template may be sent."""
    REJECTED = "rejected"
    """The message's fault (our body failed the gateway's schema, unsupported type): permanent."""
    AUTH = "auth"
    """The gateway refused our API key: the whole process stops."""
    MISSING_INSTANCE = "missing_instance"
    UNAVAILABLE = "unavailable"
    """The gateway's (or an unknown) trouble: temporary, burns an attempt."""


@dataclass(frozen=True)
class SendAnswer:
    verdict: SendVerdict
    detail: str = ""
    graph_code: int | None = None
    retry_after_s: float | None = None
    message_id: str | None = None
    remote_jid: str | None = None
    status: str | None = None


# Baileys' connection errors (Boom messages of DisconnectReason and the socket), as
# Evolution's catch renders them ("Error: Connection Closed"). Lower case.
DEAD_SOCKET_MARKERS = (
    "connection closed",
    "connection lost",
    "connection failure",
    "connection terminated",
    "connection was lost",
    "timed out",
    "stream errored",
    "websocket is not open",
)
# Issue 13: the number itself is in trouble (WhatsApp banned, locked or logged it out).
BAN_MARKERS = ("banned", "account locked", "131031", "temporarily blocked")
LOGOUT_MARKERS = ("logged out", "loggedout", "logout")
# How Evolution's catch renders an exception: `error.toString()`, e.g. "Error: …",
# "TypeError: …". Anything else in a 400 comes from the request validation (our body).
_WRAPPED_EXCEPTION = re.compile(r"^\s*\[?\s*\"?[A-Za-z]*(Error|Exception|Boom)\b\s*:")

# Graph error codes (Meta's "WhatsApp error codes" page, checked 2026-12-08; see
# docs/providers.md). Pair rate limit 131056: about one message per 6 s to one user.
GRAPH_RATE_LIMITED = {130429: None, 131056: 6.0, 131048: None, 80007: None, 4: None}
GRAPH_UNDELIVERABLE = frozenset({131026, 131021})
GRAPH_REJECTED = frozenset({131051, 131009, 100, 131008})
GRAPH_NEEDS_TEMPLATE = frozenset({131047})
GRAPH_CREDENTIALS = frozenset({190, 10, 3, 0} | set(range(200, 300)))
GRAPH_BANNED = frozenset({131031, 368})
GRAPH_UNAVAILABLE = frozenset({1, 2, 131000, 131016, 133004})


def graph_error(data: Mapping[str, Any] | None) -> tuple[int, str] | None:
    """(code, message) when `data` is a Graph API error object (bare, as Evolution returns it,
    or wrapped in `{"error": {…}}`); None otherwise."""
    if not data:
        return None
    inner = data.get("error")
    candidate: Mapping[str, Any] = inner if isinstance(inner, Mapping) else data
    code = candidate.get("code")
    if isinstance(code, bool) or not isinstance(code, int):
        return None
    shaped = any(k in candidate for k in ("error_data", "fbtrace_id", "type", "error_subcode"))
    message = candidate.get("message")
    if not shaped and not (isinstance(message, str) and message.startswith("(#")):
        return None
    return code, message if isinstance(message, str) else f"Graph error {code}"


def classify_graph(code: int, message: str) -> SendAnswer:
    detail = f"Cloud API error #{code}: {message}"
    if code in GRAPH_RATE_LIMITED:
        return SendAnswer(SendVerdict.RATE_LIMITED, detail, code, GRAPH_RATE_LIMITED[code])
    if code in GRAPH_UNDELIVERABLE:
        return SendAnswer(SendVerdict.UNDELIVERABLE, detail, code)
    if code in GRAPH_NEEDS_TEMPLATE:
        return SendAnswer(SendVerdict.NEEDS_TEMPLATE, detail, code)
    if code in GRAPH_REJECTED:
        return SendAnswer(SendVerdict.REJECTED, detail, code)
    if code in GRAPH_BANNED:
        return SendAnswer(SendVerdict.BANNED, detail, code)
    if code in GRAPH_CREDENTIALS:
        return SendAnswer(SendVerdict.CREDENTIALS, detail, code)
    # 1, 2, 131000, 131016 and every code we do not know: not sent, try again (burns an attempt).
    return SendAnswer(SendVerdict.UNAVAILABLE, detail, code)


def classify_success(data: Mapping[str, Any] | None) -> SendAnswer:
    """A 2xx: acknowledged only with `key.id`; a Graph error by its code; else uncertain."""
    key = data.get("key") if data else None
    message_id = key.get("id") if isinstance(key, Mapping) else None
    if isinstance(message_id, str) and message_id:
        remote = key.get("remoteJid") if isinstance(key, Mapping) else None
        status = data.get("status") if data else None
        return SendAnswer(
            SendVerdict.ACKNOWLEDGED,
            message_id=message_id,
            remote_jid=remote if isinstance(remote, str) and remote else None,
            status=status if isinstance(status, str) and status else "UNKNOWN",
        )
    graph = graph_error(data)
    if graph is not None:
        return classify_graph(*graph)
    if data is not None and data.get("error") and not isinstance(key, Mapping):
        # An explicit error and no key (a proxy in front of the gateway, an Evolution
        # error object with a 2xx): it says it did not send. Temporary.
        return SendAnswer(SendVerdict.UNAVAILABLE, f"2xx with an error: {data.get('error')}")
    return SendAnswer(SendVerdict.UNCERTAIN, "2xx without key.id nor a recognisable error")


def classify_failure(status: int, data: Mapping[str, Any] | None, message: str, *, html: bool) -> SendAnswer:
    """A non-2xx answer to sendText. `message`: Evolution's `response.message` as text."""
    lowered = message.lower()
    if status != 429 and any(marker in lowered for marker in BAN_MARKERS):
        return SendAnswer(SendVerdict.BANNED, message)
    if status != 429 and any(marker in lowered for marker in LOGOUT_MARKERS):
        return SendAnswer(SendVerdict.LOGGED_OUT, message)
    graph = graph_error(data)
    if graph is not None:
        return classify_graph(*graph)
    if status in (401, 403):
        return SendAnswer(SendVerdict.AUTH, message)
    if status == 429:
        return SendAnswer(SendVerdict.RATE_LIMITED, message)
    if data is None and html:
        return SendAnswer(SendVerdict.UNAVAILABLE, f"an HTML page ({status})")
    if status != 404 and any(marker in lowered for marker in DEAD_SOCKET_MARKERS):
        # Point 1 of issue 21: a 400 on Evolution 2.3 (the send's catch), a 500 on older ones.
        return SendAnswer(SendVerdict.INBOX_DOWN, message)
    if status >= 500:
        return SendAnswer(SendVerdict.UNAVAILABLE, message)
    return _client_error(status, data, message)


def _client_error(status: int, data: Mapping[str, Any] | None, message: str) -> SendAnswer:
    if status == 404:
        return SendAnswer(SendVerdict.MISSING_INSTANCE, message)
    if status == 400 and not_on_whatsapp(data):
        return SendAnswer(SendVerdict.NOT_ON_WHATSAPP, message)
    if status == 400 and _wrapped_exceptions(data):
        # Another exception of the send itself (not our body): the gateway's trouble.
        return SendAnswer(SendVerdict.UNAVAILABLE, message)
    if status in (400, 422):
        return SendAnswer(SendVerdict.REJECTED, message)
    return SendAnswer(SendVerdict.UNAVAILABLE, message)


def _messages(data: Mapping[str, Any] | None) -> list[Any]:
    response = data.get("response") if data else None
    entries = response.get("message") if isinstance(response, Mapping) else None
    if isinstance(entries, list):
        return entries
    return [entries] if entries is not None else []


def not_on_whatsapp(data: Mapping[str, Any] | None) -> bool:
    return any(isinstance(entry, Mapping) and entry.get("exists") is False for entry in _messages(data))


def _wrapped_exceptions(data: Mapping[str, Any] | None) -> bool:
    entries = _messages(data)
    return bool(entries) and all(isinstance(e, str) and _WRAPPED_EXCEPTION.match(e) for e in entries)
