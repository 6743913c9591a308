"""The deployment files stay runnable: every command they start parses, and compose validates.

A typo in a Procfile or compose command (a renamed flag, a missing sub-command) would only
show when an operator deploys; here it fails the build instead. `--help` exits before
touching the database, so these need no PostgreSQL.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cli import campaignq_env

ROOT = Path(__file__).resolve().parents[2]
APP_SERVICES = ("migrate", "producer", "worker", "simulator")


def campaignq_argv() -> list[str]:
    """The installed console script when there is one (what a Procfile runs), else the module."""
    script = Path(sys.executable).parent / "campaignq"
    return [str(script)] if script.exists() else [sys.executable, "-m", "consumer.cli"]


def procfile() -> dict[str, str]:
    entries: dict[str, str] = {}
    for line in (ROOT / "Procfile").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, command = line.split(":", 1)
            entries[name.strip()] = command.strip()
    return entries


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    return document


def run_help(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*campaignq_argv(), *args, "--help"],
        env=campaignq_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_procfile_has_the_three_process_types() -> None:
    assert procfile() == {
        "release": "campaignq migrate",
        "producer": "campaignq produce --every 5s",
        "worker": "campaignq consume",
    }


@pytest.mark.parametrize("process_type", ["release", "producer", "worker"])
def test_procfile_command_help_runs(process_type: str) -> None:
    program, *args = shlex.split(procfile()[process_type])
    assert program == "campaignq"
    result = run_help(args)
    assert result.returncode == 0, result.stderr
    assert "usage: campaignq" in result.stdout


def test_compose_services_and_shape() -> None:
    services = compose()["services"]
    assert {"postgres", *APP_SERVICES} <= set(services)
    assert "pgmq" in services["postgres"]["image"]
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["restart"] == "no"
    assert services["worker"]["deploy"]["replicas"] >= 2
    assert services["simulator"]["profiles"] == ["simulator"]
    for name in ("producer", "worker"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["postgres"]["condition"] == "service_healthy"
        assert services[name]["environment"]["DATABASE_URL"].startswith("postgresql://")


@pytest.mark.parametrize("service", APP_SERVICES)
def test_compose_command_help_runs(service: str) -> None:
    result = run_help(list(compose()["services"][service]["command"]))
    assert result.returncode == 0, result.stderr


def compose_command() -> list[str] | None:
    """`docker compose` (the plugin) when present, else the standalone `docker-compose`."""
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, check=False)
        if probe.returncode == 0:
            return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    return [standalone] if standalone else None


@pytest.mark.skipif(
    compose_command() is None, reason="neither `docker compose` nor `docker-compose` installed"
)
def test_docker_compose_config_validates() -> None:
    command = compose_command()
    assert command is not None
    result = subprocess.run(
        [*command, "-f", str(ROOT / "compose.yaml"), "config", "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_one_metrics_port_across_readme_docs_and_compose() -> None:
    """The port an operator scrapes is written in several places; they must say the same."""
    texts = {
        path: (ROOT / path).read_text(encoding="utf-8")
        for path in ("README.md", "docs/operations.md", "compose.yaml", "Procfile")
    }
    ports = {
        (path, port)
        for path, text in texts.items()
        for port in re.findall(r"--metrics-port\D{1,6}(\d+)", text)
    }
    assert ports, "no --metrics-port example found"
    assert {port for _, port in ports} == {"9108"}, sorted(ports)
