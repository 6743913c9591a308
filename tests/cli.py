"""Run the real `campaignq` CLI as a subprocess (acceptance-style tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping


def campaignq_env(database_url: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMPAIGNQ_") and k != "DATABASE_URL"}
    if database_url:
        env["DATABASE_URL"] = database_url
    env.update(extra)
    return env


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
