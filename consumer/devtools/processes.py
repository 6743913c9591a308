"""Child `campaignq` processes for the demo, the benchmarks and the tests — written once.

Everything that runs the real thing as separate processes (the demo, `bench/`, the chaos,
load and console tests) starts, watches and stops them through this module:

* `campaignq_command` — the same interpreter and package as this process, whether or not
  `campaignq` is on PATH;
* `child_env` / `simulator_env` — a clean environment (nothing of the user's campaignq
  configuration or real keys leaks in), and the one that points a consumer at the simulator;
* `spawn` — a sub-command whose output goes to a log file (a pipe nobody reads fills up
  after 64 KiB and freezes the process);
* `wait_for_line` — the one readiness signal: a line of the child's stdout
  (`CAMPAIGNQ_WHATSAPP_BASE_URL=…` for the simulator, `campaignq console: …` for serve);
* `Child.stop` / `stop_all` — SIGTERM, wait, SIGKILL what is left;
* `Simulator` — `campaignq simulate --port 0` driven over its `/_sim/*` endpoints.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..errors import CampaignqError

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
SIMULATOR_READY = r"CAMPAIGNQ_WHATSAPP_BASE_URL=(\S+)"
# The keys the simulator accepts by default (`campaignq simulate` without --ai-key/--whatsapp-key).
SIMULATOR_AI_KEY = "sk-demo-simulator-key"
SIMULATOR_WHATSAPP_KEY = "demo-whatsapp-key"


class ChildError(CampaignqError):
    """A child process did not start, or did not stop; the message names its log."""


def campaignq_command(*args: str) -> list[str]:
    """The same interpreter and package as this process, whether or not `campaignq` is on PATH."""
    return [sys.executable, "-m", "consumer.cli", *args]


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The user's environment minus anything that configures campaignq or holds a real key."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("CAMPAIGNQ_") and key not in ("DATABASE_URL", "OPENROUTER_API_KEY")
    }
    env.update(extra)
    return env


def simulator_env(
    base_url: str,
    *,
    database_url: str | None = None,
    ai_key: str = SIMULATOR_AI_KEY,
    whatsapp_key: str = SIMULATOR_WHATSAPP_KEY,
    settings: Mapping[str, object] | None = None,
) -> dict[str, str]:
    """The `CAMPAIGNQ_*` variables that point a consumer at a simulator listening on `base_url`.

    `settings` are further Settings fields by name (``{"concurrency": 4}`` becomes
    ``CAMPAIGNQ_CONCURRENCY=4``). Not cleaned: pass the result through `child_env`.
    """
    env = {
        "CAMPAIGNQ_AI_BASE_URL": f"{base_url}/v1",
        "CAMPAIGNQ_WHATSAPP_BASE_URL": base_url,
        "CAMPAIGNQ_AI_API_KEY": ai_key,
        "CAMPAIGNQ_WHATSAPP_API_KEY": whatsapp_key,
    }
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    env.update({f"CAMPAIGNQ_{name.upper()}": str(value) for name, value in (settings or {}).items()})
    return env


@dataclass
class Child:
    """A `campaignq` sub-process, its output going to `log_path`."""

    name: str
    process: subprocess.Popen[Any]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log().splitlines()[-lines:])
        return ""

    def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM and wait; SIGKILL if it does not exit in time, then raise `ChildError`."""
        if self.alive():
            self.process.terminate()
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise ChildError(f"{self.name} ignored SIGTERM for {timeout_s} s") from None

    def kill(self) -> None:
        if self.alive():
            self.process.kill()
        self.process.wait()


def spawn(
    name: str, args: Sequence[str], *, env: Mapping[str, str], log_dir: Path, stdout_pipe: bool = False
) -> Child:
    """`campaignq ARGS` with `env` as its whole environment, output (or, with `stdout_pipe`,
    stderr only) to ``log_dir/NAME.log``."""
    log_path = log_dir / f"{name}.log"
    with log_path.open("w", encoding="utf-8") as log:
        process = subprocess.Popen(  # noqa: S603 (our own CLI, arguments we built)
            campaignq_command(*args),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else log,
            stderr=log if stdout_pipe else subprocess.STDOUT,
            text=True,
        )
    return Child(name, process, log_path)


def stop_all(children: Iterable[Child], timeout_s: float = STOP_TIMEOUT_S) -> dict[str, int | None]:
    """SIGTERM all (consumers drain), wait, then SIGKILL what is left. Safe to call twice."""
    children = list(children)
    for child in children:
        if child.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    codes: dict[str, int | None] = {}
    for child in children:
        try:
            codes[child.name] = child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.process.kill()
            codes[child.name] = child.process.wait()
        if child.process.stdout is not None:
            child.process.stdout.close()
    return codes


def lines_until(stream: IO[Any], *, deadline: float) -> Iterator[str]:
    """Lines from a child's stdout as they arrive, until `deadline` or EOF.

    Reads the file descriptor itself: a text wrapper would buffer several lines on the first
    read, and the selector would then wait for bytes that have already arrived.
    """
    fd = stream.fileno()
    pending = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while (remaining := deadline - time.monotonic()) > 0:
            if not selector.select(timeout=remaining):
                return
            chunk = os.read(fd, 65536)
            if not chunk:
                return  # the process exited
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line.decode("utf-8", "replace")


def wait_for_line(child: Child, ready: str, *, timeout_s: float = READY_TIMEOUT_S) -> str:
    """The first group (or the whole match) of the first stdout line matching `ready`.

    The child must have been spawned with ``stdout_pipe=True``; raises `ChildError` with the
    log's tail when it exits or stays silent for `timeout_s`.
    """
    if child.process.stdout is None:  # pragma: no cover - spawn(stdout_pipe=True) always sets it
        raise ChildError(f"no pipe to {child.name}")
    for line in lines_until(child.process.stdout, deadline=time.monotonic() + timeout_s):
        match = re.search(ready, line.strip())
        if match:
            return match.group(1) if match.groups() else match.group(0)
    raise ChildError(f"{child.name} did not start; see {child.log_path}:\n{child.log_tail()}")


class Simulator:
    """`campaignq simulate --port 0 ARGS` in its own process, driven over HTTP.

    Use as a context manager, or call `stop()`; `base_url` is known once the constructor
    returns (the simulator printed it).
    """

    def __init__(self, *, log_dir: Path, args: Sequence[str] = (), name: str = "simulator") -> None:
        self.child = spawn(
            name,
            ["simulate", "--port", "0", *args],
            env=child_env({}),
            log_dir=log_dir,
            stdout_pipe=True,
        )
        try:
            self.base_url = wait_for_line(self.child, SIMULATOR_READY)
        except BaseException:  # an interrupt during start-up stops it too
            self.stop()
            raise

    @property
    def process(self) -> subprocess.Popen[Any]:
        return self.child.process

    @property
    def ai_base_url(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def whatsapp_base_url(self) -> str:
        return self.base_url

    def request(self, path: str, body: Mapping[str, Any] | None = None, *, timeout_s: float = 30) -> Any:
        """GET `path`, or POST `body` as JSON; the decoded answer (an HTTP error raises)."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(  # noqa: S310 (our loopback simulator, http only)
            f"{self.base_url}{path}",
            data=data,
            headers={"Content-Type": "application/json"},
            method="POST" if data is not None else "GET",
        )
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            return json.loads(response.read())

    def set_faults(self, **changes: Any) -> dict[str, Any]:
        return dict(self.request("/_sim/faults", changes))

    def fail_next(self, target: str, **kwargs: Any) -> None:
        self.request(f"/_sim/fail-next/{target}", kwargs)

    def reset(self, *, keep_faults: bool = True) -> None:
        self.request("/_sim/reset", {"keep_faults": keep_faults})

    def sends(self) -> list[dict[str, Any]]:
        return list(self.request("/_sim/sends")["sends"])

    def stats(self) -> dict[str, Any]:
        return dict(self.request("/_sim/stats"))

    def stop(self, timeout_s: float = 20) -> dict[str, int | None]:
        return stop_all([self.child], timeout_s)

    def __enter__(self) -> Simulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
