"""A mistake on the command line is one line on stderr and a non-zero exit, never a traceback
(issue 24's papercuts). These stop before any database is opened, so they need none."""

from __future__ import annotations

import pytest

from tests.cli import run_cli


@pytest.mark.parametrize("command", ["stats", "produce", "consume", "replay"])
def test_a_malformed_database_url_is_one_line(command: str) -> None:
    result = run_cli(command, env={"DATABASE_URL": "not-a-url"}, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.endswith("\n"), result.stderr
    assert "DATABASE_URL" in result.stderr and "not a PostgreSQL URL" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("command", "flag"), [("produce", "--every"), ("pregenerate", "--min-ahead")])
def test_a_bad_duration_names_the_accepted_forms_not_an_internal_function(command: str, flag: str) -> None:
    result = run_cli(command, flag, "7x", timeout=60)
    assert result.returncode == 2
    assert "not a duration: '7x'" in result.stderr and "5s" in result.stderr
    assert "parse_duration_s" not in result.stderr


def test_consume_without_provider_keys_refuses_in_one_line() -> None:
    result = run_cli("consume", env={"CAMPAIGNQ_WHATSAPP_API_KEY": "k" * 20}, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "CAMPAIGNQ_AI_API_KEY" in result.stderr and "CAMPAIGNQ_WHATSAPP_API_KEY" not in result.stderr
