"""`campaignq serve` refuses a non-loopback bind without a token, before touching any database."""

from __future__ import annotations

from tests.cli import run_cli

EVERY_INTERFACE = "0.0.0.0"  # noqa: S104 (the bind under test)
UNREACHABLE = "postgresql://nobody@127.0.0.1:1/none"


def test_serve_refuses_a_public_bind_without_a_token() -> None:
    result = run_cli("serve", "--host", EVERY_INTERFACE, "--port", "0", database_url=UNREACHABLE)
    assert result.returncode == 2
    assert f"refusing to serve the console on {EVERY_INTERFACE}" in result.stderr
    assert "CAMPAIGNQ_CONSOLE_TOKEN" in result.stderr


def test_serve_is_listed_in_the_help() -> None:
    result = run_cli("serve", "--help")
    assert result.returncode == 0
    assert "--host" in result.stdout and "--port" in result.stdout
