"""The console's pure decisions: who may do what, which filter is valid, what is an opt-out,
and that one sampler serves every subscriber."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from consumer.core.optout import is_opt_out_reply
from consumer.ops.console import auth
from consumer.ops.console.filters import FilterError, parse_dry_run, parse_filter
from consumer.ops.console.sampler import Sampler

ADMIN_SECRET = "admin-secret-1234"  # noqa: S105 - a test token
TOKENS = auth.Tokens(admin=ADMIN_SECRET, read="read-secret-1234")


def test_tokens_grant_their_role_only() -> None:
    assert TOKENS.role_of_token("admin-secret-1234") == auth.ADMIN
    assert TOKENS.role_of_token("read-secret-1234") == auth.READ
    assert TOKENS.role_of_token("admin-secret-123") is None
    assert auth.Tokens().role_of_token("") is None


@pytest.mark.parametrize(
    ("header", "token"),
    [("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Basic abc", None), ("Bearer", None), (None, None)],
)
def test_bearer(header: str | None, token: str | None) -> None:
    assert auth.bearer(header) == token


def test_a_session_id_is_random_and_stored_only_as_a_hash() -> None:
    first, second = auth.new_session_id(), auth.new_session_id()
    assert first != second and len(first) >= 40
    assert auth.session_hash(first) != first and len(auth.session_hash(first)) == 64
    assert ADMIN_SECRET not in first


def test_a_session_dies_with_its_token() -> None:
    fingerprint = auth.token_fingerprint(TOKENS, auth.ADMIN)
    assert ADMIN_SECRET not in fingerprint
    assert auth.session_role(TOKENS, "admin", fingerprint) == auth.ADMIN
    rotated = auth.Tokens(admin="another-secret-99", read=TOKENS.read)
    assert auth.session_role(rotated, "admin", fingerprint) is None
    assert auth.session_role(TOKENS, "read", fingerprint) is None  # another role's fingerprint
    assert auth.session_role(auth.Tokens(read=TOKENS.read), "admin", fingerprint) is None
    assert auth.session_role(TOKENS, "root", fingerprint) is None


def test_csrf_token_is_bound_to_the_session() -> None:
    session = auth.new_session_id()
    assert auth.csrf_ok(session, auth.csrf_token(session))
    assert not auth.csrf_ok(session, None)
    assert not auth.csrf_ok(session, auth.csrf_token(auth.new_session_id()))


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("localhost", True),
        ("LOCALHOST.", True),
        ("127.evil.example", False),
        ("127.0.0.1.evil.example", False),
        ("localhost.evil.example", False),
        ("0.0.0.0", False),  # noqa: S104 (the case under test)
        ("10.0.0.5", False),
        ("", False),
    ],
)
def test_loopback_is_decided_by_ipaddress_not_a_prefix(host: str, loopback: bool) -> None:
    assert auth.is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("header", "allowed"),
    [
        ("localhost:8900", True),
        ("127.0.0.1:8900", True),
        ("[::1]:8900", True),
        ("[::1]", True),
        ("rebind.evil.example", False),
        ("rebind.evil.example:8900", False),
        ("127.evil.example:8900", False),
        (None, False),
        ("", False),
    ],
)
def test_host_headers_a_tokenless_console_answers(header: str | None, allowed: bool) -> None:
    assert auth.loopback_host_header(header) is allowed


def test_short_tokens_are_refused() -> None:
    assert auth.token_problem(TOKENS) is None
    assert auth.token_problem(auth.Tokens()) is None
    problem = auth.token_problem(auth.Tokens(admin="x" * 16, read="short"))
    assert problem is not None and "CAMPAIGNQ_CONSOLE_READ_TOKEN" in problem and "16" in problem


def test_login_throttle_backs_off_then_forgives_a_success() -> None:
    throttle = auth.LoginThrottle(free_failures=2, first_delay_s=1.0, max_delay_s=8.0, max_clients=2)
    assert throttle.retry_after_s("a", 0.0) is None
    throttle.failed("a", 0.0)
    throttle.failed("a", 0.0)
    assert throttle.retry_after_s("a", 0.0) is None  # the free failures
    throttle.failed("a", 0.0)
    assert throttle.retry_after_s("a", 0.5) == 0.5
    assert throttle.retry_after_s("a", 1.0) is None
    delays = []
    for now in (10.0, 20.0, 30.0, 40.0, 50.0):
        throttle.failed("a", now)
        delays.append(throttle.retry_after_s("a", now))
    assert delays == [2.0, 4.0, 8.0, 8.0, 8.0]  # doubling, capped
    assert throttle.retry_after_s("b", 50.0) is None  # per address
    throttle.succeeded("a")
    assert throttle.retry_after_s("a", 50.0) is None
    for client in ("c", "d", "e"):  # bounded memory: the oldest address is forgotten
        throttle.failed(client, 60.0)
    assert set(throttle._clients) == {"d", "e"}


@pytest.mark.parametrize(
    ("host", "tokens", "allowed"),
    [
        ("127.0.0.1", auth.Tokens(), True),
        ("::1", auth.Tokens(), True),
        ("0.0.0.0", auth.Tokens(), False),  # noqa: S104 (the case under test)
        ("10.0.0.5", auth.Tokens(), False),
        ("0.0.0.0", auth.Tokens(admin="x" * 16), True),  # noqa: S104
        ("0.0.0.0", auth.Tokens(read="x" * 16), True),  # noqa: S104
    ],
)
def test_no_token_means_loopback_only(host: str, tokens: auth.Tokens, allowed: bool) -> None:
    assert auth.may_bind(host, tokens) is allowed


def test_filter_parses_the_cli_filters_and_the_error_class() -> None:
    run = uuid.uuid4()
    flt = parse_filter(
        {
            "run": str(run),
            "reason": " permanent ",
            "error_class": "timeout",
            "older_than": "30m",
            "newer_than": 7200,
            "limit": "5",
        }
    )
    assert (flt.run_id, flt.reason, flt.error_class) == (run, "permanent", "timeout")
    assert (flt.older_than_s, flt.newer_than_s, flt.limit) == (1800.0, 7200.0, 5)
    assert flt.replay_filters().older_than_s == 1800.0
    assert parse_filter({"run": "", "reason": None}).to_json() == {}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"run": "x"}, "run must be a run id"),
        ({"older_than": "later"}, "older_than: not a duration"),
        ({"older_than": True}, "older_than must be a duration"),
        ({"newer_than": -1}, "must not be negative"),
        ({"limit": 0}, "limit must be a positive integer"),
        ({"limit": 2.5}, "limit must be a positive integer"),
        ({"reason": 5}, "reason must be a short text"),
        ({"dry_run": True}, "unknown filter dry_run"),
    ],
)
def test_bad_filters_say_what_is_wrong(values: dict[str, Any], message: str) -> None:
    with pytest.raises(FilterError, match=message):
        parse_filter(values)


@pytest.mark.parametrize(("value", "expected"), [(None, False), (True, True), ("false", False), ("1", True)])
def test_dry_run(value: Any, expected: bool) -> None:
    assert parse_dry_run(value) is expected


def test_dry_run_refuses_anything_else() -> None:
    with pytest.raises(FilterError):
        parse_dry_run("maybe")


@pytest.mark.parametrize("text", ["STOP", "stop.", " Pare ", "SAIR!", "não quero", "Unsubscribe", "baja"])
def test_opt_out_replies(text: str) -> None:
    assert is_opt_out_reply(text)


@pytest.mark.parametrize(
    "text",
    [None, "", "don't stop", "stop by tomorrow please", "Thanks!", "quero sair mais cedo hoje", "x" * 80],
)
def test_other_replies_are_not_opt_outs(text: str | None) -> None:
    assert not is_opt_out_reply(text)


async def test_one_read_serves_every_subscriber() -> None:
    reads = 0

    async def collect() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        return {"n": reads}

    sampler = Sampler(collect, interval_s=0.05)
    queues = [sampler.subscribe() for _ in range(10)]
    task = asyncio.create_task(sampler.run())
    try:
        firsts = [await asyncio.wait_for(q.get(), timeout=5) for q in queues]
        assert len(set(firsts)) == 1  # the very same snapshot for all ten
        await asyncio.sleep(0.3)
        assert reads <= 0.35 / 0.05 + 2
        for queue in queues:
            sampler.unsubscribe(queue)
        await asyncio.sleep(0.1)
        idle = reads
        await asyncio.sleep(0.3)
        assert reads == idle  # nobody listens: no reads
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_failed_read_is_published_as_an_error_and_retried() -> None:
    async def collect() -> dict[str, Any]:
        raise OSError("database down")

    sampler = Sampler(collect, interval_s=0.05)
    assert '"ok": false' in await sampler.latest()
    assert "database down" in await sampler.latest()
