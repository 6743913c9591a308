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
   ``consumer.producer.enqueue_due``, exactly what production runs. Original: the sweep,
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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import psycopg

from bench import common
from consumer.producer import enqueue_due

ORIGINAL_SQL = common.load_queries(Path(__file__).resolve().parent / "sql" / "original_producer.sql")

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


FULL = Sizes(due=100_000, running_runs=4, history=400_000, history_runs=40, not_due=5_000,
             stale=1_000, paused_due=2_000, leads=100_000, configs=6)
QUICK = Sizes(due=10_000, running_runs=4, history=40_000, history_runs=40, not_due=500,
              stale=100, paused_due=200, leads=10_000, configs=6)


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

_SEED = """
CREATE TEMP TABLE ws AS SELECT gen_random_uuid() AS id FROM generate_series(1, 3);
INSERT INTO inboxes (workspace_id, name, provider, instance)
SELECT (SELECT id FROM ws ORDER BY id OFFSET g %% 3 LIMIT 1), 'inbox ' || g, 'evolution', 'inst-' || g
  FROM generate_series(1, %(configs)s) g;
INSERT INTO campaign_configs (workspace_id, name, ai_model, system_prompt, inbox_id, split_messages, max_parts)
SELECT i.workspace_id, 'campaign ' || i.instance, 'openai/gpt-4o-mini',
       'You write short, friendly WhatsApp messages in Brazilian Portuguese for {name}.',
       i.id, (row_number() OVER ()) %% 2 = 0, 3
  FROM inboxes i;
CREATE TEMP TABLE config_seq AS
SELECT (row_number() OVER (ORDER BY id)) - 1 AS rn, id FROM campaign_configs;

CREATE TEMP TABLE run_seq (kind text, rn int, id uuid);
WITH spec(kind, status, n) AS (
    VALUES ('running', 'running', %(running_runs)s), ('history', 'completed', %(history_runs)s),
           ('paused', 'paused', 1)
), made AS (
    INSERT INTO campaign_runs (config_id, status, started_at, finished_at)
    SELECT c.id, s.status, now() - interval '2 hours' - (s.kind = 'history')::int * interval '30 days',
           CASE WHEN s.status = 'completed' THEN now() - interval '1 day' END
      FROM spec s
     CROSS JOIN LATERAL generate_series(0, s.n - 1) g
      JOIN config_seq c ON c.rn = g %% %(configs)s
    RETURNING id, status
)
INSERT INTO run_seq
SELECT CASE status WHEN 'running' THEN 'running' WHEN 'completed' THEN 'history' ELSE 'paused' END,
       (row_number() OVER (PARTITION BY status ORDER BY id)) - 1, id
  FROM made;

INSERT INTO leads (workspace_id, name, phone, custom_fields)
SELECT (SELECT id FROM ws ORDER BY id LIMIT 1), 'Lead ' || g, '+5511' || (900000000 + g),
       jsonb_build_object('city', 'São Paulo', 'segment', 'retail', 'score', g %% 100)
  FROM generate_series(1, %(leads)s) g;
CREATE TEMP TABLE lead_seq AS SELECT (row_number() OVER (ORDER BY id)) - 1 AS rn, id FROM leads;
CREATE UNIQUE INDEX ON lead_seq (rn);

-- Terminal history: run k holds a contiguous block of leads, so no lead repeats in a run.
INSERT INTO campaign_messages (run_id, lead_id, status, scheduled_at, retry_count, error_message,
                               generated_message, parts, parts_sent, ai_tokens_used, ai_ms, send_ms,
                               sent_at, finished_at)
SELECT r.id, l.id, x.status, x.scheduled_at, (x.status = 'failed')::int * 3,
       CASE x.status WHEN 'failed' THEN 'OpenRouter error: 502' WHEN 'skipped' THEN 'too old' END,
       CASE WHEN x.status = 'sent' THEN x.text END,
       CASE WHEN x.status = 'sent' THEN jsonb_build_array(x.text) END,
       (x.status = 'sent')::int, 180 + g %% 120, 900 + g %% 1500, 150 + g %% 300,
       CASE WHEN x.status = 'sent' THEN x.scheduled_at + interval '3 seconds' END,
       x.scheduled_at + interval '3 seconds'
  FROM generate_series(0, %(history)s - 1) g
  JOIN run_seq r ON r.kind = 'history' AND r.rn = g / (%(history)s / %(history_runs)s)
  JOIN lead_seq l ON l.rn = g %% %(leads)s
 CROSS JOIN LATERAL (
       SELECT CASE WHEN g %% 50 = 0 THEN 'failed' WHEN g %% 50 = 1 THEN 'skipped' ELSE 'sent' END AS status,
              now() - interval '1 day' * (1 + g %% 60) - interval '1 second' * (g %% 3600) AS scheduled_at,
              'Oi Lead ' || g || '! Vi que você trabalha com varejo em São Paulo e pensei que nossa '
              || 'nova condição para lojistas pode ajudar neste fim de ano. Posso te mandar os detalhes?'
              AS text) x;

-- The live part: due (1-40 min ago), not yet due, stale (2-3 h ago), and a paused run's due rows.
INSERT INTO campaign_messages (run_id, lead_id, status, scheduled_at)
SELECT r.id, l.id, 'pending', now() - interval '1 minute' - interval '1 second' * ((g * 7919) %% 2340)
  FROM generate_series(0, %(due)s - 1) g
  JOIN run_seq r ON r.kind = 'running' AND r.rn = g %% %(running_runs)s
  JOIN lead_seq l ON l.rn = g %% %(leads)s;
INSERT INTO campaign_messages (run_id, lead_id, status, scheduled_at)
SELECT r.id, l.id, 'pending', now() + interval '1 hour' + interval '1 second' * (g %% 18000)
  FROM generate_series(0, %(not_due)s - 1) g
  JOIN run_seq r ON r.kind = 'running' AND r.rn = g %% %(running_runs)s
  JOIN lead_seq l ON l.rn = (%(due)s + g) %% %(leads)s;
INSERT INTO campaign_messages (run_id, lead_id, status, scheduled_at)
SELECT r.id, l.id, 'pending', now() - interval '2 hours' - interval '1 second' * (g %% 3600)
  FROM generate_series(0, %(stale)s - 1) g
  JOIN run_seq r ON r.kind = 'running' AND r.rn = g %% %(running_runs)s
  JOIN lead_seq l ON l.rn = (%(due)s + %(not_due)s + g) %% %(leads)s;
INSERT INTO campaign_messages (run_id, lead_id, status, scheduled_at)
SELECT r.id, l.id, 'pending', now() - interval '10 minutes'
  FROM generate_series(0, %(paused_due)s - 1) g
  JOIN run_seq r ON r.kind = 'paused'
  JOIN lead_seq l ON l.rn = g %% %(leads)s;

UPDATE campaign_runs r
   SET leads_total = c.n,
       leads_processed = CASE WHEN r.status = 'completed' THEN c.n ELSE 0 END
  FROM (SELECT run_id, count(*)::int AS n FROM campaign_messages GROUP BY run_id) c
 WHERE c.run_id = r.id;

ALTER TABLE campaign_messages SET (autovacuum_enabled = false);
ALTER TABLE campaign_runs SET (autovacuum_enabled = false);
ALTER TABLE pgmq.q_campaign_messages SET (autovacuum_enabled = false);
"""


def seed(url: str, sizes: Sizes) -> None:
    """Fill a migrated database; set-based SQL (generate_series), a few seconds per 100k rows."""
    if sizes.history % sizes.history_runs:
        raise ValueError("history must be a multiple of history_runs")
    with common.connect(url) as conn:
        with conn.transaction():
            for statement in _SEED.split(";\n"):
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


def _ours(conn: psycopg.Connection[Any], batch: int) -> int:
    return enqueue_due(conn, batch)


def _original(conn: psycopg.Connection[Any], batch: int) -> int:
    """One Edge Function invocation: the sweep, then the atomic selection (two statements)."""
    params = {"batch_size": batch, "one_hour_ago": dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)}
    conn.execute(ORIGINAL_SQL["original_stale_sweep"], params)
    row = conn.execute(ORIGINAL_SQL["original_select"], params).fetchone()
    return int(row[0]) if row else 0


def _invoke(side: Side) -> Callable[[psycopg.Connection[Any], int], int]:
    return _ours if side.system == "ours" else _original


def drain(url: str, side: Side) -> Drain:
    """Repeat one invocation until it moves nothing, or until ``side.cap_s`` has passed."""
    invoke = _invoke(side)
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
    return Drain(side.key, side.label, side.system, side.indexes, side.batch, rows, calls, seconds, capped)


def idle_latency_ms(url: str, side: Side) -> list[float]:
    """Invocations that find nothing to do, in steady state (after VACUUM, as autovacuum would).

    Always at the side's production batch size (ours 5,000, original 100): this is the
    call the scheduler repeats every few seconds.
    """
    invoke = _invoke(side)
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
        statuses = {str(s): int(n) for s, n in conn.execute(
            "SELECT status, count(*) FROM campaign_messages GROUP BY status ORDER BY status")}
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


def run(quick: bool) -> dict[str, Any]:
    sizes = QUICK if quick else FULL
    drains: dict[str, Drain] = {}
    states: dict[str, EndState] = {}
    timings: dict[str, float] = {}
    with common.fresh_database("producer_seed") as seed_url:
        timings["seed_s"], _ = common.timed(lambda: seed(seed_url, sizes))
        with common.connect(seed_url) as conn:
            size = conn.execute("SELECT pg_size_pretty(pg_total_relation_size('campaign_messages'))").fetchone()
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
                drains[side.key] = result
    check_end_states(states, sizes)
    return _report(sizes, drains, timings, str(size[0]) if size else "?")


def _report(sizes: Sizes, drains: dict[str, Drain], timings: dict[str, float], table_size: str) -> dict[str, Any]:
    ratio_of: dict[str, float] = {}
    comparisons: list[dict[str, Any]] = []
    for pairing, ours, original in PAIRINGS:
        ratio = drains[ours].rows_per_s / drains[original].rows_per_s
        ratio_of.setdefault(original, ratio)
        comparisons.append({"pairing": pairing, "ours": ours, "original": original,
                            "ours_rows_per_s": drains[ours].rows_per_s,
                            "original_rows_per_s": drains[original].rows_per_s,
                            "ours_over_original_rows_per_s": ratio})
    table: list[dict[str, Any]] = []
    for drain_ in drains.values():
        table.append({
            "measurement": drain_.label + (" (time-capped)" if drain_.capped else ""),
            "calls": drain_.calls,
            "rows moved": drain_.rows,
            "seconds": drain_.seconds,
            "rows/s": drain_.rows_per_s,
            "ours ÷ original": (f"{ratio_of[drain_.side]:.2f}x rows/s" if drain_.side in ratio_of else ""),
        })
    ours_idle = statistics.median(drains["ours_batched"].idle_ms)
    for key in sorted(IDLE_SIDES, key=list(drains).index):
        samples = drains[key].idle_ms
        if not samples:
            continue
        median = statistics.median(samples)
        idle_ratio = "" if key == "ours_batched" else f"{ours_idle / median:.3f}x latency"
        table.append({"measurement": f"idle call: {drains[key].label}", "calls": len(samples),
                      "ms/call (median)": median, "ms/call (p95)": common.percentile(samples, 0.95),
                      "ours ÷ original": idle_ratio})
        if key != "ours_batched":
            comparisons.append({"pairing": f"idle call vs {key}", "ours_ms": ours_idle, "original_ms": median,
                                "ours_over_original_latency": ours_idle / median})
    capped = drains["original_pk_only_batched"]
    notes = [
        f"data: {sizes.due:,} due pending rows in {sizes.running_runs} running runs + {sizes.history:,} "
        f"terminal rows in {sizes.history_runs} completed runs + {sizes.not_due:,} not due, "
        f"{sizes.stale:,} stale, {sizes.paused_due:,} in a paused run; {sizes.leads:,} leads, "
        f"{sizes.configs} configs/inboxes; campaign_messages {table_size}; seeded in {timings['seed_s']:.0f} s",
        "ours does strictly more work: it also writes one PGMQ message per row (checked); the original "
        "had no queue",
        "every complete side ended with the same rows moved and skipped (checked by md5 of the ids)",
        "original: audit's SQL (bench/sql/original_producer.sql) with the indexes the audit lists as "
        "existing; 'PK only' = no index but primary keys",
    ]
    if capped.capped:
        notes.append(f"original PK-only batch-100 drain stopped after {capped.seconds:.0f} s "
                     f"({capped.rows:,} rows, {capped.calls} calls); its rows/s is the rate over that span, "
                     f"and draining all {sizes.due:,} would take ~{sizes.due / capped.rows_per_s:.0f} s")
    return {
        "title": f"Producer: move {sizes.due:,} due messages (ours vs the audit's original SQL)",
        "params": {**asdict(sizes), "our_batch": OUR_BATCH, "original_batch": ORIGINAL_BATCH,
                   "idle_samples": IDLE_SAMPLES, "pk_only_batched_cap_s": PK_ONLY_BATCHED_CAP_S},
        "table": table,
        "comparisons": comparisons,
        "drains": [{**asdict(d), "rows_per_s": d.rows_per_s} for d in drains.values()],
        "seed_s": timings["seed_s"],
        "campaign_messages_size": table_size,
        "notes": notes,
    }


def plot(result: dict[str, Any], path: Path) -> None:
    """Rows/s of every drain (log scale: the sides differ by orders of magnitude)."""
    drains = result["drains"]
    machine = result["machine"]
    common.bar_chart(
        path,
        [d["label"].replace(", batch", "\nbatch") + ("\n(time-capped)" if d["capped"] else "") for d in drains],
        [d["rows_per_s"] for d in drains],
        title=result["title"],
        ylabel="rows moved per second (log scale)",
        colors=["tab:green" if d["system"] == "ours" else "tab:gray" for d in drains],
        log=True,
        footnote=f"{machine['cpu_model']}, {machine['cpu_logical']} CPUs, PostgreSQL {machine['postgresql']}; "
                 "ours also writes one PGMQ message per row",
    )
