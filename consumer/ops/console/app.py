"""The console's aiohttp application: pages, API, server-sent events and the gateway webhook.

Pages are static shells (templates/) filled in the browser from the shared snapshot with
`textContent` only, so a lead name or provider error holding `<script>` can only ever be
text; the Content-Security-Policy forbids inline scripts as a second wall. Every POST is an
action: it needs the admin token (Bearer, or the login cookie plus its CSRF token) and lands
in the audit table with the token's name.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import string
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from aiohttp import web
from loguru import logger
from psycopg_pool import PoolTimeout

from ... import safejson
from ...errors import one_line
from ..replay import DEFAULT_BATCH_SIZE
from . import auth, webhook
from .filters import REPLAY_KEYS, FilterError, parse_dry_run, parse_filter
from .sampler import Sampler
from .store import AI_BUDGET, RUN_TRANSITIONS, Actor, ConflictError, NotFoundError, Store

PAGES: dict[str, tuple[str, str]] = {  # path -> (page id, title)
    "/": ("overview", "Overview"),
    "/runs": ("runs", "Runs"),
    "/dead-letters": ("dead-letters", "Dead letters"),
    "/inboxes": ("inboxes", "Inboxes"),
    "/workspaces": ("workspaces", "Workspaces"),
    "/audit": ("audit", "Audit"),
}
ANONYMOUS = "anonymous"  # no token configured at all: loopback only, view only
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SSE_KEEPALIVE_S = 15.0
MAX_BODY_BYTES = 1 << 20
BODY_READ_TIMEOUT_S = 10.0
"""A request body that has not arrived in full by then is refused (408): slow uploads
cannot hold the console's connections (issue 22: 1,000 of them held it for 100 s)."""
API_BODY_MAX_DEPTH = 8
"""The API's bodies are flat objects (filters, a weight, a reason)."""
REPLAY_SAMPLE = 100
"""A replay answers its counts and at most this many letters (`letters_truncated` says so):
a 200,000-letter replay built a 42 MB answer."""
MAX_INT4 = 2**31 - 1
MAX_ANONYMOUS_IN_FLIGHT = 64
"""Requests without any credential (no bearer, no session cookie) served at once; more get
503 with Retry-After, so slow anonymous clients cannot take every connection."""
SERVER_NAME = "campaignq"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")


@dataclass(frozen=True)
class ConsoleConfig:
    tokens: auth.Tokens
    webhook_secret: str | None
    sample_interval_s: float
    session_idle_s: float = 12 * 3600.0
    trust_proxy: bool = False
    """Trust X-Forwarded-Proto / X-Forwarded-For from a proxy in front (TLS terminated there)."""


STORE_KEY = web.AppKey("store", Store)
SAMPLER_KEY = web.AppKey("sampler", Sampler)
CONFIG_KEY = web.AppKey("config", ConsoleConfig)
CLOSING_KEY = web.AppKey("closing", asyncio.Event)
THROTTLE_KEY = web.AppKey("login_throttle", auth.LoginThrottle)
ANONYMOUS_KEY = web.AppKey("anonymous_in_flight", list)
ROLE_KEY: web.RequestKey[auth.Role | None] = web.RequestKey("campaignq_role")
"""The request's role, once looked up (a session costs one query per request, not per check)."""


def create_app(store: Store, config: ConsoleConfig) -> web.Application:
    app = web.Application(
        middlewares=[_headers_and_errors, _loopback_hosts, _anonymous_cap], client_max_size=MAX_BODY_BYTES
    )
    app[STORE_KEY] = store
    app[CONFIG_KEY] = config
    app[THROTTLE_KEY] = auth.LoginThrottle()
    app[ANONYMOUS_KEY] = [0]
    app.on_response_prepare.append(_on_response_prepare)
    app[SAMPLER_KEY] = Sampler(lambda: asyncio.to_thread(store.snapshot), interval_s=config.sample_interval_s)
    app[CLOSING_KEY] = asyncio.Event()
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_on_shutdown)
    for path in PAGES:
        app.router.add_get(path, _page)
    app.router.add_get("/login", _login_form)
    app.router.add_post("/login", _login)
    app.router.add_post("/logout", _logout)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/events", _events)
    app.router.add_get("/api/stats", _api_stats)
    app.router.add_get("/api/snapshot", _api_snapshot)
    app.router.add_get("/api/dead-letters", _api_dead_letters)
    app.router.add_get("/api/audit", _api_audit)
    app.router.add_post("/api/replay", _api_replay)
    app.router.add_post("/api/runs/{run_id}/{action}", _api_run_action)
    app.router.add_post("/api/workspaces/{workspace_id}/weight", _api_workspace_weight)
    app.router.add_post("/api/rate-limits/{name}", _api_rate_limit)
    app.router.add_post("/api/inboxes/{inbox_id}/{action}", _api_inbox_action)
    webhook.add_routes(app, store=lambda request: request.app[STORE_KEY], secret=config.webhook_secret)
    app.router.add_static("/static", _package_dir("static"), append_version=False)
    return app


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    app[STORE_KEY].open()
    task = asyncio.create_task(app[SAMPLER_KEY].run(), name="console-sampler")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await asyncio.to_thread(app[STORE_KEY].close)


async def _on_shutdown(app: web.Application) -> None:
    app[CLOSING_KEY].set()  # open event streams end instead of holding the shutdown


# --- middleware ---------------------------------------------------------------------------------


@web.middleware
async def _headers_and_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A database outage is a 503 with a sentence; any other failure a 500 with a sentence
    (the traceback goes to the log, never to the client). Headers: `_on_response_prepare`."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except (psycopg.OperationalError, PoolTimeout) as exc:
        logger.warning("console: database unavailable: {}", exc)
        raise _error(503, "database unavailable: " + one_line(exc)[:200]) from None
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.opt(exception=True).error("console: {} {} failed", request.method, request.path)
        raise _error(500, "internal error: the console's log has the details") from None


@web.middleware
async def _loopback_hosts(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Without any token the console is loopback only, and so are the names it answers to: a
    DNS-rebinding page reaches 127.0.0.1 through a browser but its requests say `Host:
    rebind.evil.example` (issue 22). The gateway's webhooks carry their own secret."""
    if (
        not request.app[CONFIG_KEY].tokens.any
        and not request.path.startswith("/webhooks/")
        and not auth.loopback_host_header(request.headers.get("Host"))
    ):
        raise _error(
            421,
            "without CAMPAIGNQ_CONSOLE_TOKEN this console answers only to localhost, 127.0.0.1 or "
            "[::1]; set a token to serve it under another name",
        )
    return await handler(request)


@web.middleware
async def _anonymous_cap(request: web.Request, handler: Handler) -> web.StreamResponse:
    """At most `MAX_ANONYMOUS_IN_FLIGHT` requests without a credential at once (the login
    form's slow uploads, scanners); an operator with a token or a session is never queued
    behind them. Every `/login` counts, whatever cookie it carries (a made-up one must not
    let slow uploads past). The gateway's webhooks carry their secret in the path or a
    header; a request with a credential is refused at once when it is wrong (401/429)."""
    anonymous = request.path == "/login" or (
        "Authorization" not in request.headers
        and auth.COOKIE_NAME not in request.cookies
        and not request.path.startswith("/webhooks/")
    )
    if not anonymous:
        return await handler(request)
    in_flight = request.app[ANONYMOUS_KEY]
    if in_flight[0] >= MAX_ANONYMOUS_IN_FLIGHT:
        busy = _error(503, "too many requests without a token at once: try again shortly")
        busy.headers["Retry-After"] = "1"
        raise busy
    in_flight[0] += 1
    try:
        return await handler(request)
    finally:
        in_flight[0] -= 1


async def _on_response_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Security headers on every answer, errors and event streams included, and a `Server`
    header that names no library version."""
    _secure(response.headers)
    response.headers["Server"] = SERVER_NAME


def _secure(headers: Any) -> None:
    headers.setdefault("Content-Security-Policy", CSP)
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Cache-Control", "no-store")


# --- who is asking --------------------------------------------------------------------------------


async def _viewer(request: web.Request) -> str | None:
    """'admin', 'read', 'anonymous' (no token configured) or None (must log in)."""
    tokens = request.app[CONFIG_KEY].tokens
    role = await _role(request)
    if role is not None:
        return role
    return None if tokens.any else ANONYMOUS


async def _role(request: web.Request) -> auth.Role | None:
    """The bearer token's role, else the session cookie's (looked up once per request)."""
    if ROLE_KEY in request:
        return request[ROLE_KEY]
    presented = auth.bearer(request.headers.get("Authorization"))
    if presented is not None:
        role = await _bearer_role(request, presented)
    else:
        role = await _session_role(request)
    request[ROLE_KEY] = role
    return role


async def _bearer_role(request: web.Request, presented: str) -> auth.Role | None:
    """The role of a bearer token. A wrong one counts against the client like a failed login
    (the API must not be a faster way to guess than the form); it is logged, not audited:
    the audit keeps actions and form logins, and the throttle bounds the log."""
    client = _client_address(request)
    _refuse_while_throttled(request, client)
    role = request.app[CONFIG_KEY].tokens.role_of_token(presented)
    throttle = request.app[THROTTLE_KEY]
    if role is None:
        failures = throttle.failed(client, time.monotonic())
        logger.warning("console: wrong bearer token from {} ({} failures)", client, failures)
    else:
        throttle.succeeded(client)
    return role


def _refuse_while_throttled(request: web.Request, client: str) -> None:
    wait_s = request.app[THROTTLE_KEY].retry_after_s(client, time.monotonic())
    if wait_s is not None:
        retry_after = str(max(1, int(wait_s + 0.999)))
        refused = _error(429, f"too many wrong tokens from {client}: try again in {retry_after} s")
        refused.headers["Retry-After"] = retry_after
        raise refused


async def _login_failed(request: web.Request, client: str) -> None:
    """A wrong token at the login form: counted by the throttle and written to the audit."""
    failures = request.app[THROTTLE_KEY].failed(client, time.monotonic())
    await asyncio.to_thread(
        request.app[STORE_KEY].record_audit, Actor(ANONYMOUS), "login_failed", client, {"failures": failures}
    )


async def _session_role(request: web.Request) -> auth.Role | None:
    """The role of the request's live session. A session opened with a token since rotated
    is ended here (and so is one whose role has no token any more)."""
    session_id = request.cookies.get(auth.COOKIE_NAME)
    if not session_id or len(session_id) > 200 or not request.app[CONFIG_KEY].tokens.any:
        return None
    config = request.app[CONFIG_KEY]
    store = request.app[STORE_KEY]
    id_hash = auth.session_hash(session_id)
    found = await asyncio.to_thread(store.touch_session, id_hash, idle_s=config.session_idle_s)
    if found is None:
        return None
    role = auth.session_role(config.tokens, *found)
    if role is None:
        await asyncio.to_thread(store.end_session, id_hash)
    return role


async def _require_view(request: web.Request) -> str:
    viewer = await _viewer(request)
    if viewer is None:
        raise _error(401, "a console token is required (Authorization: Bearer …, or log in at /login)")
    return viewer


async def _require_admin(request: web.Request) -> Actor:
    """The admin token, by header; or a live admin session with its CSRF token and a same-origin Origin."""
    _same_origin(request)
    presented = auth.bearer(request.headers.get("Authorization"))
    if presented is not None:
        if await _role(request) == auth.ADMIN:
            return Actor(auth.ADMIN)
        raise _error(401, "this action needs the admin token (CAMPAIGNQ_CONSOLE_TOKEN)")
    session_id = request.cookies.get(auth.COOKIE_NAME)
    if session_id is None or await _role(request) != auth.ADMIN:
        raise _error(401, "this action needs the admin token (CAMPAIGNQ_CONSOLE_TOKEN)")
    if not auth.csrf_ok(session_id, request.headers.get(auth.CSRF_HEADER)):
        raise _error(403, f"missing or wrong {auth.CSRF_HEADER}: reload the page")
    return Actor(auth.ADMIN)


def _same_origin(request: web.Request) -> None:
    origin = request.headers.get("Origin")
    if origin and origin != "null" and origin.split("://", 1)[-1] != request.host:
        raise _error(403, "cross-origin request refused")


# --- pages --------------------------------------------------------------------------------------------


async def _page(request: web.Request) -> web.StreamResponse:
    viewer = await _viewer(request)
    if viewer is None:
        raise web.HTTPSeeOther("/login")
    page, title = PAGES[request.path]
    cookie = request.cookies.get(auth.COOKIE_NAME)
    csrf = auth.csrf_token(cookie) if cookie and viewer == auth.ADMIN else ""
    nav = " ".join(
        f'<a href="{path}"{" aria-current=page" if path == request.path else ""}>{html.escape(name)}</a>'
        for path, (_, name) in PAGES.items()
    )
    who = {
        auth.ADMIN: "admin",
        auth.READ: "view only (read token)",
        ANONYMOUS: "view only (no CAMPAIGNQ_CONSOLE_TOKEN set)",
    }[viewer]
    logout = (
        '<form method="post" action="/logout" class="logout"><button type="submit">log out</button></form>'
        if viewer != ANONYMOUS
        else ""
    )
    body = _template(f"{page}.html").substitute()
    text = _template("layout.html").substitute(
        title=html.escape(title),
        page=html.escape(page),
        role=html.escape(viewer),
        csrf=html.escape(csrf),
        nav=nav,
        who=html.escape(who),
        logout=logout,
        body=body,
    )
    return web.Response(text=text, content_type="text/html")


async def _login_form(request: web.Request) -> web.StreamResponse:
    return _login_page("")


def _login_page(message: str, status: int = 200) -> web.Response:
    text = _template("login.html").substitute(message=html.escape(message))
    return web.Response(text=text, content_type="text/html", status=status)


async def _login(request: web.Request) -> web.StreamResponse:
    """A token for a session cookie. Failed tries are throttled per client address (a few
    free, then a doubling wait answered 429 with Retry-After) and each one is audited."""
    _same_origin(request)
    config = request.app[CONFIG_KEY]
    throttle = request.app[THROTTLE_KEY]
    client = _client_address(request)
    wait_s = throttle.retry_after_s(client, time.monotonic())
    if wait_s is not None:  # the form answers a page, the API a JSON error (_refuse_while_throttled)
        retry_after = str(max(1, int(wait_s + 0.999)))
        page = _login_page(f"Too many wrong tokens from {client}: try again in {retry_after} s.", status=429)
        page.headers["Retry-After"] = retry_after
        return page
    form = await _read_within(request.post())
    presented = form.get("token")
    role = config.tokens.role_of_token(presented) if isinstance(presented, str) and presented else None
    store = request.app[STORE_KEY]
    if role is None:
        await _login_failed(request, client)
        return _login_page("That is not a console token.", status=401)
    throttle.succeeded(client)
    session_id = auth.new_session_id()
    await asyncio.to_thread(
        store.create_session,
        id_hash=auth.session_hash(session_id),
        role=role,
        fingerprint=auth.token_fingerprint(config.tokens, role),
        client=client,
        idle_s=config.session_idle_s,
    )
    response = web.HTTPSeeOther("/")
    response.set_cookie(
        auth.COOKIE_NAME,
        session_id,
        httponly=True,
        samesite="Strict",
        secure=_served_over_tls(request),
        path="/",
    )
    raise response


async def _logout(request: web.Request) -> web.StreamResponse:
    """Ends the session in the database: the old cookie (and its CSRF token) is dead."""
    _same_origin(request)
    session_id = request.cookies.get(auth.COOKIE_NAME)
    if session_id:
        await asyncio.to_thread(request.app[STORE_KEY].end_session, auth.session_hash(session_id))
    response = web.HTTPSeeOther("/login")
    response.del_cookie(auth.COOKIE_NAME, path="/")
    raise response


def _served_over_tls(request: web.Request) -> bool:
    """TLS here, or (CAMPAIGNQ_CONSOLE_TRUST_PROXY) at the proxy in front that says so."""
    if request.secure:
        return True
    if not request.app[CONFIG_KEY].trust_proxy:
        return False
    proto = request.headers.get("X-Forwarded-Proto", "")
    return proto.split(",", 1)[0].strip().lower() == "https"


def _client_address(request: web.Request) -> str:
    """Who is logging in, for the throttle and the audit: the peer, or behind a trusted proxy
    the address the proxy appended last to X-Forwarded-For (the one it saw)."""
    if request.app[CONFIG_KEY].trust_proxy:
        forwarded = request.headers.get("X-Forwarded-For", "")
        last = forwarded.rsplit(",", 1)[-1].strip()
        if last:
            return last[:64]
    return request.remote or "unknown"


# --- read API --------------------------------------------------------------------------------------


async def _healthz(request: web.Request) -> web.StreamResponse:
    """Liveness plus the database: 503 when it does not answer (no token needed, no data shown)."""
    sampler = request.app[SAMPLER_KEY]
    try:
        await asyncio.to_thread(request.app[STORE_KEY].ping)
    except (psycopg.Error, PoolTimeout) as exc:
        return web.json_response({"ok": False, "database": one_line(exc)[:200]}, status=503)
    return web.json_response(
        {
            "ok": True,
            "database": "ok",
            "subscribers": sampler.subscribers,
            "samples": sampler.samples,
            "webhooks_refused": request.app[webhook.COUNTS_KEY].rejected,
        }
    )


async def _api_stats(request: web.Request) -> web.StreamResponse:
    """The `campaignq stats --json` document, with the CLI's `run` and `runs` parameters."""
    await _require_view(request)
    run_id = _uuid_param(request.query.get("run"), "run")
    runs = request.query.get("runs", "20")
    if not (runs.isascii() and runs.isdigit()) or not 1 <= int(runs) <= 10_000:
        raise _error(400, f"runs must be a positive integer (at most 10000), got {runs!r}")
    stats = await asyncio.to_thread(request.app[STORE_KEY].stats, run_id=run_id, runs_limit=int(runs))
    return web.json_response(stats)


async def _api_snapshot(request: web.Request) -> web.StreamResponse:
    await _require_view(request)
    return web.Response(text=await request.app[SAMPLER_KEY].latest(), content_type="application/json")


async def _events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: the shared sampler's snapshots, as they are taken."""
    await _require_view(request)
    sampler = request.app[SAMPLER_KEY]
    closing = request.app[CLOSING_KEY]
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    queue = sampler.subscribe()
    try:
        await response.write(b"retry: 2000\n\n")
        while not closing.is_set():
            try:
                data = await asyncio.wait_for(queue.get(), timeout=SSE_KEEPALIVE_S)
            except TimeoutError:
                await response.write(b": keep-alive\n\n")
                continue
            await response.write(f"data: {data}\n\n".encode())
    except ConnectionResetError:
        pass  # the page went away
    finally:
        sampler.unsubscribe(queue)
    return response


async def _api_dead_letters(request: web.Request) -> web.StreamResponse:
    await _require_view(request)
    try:
        flt = parse_filter(dict(request.query))
    except FilterError as exc:
        raise _error(400, str(exc)) from None
    return web.json_response(await asyncio.to_thread(request.app[STORE_KEY].dead_letters, flt))


async def _api_audit(request: web.Request) -> web.StreamResponse:
    await _require_view(request)
    return web.json_response({"audit": await asyncio.to_thread(request.app[STORE_KEY].audit)})


# --- actions ------------------------------------------------------------------------------------------


async def _api_replay(request: web.Request) -> web.StreamResponse:
    """Replay (or preview) everything matching the filter, in one request, outcome per letter."""
    actor = await _require_admin(request)
    body = await _api_body(request)
    try:
        flt = parse_filter({k: v for k, v in body.items() if k != "dry_run"}, allowed=REPLAY_KEYS)
        dry_run = parse_dry_run(body.get("dry_run"))
    except FilterError as exc:
        raise _error(400, str(exc)) from None
    started = time.monotonic()
    report = await asyncio.to_thread(
        request.app[STORE_KEY].replay, flt, dry_run=dry_run, actor=actor, batch_size=DEFAULT_BATCH_SIZE
    )
    document = {
        "filter": flt.to_json(),
        **report.to_json(),
        "duration_s": round(time.monotonic() - started, 3),
    }
    letters = document["letters"]
    document["letters"] = letters[:REPLAY_SAMPLE]
    document["letters_shown"] = len(document["letters"])
    document["letters_truncated"] = len(letters) > REPLAY_SAMPLE
    return web.json_response(document)


async def _api_run_action(request: web.Request) -> web.StreamResponse:
    actor = await _require_admin(request)
    action = request.match_info["action"]
    if action not in RUN_TRANSITIONS:
        raise _error(404, f"unknown run action {action!r}; use pause, resume or cancel")
    run_id = _path_uuid(request, "run_id", "run id")
    store = request.app[STORE_KEY]
    try:
        result = await asyncio.to_thread(store.set_run_status, run_id, action, actor=actor)
    except NotFoundError as exc:
        raise _error(404, str(exc)) from None
    except ConflictError as exc:
        raise _error(409, str(exc)) from None
    return web.json_response(result)


async def _api_workspace_weight(request: web.Request) -> web.StreamResponse:
    actor = await _require_admin(request)
    workspace_id = _path_uuid(request, "workspace_id", "workspace id")
    body = await _api_body(request)
    weight = body.get("weight")
    if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= 1000:
        raise _error(400, f"weight must be an integer from 1 to 1000, got {weight!r}")
    store = request.app[STORE_KEY]
    try:
        result = await asyncio.to_thread(store.set_workspace_weight, workspace_id, weight, actor=actor)
    except NotFoundError as exc:
        raise _error(404, str(exc)) from None
    return web.json_response(result)


async def _api_rate_limit(request: web.Request) -> web.StreamResponse:
    """Set (or, with null, remove) a shared budget; today the one budget is 'ai'."""
    actor = await _require_admin(request)
    name = request.match_info["name"]
    if name != AI_BUDGET:
        raise _error(404, f"unknown budget {name!r}; the console edits {AI_BUDGET!r}")
    body = await _api_body(request)
    rpm = body.get("requests_per_minute")
    if rpm is not None and (isinstance(rpm, bool) or not isinstance(rpm, int) or not 1 <= rpm <= MAX_INT4):
        raise _error(400, f"requests_per_minute must be an integer from 1 to {MAX_INT4} or null, got {rpm!r}")
    store = request.app[STORE_KEY]
    return web.json_response(await asyncio.to_thread(store.set_rate_limit, name, rpm, actor=actor))


async def _api_inbox_action(request: web.Request) -> web.StreamResponse:
    actor = await _require_admin(request)
    inbox_id = _path_uuid(request, "inbox_id", "inbox id")
    action = request.match_info["action"]
    store = request.app[STORE_KEY]
    try:
        if action == "pause":
            body = await _api_body(request)
            reason = body.get("reason") or "paused by operator"
            if not isinstance(reason, str) or len(reason) > 200 or not _clean_text(reason):
                raise _error(400, "reason must be a text of at most 200 characters, without NUL")
            result = await asyncio.to_thread(store.pause_inbox, inbox_id, reason, actor=actor)
        elif action == "resume":
            result = await asyncio.to_thread(store.resume_inbox, inbox_id, actor=actor)
        else:
            raise _error(404, f"unknown inbox action {action!r}; use pause or resume")
    except NotFoundError as exc:
        raise _error(404, str(exc)) from None
    return web.json_response(result)


# --- helpers -----------------------------------------------------------------------------------------------


def _error(status: int, message: str) -> web.HTTPException:
    """An HTTP error whose JSON body is `{"error": message}`: the sentence the operator reads."""
    classes: dict[int, type[web.HTTPException]] = {
        400: web.HTTPBadRequest,
        401: web.HTTPUnauthorized,
        403: web.HTTPForbidden,
        404: web.HTTPNotFound,
        408: web.HTTPRequestTimeout,
        409: web.HTTPConflict,
        429: web.HTTPTooManyRequests,
        413: web.HTTPRequestEntityTooLarge,
        421: web.HTTPMisdirectedRequest,
        500: web.HTTPInternalServerError,
        503: web.HTTPServiceUnavailable,
    }
    if status == 413:
        return web.HTTPRequestEntityTooLarge(
            max_size=MAX_BODY_BYTES,
            actual_size=MAX_BODY_BYTES + 1,
            text=json.dumps({"error": message}),
            content_type="application/json",
        )
    return classes[status](text=json.dumps({"error": message}), content_type="application/json")


async def _read_within(reading: Awaitable[T]) -> T:
    """A request body read with a deadline (`BODY_READ_TIMEOUT_S`), within the size cap."""
    try:
        return await asyncio.wait_for(reading, timeout=BODY_READ_TIMEOUT_S)
    except TimeoutError:
        raise _error(408, f"the request body did not arrive within {BODY_READ_TIMEOUT_S:g} s") from None
    except web.HTTPRequestEntityTooLarge:
        raise _error(413, f"the request body is larger than {MAX_BODY_BYTES:,} bytes") from None


async def _api_body(request: web.Request) -> dict[str, Any]:
    """An API body: a JSON object read within the deadline and parsed through the guard
    (`safejson`: no NaN, Infinity, overflowing number or lone surrogate; flat), whose text
    values hold no NUL (PostgreSQL text cannot). Anything else is a 400 with the reason."""
    if not request.can_read_body:
        return {}
    raw = await _read_within(request.read())
    if not raw.strip():
        return {}
    try:
        body = safejson.loads_object(raw, max_depth=API_BODY_MAX_DEPTH, max_bytes=MAX_BODY_BYTES)
    except safejson.UnsafeJSON as exc:
        raise _error(400, f"the body must be a JSON object ({exc})") from None
    for key, value in body.items():
        if not _clean_text(key) or (isinstance(value, str) and not _clean_text(value)):
            raise _error(400, f"{key[:40]!r}: text must not contain NUL characters")
    return body


def _clean_text(value: str) -> bool:
    """No NUL (PostgreSQL text refuses it) and valid Unicode (no lone surrogate)."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


async def _json_body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _error(400, "the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise _error(400, "the body must be a JSON object")
    return body


def _uuid_param(value: str | None, name: str) -> uuid.UUID | None:
    if not value:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        raise _error(400, f"{name} must be a UUID, got {value!r}") from None


def _path_uuid(request: web.Request, key: str, name: str) -> uuid.UUID:
    value = _uuid_param(request.match_info[key], name)
    if value is None:
        raise _error(400, f"{name} is missing")
    return value


def _package_dir(name: str) -> Path:
    return Path(str(resources.files(__package__ or "consumer.ops.console") / name))


def _template(name: str) -> string.Template:
    return string.Template((_package_dir("templates") / name).read_text(encoding="utf-8"))
