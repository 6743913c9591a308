"""Producer: moving 100,000 due messages, ours vs the audited system's original SQL.

Why this benchmark: audit problems 4, 6 and 12 say the old selection (an UPDATE joining
runs and configs, plus an ``IN (subquery)`` "too old" sweep on every invocation) gets slow
on a large ``campaign_messages``. We claim ``enqueue_due_campaign_messages`` is fast on
the same data even though it does strictly more work (it also writes one PGMQ message per
row). This measures both, side by side, in one run, on byte-identical data.

How:
1. Seed one database: a few running runs holding the due rows, lots of terminal history in
   older runs, some not-yet-due, stale and paused-run rows (which both sides must handle
   the same way), leads, configs, inboxes. VACUUM ANALYZE, autovacuum off on the hot
   tables (so it cannot fire during one side and not the other).
2. For each measurement, clone that database (CREATE DATABASE … TEMPLATE), prepare it,
   CHECKPOINT, drain, then check the end state. The original side runs in a clone where
   every index of ours is dropped and replaced by the indexes the audit lists as the old
   system's ("Índices Atuais"), with the function and sweep from
   ``bench/sql/original_producer.sql``. A second original variant keeps only primary keys
   (what the brief assumed the old system had); its batch-100 drain is time-capped, since
   it costs two sequential scans per batch of 100.
3. Drain = repeat one producer invocation until it moves nothing (the empty last call is
   included). Ours: ``SELECT enqueue_due_campaign_messages(n)`` through
   ``consumer.runtime.producer.enqueue_due``, exactly what production runs. Original: the sweep,
   then ``get_and_lock_campaign_messages(n, one_hour_ago)``, as the Edge Function did
   (wrapped in ``count(*)`` so neither side pays for shipping rows to Python).
4. Idle latency: after the batched drain and a VACUUM (steady state), the median of
   repeated invocations that find nothing due and nothing stale.
Both sides must end with exactly the same rows moved (ours ``queued``, the original
``generating``) and skipped; ours must hold one queue message per moved row.
"""

from __future__ import annotations

import datetime as dt
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import psycopg

from bench import common
from consumer.runtime.producer import enqueue_due

SQL_DIR = Path(__file__).resolve().parent / "sql"
ORIGINAL_SQL = common.load_queries(SQL_DIR / "original_producer.sql")

OUR_BATCH = 5_000  # `campaignq produce` / pg_cron default
ORIGINAL_BATCH = 100  # the Edge Function validated batch_size in 1..100
IDLE_WARMUP = 3
IDLE_SAMPLES = 25
PK_ONLY_BATCHED_CAP_S = 20.0  # the PK-only batch-100 drain is extrapolated past this

Indexes = Literal["ours", "audited", "pk_only"]


@dataclass(frozen=True)
class Sizes:
    due: int  # pending, due, in running runs: what every side must move
    running_runs: int
    history: int  # sent / failed / skipped rows of completed runs
    history_runs: int
    not_due: int  # pending in running runs, scheduled in the next hours: must stay pending
    stale: int  # pending in running runs, scheduled 2-3 h ago: both sides skip them
    paused_due: int  # pending and due in a paused run: must stay pending
    leads: int
    configs: int


FULL = Sizes(
    due=100_000,
    running_runs=4,
    history=400_000,
    history_runs=40,
    not_due=5_000,
    stale=1_000,
    paused_due=2_000,
    leads=100_000,
    configs=6,
)
QUICK = Sizes(
    due=10_000,
    running_runs=4,
    history=40_000,
    history_runs=40,
    not_due=500,
    stale=100,
    paused_due=200,
    leads=10_000,
    configs=6,
)


@dataclass(frozen=True)
class Side:
    key: str
    system: Literal["ours", "original"]
    indexes: Indexes
    batch: int
    cap_s: float | None = None

    @property
    def label(self) -> str:
        if self.system == "ours":
            return f"ours, batch {self.batch:,}"
        indexes = "audited indexes" if self.indexes == "audited" else "PK only"
        return f"original ({indexes}), batch {self.batch:,}"


@dataclass
class Drain:
    side: str
    label: str
    system: str
    indexes: str
    batch: int
    rows: int
    calls: int
    seconds: float
    capped: bool = False
    sweep_s: float = 0.0
    idle_ms: list[float] = field(default_factory=list)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class EndState:
    statuses: dict[str, int]
    moved: tuple[int, str]  # (count, md5 of the sorted ids) of rows this side moved
    skipped: tuple[int, str]
    queue: tuple[int, str]  # (count, md5 of the sorted campaign_message_ids) in PGMQ


# --- seeding --------------------------------------------------------------------------


def seed(url: str, sizes: Sizes) -> None:
    """Fill a migrated database; set-based SQL (generate_series), a few seconds per 100k rows."""
    if sizes.history % sizes.history_runs:
        raise ValueError("history must be a multiple of history_runs")
    script = (SQL_DIR / "producer_seed.sql").read_text(encoding="utf-8")
    with common.connect(url) as conn:
        with conn.transaction():
            for statement in script.split(";\n"):
                if statement.strip():
                    conn.execute(statement, asdict(sizes))
        conn.execute("VACUUM (ANALYZE)")


# --- preparing a side -----------------------------------------------------------------


def _drop_our_indexes(conn: psycopg.Connection[Any]) -> list[str]:
    """Every index on the producer's tables that backs no constraint (our migration's)."""
    names = [
        str(name)
        for (name,) in conn.execute(
            """SELECT i.indexrelid::regclass::text
                 FROM pg_index i
                WHERE i.indrelid IN ('campaign_messages'::regclass, 'campaign_runs'::regclass,
                                     'campaign_configs'::regclass)
                  AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)"""
        )
    ]
    for name in names:
        conn.execute(psycopg.sql.SQL("DROP INDEX {}").format(psycopg.sql.Identifier(name)))
    return names


def prepare_original(url: str, indexes: Indexes) -> None:
    with common.connect(url) as conn:
        _drop_our_indexes(conn)
        if indexes == "audited":
            conn.execute(ORIGINAL_SQL["original_indexes"])
        conn.execute(ORIGINAL_SQL["original_function"])
        conn.execute("ANALYZE campaign_messages, campaign_runs")


# --- one invocation of each producer ----------------------------------------------------


class Invoker(Protocol):
    sweep_s: float  # time spent in the separate stale sweep (the original only)

    def __call__(self, conn: psycopg.Connection[Any], batch: int) -> int: ...


class OursInvoker:
    """``SELECT enqueue_due_campaign_messages(batch)`` in its own transaction, as production."""

    sweep_s = 0.0  # our sweep is inside the function: not separable from the client

    def __call__(self, conn: psycopg.Connection[Any], batch: int) -> int:
        return enqueue_due(conn, batch)


class OriginalInvoker:
    """One Edge Function invocation: the sweep, then the atomic selection (two statements).

    ``one_hour_ago`` is computed by the client, as the Edge Function did.
    """

    def __init__(self) -> None:
        self.sweep_s = 0.0

    def __call__(self, conn: psycopg.Connection[Any], batch: int) -> int:
        params = {"batch_size": batch, "one_hour_ago": dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)}
        seconds, _ = common.timed(lambda: conn.execute(ORIGINAL_SQL["original_stale_sweep"], params))
        self.sweep_s += seconds
        row = conn.execute(ORIGINAL_SQL["original_select"], params).fetchone()
        return int(row[0]) if row else 0


def _invoker(side: Side) -> Invoker:
    return OursInvoker() if side.system == "ours" else OriginalInvoker()


def drain(url: str, side: Side) -> Drain:
    """Repeat one invocation until it moves nothing, or until ``side.cap_s`` has passed."""
    invoke = _invoker(side)
    rows = calls = 0
    capped = False
    with common.connect(url) as conn:
        common.checkpoint()
        started = time.perf_counter()
        while True:
            moved = invoke(conn, side.batch)
            rows += moved
            calls += 1
            if moved == 0:
                break
            if side.cap_s is not None and time.perf_counter() - started > side.cap_s:
                capped = True
                break
        seconds = time.perf_counter() - started
    return Drain(
        side.key,
        side.label,
        side.system,
        side.indexes,
        side.batch,
        rows,
        calls,
        seconds,
        capped,
        sweep_s=invoke.sweep_s,
    )


def idle_latency_ms(url: str, side: Side) -> list[float]:
    """Invocations that find nothing to do, in steady state (after VACUUM, as autovacuum would).

    Always at the side's production batch size (ours 5,000, original 100): this is the
    call the scheduler repeats every few seconds.
    """
    invoke = _invoker(side)
    batch = OUR_BATCH if side.system == "ours" else ORIGINAL_BATCH
    samples: list[float] = []
    with common.connect(url) as conn:
        conn.execute("VACUUM (ANALYZE) campaign_messages, campaign_runs")
        for attempt in range(IDLE_WARMUP + IDLE_SAMPLES):
            seconds, moved = common.timed(lambda: invoke(conn, batch))
            assert moved == 0, f"{side.key}: an idle invocation moved {moved} rows"
            if attempt >= IDLE_WARMUP:
                samples.append(seconds * 1000)
    return samples


def end_state(url: str) -> EndState:
    def ids_digest(conn: psycopg.Connection[Any], statuses: list[str]) -> tuple[int, str]:
        row = conn.execute(
            "SELECT count(*), coalesce(md5(string_agg(id::text, ',' ORDER BY id)), '') "
            "FROM campaign_messages WHERE status = ANY(%s)",
            (statuses,),
        ).fetchone()
        assert row is not None
        return int(row[0]), str(row[1])

    with common.connect(url) as conn:
        statuses = {
            str(s): int(n)
            for s, n in conn.execute(
                "SELECT status, count(*) FROM campaign_messages GROUP BY status ORDER BY status"
            )
        }
        queue = conn.execute(
            "SELECT count(*), coalesce(md5(string_agg(message->>'campaign_message_id', ',' "
            "ORDER BY (message->>'campaign_message_id')::uuid)), '') FROM pgmq.q_campaign_messages"
        ).fetchone()
        assert queue is not None
        return EndState(
            statuses=statuses,
            moved=ids_digest(conn, ["queued", "generating"]),
            skipped=ids_digest(conn, ["skipped"]),
            queue=(int(queue[0]), str(queue[1])),
        )


def check_end_states(states: dict[str, EndState], sizes: Sizes) -> None:
    """Every complete side moved and skipped the same rows; ours queued each exactly once."""
    reference = states["ours_batched"]
    assert reference.moved[0] == sizes.due, reference
    assert reference.statuses.get("pending") == sizes.not_due + sizes.paused_due, reference
    for key, state in states.items():
        assert state.moved == reference.moved, f"{key} moved other rows than ours_batched"
        assert state.skipped == reference.skipped, f"{key} skipped other rows than ours_batched"
        assert state.statuses.get("pending") == reference.statuses.get("pending"), key
        if key.startswith("ours"):
            assert state.queue == state.moved, f"{key}: queue does not hold one message per queued row"
        else:
            assert state.queue[0] == 0, key


# --- the benchmark --------------------------------------------------------------------


def sides(sizes: Sizes) -> list[Side]:
    return [
        Side("ours_batched", "ours", "ours", OUR_BATCH),
        Side("original_batched", "original", "audited", ORIGINAL_BATCH),
        Side("ours_single", "ours", "ours", sizes.due),
        Side("original_single", "original", "audited", sizes.due),
        Side("original_pk_only_batched", "original", "pk_only", ORIGINAL_BATCH, cap_s=PK_ONLY_BATCHED_CAP_S),
        Side("original_pk_only_single", "original", "pk_only", sizes.due),
    ]


PAIRINGS = [
    ("batched (production batch sizes)", "ours_batched", "original_batched"),
    ("single batch", "ours_single", "original_single"),
    ("batched, original PK only", "ours_batched", "original_pk_only_batched"),
    ("single batch, original PK only", "ours_single", "original_pk_only_single"),
]
# Idle calls are measured after these drains (a capped drain leaves rows due).
IDLE_SIDES = {"ours_batched", "original_batched", "original_pk_only_single"}


def pgmq_share_s(url: str) -> float:
    """Seconds to build one payload per queued row and ``pgmq.send_batch`` them, alone.

    The part of our work the original never did; measured on a scratch queue in the clone
    that ours_single just drained, so it is the same rows and the same server state.
    """
    with common.connect(url) as conn:
        conn.execute("SELECT pgmq.create('bench_send_only')")
        common.checkpoint()
        seconds, _ = common.timed(
            lambda: conn.execute(
                """SELECT count(*) FROM pgmq.send_batch('bench_send_only', (
                   SELECT array_agg(jsonb_build_object('v', 1, 'campaign_message_id', id,
                                                       'run_id', run_id, 'lead_id', lead_id))
                     FROM campaign_messages WHERE status = 'queued'))"""
            ).fetchone()
        )
    return seconds


def run(quick: bool) -> dict[str, Any]:
    sizes = QUICK if quick else FULL
    drains: dict[str, Drain] = {}
    states: dict[str, EndState] = {}
    pgmq_s = 0.0
    with common.fresh_database("producer_seed") as seed_url:
        seed_s, _ = common.timed(lambda: seed(seed_url, sizes))
        with common.connect(seed_url) as conn:
            row = conn.execute(
                "SELECT pg_size_pretty(pg_total_relation_size('campaign_messages'))"
            ).fetchone()
            table_size = str(row[0]) if row else "?"
        for side in sides(sizes):
            print(f"  {side.label} …", flush=True)
            with common.clone_database(seed_url, side.key) as url:
                if side.system == "original":
                    prepare_original(url, side.indexes)
                result = drain(url, side)
                if not result.capped:
                    states[side.key] = end_state(url)
                if side.key in IDLE_SIDES:
                    result.idle_ms = idle_latency_ms(url, side)
                if side.key == "ours_single":
                    pgmq_s = pgmq_share_s(url)
                drains[side.key] = result
    check_end_states(states, sizes)
    return _report(sizes, drains, seed_s=seed_s, pgmq_s=pgmq_s, table_size=table_size)


def _report(
    sizes: Sizes, drains: dict[str, Drain], *, seed_s: float, pgmq_s: float, table_size: str
) -> dict[str, Any]:
    comparisons: list[dict[str, Any]] = []
    ratio_of: dict[str, float] = {}
    for pairing, ours, original in PAIRINGS:
        ratio = drains[ours].rows_per_s / drains[original].rows_per_s
        ratio_of[original] = ratio
        comparisons.append(
            {
                "pairing": pairing,
                "ours": ours,
                "original": original,
                "ours_rows_per_s": drains[ours].rows_per_s,
                "original_rows_per_s": drains[original].rows_per_s,
                "ours_over_original_rows_per_s": ratio,
            }
        )
    table = [
        {
            "measurement": d.label + (" (time-capped)" if d.capped else ""),
            "calls": d.calls,
            "rows moved": d.rows,
            "seconds": d.seconds,
            "of which sweep s": d.sweep_s if d.system == "original" else None,
            "rows/s": d.rows_per_s,
            "ours/original rows/s": ratio_of.get(d.side),
        }
        for d in drains.values()
    ]
    ours_idle_ms = statistics.median(drains["ours_batched"].idle_ms)
    idle_rows: list[dict[str, Any]] = []
    for key in (k for k in drains if k in IDLE_SIDES):
        samples = drains[key].idle_ms
        median = statistics.median(samples)
        batch = OUR_BATCH if drains[key].system == "ours" else ORIGINAL_BATCH
        label = drains[key].label.rsplit(", batch", 1)[0]
        idle_rows.append(
            {
                "idle call (nothing due, nothing stale)": f"{label}, batch {batch:,}",
                "samples": len(samples),
                "median ms": median,
                "p95 ms": common.percentile(samples, 0.95),
                "ours/original latency": None if key == "ours_batched" else ours_idle_ms / median,
            }
        )
        if key != "ours_batched":
            comparisons.append(
                {
                    "pairing": f"idle call vs {key}",
                    "ours_ms": ours_idle_ms,
                    "original_ms": median,
                    "ours_over_original_latency": ours_idle_ms / median,
                }
            )
    notes = [
        f"data: {sizes.due:,} due pending rows in {sizes.running_runs} running runs, {sizes.history:,} "
        f"terminal rows in {sizes.history_runs} completed runs, {sizes.not_due:,} not yet due, "
        f"{sizes.stale:,} stale, {sizes.paused_due:,} in a paused run; {sizes.leads:,} leads, "
        f"{sizes.configs} configs and inboxes; campaign_messages {table_size}; seeded in {seed_s:.0f} s",
        "every complete drain ended with the same rows moved and skipped (md5 of the ids); ours also "
        "holds exactly one PGMQ message per moved row: strictly more work than the original (no queue)",
        f"of ours' work, building the {sizes.due:,} payloads + pgmq.send_batch alone takes {pgmq_s:.2f} s "
        f"(scratch queue, same rows)",
        "original = the audit's SQL (bench/sql/original_producer.sql) with the indexes the audit lists as "
        "the old system's; 'PK only' = primary keys alone, as the brief assumed",
    ]
    capped = drains["original_pk_only_batched"]
    if capped.capped:
        notes.append(
            f"the PK-only batch-100 drain was stopped after {capped.seconds:.0f} s ({capped.rows:,} "
            f"rows); its rows/s is the rate over that span: all {sizes.due:,} rows would take "
            f"~{sizes.due / capped.rows_per_s:.0f} s"
        )
    return {
        "title": f"Producer: move {sizes.due:,} due messages, ours vs the audit's original SQL",
        "params": {
            **asdict(sizes),
            "our_batch": OUR_BATCH,
            "original_batch": ORIGINAL_BATCH,
            "idle_samples": IDLE_SAMPLES,
            "pk_only_batched_cap_s": PK_ONLY_BATCHED_CAP_S,
        },
        "table": table,
        "more_tables": [{"title": "Producer: one idle invocation", "rows": idle_rows}],
        "comparisons": comparisons,
        "drains": [{**asdict(d), "rows_per_s": d.rows_per_s} for d in drains.values()],
        "pgmq_share_s": pgmq_s,
        "seed_s": seed_s,
        "campaign_messages_size": table_size,
        "notes": notes,
    }


def plot(result: dict[str, Any], path: Path) -> None:
    """Rows/s of every drain (log scale: the sides differ by orders of magnitude)."""
    drains = result["drains"]
    machine = result["machine"]
    common.bar_chart(
        path,
        [_short(d["label"]) + ("\n(time-capped)" if d["capped"] else "") for d in drains],
        [d["rows_per_s"] for d in drains],
        title=result["title"],
        ylabel="rows moved per second (log scale)",
        colors=["tab:green" if d["system"] == "ours" else "tab:gray" for d in drains],
        log=True,
        footnote=f"{machine['cpu_model']}, {machine['cpu_logical']} CPUs, "
        f"PostgreSQL {machine['postgresql']}; ours also writes one PGMQ message per row",
    )


def _short(label: str) -> str:
    return label.replace("original (", "original\n(").replace(", batch", "\nbatch")
