"""Run the real `campaignq` CLI as a subprocess (acceptance-style tests)."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path

from consumer.devtools.processes import Child, campaignq_command, child_env, spawn
from tests import pg


def campaignq_env(database_url: str | None = None, **extra: str) -> dict[str, str]:
    """A clean environment for a `campaignq` subprocess, plus the test's own settings."""
    return child_env({"DATABASE_URL": database_url, **extra} if database_url else extra)


def _pooled(args: tuple[str, ...], database_url: str | None) -> tuple[str | None, dict[str, str]]:
    """Every command but migrate goes through the test PgBouncer when `.ci/run` runs one."""
    if database_url is None or not pg.pgbouncer_port() or (args and args[0] == "migrate"):
        return database_url, {}
    return pg.through_pooler(database_url), {"CAMPAIGNQ_DB_POOLER": "transaction"}


def run_cli(
    *args: str, database_url: str | None = None, env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    database_url, pooled = _pooled(args, database_url)
    full_env = campaignq_env(database_url, **pooled, **(env or {}))
    return subprocess.run(
        campaignq_command(*args),
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def spawn_cli(
    *args: str, database_url: str | None = None, env: Mapping[str, str] | None = None
) -> subprocess.Popen[str]:
    database_url, pooled = _pooled(args, database_url)
    full_env = campaignq_env(database_url, **pooled, **(env or {}))
    return subprocess.Popen(
        campaignq_command(*args),
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def spawn_logged(name: str, args: list[str], *, env: Mapping[str, str], log_dir: Path) -> Child:
    """A `campaignq` sub-command in a clean environment plus `env`, output to ``log_dir/NAME.log``."""
    return spawn(name, args, env=campaignq_env(**env), log_dir=log_dir)
