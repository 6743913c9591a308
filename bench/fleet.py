"""The moving parts of the consumer benchmarks: simulators, consumer processes, seeded runs.

Every benchmark of the consumer runs the real thing — `campaignq simulate` and
`campaignq consume` as separate processes over loopback HTTP, against a real PostgreSQL —
because what we claim is about that deployment, not about a function in isolation. This
module starts and stops them, seeds runs, queues them all at once, waits, and reads the
numbers back from the rows (the database clock times every outcome, so no process's clock
or start-up time leaks into a rate).

Throughput is measured from the moment the producer queued a run (``queued_at``) to each
message's ``finished_at``. "steady" is the rate while every slot is busy (between the c-th
and the (N-c)-th finish, see `steady_rate`): it excludes the first wave (everything starts
at once) and the tail (the last wave runs with free slots). Latency per message is the consumer's own
``campaignq_message_seconds`` histogram (sum / count), scraped from its metrics port:
everything the message costs in the process, database round trips included.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench import common
from consumer.devtools.processes import Child, Simulator, child_env, simulator_env, spawn, stop_all
from consumer.devtools.seeding import Seeder

AI_KEY = "sk-bench-simulator-key"
WHATSAPP_KEY = "bench-whatsapp-key"
LOG_DIR = common.OUT_DIR / "logs"
READY_TIMEOUT_S = 30.0
# Benchmark consumers: production defaults except what would measure something else.
# Typing delays pace bubbles for people, not machines: off on every side of a comparison.
BASE_CONSUMER_ENV: dict[str, str] = {
    "CAMPAIGNQ_TYPING_DELAY_CAP_S": "0",
    "CAMPAIGNQ_AI_REQUESTS_PER_MINUTE": "100000000",  # no limit unless a benchmark sets one
    "CAMPAIGNQ_DRAIN_TIMEOUT_S": "5",
    "CAMPAIGNQ_LOG_LEVEL": "INFO",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- the simulator ------------------------------------------------------------------------


class SimulatorProcess(Simulator):
    """`campaignq simulate` on a free port; latency changes through its control endpoint."""

    def __init__(self, *, ai_latency_s: float, send_latency_s: float, jitter: float = 0.1, name: str = "sim"):
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        super().__init__(log_dir=LOG_DIR, args=["--seed", "1"], name=name)
        self.name = name
        self.jitter = jitter
        self.log_path = self.child.log_path
        self.configure(ai_latency_s=ai_latency_s, send_latency_s=send_latency_s)

    def configure(self, *, ai_latency_s: float, send_latency_s: float) -> None:
        self.set_faults(
            ai_latency_s=ai_latency_s,
            ai_latency_jitter_s=ai_latency_s * self.jitter,
            send_latency_s=send_latency_s,
        )

    def cpu_s(self) -> float:
        return cpu_seconds(self.process.pid)


# --- consumers --------------------------------------------------------------------------------


@dataclass
class ConsumerProcess(Child):
    metrics_port: int = 0

    def metrics(self) -> dict[str, float]:
        """The process's Prometheus counters, flattened: ``name{labels}`` → value."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as response:
            text = response.read().decode()
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    values[key] = float(value)
        return values

    def mean_message_s(self) -> tuple[float, int]:
        """(mean seconds per message, messages) from ``campaignq_message_seconds``."""
        values = self.metrics()
        total = values.get("campaignq_message_seconds_sum", 0.0)
        count = values.get("campaignq_message_seconds_count", 0.0)
        return (total / count if count else 0.0, int(count))


def consumer_env(
    database_url: str, ai_base_url: str, whatsapp_base_url: str, **settings: Any
) -> dict[str, str]:
    env = simulator_env(
        whatsapp_base_url, database_url=database_url, ai_key=AI_KEY, whatsapp_key=WHATSAPP_KEY
    )
    env.update(BASE_CONSUMER_ENV)
    env["CAMPAIGNQ_AI_BASE_URL"] = ai_base_url  # the AI may be served by another simulator
    env.update({f"CAMPAIGNQ_{key.upper()}": str(value) for key, value in settings.items()})
    return child_env(env)


def start_consumers(
    env: Mapping[str, str], count: int, *, label: str, tree: Path | None = None
) -> list[ConsumerProcess]:
    """`count` processes of `campaignq consume`, each with a metrics port; returns once all are reading.

    With `tree` (a source tree such as `baseline_tree`'s), the consumers import *that* tree's
    `consumer` package instead of this checkout's (see `spawn_in_tree`).
    """
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    consumers: list[ConsumerProcess] = []
    for index in range(count):
        port = free_port()
        name = f"{label}-consumer-{index + 1}"
        args = ["consume", "--metrics-port", str(port)]
        child_env_ = {**env, "CAMPAIGNQ_LOG_JSON": "false"}
        if tree is None:
            child = spawn(name, args, env=child_env_, log_dir=LOG_DIR)
        else:
            child = spawn_in_tree(name, ["-m", "consumer.cli", *args], env=child_env_, tree=tree)
        consumers.append(ConsumerProcess(child.name, child.process, child.log_path, port))
    deadline = time.monotonic() + READY_TIMEOUT_S
    for consumer in consumers:
        # The metrics endpoint answers once the pool is open and the worker is being started
        # (whatever the log level): close enough to "reading" for a run queued afterwards.
        while not _answers(consumer.metrics_port):
            if consumer.process.poll() is not None or time.monotonic() > deadline:
                stop_all(consumers)
                raise RuntimeError(f"{consumer.name} did not start; see {consumer.log_path}")
            time.sleep(0.05)
    time.sleep(0.2)  # the LISTEN connection: the queueing NOTIFY must find it subscribed
    return consumers


def spawn_in_tree(name: str, args: Sequence[str], *, env: Mapping[str, str], tree: Path | None) -> Child:
    """``python ARGS`` (this interpreter) importing packages from `tree` first, output to a log.

    `python -m` puts the working directory first on sys.path, ahead of PYTHONPATH: so the
    child runs *in* `tree` (or, without one, in this checkout) with ``PYTHONPATH=tree``, and
    this checkout's editable install (a site-packages .pth, after PYTHONPATH) loses.
    """
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"{name}.log"
    cwd = tree or REPO_ROOT
    full_env = dict(env)
    if tree is not None:
        full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tree), env.get("PYTHONPATH", "")) if p)
    with log_path.open("w", encoding="utf-8") as log:
        process = subprocess.Popen(
            [sys.executable, *args],
            env=full_env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
    return Child(name, process, log_path)


# --- the baseline tree ("before") -------------------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parent.parent
BASELINE_REF_ENV = "BENCH_BASELINE_REF"
# The tree before issue 15 (consumer CPU per message): "before" in before/after comparisons.
BASELINE_REF = "bcfb24a"


def baseline_ref() -> str:
    return os.environ.get(BASELINE_REF_ENV) or BASELINE_REF


@functools.cache
def baseline_tree(ref: str | None = None) -> Path:
    """`ref`'s files (``git archive REF | tar -x``) in a temporary folder removed at exit.

    Run with `spawn_in_tree` / ``start_consumers(tree=…)``: those processes import the old
    `consumer` package against the database this checkout migrated (migrations only add, and
    old SQL functions stay). Raises RuntimeError when git or the ref is not there, and checks
    that a child really imports the old tree.
    """
    import atexit

    ref = ref or baseline_ref()
    git = shutil.which("git")
    if git is None:
        raise RuntimeError(
            f"git is not installed: cannot extract the baseline tree {ref} (set {BASELINE_REF_ENV})"
        )
    folder = Path(tempfile.mkdtemp(prefix=f"campaignq-baseline-{ref[:12]}-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    archive = subprocess.run(
        [git, "-C", str(REPO_ROOT), "archive", "--format=tar", ref], capture_output=True, check=False
    )
    if archive.returncode != 0:
        raise RuntimeError(
            f"git archive {ref} failed in {REPO_ROOT} ({archive.stderr.decode(errors='replace').strip()}); "
            f"is this a git checkout with that commit? (set {BASELINE_REF_ENV})"
        )
    subprocess.run(
        ["tar", "-x", "-C", str(folder)],
        input=archive.stdout,
        check=True,
    )
    probe = subprocess.run(
        [sys.executable, "-c", "import consumer; print(consumer.__file__)"],
        env={**os.environ, "PYTHONPATH": str(folder)},
        cwd=folder,
        capture_output=True,
        text=True,
        check=True,
    )
    if not Path(probe.stdout.strip()).resolve().is_relative_to(folder.resolve()):
        raise RuntimeError(f"a child in {folder} imports {probe.stdout.strip()}, not the baseline tree")
    return folder


def baseline_commit(ref: str | None = None) -> str | None:
    """The full commit id `ref` names (recorded beside the results), or None without git."""
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        return subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", ref or baseline_ref()],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    return None


# --- governance on (issue 15: the measured setup keeps its checks) ----------------------------

SHARED_AI_BUDGET_RPM = 100_000_000  # a shared budget row that never binds
WORKSPACE_WEIGHT = 3


def governance_on(url: str, run_ids: Sequence[uuid.UUID]) -> dict[str, Any]:
    """Shared AI budget (`campaignq limits set ai N`, as its query), a workspace weight, and an
    open send window (now ± 6 h, UTC, so it wraps midnight half the day) on the runs' configs."""
    from consumer.sql import query

    now = dt.datetime.now(dt.UTC)
    start = (now - dt.timedelta(hours=6)).time().replace(microsecond=0)
    end = (now + dt.timedelta(hours=6)).time().replace(microsecond=0)
    with common.connect(url) as conn, conn.transaction():
        conn.execute(query("limits_set"), {"name": "ai", "rpm": SHARED_AI_BUDGET_RPM})
        workspaces = conn.execute(
            "UPDATE campaign_configs c SET send_window_start = %s, send_window_end = %s, timezone = 'UTC' "
            "  FROM campaign_runs r WHERE r.config_id = c.id AND r.id = ANY(%s) RETURNING c.workspace_id",
            (start, end, list(run_ids)),
        ).fetchall()
        for (workspace_id,) in set(workspaces):
            conn.execute(query("weights_set"), {"workspace_id": workspace_id, "weight": WORKSPACE_WEIGHT})
    return {
        "shared_ai_budget_rpm": SHARED_AI_BUDGET_RPM,
        "workspace_weight": WORKSPACE_WEIGHT,
        "send_window_utc": f"{start}-{end}",
        "producer": "just in time at 0008's defaults (horizon 15 s, min depth 500), ticking every "
        f"{PRODUCER_TICK_S:g} s",
    }


PRODUCER_TICK_S = 0.25


class ProducerThread:
    """The producer's loop (`enqueue_due_campaign_messages`, just in time at the database's
    defaults) in a thread of the benchmark: its work is PostgreSQL's, counted there."""

    def __init__(self, url: str, *, tick_s: float = PRODUCER_TICK_S, batch: int = 5000) -> None:
        self._url = url
        self._tick_s = tick_s
        self._batch = batch
        self._stop = threading.Event()
        self.queued = 0
        self.calls = 0
        self._thread = threading.Thread(target=self._run, name="producer", daemon=True)

    def _run(self) -> None:
        from consumer.runtime.producer import enqueue_due

        with common.connect(self._url) as conn:
            while not self._stop.is_set():
                queued = enqueue_due(conn, self._batch)
                self.calls += 1
                self.queued += queued
                if queued < self._batch:
                    self._stop.wait(self._tick_s)

    def __enter__(self) -> ProducerThread:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --- what the database did --------------------------------------------------------------------


def enable_function_tracking(url: str) -> None:
    """``ALTER DATABASE … SET track_functions = 'all'``: new sessions count every call of a
    PL/pgSQL or SQL function (top level and nested) in pg_stat_user_functions."""
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict

    dbname = str(conninfo_to_dict(url).get("dbname"))
    with contextlib.suppress(Exception), common.connect(url) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} SET track_functions = 'all'").format(sql.Identifier(dbname)))


@dataclass
class DbCounters:
    transactions: int
    function_calls: dict[str, int]
    statements: int | None  # pg_stat_statements calls, when that extension is installed

    def minus(self, before: DbCounters) -> DbCounters:
        return DbCounters(
            transactions=self.transactions - before.transactions,
            function_calls={
                k: v - before.function_calls.get(k, 0)
                for k, v in self.function_calls.items()
                if v - before.function_calls.get(k, 0)
            },
            statements=None
            if self.statements is None or before.statements is None
            else self.statements - before.statements,
        )


def db_counters(url: str) -> DbCounters:
    """Committed + rolled-back transactions of this database, its function calls and (when
    available) pg_stat_statements' call count. Read in a fresh snapshot; a backend flushes its
    counters at most once a second and at exit, so read after the measured processes stopped."""
    with common.connect(url) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
        functions = {
            f"{schema}.{name}": int(calls)
            for schema, name, calls in conn.execute(
                "SELECT schemaname, funcname, sum(calls) FROM pg_stat_user_functions GROUP BY 1, 2"
            ).fetchall()
        }
        statements: int | None = None
        with contextlib.suppress(Exception):
            found = conn.execute(
                "SELECT sum(calls) FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
                "WHERE d.datname = current_database()"
            ).fetchone()
            statements = int(found[0]) if found and found[0] is not None else None
    return DbCounters(int(row[0]) if row else 0, functions, statements)


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
            return True
    except OSError:
        return False


def stop_processes(children: Sequence[Child], timeout_s: float = 20.0) -> list[int | None]:
    """Stop benchmark processes (SIGTERM, then SIGKILL after `timeout_s`); their exit codes."""
    return list(stop_all(children, timeout_s).values())


def cpu_seconds(pid: int) -> float:
    """user + sys of one process (children excluded), from /proc through psutil."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def postgres_pids(url: str) -> list[int]:
    """The postmaster behind `url` and all its processes (backends, checkpointer, WAL writer…).

    Found from our own backend's parent, so other PostgreSQL servers on the machine (other
    people's tests) are never counted. Empty when the server is not on this machine.
    """
    with contextlib.suppress(Exception), common.connect(url) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        postmaster = psutil.Process(int(row[0]) if row else 0).parent()
        if postmaster is not None:
            return [postmaster.pid, *(child.pid for child in postmaster.children())]
    return []


def postgres_cpu_s(url: str) -> float:
    """user + sys of the benchmark's PostgreSQL server, all its processes together."""
    total = 0.0
    for pid in postgres_pids(url):
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += float(times.user + times.system)
    return total


def box_busy_cpu_s() -> float:
    """CPU seconds the whole machine spent not idle (all processes, all cores), from /proc/stat."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


class RssSampler:
    """Peak and sampled resident memory of some processes, every `interval_s`, in a thread."""

    def __init__(self, pids: Sequence[int], interval_s: float = 0.25) -> None:
        self._procs = [psutil.Process(pid) for pid in pids]
        self._interval_s = interval_s
        self._stop = threading.Event()
        self.samples: list[tuple[float, int]] = []  # (monotonic, total rss bytes)
        self.peak = 0
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for proc in self._procs:
                with contextlib.suppress(psutil.Error):
                    total += int(proc.memory_info().rss)
            self.samples.append((time.monotonic(), total))
            self.peak = max(self.peak, total)
            self._stop.wait(self._interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class WaitSampler:
    """What the database's client backends are doing, sampled every `interval_s` in a thread.

    ``pg_stat_activity`` per sample: active backends by wait event ("cpu" when none), so a
    report can say "on average 2 backends were waiting for a row lock" instead of guessing.
    """

    def __init__(self, url: str, interval_s: float = 0.1) -> None:
        self._url = url
        self._interval_s = interval_s
        self._stop = threading.Event()
        self.samples = 0
        self.active: Counter[str] = Counter()
        self._thread = threading.Thread(target=self._run, name="wait-sampler", daemon=True)

    def _run(self) -> None:
        try:
            conn = common.connect(self._url)
        except Exception:  # no free connection slot: report no samples rather than die loudly
            return
        with conn:
            while not self._stop.is_set():
                rows = conn.execute(
                    "SELECT coalesce(wait_event_type || ':' || wait_event, 'cpu'), "
                    "       split_part(split_part(query, '(', 1), ' ', 2) "
                    "  FROM pg_stat_activity "
                    " WHERE datname = current_database() AND pid <> pg_backend_pid() "
                    "   AND backend_type = 'client backend' AND state = 'active'"
                ).fetchall()
                self.samples += 1
                for wait, statement in rows:
                    self.active[f"{wait} in {statement or '?'}"] += 1
                self._stop.wait(self._interval_s)

    def averages(self, top: int = 8) -> list[tuple[str, float]]:
        return [(key, n / self.samples) for key, n in self.active.most_common(top)] if self.samples else []

    def mean_waiting_on_locks(self) -> float:
        locks = sum(n for key, n in self.active.items() if key.startswith("Lock:"))
        return locks / self.samples if self.samples else 0.0

    def __enter__(self) -> WaitSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --- data -------------------------------------------------------------------------------------


@dataclass
class SeededRun:
    run_ids: list[uuid.UUID]
    messages: int
    instance: str


def seed_run(url: str, messages: int, *, split: bool = True, runs: int = 1) -> SeededRun:
    """One workspace / inbox / config and `runs` running runs sharing `messages` leads due now.

    One run is the worst case for the database (every outcome updates the same run row);
    a real box usually serves several campaigns at once.
    """
    workspace_id = uuid.uuid4()
    instance = f"bench-{workspace_id.hex[:8]}"
    with common.connect(url) as conn, conn.transaction():
        seed = Seeder(conn)
        inbox_id = seed.inbox(workspace_id, instance, name="bench")
        config_id = seed.config(
            workspace_id,
            inbox_id,
            split=split,
            max_parts=3,
            model="openai/gpt-4o-mini",
            prompt="You write short, friendly WhatsApp messages.",
            name="bench",
        )
        run_ids = [
            seed.run(config_id, leads_total=messages // runs + (1 if index < messages % runs else 0))
            for index in range(runs)
        ]
        lead_ids = seed.leads(
            workspace_id,
            messages,
            phones=[f"+5511{900000000 + g}" for g in range(1, messages + 1)],
            custom_fields={"city": "São Paulo", "plan": "plus"},
        )
        for index, run_id in enumerate(run_ids):
            seed.messages(run_id, lead_ids[index::runs])
    return SeededRun(run_ids, messages, instance)


def enqueue_all(url: str) -> int:
    """Queue every due message at once (the producer with an unlimited batch)."""
    from consumer.runtime.producer import enqueue_due

    with common.connect(url) as conn:
        # Just-in-time queueing (fair share, 0008) off: these benchmarks measure consumers
        # against a full queue, as before.
        conn.execute("SET campaignq.queue_horizon_s = 0")
        total = 0
        while queued := enqueue_due(conn, 100_000):
            total += queued
    return total


def enqueue_interleaved(url: str) -> int:
    """Queue every due message with the runs interleaved (run 1, run 2, …, run 1, …).

    `enqueue_due_campaign_messages` queues run by run (the first running run fills the
    batch), so several runs queued at once are still processed one after another. To
    measure a box serving several campaigns at the same moment, this does the producer's
    work (rows → queued, one PGMQ message each, one NOTIFY) in interleaved order instead.
    """
    with common.connect(url) as conn, conn.transaction():
        row = conn.execute(
            """WITH marked AS (
                   UPDATE campaign_messages m SET status = 'queued', queued_at = now()
                    WHERE m.status = 'pending' AND m.scheduled_at <= now()
                      AND EXISTS (SELECT 1 FROM campaign_runs r
                                   WHERE r.id = m.run_id AND r.status = 'running')
                   RETURNING m.id, m.run_id, m.lead_id
               ), ordered AS (
                   SELECT jsonb_build_object('v', 1, 'campaign_message_id', id, 'run_id', run_id,
                                             'lead_id', lead_id) AS message,
                          row_number() OVER (PARTITION BY run_id ORDER BY id) AS rn, run_id
                     FROM marked
               )
               SELECT count(*) FROM pgmq.send_batch('campaign_messages',
                   (SELECT array_agg(message ORDER BY rn, run_id) FROM ordered))"""
        ).fetchone()
        conn.execute("SELECT pg_notify('pgmq.q_campaign_messages.INSERT', NULL)")
    return int(row[0]) if row else 0


def wait_terminal(
    url: str,
    run_ids: Sequence[uuid.UUID],
    total: int,
    *,
    timeout_s: float,
    watch: Sequence[Child] = (),
    on_poll: Any = None,
) -> int:
    deadline = time.monotonic() + timeout_s
    with common.connect(url) as conn:
        while True:
            row = conn.execute(
                "SELECT count(*) FROM campaign_messages WHERE run_id = ANY(%s) "
                "AND status IN ('sent', 'failed', 'skipped')",
                (list(run_ids),),
            ).fetchone()
            done = int(row[0]) if row else 0
            if on_poll is not None:
                on_poll(done)
            if done >= total:
                return done
            for consumer in watch:
                if consumer.process.poll() is not None:
                    raise RuntimeError(f"{consumer.name} exited early; see {consumer.log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out: {done}/{total} messages finished")
            time.sleep(0.1)


@dataclass
class RunTiming:
    messages: int
    sent: int
    failed: int
    total_s: float  # queued_at → last finished_at
    steady_rate: float  # messages/s while all slots are busy (see steady_rate)
    finish_offsets_s: list[float] = field(default_factory=list)  # each message, from queued_at
    ai_ms: float = 0.0
    split_ms: float = 0.0
    send_ms: float = 0.0
    parts: float = 0.0

    @property
    def rate(self) -> float:
        return self.messages / self.total_s if self.total_s else 0.0


def run_timing(url: str, run_ids: Sequence[uuid.UUID], concurrency: int) -> RunTiming:
    with common.connect(url) as conn:
        rows = conn.execute(
            """SELECT extract(epoch FROM m.finished_at - q.t0)::double precision, m.status
                 FROM campaign_messages m,
                      (SELECT min(queued_at) AS t0 FROM campaign_messages WHERE run_id = ANY(%(runs)s)) q
                WHERE m.run_id = ANY(%(runs)s) AND m.finished_at IS NOT NULL
                ORDER BY 1""",
            {"runs": list(run_ids)},
        ).fetchall()
        stages = conn.execute(
            """SELECT avg(ai_ms), avg(split_ms), avg(send_ms), avg(jsonb_array_length(parts))
                 FROM campaign_messages WHERE run_id = ANY(%s) AND status = 'sent'""",
            (list(run_ids),),
        ).fetchone()
    offsets = [float(r[0]) for r in rows]
    sent = sum(1 for r in rows if r[1] == "sent")
    failed = sum(1 for r in rows if r[1] == "failed")
    return RunTiming(
        messages=len(offsets),
        sent=sent,
        failed=failed,
        total_s=offsets[-1] if offsets else 0.0,
        steady_rate=steady_rate(offsets, concurrency),
        finish_offsets_s=offsets,
        ai_ms=float(stages[0] or 0) if stages else 0.0,
        split_ms=float(stages[1] or 0) if stages else 0.0,
        send_ms=float(stages[2] or 0) if stages else 0.0,
        parts=float(stages[3] or 0) if stages else 0.0,
    )


def steady_rate(offsets: Sequence[float], concurrency: int) -> float:
    """Messages/s while every slot is busy: between the c-th and the (N-c)-th finish.

    All messages start together, so finishes come in waves of ``c``; cutting at wave
    boundaries (rather than at percentiles) keeps the quantisation out of the rate. With
    fewer than 3 waves there is no steady state to speak of: the whole run is returned.
    """
    n = len(offsets)
    if n < 3 * concurrency or n < 10:
        return n / offsets[-1] if offsets and offsets[-1] > 0 else 0.0
    first, last = concurrency - 1, n - concurrency - 1
    span = offsets[last] - offsets[first]
    return (last - first) / span if span > 0 else 0.0


def window_rate(offsets: Sequence[float], start_s: float, end_s: float) -> float:
    inside = sum(1 for t in offsets if start_s <= t < end_s)
    return inside / (end_s - start_s) if end_s > start_s else 0.0


@contextlib.contextmanager
def simulator(*, ai_latency_s: float, send_latency_s: float, name: str = "sim") -> Iterator[SimulatorProcess]:
    sim = SimulatorProcess(ai_latency_s=ai_latency_s, send_latency_s=send_latency_s, name=name)
    try:
        yield sim
    finally:
        sim.stop()


@dataclass
class Measurement:
    """One consumer configuration processing one seeded run, with everything we read back."""

    label: str
    processes: int
    concurrency: int
    timing: RunTiming
    mean_latency_s: float
    consumer_cpu_s: float
    postgres_cpu_s: float
    simulator_cpu_s: float
    peak_rss_mb: float
    wall_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def little_bound(self) -> float:
        """Concurrency ÷ measured latency: the most any process set can do at this latency."""
        total = self.processes * self.concurrency
        return total / self.mean_latency_s if self.mean_latency_s else 0.0

    def row(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "processes": self.processes,
            "concurrency": self.concurrency,
            "messages": self.timing.messages,
            "msg/s (whole run)": self.timing.rate,
            "msg/s (steady)": self.timing.steady_rate,
            "latency s": self.mean_latency_s,
            "Little bound msg/s": self.little_bound,
            "% of bound": 100 * self.timing.steady_rate / self.little_bound if self.little_bound else None,
            "CPU ms/msg": 1000 * self.consumer_cpu_s / self.timing.messages if self.timing.messages else None,
            "peak RSS MB": self.peak_rss_mb,
        }


def measure(
    url: str,
    sims: Sequence[SimulatorProcess],
    *,
    label: str,
    messages: int,
    processes: int = 1,
    concurrency: int = 64,
    split: bool = True,
    settings: Mapping[str, Any] | None = None,
    timeout_s: float = 900.0,
    during: Any = None,
    seeded: SeededRun | None = None,
) -> Measurement:
    """Seed a run, start the consumers (idle, connected), queue the run, wait until done.

    ``sims[0]`` serves the AI, ``sims[-1]`` the WhatsApp gateway (one simulator or two).
    CPU is counted from just before queueing to the last outcome, for the consumers, the
    simulators and PostgreSQL separately.
    """
    if seeded is None:
        seeded = seed_run(url, messages, split=split)
    for sim in sims:
        sim.reset()
    env = consumer_env(
        url,
        sims[0].ai_base_url,
        sims[-1].base_url,
        concurrency=concurrency,
        batch_size=min(100, concurrency),
        db_pool_max_size=pool_size(processes, concurrency),
        **(settings or {}),
    )
    consumers = start_consumers(env, processes, label=label.replace(" ", "_").replace("/", "-"))
    try:
        with RssSampler([c.pid for c in consumers]) as rss:
            cpu0 = sum(cpu_seconds(c.pid) for c in consumers)
            sim0 = sum(s.cpu_s() for s in sims)
            pg0 = postgres_cpu_s(url)
            started = time.monotonic()
            enqueue_all(url)
            if during is not None:
                during(consumers)
            progress: list[tuple[float, int]] = []
            wait_terminal(
                url,
                seeded.run_ids,
                messages,
                timeout_s=timeout_s,
                watch=consumers,
                on_poll=lambda done: progress.append((time.monotonic(), done)),
            )
            wall_s = time.monotonic() - started
            cpu1 = sum(cpu_seconds(c.pid) for c in consumers)
            sim1 = sum(s.cpu_s() for s in sims)
            pg1 = postgres_cpu_s(url)
        latencies = [c.mean_message_s() for c in consumers]
    finally:
        stop_processes(consumers)
    counted = sum(n for _, n in latencies)
    mean_latency = sum(m * n for m, n in latencies) / counted if counted else 0.0
    return Measurement(
        label=label,
        processes=processes,
        concurrency=concurrency,
        timing=run_timing(url, seeded.run_ids, processes * concurrency),
        mean_latency_s=mean_latency,
        consumer_cpu_s=cpu1 - cpu0,
        postgres_cpu_s=pg1 - pg0,
        simulator_cpu_s=sim1 - sim0,
        peak_rss_mb=rss.peak / 2**20,
        wall_s=wall_s,
        extra={
            "rss_samples": [(t - started, b) for t, b in rss.samples],
            "progress": [(t - started, done) for t, done in progress],
            "duplicates": sum(s.stats()["send"]["duplicates"] for s in sims),
        },
    )


def other_load() -> dict[str, float]:
    """The box's load average when a benchmark starts: other work on the 2 cores moves our numbers."""
    one, five, fifteen = os.getloadavg()
    return {"load_1m": round(one, 2), "load_5m": round(five, 2), "load_15m": round(fifteen, 2)}


def pool_size(processes: int, concurrency: int) -> int:
    """Connections per consumer: enough for its concurrency, all together under the server's
    100 connections (embedded default) with room for listeners and the benchmark itself."""
    return max(4, min(concurrency // 16, 16, 80 // processes))


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def env_floats(name: str, default: Sequence[float]) -> list[float]:
    value = os.environ.get(name)
    return [float(v) for v in value.split(",")] if value else list(default)


def env_ints(name: str, default: Sequence[int]) -> list[int]:
    value = os.environ.get(name)
    return [int(v) for v in value.split(",")] if value else list(default)
