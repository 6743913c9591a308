"""Issue 22, the console under attack, over loopback HTTP on a real PostgreSQL: sessions that
end, a throttled login, DNS rebinding, bad values that are 400s with a sentence, and headers
on every answer. Each test names the attack it replays."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from consumer.devtools.seeding import Seeder
from consumer.ops.console import app as console_app
from consumer.ops.console import auth
from consumer.ops.console.app import ConsoleConfig, create_app
from consumer.ops.console.store import Store
from consumer.settings import DEFAULT_MODEL_PRICES
from tests.cli import run_cli
from tests.console.helpers import ADMIN_TOKEN, READ_TOKEN, WEBHOOK_KEY, dead_letter_bulk

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
UNREACHABLE = "postgresql://nobody@127.0.0.1:1/none"

Factory = Callable[..., Any]


@pytest.fixture
async def make_client(database_url: str) -> AsyncIterator[Factory]:
    """A console over loopback with the given tokens and settings (several may share the database)."""
    clients: list[TestClient[Any, Any]] = []

    async def make(
        *, admin: str | None = ADMIN_TOKEN, read: str | None = READ_TOKEN, **config: Any
    ) -> TestClient[Any, Any]:
        store = Store(database_url, prices=DEFAULT_MODEL_PRICES)
        settings = ConsoleConfig(
            tokens=auth.Tokens(admin=admin, read=read),
            webhook_secret=WEBHOOK_KEY,
            sample_interval_s=0.3,
            **config,
        )
        client: TestClient[Any, Any] = TestClient(TestServer(create_app(store, settings)))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def login(client: TestClient[Any, Any], token: str = ADMIN_TOKEN, **headers: str) -> str:
    response = await client.post("/login", data={"token": token}, allow_redirects=False, headers=headers)
    assert response.status == 303, await response.text()
    return str(response.cookies[auth.COOKIE_NAME].value)


async def pause_with_cookie(client: TestClient[Any, Any], run_id: Any, cookie: str) -> int:
    client.session.cookie_jar.clear()
    response = await client.post(
        f"/api/runs/{run_id}/pause",
        headers={auth.CSRF_HEADER: auth.csrf_token(cookie), "Cookie": f"{auth.COOKIE_NAME}={cookie}"},
    )
    return response.status


# --- sessions ----------------------------------------------------------------------------------


async def test_logout_ends_the_session_and_its_csrf_token(make_client: Factory, seed: Seeder) -> None:
    """Attack: after logout, the old cookie and its CSRF token still resumed an inbox."""
    client = await make_client()
    campaign = seed.campaign(1)
    cookie = await login(client)
    assert cookie != await login(client)  # a new random session at every login
    assert await pause_with_cookie(client, campaign.run_id, cookie) == 200
    logout = await client.post(
        "/logout", allow_redirects=False, headers={"Cookie": f"{auth.COOKIE_NAME}={cookie}"}
    )
    assert logout.status == 303
    assert await pause_with_cookie(client, campaign.run_id, cookie) == 401
    client.session.cookie_jar.clear()
    stats = await client.get("/api/stats", headers={"Cookie": f"{auth.COOKIE_NAME}={cookie}"})
    assert stats.status == 401


async def test_the_database_keeps_a_hash_and_an_idle_session_expires(
    make_client: Factory, db: psycopg.Connection[Any]
) -> None:
    client = await make_client(session_idle_s=3600)
    cookie = await login(client, READ_TOKEN)
    [(id_hash, role)] = db.execute("SELECT id_hash, role FROM campaignq_console_sessions").fetchall()
    assert id_hash == hashlib.sha256(cookie.encode()).hexdigest() and role == "read"
    client.session.cookie_jar.clear()
    headers = {"Cookie": f"{auth.COOKIE_NAME}={cookie}"}
    assert (await client.get("/api/stats", headers=headers)).status == 200
    db.execute("UPDATE campaignq_console_sessions SET last_seen_at = now() - interval '61 minutes'")
    assert (await client.get("/api/stats", headers=headers)).status == 401


async def test_a_rotated_token_ends_every_session_opened_with_the_old_one(
    make_client: Factory, db: psycopg.Connection[Any]
) -> None:
    before = await make_client()
    cookie = await login(before)
    after = await make_client(admin="a-brand-new-admin-token-42")  # same database, token rotated
    headers = {"Cookie": f"{auth.COOKIE_NAME}={cookie}"}
    assert (await after.get("/api/stats", headers=headers)).status == 401
    assert db.execute("SELECT count(*) FROM campaignq_console_sessions").fetchone() == (0,)


async def test_failed_logins_are_throttled_per_address_and_audited(
    make_client: Factory, db: psycopg.Connection[Any]
) -> None:
    """Attack: 3,000 wrong tokens in 1.3 s, no delay, no 429, not audited."""
    client = await make_client()
    statuses = [
        (await client.post("/login", data={"token": f"guess-{i}"}, allow_redirects=False)).status
        for i in range(8)
    ]
    assert statuses[:6] == [401] * 6 and statuses[6:] == [429, 429], statuses
    blocked = await client.post("/login", data={"token": ADMIN_TOKEN}, allow_redirects=False)
    assert blocked.status == 429  # even the right token waits: guessing gains nothing
    assert int(blocked.headers["Retry-After"]) >= 1
    assert "try again" in await blocked.text()
    failed = db.execute(
        "SELECT count(*) FROM campaignq_console_audit WHERE action = 'login_failed' AND target = '127.0.0.1'"
    ).fetchone()
    assert failed == (6,)
    await asyncio.sleep(1.1)  # the first wait is one second
    assert (await client.post("/login", data={"token": ADMIN_TOKEN}, allow_redirects=False)).status == 303


async def test_wrong_bearer_tokens_are_throttled_like_failed_logins(make_client: Factory) -> None:
    """The API must not be a faster way to guess a token than the form."""
    client = await make_client()
    statuses = [
        (await client.get("/api/stats", headers={"Authorization": f"Bearer guess-{i}"})).status
        for i in range(7)
    ]
    assert statuses == [401] * 6 + [429], statuses
    blocked = await client.get("/api/stats", headers=ADMIN)
    assert blocked.status == 429 and int(blocked.headers["Retry-After"]) >= 1
    assert "try again" in (await blocked.json())["error"]


async def test_the_cookie_is_secure_behind_a_trusted_tls_proxy_only(make_client: Factory) -> None:
    forwarded = {"X-Forwarded-Proto": "https"}
    trusted = await make_client(trust_proxy=True)
    response = await trusted.post(
        "/login", data={"token": ADMIN_TOKEN}, allow_redirects=False, headers=forwarded
    )
    assert "Secure" in response.headers["Set-Cookie"]
    untrusted = await make_client()
    response = await untrusted.post(
        "/login", data={"token": ADMIN_TOKEN}, allow_redirects=False, headers=forwarded
    )
    assert "Secure" not in response.headers["Set-Cookie"]


# --- DNS rebinding and the bind address -----------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("rebind.evil.example", 421),
        ("127.evil.example:8900", 421),
        ("localhost.evil.example", 421),
        ("localhost:8900", 200),
        ("127.0.0.1:8900", 200),
        ("127.1.2.3", 200),
        ("[::1]:8900", 200),
    ],
)
async def test_a_tokenless_console_answers_only_loopback_host_names(
    make_client: Factory, host: str, status: int
) -> None:
    """Attack: with no token, `Host: rebind.evil.example` read /api/dead-letters."""
    client = await make_client(admin=None, read=None)
    response = await client.get("/api/dead-letters", headers={"Host": host})
    assert response.status == status
    if status == 421:
        assert "localhost" in (await response.json())["error"]


def test_serve_refuses_a_name_that_only_starts_like_loopback() -> None:
    """Attack: `--host 127.evil.example` passed the loopback check (a string prefix)."""
    result = run_cli("serve", "--host", "127.evil.example", "--port", "0", database_url=UNREACHABLE)
    assert result.returncode == 2
    assert "refusing to serve the console on 127.evil.example" in result.stderr


def test_serve_refuses_a_short_token_with_one_line() -> None:
    """Attack: a 1-character token was accepted, even on 0.0.0.0."""
    result = run_cli("serve", "--port", "0", database_url=UNREACHABLE, env={"CAMPAIGNQ_CONSOLE_TOKEN": "x"})
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "at least 16" in lines[0], result.stderr


# --- bad values are 400s with a sentence ----------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "mentions"),
    [
        ("GET", "/api/dead-letters?older_than=99999999999999999999d", None, "older_than"),
        ("GET", "/api/dead-letters?limit=99999999999999999999", None, "limit"),
        ("GET", "/api/dead-letters?reason=a%00b", None, "NUL"),
        ("GET", "/api/stats?runs=99999999999999999999", None, "runs"),
        ("POST", "/api/replay", b'{"older_than": "99999999999999999999d", "dry_run": true}', "older_than"),
        ("POST", "/api/replay", b'{"older_than": 1e308, "dry_run": true}', "older_than"),
        ("POST", "/api/replay", b'{"older_than": Infinity, "dry_run": true}', "JSON"),
        ("POST", "/api/replay", b'{"older_than": NaN, "dry_run": true}', "JSON"),
        ("POST", "/api/replay", b'{"older_than": 1e999, "dry_run": true}', "JSON"),
        ("POST", "/api/replay", b'{"limit": 99999999999999999999, "dry_run": true}', "limit"),
        ("POST", "/api/replay", b'{"reason": "a\\u0000b", "dry_run": true}', "NUL"),
        ("POST", "/api/replay", b'{"reason": "\\ud800", "dry_run": true}', "JSON"),
        ("POST", "/api/replay", b"[" * 5000 + b"]" * 5000, "JSON"),
        ("POST", "/api/rate-limits/ai", b'{"requests_per_minute": 2147483648}', "requests_per_minute"),
        ("POST", "/api/rate-limits/ai", b'{"requests_per_minute": 1e308}', "requests_per_minute"),
        ("POST", "/api/inboxes/{inbox}/pause", b'{"reason": "stop\\u0000now"}', "NUL"),
        ("POST", "/api/inboxes/{inbox}/pause", b'{"reason": "\\udfff"}', "JSON"),
    ],
)
async def test_every_bad_value_is_a_400_with_a_sentence(
    make_client: Factory,
    db: psycopg.Connection[Any],
    seed: Seeder,
    method: str,
    path: str,
    body: bytes | None,
    mentions: str,
) -> None:
    """Attack: each of these was a 500 with a generic body and a traceback in the log."""
    client = await make_client()
    campaign = seed.campaign(1)
    inbox = db.execute(
        "SELECT cf.inbox_id FROM campaign_runs r JOIN campaign_configs cf ON cf.id = r.config_id"
        " WHERE r.id = %s",
        (campaign.run_id,),
    ).fetchone()
    assert inbox is not None
    url = path.format(inbox=inbox[0])
    headers = {**ADMIN, "Content-Type": "application/json"}
    response = await client.request(method, url, data=body, headers=headers)
    assert response.status == 400, (response.status, await response.text())
    assert mentions in (await response.json())["error"]


# --- headers, errors, bodies ------------------------------------------------------------------------


def assert_secure_headers(headers: Any) -> None:
    assert headers["Content-Security-Policy"].startswith("default-src 'self'")
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    assert "aiohttp" not in headers.get("Server", "").lower()


async def test_headers_on_500s_and_event_streams_and_no_library_version(
    make_client: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await make_client()

    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("boom: secret detail")

    monkeypatch.setattr(Store, "audit", broken)
    failed = await client.get("/api/audit", headers=ADMIN)
    assert failed.status == 500
    assert_secure_headers(failed.headers)
    assert "boom" not in await failed.text() and "internal error" in (await failed.json())["error"]
    async with client.get("/events", headers=ADMIN) as events:
        assert events.status == 200
        assert_secure_headers(events.headers)
    assert_secure_headers((await client.get("/healthz")).headers)
    assert_secure_headers((await client.get("/no-such-page")).headers)


async def test_a_body_that_never_arrives_is_a_408(
    make_client: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: 1,000 slow uploads held the console for 100 s with no body timeout."""
    monkeypatch.setattr(console_app, "BODY_READ_TIMEOUT_S", 0.5)
    client = await make_client()
    port = client.server.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        (
            "POST /api/replay HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\n"
            "Content-Length: 1000\r\n\r\n{"
        ).encode()
    )
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), timeout=5)
    assert b" 408 " in status_line, status_line
    writer.close()


async def test_slow_anonymous_clients_cannot_take_every_connection(
    make_client: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anonymous requests (no token, no session) are capped; an operator's are not."""
    monkeypatch.setattr(console_app, "MAX_ANONYMOUS_IN_FLIGHT", 2)
    client = await make_client()
    writers = []
    for _ in range(2):  # two login uploads that never finish
        _reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
        writer.write(  # a made-up session cookie does not get a slow login past the cap
            b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: campaignq_console=made-up\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\ntoken="
        )
        await writer.drain()
        writers.append(writer)
    await asyncio.sleep(0.3)
    busy = await client.get("/api/stats")
    assert busy.status == 503 and busy.headers["Retry-After"] == "1"
    assert (await client.get("/api/stats", headers=ADMIN)).status == 200
    for writer in writers:
        writer.close()


async def test_replay_answers_counts_and_a_bounded_sample(
    make_client: Factory, db: psycopg.Connection[Any], seed: Seeder
) -> None:
    client = await make_client()
    campaign = seed.campaign(150)
    dead_letter_bulk(db, campaign)
    response = await client.post("/api/replay", json={"dry_run": True}, headers=ADMIN)
    report = await response.json()
    assert report["examined"] == 150 and report["by_action"] == {"replayed": 150}
    assert report["letters_shown"] == len(report["letters"]) == 100 and report["letters_truncated"] is True


async def test_a_weight_for_a_workspace_nothing_names_is_a_404(
    make_client: Factory, db: psycopg.Connection[Any], seed: Seeder
) -> None:
    client = await make_client()
    campaign = seed.campaign(1)
    missing = await client.post(f"/api/workspaces/{uuid.uuid4()}/weight", json={"weight": 3}, headers=ADMIN)
    assert missing.status == 404 and "no workspace" in (await missing.json())["error"]
    assert db.execute("SELECT count(*) FROM workspace_weights").fetchone() == (0,)
    path = f"/api/workspaces/{campaign.workspace_id}/weight"
    known = await client.post(path, json={"weight": 3}, headers=ADMIN)
    assert known.status == 200
