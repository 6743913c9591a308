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
from typing import Any

import psycopg
from aiohttp import web
from loguru import logger
from psycopg_pool import PoolTimeout

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

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class ConsoleConfig:
    tokens: auth.Tokens
    webhook_secret: str | None
    sample_interval_s: float


STORE_KEY = web.AppKey("store", Store)
SAMPLER_KEY = web.AppKey("sampler", Sampler)
CONFIG_KEY = web.AppKey("config", ConsoleConfig)
CLOSING_KEY = web.AppKey("closing", asyncio.Event)


def create_app(store: Store, config: ConsoleConfig) -> web.Application:
    app = web.Application(middlewares=[_headers_and_errors], client_max_size=MAX_BODY_BYTES)
    app[STORE_KEY] = store
    app[CONFIG_KEY] = config
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
    """Security headers on every answer; a database outage is a 503 with a sentence, not a 500."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        _secure(exc.headers)
        raise
    except (psycopg.OperationalError, PoolTimeout) as exc:
        logger.warning("console: database unavailable: {}", exc)
        unavailable = _error(503, "database unavailable: " + one_line(exc)[:200])
        _secure(unavailable.headers)
        raise unavailable from None
    if not response.prepared:
        _secure(response.headers)
    return response


def _secure(headers: Any) -> None:
    headers.setdefault("Content-Security-Policy", CSP)
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Cache-Control", "no-store")


# --- who is asking --------------------------------------------------------------------------------


def _viewer(request: web.Request) -> str | None:
    """'admin', 'read', 'anonymous' (no token configured) or None (must log in)."""
    tokens = request.app[CONFIG_KEY].tokens
    role = _role(request)
    if role is not None:
        return role
    return None if tokens.any else ANONYMOUS


def _role(request: web.Request) -> auth.Role | None:
    tokens = request.app[CONFIG_KEY].tokens
    presented = auth.bearer(request.headers.get("Authorization"))
    if presented is not None:
        return tokens.role_of_token(presented)
    return auth.role_of_cookie(tokens, request.cookies.get(auth.COOKIE_NAME))


def _require_view(request: web.Request) -> str:
    viewer = _viewer(request)
    if viewer is None:
        raise _error(401, "a console token is required (Authorization: Bearer …, or log in at /login)")
    return viewer


def _require_admin(request: web.Request) -> Actor:
    """The admin token, by header; or the login cookie with its CSRF token and a same-origin Origin."""
    _same_origin(request)
    tokens = request.app[CONFIG_KEY].tokens
    presented = auth.bearer(request.headers.get("Authorization"))
    if presented is not None:
        if tokens.role_of_token(presented) == auth.ADMIN:
            return Actor(auth.ADMIN)
        raise _error(401, "this action needs the admin token (CAMPAIGNQ_CONSOLE_TOKEN)")
    cookie = request.cookies.get(auth.COOKIE_NAME)
    if auth.role_of_cookie(tokens, cookie) != auth.ADMIN or cookie is None:
        raise _error(401, "this action needs the admin token (CAMPAIGNQ_CONSOLE_TOKEN)")
    if not auth.csrf_ok(cookie, request.headers.get(auth.CSRF_HEADER)):
        raise _error(403, f"missing or wrong {auth.CSRF_HEADER}: reload the page")
    return Actor(auth.ADMIN)


def _same_origin(request: web.Request) -> None:
    origin = request.headers.get("Origin")
    if origin and origin != "null" and origin.split("://", 1)[-1] != request.host:
        raise _error(403, "cross-origin request refused")


# --- pages --------------------------------------------------------------------------------------------


async def _page(request: web.Request) -> web.StreamResponse:
    viewer = _viewer(request)
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
    _same_origin(request)
    tokens = request.app[CONFIG_KEY].tokens
    form = await request.post()
    presented = form.get("token")
    role = tokens.role_of_token(presented) if isinstance(presented, str) and presented else None
    if role is None:
        return _login_page("That is not a console token.", status=401)
    response = web.HTTPSeeOther("/")
    response.set_cookie(
        auth.COOKIE_NAME,
        auth.session_cookie(tokens, role),
        httponly=True,
        samesite="Strict",
        secure=request.secure,
        path="/",
    )
    await asyncio.to_thread(request.app[STORE_KEY].record_audit, Actor(role), "login", None, {})
    raise response


async def _logout(request: web.Request) -> web.StreamResponse:
    _same_origin(request)
    response = web.HTTPSeeOther("/login")
    response.del_cookie(auth.COOKIE_NAME, path="/")
    raise response


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
    _require_view(request)
    run_id = _uuid_param(request.query.get("run"), "run")
    runs = request.query.get("runs", "20")
    if not runs.isdigit() or int(runs) < 1:
        raise _error(400, f"runs must be a positive integer, got {runs!r}")
    stats = await asyncio.to_thread(request.app[STORE_KEY].stats, run_id=run_id, runs_limit=int(runs))
    return web.json_response(stats)


async def _api_snapshot(request: web.Request) -> web.StreamResponse:
    _require_view(request)
    return web.Response(text=await request.app[SAMPLER_KEY].latest(), content_type="application/json")


async def _events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: the shared sampler's snapshots, as they are taken."""
    _require_view(request)
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
    _require_view(request)
    try:
        flt = parse_filter(dict(request.query))
    except FilterError as exc:
        raise _error(400, str(exc)) from None
    return web.json_response(await asyncio.to_thread(request.app[STORE_KEY].dead_letters, flt))


async def _api_audit(request: web.Request) -> web.StreamResponse:
    _require_view(request)
    return web.json_response({"audit": await asyncio.to_thread(request.app[STORE_KEY].audit)})


# --- actions ------------------------------------------------------------------------------------------


async def _api_replay(request: web.Request) -> web.StreamResponse:
    """Replay (or preview) everything matching the filter, in one request, outcome per letter."""
    actor = _require_admin(request)
    body = await _json_body(request)
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
    return web.json_response(document)


async def _api_run_action(request: web.Request) -> web.StreamResponse:
    actor = _require_admin(request)
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
    actor = _require_admin(request)
    workspace_id = _path_uuid(request, "workspace_id", "workspace id")
    body = await _json_body(request)
    weight = body.get("weight")
    if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= 1000:
        raise _error(400, f"weight must be an integer from 1 to 1000, got {weight!r}")
    store = request.app[STORE_KEY]
    return web.json_response(
        await asyncio.to_thread(store.set_workspace_weight, workspace_id, weight, actor=actor)
    )


async def _api_rate_limit(request: web.Request) -> web.StreamResponse:
    """Set (or, with null, remove) a shared budget; today the one budget is 'ai'."""
    actor = _require_admin(request)
    name = request.match_info["name"]
    if name != AI_BUDGET:
        raise _error(404, f"unknown budget {name!r}; the console edits {AI_BUDGET!r}")
    body = await _json_body(request)
    rpm = body.get("requests_per_minute")
    if rpm is not None and (isinstance(rpm, bool) or not isinstance(rpm, int) or rpm < 1):
        raise _error(400, f"requests_per_minute must be a positive integer or null, got {rpm!r}")
    store = request.app[STORE_KEY]
    return web.json_response(await asyncio.to_thread(store.set_rate_limit, name, rpm, actor=actor))


async def _api_inbox_action(request: web.Request) -> web.StreamResponse:
    actor = _require_admin(request)
    inbox_id = _path_uuid(request, "inbox_id", "inbox id")
    action = request.match_info["action"]
    store = request.app[STORE_KEY]
    try:
        if action == "pause":
            body = await _json_body(request)
            reason = body.get("reason") or "paused by operator"
            if not isinstance(reason, str) or len(reason) > 200:
                raise _error(400, "reason must be a text of at most 200 characters")
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
        409: web.HTTPConflict,
        503: web.HTTPServiceUnavailable,
    }
    return classes[status](text=json.dumps({"error": message}), content_type="application/json")


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
