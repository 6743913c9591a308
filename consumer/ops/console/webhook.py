"""Evolution API's webhooks: authenticated by `CAMPAIGNQ_WEBHOOK_SECRET`, as Evolution can send it.

Evolution 2.3 (webhook.controller.ts, tag 2.3.6) gives us few ways to prove an event is its:
the *global* webhook sends no custom header, and the body's `apikey` is the instance's own
token (null unless AUTHENTICATION_EXPOSE_IN_FETCH_INSTANCES), so neither is our secret. So
the secret travels where Evolution can carry it (issue 21, point 4):

- in the URL: `POST /webhooks/evolution/{secret}`, and `…/{secret}/{event-name}` because
  `webhookByEvents` appends the event (`/messages-upsert`, `/connection-update`);
- in a per-instance webhook's `headers`: `apikey: <secret>` or `Authorization: Bearer <secret>`,
  or `jwt_key: <secret>`, from which Evolution sends `Authorization: Bearer <HS256 JWT>`
  (payload `iat`, `exp` = iat + 600 s, `app`, `action`).

Every comparison is constant-time. A wrong secret is a 401 (Evolution does not retry a 401:
the event is lost, which is right for a forgery and loud for a misconfiguration: logged
and counted). The body is parsed only after that, through `safejson`. Events we do not use,
and senders that are not a phone (`status@broadcast`, groups, a LID without
`remoteJidAlt`), are acknowledged (2xx) and ignored so the gateway never retries them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from loguru import logger

from ...core.jid import number_forms, sender_digits
from ...core.optout import is_opt_out_reply
from ...safejson import UnsafeJSON, loads_object
from .store import Actor, Store

WEBHOOK_ACTOR = Actor("evolution-webhook")
JWT_LEEWAY_S = 30.0
"""Clock difference allowed between Evolution and us on a JWT's `exp` / `nbf`."""
_MAX_JWT_PART_BYTES = 4096


@dataclass
class WebhookCounts:
    """What the console's /healthz shows about the webhook (no Prometheus in the console)."""

    accepted: int = 0
    rejected: int = 0
    by_event: dict[str, int] = field(default_factory=dict)


COUNTS_KEY = web.AppKey("webhook_counts", WebhookCounts)


def add_routes(app: web.Application, *, store: Callable[[web.Request], Store], secret: str | None) -> None:
    """`POST /webhooks/evolution[/{secret}[/{event}]]` on `app`."""
    app[COUNTS_KEY] = WebhookCounts()

    async def handle(request: web.Request) -> web.StreamResponse:
        return await _handle(request, store(request), secret)

    app.router.add_post("/webhooks/evolution", handle)
    app.router.add_post("/webhooks/evolution/{secret}", handle)
    app.router.add_post("/webhooks/evolution/{secret}/{event}", handle)


# --- authentication (pure) ------------------------------------------------------------------------


def _same(presented: str, expected: str) -> bool:
    return hmac.compare_digest(presented.encode("utf-8", "surrogatepass"), expected.encode("utf-8"))


def authenticated(
    secret: str, *, path_secret: str | None, headers: Mapping[str, str], now_epoch_s: float
) -> bool:
    """Whether the request carries `secret`: in the path, as `apikey`, as a bearer token, or
    as the key of an HS256 JWT bearer token (Evolution's `jwt_key`)."""
    if path_secret is not None:
        return _same(path_secret, secret)
    apikey = headers.get("apikey")
    if apikey is not None and _same(apikey, secret):
        return True
    authorization = headers.get("Authorization", "")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    token = token.strip()
    return _same(token, secret) or jwt_hs256_ok(token, secret, now_epoch_s=now_epoch_s)


def _b64url(part: str) -> bytes:
    if len(part) > _MAX_JWT_PART_BYTES:
        raise ValueError("JWT part too long")
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def jwt_hs256_ok(token: str, secret: str, *, now_epoch_s: float) -> bool:
    """An HS256 JWT signed with `secret`, not expired (`exp`) nor early (`nbf`) when they are
    given. Only HS256: a token naming another algorithm (or `none`) is refused."""
    parts = token.split(".")
    if len(parts) != 3:
        return False
    header_b64, payload_b64, signature_b64 = parts
    try:
        expected = hmac.new(
            secret.encode("utf-8"), f"{header_b64}.{payload_b64}".encode("ascii"), hashlib.sha256
        ).digest()
        if not hmac.compare_digest(_b64url(signature_b64), expected):
            return False
        header = loads_object(_b64url(header_b64), max_depth=4, max_bytes=_MAX_JWT_PART_BYTES)
        payload = loads_object(_b64url(payload_b64), max_depth=8, max_bytes=_MAX_JWT_PART_BYTES)
    except (ValueError, UnicodeEncodeError, binascii.Error):
        return False
    if header.get("alg") != "HS256":
        return False
    return _times_ok(payload, now_epoch_s)


def _times_ok(payload: Mapping[str, Any], now_epoch_s: float) -> bool:
    exp, nbf = payload.get("exp"), payload.get("nbf")
    for value in (exp, nbf):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            return False
    if exp is not None and now_epoch_s > exp + JWT_LEEWAY_S:
        return False
    return not (nbf is not None and now_epoch_s + JWT_LEEWAY_S < nbf)


def event_name(body_event: object, path_event: str | None) -> str:
    """`messages.upsert` from `MESSAGES_UPSERT`, `messages-upsert` or `messages.upsert`."""
    raw = body_event if isinstance(body_event, str) and body_event else (path_event or "")
    return raw.strip().lower().replace("_", ".").replace("-", ".")


def event_time(body: Mapping[str, Any]) -> datetime | None:
    """When Evolution says the event happened (`date_time`, ISO 8601), or None when it does not
    say in a form we read. Webhook deliveries can arrive out of order (retries, several
    Evolution replicas): a connection state is kept only if no later one was recorded."""
    value = body.get("date_time")
    if not isinstance(value, str) or len(value) > 40:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def inbound_text(message: object) -> tuple[str | None, str | None]:
    """(sender digits, text) of an inbound message; (None, None) for our own, for groups and
    broadcasts, and for a LID sender without `remoteJidAlt`."""
    if not isinstance(message, dict):
        return None, None
    key = message.get("key")
    if not isinstance(key, dict) or key.get("fromMe"):
        return None, None
    sender = sender_digits(key.get("remoteJid"), key.get("remoteJidAlt"))
    content = message.get("message")
    text = None
    if isinstance(content, dict):
        text = content.get("conversation")
        extended = content.get("extendedTextMessage")
        if not text and isinstance(extended, dict):
            text = extended.get("text")
    return sender, text if isinstance(text, str) else None


# --- the handler ----------------------------------------------------------------------------------


def _json_error(status: int, message: str) -> web.HTTPException:
    classes: dict[int, type[web.HTTPException]] = {
        400: web.HTTPBadRequest,
        401: web.HTTPUnauthorized,
        404: web.HTTPNotFound,
    }
    return classes[status](text=json.dumps({"error": message}), content_type="application/json")


async def _handle(request: web.Request, store: Store, secret: str | None) -> web.StreamResponse:
    counts = request.app[COUNTS_KEY]
    if not secret:
        raise _json_error(404, "webhooks are off: set CAMPAIGNQ_WEBHOOK_SECRET")
    path_secret = request.match_info.get("secret")
    if not authenticated(secret, path_secret=path_secret, headers=request.headers, now_epoch_s=time.time()):
        counts.rejected += 1
        logger.warning(
            "webhook refused: wrong or missing secret from {} ({} refused so far)",
            request.remote,
            counts.rejected,
        )
        raise _json_error(401, "wrong or missing webhook secret")
    try:
        body = loads_object(await request.read())
    except UnsafeJSON as exc:
        raise _json_error(400, f"the body must be a JSON object: {exc}") from None
    event = event_name(body.get("event"), request.match_info.get("event"))
    counts.accepted += 1
    counts.by_event[event[:40]] = counts.by_event.get(event[:40], 0) + 1
    instance = body.get("instance")
    if not isinstance(instance, str) or not instance:
        raise _json_error(400, "the event names no instance")
    data = body.get("data")
    if event == "connection.update" and isinstance(data, dict):
        state = data.get("state")
        if not isinstance(state, str) or not state:
            raise _json_error(400, "connection.update without data.state")
        inboxes = await asyncio.to_thread(
            store.set_connection_state, instance, state[:40], at=event_time(body), actor=WEBHOOK_ACTOR
        )
        return web.json_response({"ok": True, "event": event, "inboxes": inboxes})
    if event == "messages.upsert":
        opted_out = 0
        for message in data if isinstance(data, list) else [data]:
            sender, text = inbound_text(message)
            if sender is not None and is_opt_out_reply(text):
                opted_out += await asyncio.to_thread(
                    store.record_opt_out_forms, instance, number_forms(sender), actor=WEBHOOK_ACTOR
                )
        return web.json_response({"ok": True, "event": event, "opted_out": opted_out})
    return web.json_response({"ok": True, "event": event, "ignored": True})
