"""Run the real `campaignq` CLI as a subprocess (acceptance-style tests)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping

from consumer.demo import child_env


def campaignq_env(database_url: str | None = None, **extra: str) -> dict[str, str]:
    """A clean environment for a `campaignq` subprocess, plus the test's own settings."""
    return child_env({"DATABASE_URL": database_url, **extra} if database_url else extra)


def run_cli(
    *args: str, database_url: str | None = None, env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    full_env = campaignq_env(database_url, **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "consumer.cli", *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def spawn_cli(
    *args: str, database_url: str | None = None, env: Mapping[str, str] | None = None
) -> subprocess.Popen[str]:
    full_env = campaignq_env(database_url, **(env or {}))
    return subprocess.Popen(
        [sys.executable, "-m", "consumer.cli", *args],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
