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

TOKENS = auth.Tokens(admin="admin-secret-1234", read="read-secret-1234")


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


def test_session_cookie_holds_no_token_and_dies_with_rotation() -> None:
    cookie = auth.session_cookie(TOKENS, auth.ADMIN)
    assert "admin-secret" not in cookie
    assert auth.role_of_cookie(TOKENS, cookie) == auth.ADMIN
    rotated = auth.Tokens(admin="another-secret-99", read=TOKENS.read)
    assert auth.role_of_cookie(rotated, cookie) is None
    forged = "admin." + cookie.split(".", 1)[1][:-1] + "0"
    assert auth.role_of_cookie(TOKENS, forged) is None
    assert auth.role_of_cookie(TOKENS, "read." + cookie.split(".", 1)[1]) is None
    assert auth.role_of_cookie(TOKENS, "root.x") is None


def test_csrf_token_is_bound_to_the_session() -> None:
    cookie = auth.session_cookie(TOKENS, auth.ADMIN)
    assert auth.csrf_ok(cookie, auth.csrf_token(cookie))
    assert not auth.csrf_ok(cookie, None)
    assert not auth.csrf_ok(cookie, auth.csrf_token(auth.session_cookie(TOKENS, auth.READ)))


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
