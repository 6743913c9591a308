"""campaignq beside a peer: procrastinate 3.10 doing the same message work, side by side.

Why: our numbers (cost, Little's-law share, time to first message) only mean something next
to what a well-built PostgreSQL task queue does with the same work on the same box.
procrastinate is the closest peer (PostgreSQL jobs table, LISTEN/NOTIFY, an asyncio worker
with a concurrency setting), so issue 15 asks for it side by side:

- zero provider latency, N messages queued at once: throughput, worker CPU per message,
  PostgreSQL CPU per message, transactions per message, simulator CPU per message;
- 1 s AI latency, 400 messages, 64 slots: share of the Little's-law bound
  = (messages / elapsed) ÷ (64 / mean message latency), elapsed from the enqueue commit
  (workers running and idle) to the last completion, start-up ramp included. Goal ≥ 90 %;
- time to first message with the worker idle (enqueue commit → first completion, goal
  < 0.5 s), and cold start (process spawn → first completion, messages queued before),
  for information.

How (same run, interleaved A, B, A, B … for `BENCH_PEER_PASSES` passes; medians and spread):
1. One template database: campaignq's migrations, procrastinate's schema (``schema.sql``,
   what ``procrastinate schema --apply`` runs), one workspace / inbox / split-off config and
   runs for each measurement (bulk N, cold 64, single-message probes, latency L), every
   message scheduled tomorrow. Each side of each pass works in its own byte-identical clone.
2. "Queueing" makes one group due and queues it in one transaction: campaignq's producer
   (``enqueue_due_campaign_messages``: rows → ``queued`` + one PGMQ message each), or, for the
   peer, the same row update + ``procrastinate_defer_jobs_v1`` (what ``batch_defer`` runs)
   with one job per message. The enqueue commit is timed on the database clock
   (``clock_timestamp()`` right after the commit returns).
3. campaignq: one ``campaignq consume`` (concurrency 64, batch 64) through `fleet`, typing
   delays off. Peer: ``python -m bench.peer_app``, a procrastinate worker at concurrency 64
   whose task does one lead query, one AI call and one send with campaignq's request bodies,
   then one statement with ``campaignq_complete_sent``'s row effects (see peer_app.py). Both
   get the same connection-pool cap (`POOL_MAX_SIZE`), log one INFO line per message or more,
   and talk to the same `campaignq simulate` process (AI latency ±10 % jitter, seeded).
4. A completion is the transaction that tells the queue a message is done: campaignq's
   ``finished_at`` (written with the PGMQ archive) or the peer's ``succeeded`` job event.
5. CPU: user + sys from /proc (psutil) of the worker process, of the whole PostgreSQL server
   (`fleet.postgres_cpu_s`) and of the simulator, from just before queueing to the last
   completion. Transactions: ``xact_commit + xact_rollback`` of the side's database over the
   worker's whole life (start-up, idle and shutdown included: read after it exited, when
   every backend has flushed its statistics), minus the harness's own statements
   (calibrated once).
6. Every pass checks its outcome: every message ``sent`` exactly once, one AI request and
   one send per message at the simulator, no duplicate send.

Sizes: BENCH_PEER_MESSAGES (3,000), BENCH_PEER_LATENCY_MESSAGES (400), BENCH_PEER_AI_LATENCY_S
(1.0), BENCH_PEER_PASSES (2), BENCH_PEER_PROBES (3 single-message probes per pass),
BENCH_PEER_POOL_MAX_SIZE (16 connections per worker, both sides).
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, cast

import psycopg

from bench import common, fleet
from consumer.devtools.processes import child_env
from consumer.devtools.seeding import Seeder

CONCURRENCY = 64
# Both sides: campaignq's db_pool_max_size, the peer's psycopg pool max_size.
POOL_MAX_SIZE = fleet.env_int("BENCH_PEER_POOL_MAX_SIZE", 16)
COLD_MESSAGES = 64
JITTER = 0.1  # as the other benchmarks: AI latency ± 10 %
LITTLE_GOAL = 0.90
FIRST_MESSAGE_GOAL_S = 0.5
IDLE_SETTLE_S = 0.5  # a worker that has just started or finished is idle this long before queueing
POLL_S = 0.02
TIMEOUT_S = 600.0
PEER_PACKAGE = "procrastinate"
SIDES = ("campaignq", "procrastinate")


@dataclass(frozen=True)
class Sizes:
    messages: int
    latency_messages: int
    ai_latency_s: float
    passes: int
    probes: int


def sizes(quick: bool) -> Sizes:
    return Sizes(
        messages=fleet.env_int("BENCH_PEER_MESSAGES", 200 if quick else 3_000),
        latency_messages=fleet.env_int("BENCH_PEER_LATENCY_MESSAGES", 128 if quick else 400),
        ai_latency_s=fleet.env_floats("BENCH_PEER_AI_LATENCY_S", [1.0])[0],
        passes=fleet.env_int("BENCH_PEER_PASSES", 2),
        probes=fleet.env_int("BENCH_PEER_PROBES", 2 if quick else 3),
    )


def require_peer() -> None:
    """procrastinate is a bench-only dependency: without it this benchmark fails, loudly."""
    if importlib.util.find_spec(PEER_PACKAGE) is None:
        raise SystemExit(
            "bench peer needs procrastinate>=3.10, a bench-only dependency: pip install -e '.[bench]'"
        )
    import procrastinate

    major, minor = (int(part) for part in procrastinate.__version__.split(".")[:2])
    if (major, minor) < (3, 10):
        raise SystemExit(f"bench peer needs procrastinate>=3.10, found {procrastinate.__version__}")


def check_same_request() -> None:
    """The peer's AI request body says exactly what campaignq's `Generator` sends (same keys in
    the same order, same values; campaignq writes it with orjson, the peer with `json=`).

    campaignq's real generation path is run against a session that records the request and
    stops there; a change on either side fails the benchmark instead of skewing it.
    """
    import asyncio
    import json
    import json as _json  # `json` is also aiohttp's keyword below

    import aiohttp

    from bench.peer_app import chat_body
    from consumer.core.models import CampaignConfig
    from consumer.runtime.ai import AIClient
    from consumer.runtime.generation import Generator
    from consumer.runtime.metrics import ConsumerMetrics
    from consumer.settings import Settings

    class Recorded(Exception):
        pass

    sent: list[Any] = []

    class RecordingSession:
        def post(self, url: str, *, data: bytes | None = None, json: Any = None, **_: Any) -> Any:
            # campaignq writes the body itself (orjson bytes); compare what it says, not its spacing
            sent.append(json if data is None else _json.loads(data))
            raise Recorded

    config = CampaignConfig(
        id=uuid.uuid4(),
        workspace_id=uuid.uuid4(),
        ai_model="openai/gpt-4o-mini",
        system_prompt="You write short, friendly WhatsApp messages.",
        split_messages=False,
        max_parts=3,
        max_tokens=300,
        inbox_id=uuid.uuid4(),
        instance="bench",
    )
    lead: dict[str, Any] = {"lead_name": "Lead 7", "custom_fields": {"city": "São Paulo", "plan": "plus"}}
    session = cast(aiohttp.ClientSession, RecordingSession())
    ai = AIClient(session=session, base_url="http://127.0.0.1/v1", api_key="k", requests_per_minute=60)
    generator = Generator(
        ai=ai, settings=Settings(database_url="postgresql:///unused"), metrics=ConsumerMetrics()
    )
    with contextlib.suppress(Exception):
        asyncio.run(
            generator.generate(
                config,
                lead_name=lead["lead_name"],
                custom_fields=lead["custom_fields"],
                on_stage=lambda _: None,
                log_id="check",
            )
        )
    peer = chat_body(
        {
            **lead,
            "system_prompt": config.system_prompt,
            "config_id": config.id,
            "ai_model": config.ai_model,
            "max_tokens": config.max_tokens,
        }
    )
    if not sent or json.dumps(sent[0]) != json.dumps(peer):
        raise SystemExit(f"bench peer: the peer's AI request differs from campaignq's:\n{sent[:1]}\n{peer}")


# --- the seeded data ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Seeded:
    """Runs of the template database, one per measurement; every message scheduled tomorrow."""

    bulk: uuid.UUID
    cold: uuid.UUID
    latency: uuid.UUID
    probes: list[uuid.UUID]


def seed(url: str, s: Sizes) -> Seeded:
    from procrastinate.schema import SchemaManager

    workspace_id = uuid.uuid4()
    groups = {"bulk": s.messages, "cold": COLD_MESSAGES, "latency": s.latency_messages}
    groups.update({f"probe{i}": 1 for i in range(s.probes)})
    with common.connect(url) as conn:
        conn.execute(SchemaManager.get_schema())
        with conn.transaction():
            seeder = Seeder(conn)
            inbox_id = seeder.inbox(workspace_id, f"bench-{workspace_id.hex[:8]}", name="bench")
            config_id = seeder.config(
                workspace_id,
                inbox_id,
                split=False,
                model="openai/gpt-4o-mini",
                prompt="You write short, friendly WhatsApp messages.",
                name="bench",
            )
            leads = seeder.leads(
                workspace_id,
                sum(groups.values()),
                phones=[f"+5511{900000000 + g}" for g in range(1, sum(groups.values()) + 1)],
                custom_fields={"city": "São Paulo", "plan": "plus"},
            )
            runs: dict[str, uuid.UUID] = {}
            offset = 0
            for name, n in groups.items():
                runs[name] = seeder.run(config_id, leads_total=n)
                seeder.messages(runs[name], leads[offset : offset + n], scheduled_offset=timedelta(days=1))
                offset += n
        conn.execute("VACUUM ANALYZE")
    return Seeded(
        bulk=runs["bulk"],
        cold=runs["cold"],
        latency=runs["latency"],
        probes=[runs[f"probe{i}"] for i in range(s.probes)],
    )


# --- the harness's own connection ------------------------------------------------------------


class Monitor:
    """The harness's one connection to a side's database; counts its statements (transactions)."""

    def __init__(self, url: str) -> None:
        self.conn = common.connect(url)
        self.statements = 0

    def one(self, query: Any, params: Any = None) -> tuple[Any, ...]:
        self.statements += 1
        row = self.conn.execute(query, params).fetchone()
        assert row is not None
        return row

    def now(self) -> datetime:
        value = self.one("SELECT clock_timestamp()")[0]
        assert isinstance(value, datetime)
        return value

    def make_due(self, runs: Sequence[uuid.UUID]) -> None:
        self.one(
            "WITH due AS (UPDATE campaign_messages SET scheduled_at = now() - interval '1 second' "
            "WHERE run_id = ANY(%s) RETURNING 1) SELECT count(*) FROM due",
            (list(runs),),
        )

    def close(self) -> None:
        self.conn.close()


def xacts(url: str) -> int:
    """Committed + rolled back transactions of `url`'s database, read from the admin database."""
    dbname = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with common.connect(common.admin_url()) as conn:
        row = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s", (dbname,)
        ).fetchone()
    return int(row[0]) if row else 0


def calibrate_monitor(url: str) -> float:
    """Transactions one `Monitor` costs beyond its counted statements (its connection start-up)."""
    before = xacts(url)
    monitor = Monitor(url)
    for _ in range(5):
        monitor.now()
    monitor.close()
    time.sleep(0.5)  # the backend flushes its statistics as it exits
    return float(xacts(url) - before - monitor.statements)


# --- the two sides --------------------------------------------------------------------------------


@dataclass
class Group:
    """One queued group of messages: its runs, the enqueue commit, the peer's job ids."""

    runs: list[uuid.UUID]
    messages: int
    t0: datetime
    job_ids: list[int] = field(default_factory=list)


class Side(Protocol):
    name: str

    def start(self, url: str, sim: fleet.SimulatorProcess, label: str) -> fleet.ConsumerProcess: ...

    def enqueue(self, monitor: Monitor, runs: Sequence[uuid.UUID], messages: int) -> Group: ...

    def completions(self, monitor: Monitor, group: Group) -> tuple[int, datetime | None, datetime | None]:
        """(completed, first completion, last completion) on the database clock."""
        ...

    def mean_latency(self, worker: fleet.ConsumerProcess) -> tuple[float, int]:
        """(sum of seconds, count) of the worker's per-message histogram so far."""
        ...


def _histogram(worker: fleet.ConsumerProcess, name: str) -> tuple[float, int]:
    values = worker.metrics()
    return values.get(f"{name}_sum", 0.0), int(values.get(f"{name}_count", 0.0))


class Campaignq:
    name = "campaignq"

    def start(self, url: str, sim: fleet.SimulatorProcess, label: str) -> fleet.ConsumerProcess:
        env = fleet.consumer_env(
            url,
            sim.ai_base_url,
            sim.base_url,
            concurrency=CONCURRENCY,
            batch_size=CONCURRENCY,
            db_pool_max_size=POOL_MAX_SIZE,
        )
        return fleet.start_consumers(env, 1, label=label)[0]

    def enqueue(self, monitor: Monitor, runs: Sequence[uuid.UUID], messages: int) -> Group:
        from consumer.runtime.producer import enqueue_due

        monitor.make_due(runs)
        monitor.statements += 1  # enqueue_due: one transaction (the horizon rides in its statement)
        queued = enqueue_due(monitor.conn, messages + 1, horizon_s=0)
        t0 = monitor.now()
        assert queued == messages, f"campaignq queued {queued} of {messages}"
        return Group(list(runs), messages, t0)

    def completions(self, monitor: Monitor, group: Group) -> tuple[int, datetime | None, datetime | None]:
        done, first, last = monitor.one(
            "SELECT count(*), min(finished_at), max(finished_at) FROM campaign_messages "
            "WHERE run_id = ANY(%s) AND status = 'sent'",
            (group.runs,),
        )
        return int(done), first, last

    def mean_latency(self, worker: fleet.ConsumerProcess) -> tuple[float, int]:
        return _histogram(worker, "campaignq_message_seconds")


class Procrastinate:
    name = "procrastinate"

    def start(self, url: str, sim: fleet.SimulatorProcess, label: str) -> fleet.ConsumerProcess:
        from bench.peer_app import PeerConfig

        port = fleet.free_port()
        config = PeerConfig(
            database_url=url,
            ai_base_url=sim.ai_base_url,
            ai_key=fleet.AI_KEY,
            whatsapp_base_url=sim.base_url,
            whatsapp_key=fleet.WHATSAPP_KEY,
            concurrency=CONCURRENCY,
            pool_max_size=POOL_MAX_SIZE,
            metrics_port=port,
        )
        fleet.LOG_DIR.mkdir(parents=True, exist_ok=True)
        log_path = fleet.LOG_DIR / f"{label}-peer.log"
        import subprocess

        with log_path.open("w", encoding="utf-8") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "bench.peer_app"],
                env=child_env(config.env()),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=Path(__file__).resolve().parents[1],
            )
        return fleet.ConsumerProcess(f"{label}-peer", process, log_path, port)

    def enqueue(self, monitor: Monitor, runs: Sequence[uuid.UUID], messages: int) -> Group:
        from bench.peer_app import QUEUE, TASK_NAME

        monitor.make_due(runs)
        row = monitor.one(
            """WITH marked AS (
                   UPDATE campaign_messages m SET status = 'queued', queued_at = now()
                    WHERE m.run_id = ANY(%(runs)s) AND m.status = 'pending' AND m.scheduled_at <= now()
                      AND EXISTS (SELECT 1 FROM campaign_runs r
                                   WHERE r.id = m.run_id AND r.status = 'running')
                   RETURNING m.id
               )
               SELECT procrastinate_defer_jobs_v1(ARRAY(
                   SELECT ROW(%(queue)s, %(task)s, 0, NULL, NULL,
                              jsonb_build_object('message_id', id::text), NULL)::procrastinate_job_to_defer_v1
                     FROM marked ORDER BY id))""",
            {"runs": list(runs), "queue": QUEUE, "task": TASK_NAME},
        )
        t0 = monitor.now()
        job_ids = list(row[0] or [])
        assert len(job_ids) == messages, f"procrastinate deferred {len(job_ids)} of {messages}"
        return Group(list(runs), messages, t0, job_ids)

    def completions(self, monitor: Monitor, group: Group) -> tuple[int, datetime | None, datetime | None]:
        done, first, last = monitor.one(
            "SELECT count(*), min(at), max(at) FROM procrastinate_events "
            "WHERE job_id = ANY(%s) AND type = 'succeeded'",
            (group.job_ids,),
        )
        return int(done), first, last

    def mean_latency(self, worker: fleet.ConsumerProcess) -> tuple[float, int]:
        return _histogram(worker, "peer_message_seconds")


# --- one pass of one side ------------------------------------------------------------------------


def wait_for_listen(monitor: Monitor, worker: fleet.ConsumerProcess) -> None:
    """Until the worker's LISTEN connection is up (both sides wake on NOTIFY), then idle a moment."""
    deadline = time.monotonic() + fleet.READY_TIMEOUT_S
    while not monitor.one(
        "SELECT count(*) > 0 FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() AND query ILIKE 'LISTEN%%'"
    )[0]:
        if worker.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{worker.name} did not start listening; see {worker.log_path}")
        time.sleep(POLL_S)
    time.sleep(IDLE_SETTLE_S)


def wait_done(
    side: Side, monitor: Monitor, group: Group, worker: fleet.ConsumerProcess
) -> tuple[datetime, datetime]:
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        done, first, last = side.completions(monitor, group)
        if done >= group.messages and first is not None and last is not None:
            return first, last
        if worker.process.poll() is not None:
            raise RuntimeError(f"{worker.name} exited early; see {worker.log_path}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{side.name}: timed out, {done}/{group.messages} messages completed")
        time.sleep(POLL_S)


@dataclass
class Cpu:
    worker: float
    postgres: float
    simulator: float

    @classmethod
    def read(cls, worker: fleet.ConsumerProcess, sim: fleet.SimulatorProcess) -> Cpu:
        # The server's processes are found through the admin database, so reading them adds
        # no connection (and no transaction) to the measured one.
        return cls(fleet.cpu_seconds(worker.pid), fleet.postgres_cpu_s(common.admin_url()), sim.cpu_s())

    def __sub__(self, other: Cpu) -> Cpu:
        return Cpu(
            self.worker - other.worker, self.postgres - other.postgres, self.simulator - other.simulator
        )


def _seconds(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds()


def check_outcome(
    monitor: Monitor, runs: Sequence[uuid.UUID], messages: int, sim_stats: dict[str, Any]
) -> None:
    """Every message sent once, one AI request and one send each: the two sides did the same work."""
    sent = int(
        monitor.one(
            "SELECT count(*) FROM campaign_messages WHERE run_id = ANY(%s) AND status = 'sent'", (list(runs),)
        )[0]
    )
    assert sent == messages, f"{sent} of {messages} messages sent"
    assert sim_stats["ai"]["requests"] == messages, f"AI requests {sim_stats['ai']} for {messages} messages"
    assert sim_stats["send"]["accepted"] == messages, f"sends {sim_stats['send']} for {messages} messages"
    assert sim_stats["send"]["duplicates"] == 0, f"duplicate sends: {sim_stats['send']}"


def measure_throughput(
    side: Side,
    url: str,
    sim: fleet.SimulatorProcess,
    runs: Seeded,
    s: Sizes,
    label: str,
    harness_xacts: float,
) -> dict[str, Any]:
    """Zero latency, N messages queued at once into an idle worker; transactions over its whole life."""
    sim.configure(ai_latency_s=0.0, send_latency_s=0.0)
    sim.reset()
    xact0 = xacts(url)
    monitor = Monitor(url)
    worker = side.start(url, sim, f"{label}-bulk")
    try:
        wait_for_listen(monitor, worker)
        cpu0 = Cpu.read(worker, sim)
        group = side.enqueue(monitor, [runs.bulk], s.messages)
        first, last = wait_done(side, monitor, group, worker)
        cpu = Cpu.read(worker, sim) - cpu0
        check_outcome(monitor, group.runs, s.messages, sim.stats())
    finally:
        fleet.stop_processes([worker])
        monitor.close()
    time.sleep(0.5)  # exiting backends flush their statistics
    transactions = xacts(url) - xact0 - monitor.statements - harness_xacts
    elapsed = _seconds(last, group.t0)
    n = s.messages
    return {
        "messages": n,
        "elapsed_s": elapsed,
        "msg_per_s": n / elapsed,
        "worker_cpu_ms_per_msg": 1000 * cpu.worker / n,
        "postgres_cpu_ms_per_msg": 1000 * cpu.postgres / n,
        "simulator_cpu_ms_per_msg": 1000 * cpu.simulator / n,
        "xacts_per_msg": transactions / n,
        "first_of_bulk_s": _seconds(first, group.t0),
    }


def measure_latency_and_start(
    side: Side, url: str, sim: fleet.SimulatorProcess, runs: Seeded, s: Sizes, label: str
) -> dict[str, Any]:
    """Cold start, single-message probes (zero latency), then L messages at AI latency: one worker."""
    sim.configure(ai_latency_s=0.0, send_latency_s=0.0)
    sim.reset()
    monitor = Monitor(url)
    cold = side.enqueue(monitor, [runs.cold], COLD_MESSAGES)  # queued before the process exists
    spawned_at = monitor.now()
    worker = side.start(url, sim, f"{label}-latency")
    try:
        cold_first, _ = wait_done(side, monitor, cold, worker)
        wait_for_listen(monitor, worker)
        probes: list[float] = []
        for run_id in runs.probes:
            group = side.enqueue(monitor, [run_id], 1)
            first, _ = wait_done(side, monitor, group, worker)
            probes.append(_seconds(first, group.t0))
            time.sleep(IDLE_SETTLE_S)
        check_outcome(monitor, [runs.cold, *runs.probes], COLD_MESSAGES + len(runs.probes), sim.stats())

        sim.configure(ai_latency_s=s.ai_latency_s, send_latency_s=0.0)
        sim.reset()
        time.sleep(IDLE_SETTLE_S)
        sum0, count0 = side.mean_latency(worker)
        cpu0 = Cpu.read(worker, sim)
        group = side.enqueue(monitor, [runs.latency], s.latency_messages)
        _, last = wait_done(side, monitor, group, worker)
        cpu = Cpu.read(worker, sim) - cpu0
        sum1, count1 = side.mean_latency(worker)
        check_outcome(monitor, group.runs, s.latency_messages, sim.stats())
    finally:
        fleet.stop_processes([worker])
        monitor.close()
    assert count1 - count0 == s.latency_messages, f"latency histogram counted {count1 - count0}"
    elapsed = _seconds(last, group.t0)
    mean_latency = (sum1 - sum0) / (count1 - count0)
    rate = s.latency_messages / elapsed
    bound = CONCURRENCY / mean_latency
    return {
        "cold_start_s": _seconds(cold_first, spawned_at),
        "first_message_s": statistics.median(probes),
        "first_message_probes_s": probes,
        "latency_messages": s.latency_messages,
        "latency_elapsed_s": elapsed,
        "latency_msg_per_s": rate,
        "mean_message_latency_s": mean_latency,
        "little_bound_msg_per_s": bound,
        "little_share": rate / bound,
        # The same denominator for both sides: what the provider allows (slots / its latency).
        "provider_share": rate * s.ai_latency_s / CONCURRENCY,
        "latency_worker_cpu_ms_per_msg": 1000 * cpu.worker / s.latency_messages,
    }


# --- the benchmark -------------------------------------------------------------------------------


@contextlib.contextmanager
def template(s: Sizes) -> Iterator[tuple[str, Seeded]]:
    with common.fresh_database("peer_seed") as url:
        yield url, seed(url, s)


def run(quick: bool) -> dict[str, Any]:
    require_peer()
    check_same_request()
    load = fleet.other_load()
    s = sizes(quick)
    sides: dict[str, Side] = {"campaignq": Campaignq(), "procrastinate": Procrastinate()}
    passes: list[dict[str, Any]] = []
    print(
        f"  {s.passes} passes x 2 sides: {s.messages:,} messages at zero latency, "
        f"{s.latency_messages} at {s.ai_latency_s:g} s AI latency, {s.probes} probes …",
        flush=True,
    )
    with (
        fleet.simulator(ai_latency_s=0.0, send_latency_s=0.0) as sim,
        template(s) as (seed_url, seeded),
    ):
        sim.jitter = JITTER
        with common.clone_database(seed_url, "peer_calibrate") as url:
            harness_xacts = calibrate_monitor(url)
        for index in range(s.passes):
            for name in SIDES:
                side = sides[name]
                label = f"peer-{name}-{index + 1}"
                with common.clone_database(seed_url, label) as url:
                    common.checkpoint()
                    one: dict[str, Any] = {"side": name, "pass": index + 1}
                    one.update(measure_throughput(side, url, sim, seeded, s, label, harness_xacts))
                    one.update(measure_latency_and_start(side, url, sim, seeded, s, label))
                passes.append(one)
                print(
                    f"  pass {index + 1} {name}: {one['msg_per_s']:,.0f} msg/s, "
                    f"{one['worker_cpu_ms_per_msg']:.2f} ms CPU/msg, "
                    f"{100 * one['little_share']:.1f} % of Little, "
                    f"first message {1000 * one['first_message_s']:.0f} ms",
                    flush=True,
                )
    result = report(passes, s)
    result["params"]["load_at_start"] = load
    result["params"]["load_at_end"] = fleet.other_load()
    result["params"]["harness_xacts_per_connection"] = harness_xacts
    return result


# --- the report --------------------------------------------------------------------------------

# (key, label, scale, goal text) for the summary table: value shown = raw value * scale.
METRICS: list[tuple[str, str, float, str]] = [
    ("msg_per_s", "zero latency: msg/s", 1.0, ""),
    ("worker_cpu_ms_per_msg", "zero latency: worker CPU ms/msg", 1.0, ""),
    ("postgres_cpu_ms_per_msg", "zero latency: PostgreSQL CPU ms/msg", 1.0, ""),
    ("xacts_per_msg", "zero latency: transactions/msg", 1.0, ""),
    ("simulator_cpu_ms_per_msg", "zero latency: simulator CPU ms/msg", 1.0, ""),
    ("little_share", "AI latency: % of Little's-law bound", 100.0, f"≥ {100 * LITTLE_GOAL:.0f} %"),
    ("provider_share", "AI latency: % of slots / AI latency", 100.0, ""),
    ("mean_message_latency_s", "AI latency: mean message latency s", 1.0, ""),
    ("latency_msg_per_s", "AI latency: msg/s (enqueue → last)", 1.0, ""),
    ("first_message_s", "idle worker: first message ms", 1000.0, f"< {1000 * FIRST_MESSAGE_GOAL_S:.0f} ms"),
    ("first_of_bulk_s", "idle worker: first of the bulk ms", 1000.0, ""),
    ("cold_start_s", "cold start: spawn → first message s", 1.0, "(information)"),
]


def _values(passes: Sequence[dict[str, Any]], side: str, key: str, scale: float) -> list[float]:
    return [scale * float(p[key]) for p in passes if p["side"] == side]


def _spread(values: Sequence[float]) -> str:
    return f"{common._cell(min(values))} to {common._cell(max(values))}"


def wave_cap(messages: int) -> float:
    """The best share of the Little's-law bound N messages can reach on `CONCURRENCY` slots.

    With one latency for all, messages finish in waves: the last ``N mod 64`` start in a wave of
    their own, so the run lasts ``ceil(N / 64)`` latencies where the bound counts ``N / 64``
    (400 messages: 6.25 / 7 = 89.3 %). ±10 % jitter blurs the waves only a little.
    """
    return messages / (CONCURRENCY * math.ceil(messages / CONCURRENCY))


def report(passes: list[dict[str, Any]], s: Sizes) -> dict[str, Any]:
    table: list[dict[str, Any]] = []
    cap = wave_cap(s.latency_messages)
    summary: dict[str, dict[str, float]] = {side: {} for side in SIDES}
    for key, label, scale, goal in METRICS:
        ours = _values(passes, "campaignq", key, scale)
        theirs = _values(passes, "procrastinate", key, scale)
        # The summary keeps each key's own unit (seconds, fractions); the table shows it scaled.
        summary["campaignq"][key] = statistics.median(ours) / scale
        summary["procrastinate"][key] = statistics.median(theirs) / scale
        table.append(
            {
                "measurement": label,
                "campaignq": statistics.median(ours),
                "campaignq spread": _spread(ours),
                "procrastinate": statistics.median(theirs),
                "procrastinate spread": _spread(theirs),
                "campaignq / procrastinate": statistics.median(ours) / statistics.median(theirs)
                if statistics.median(theirs)
                else None,
                "goal": f"{goal} (waves cap: {100 * cap:.1f} %)" if key == "little_share" else goal,
            }
        )
    raw = [
        {
            "pass": p["pass"],
            "side": p["side"],
            "msg/s": p["msg_per_s"],
            "worker CPU ms/msg": p["worker_cpu_ms_per_msg"],
            "PG CPU ms/msg": p["postgres_cpu_ms_per_msg"],
            "xacts/msg": p["xacts_per_msg"],
            "sim CPU ms/msg": p["simulator_cpu_ms_per_msg"],
            "% Little": 100 * p["little_share"],
            "% slots/AI": 100 * p["provider_share"],
            "latency s": p["mean_message_latency_s"],
            "first msg ms": 1000 * p["first_message_s"],
            "cold start s": p["cold_start_s"],
        }
        for p in passes
    ]
    notes = [
        f"medians of {s.passes} interleaved passes per side (spread = min to max); one worker process "
        f"per side at concurrency {CONCURRENCY}, pool cap {POOL_MAX_SIZE}; same PostgreSQL, same simulator, "
        "byte-identical clones of one seeded database",
        f"zero latency: {s.messages:,} messages queued at once into an idle worker; rate = messages / "
        "(enqueue commit → last completion), database clock; CPU from /proc over the same window",
        f"AI latency {s.ai_latency_s:g} s ±{100 * JITTER:.0f} %, send 0 s: {s.latency_messages} messages; "
        f"Little's bound = {CONCURRENCY} / the worker's own mean per-message latency "
        "(campaignq_message_seconds, peer_message_seconds), so each side is judged on its own latency; "
        f"'% of slots / AI latency' divides both rates by one bound ({CONCURRENCY} / {s.ai_latency_s:g} s)",
        f"{s.latency_messages} messages on {CONCURRENCY} slots are {s.latency_messages / CONCURRENCY:g} "
        f"waves: with one latency for all, the run lasts {math.ceil(s.latency_messages / CONCURRENCY)} "
        f"latencies, so no worker can pass {100 * cap:.1f} % of either bound (see wave_cap)",
        "transactions/msg include each worker's start-up, idle and shutdown transactions over its life "
        f"({s.messages:,} messages dilute them)",
        "procrastinate's connector checks every pooled connection on checkout (psycopg_pool's "
        "check_connection: an empty query, which PostgreSQL counts as a transaction); a job takes 4 "
        "checkouts (fetch, lead query, outcome, finish), and its worker fetches one job per round trip",
        "campaignq also writes the generation before sending (its durability: a retry never pays the AI "
        "twice or sends a different text) and checks the inbox state every 10 s; the peer does not",
    ]
    return {
        "title": "campaignq vs procrastinate 3.10: the same message work, side by side",
        "params": {
            "messages": s.messages,
            "latency_messages": s.latency_messages,
            "ai_latency_s": s.ai_latency_s,
            "jitter": JITTER,
            "passes": s.passes,
            "probes": s.probes,
            "concurrency": CONCURRENCY,
            "pool_max_size": POOL_MAX_SIZE,
            "cold_messages": COLD_MESSAGES,
            "wave_cap": cap,
            "procrastinate": _peer_version(),
        },
        "table": table,
        "more_tables": [{"title": "Every pass (interleaved in this order)", "rows": raw}],
        "summary": summary,
        "passes": passes,
        "notes": notes,
    }


def _peer_version() -> str:
    import procrastinate

    return str(procrastinate.__version__)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    passes = result["passes"]
    panels: list[tuple[str, str, float, Callable[[Any], None] | None]] = [
        ("msg_per_s", "msg/s, zero latency", 1.0, None),
        ("worker_cpu_ms_per_msg", "worker CPU ms/msg", 1.0, None),
        ("postgres_cpu_ms_per_msg", "PostgreSQL CPU ms/msg", 1.0, None),
        ("xacts_per_msg", "transactions/msg", 1.0, None),
        (
            "little_share",
            f"% of Little's bound at {result['params']['ai_latency_s']:g} s",
            100.0,
            lambda ax: ax.axhline(100 * LITTLE_GOAL, color="tab:red", linestyle="--", linewidth=1),
        ),
        (
            "first_message_s",
            "first message ms (idle worker)",
            1000.0,
            lambda ax: ax.axhline(1000 * FIRST_MESSAGE_GOAL_S, color="tab:red", linestyle="--", linewidth=1),
        ),
    ]
    colors = {"campaignq": "tab:green", "procrastinate": "tab:purple"}
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (key, title, scale, extra) in zip(axes.flat, panels, strict=True):
        medians = [statistics.median(_values(passes, side, key, scale)) for side in SIDES]
        bars = ax.bar(SIDES, medians, color=[colors[side] for side in SIDES])
        for i, side in enumerate(SIDES):
            values = _values(passes, side, key, scale)
            ax.scatter([i] * len(values), values, color="black", s=12, zorder=3)
        ax.bar_label(bars, labels=[common._cell(m) for m in medians], fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.margins(y=0.15)
        if extra is not None:
            extra(ax)
    machine = result["machine"]
    load = result["params"].get("load_at_start", {})
    fig.suptitle(result["title"] + " (bars: median, dots: passes; red: goal)", fontsize=11)
    fig.text(
        0.01,
        0.01,
        f"{machine['cpu_model']}, {machine['cpu_logical']} CPUs shared by worker, PostgreSQL and simulator; "
        f"PostgreSQL {machine['postgresql']}; load at start {load.get('load_1m', '?')}",
        fontsize=7,
    )
    fig.tight_layout(rect=(0, 0.03, 1, 0.95))
    fig.savefig(path, dpi=120)
    plt.close(fig)
