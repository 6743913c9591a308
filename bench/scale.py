"""Scale: every operator read and the producer's tick at 1M pending / 5M archived (issue 25).

Why this benchmark: the views, `stats`, the console and the metrics sampler were written
against databases of a few thousand rows. At a deployment's size (1,000,000 pending messages
in 1,000 running runs of 20 workspaces, 5,000,000 archived queue messages, 100,000 dead
letters, 2,000,000 finished rows in completed runs over 7 days) they took seconds and grew
with history. This measures each read with its plan's top line, before and after migration
0020 on the same data, and again with the finished history deleted, so "independent of
history size" is a measured claim.

How:
1. One database migrated up to (not including) 0020 — the *before* schema — seeded
   set-based from ``bench/sql/scale_seed.sql``, VACUUM ANALYZE.
2. *before*: each read once under ``EXPLAIN (ANALYZE)`` (its top line, and whether JIT
   compiled), then timed ``SAMPLES`` times (median). The producer's ticks run with
   auto_explain on nested statements so JIT inside the function shows too.
3. ``migrate`` applies 0020 (its duration is recorded: it builds indexes on this data),
   ANALYZE, *after*: the same reads.
4. The finished history (its rows and runs) is deleted, VACUUM ANALYZE, *after, no
   history*: the same reads again.
Reads that must stay correct are checked (the 500-tick queues exactly 500 and is rolled back).
"""

from __future__ import annotations

import contextlib
import os
import re
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import psycopg

from bench import common
from consumer import sql as sqlfiles
from consumer.ops.console.store import Store
from consumer.ops.migrate import migrate
from consumer.ops.stats import collect_stats

SQL_DIR = Path(__file__).resolve().parent / "sql"
SEED_SQL = common.load_queries(SQL_DIR / "scale_seed.sql")
READS_SQL = common.load_queries(SQL_DIR / "scale_reads.sql")

SCALE_MIGRATION = 20  # 0020_scale_reads: the "after" side; "before" is every migration below it
SAMPLES = 3
TICK_SAMPLES = 7
GOAL_READ_MS = 300.0
GOAL_IDLE_TICK_MS = 20.0
GOAL_TICK_500_MS = 100.0
# The "before" side runs the named queries of this commit (the branch point of issue 25's
# work): 0020 came with rewrites of stats' and the console's statements, not only the schema.
BASELINE_REF_ENV = "BENCH_SCALE_BASELINE_REF"
BASELINE_REF = "6393f36"
# Reduce the size on a slow box: BENCH_SCALE_DIVISOR=5 seeds a fifth of everything.
DIVISOR_ENV = "BENCH_SCALE_DIVISOR"


@dataclass(frozen=True)
class Sizes:
    workspaces: int
    leads: int
    running_runs: int
    pending: int
    history_runs: int
    history: int
    history_days: int
    archived: int
    dead: int

    def divided(self, divisor: int) -> Sizes:
        return Sizes(
            workspaces=self.workspaces,
            leads=max(1_000, self.leads // divisor),
            running_runs=max(20, self.running_runs // divisor),
            pending=self.pending // divisor,
            history_runs=max(10, self.history_runs // divisor),
            history=self.history // divisor,
            history_days=self.history_days,
            archived=self.archived // divisor,
            dead=self.dead // divisor,
        )


FULL = Sizes(
    workspaces=20,
    leads=200_000,
    running_runs=1_000,
    pending=1_000_000,
    history_runs=200,
    history=2_000_000,
    history_days=7,
    archived=5_000_000,
    dead=100_000,
)
QUICK = FULL.divided(50)

Conn = psycopg.Connection[tuple[Any, ...]]


@dataclass(frozen=True)
class Read:
    """One operator read: how the code issues it (named query, or a Python call) and who runs it."""

    name: str
    who: str  # stats --json, console, view, metrics sample, producer
    sql: str | None = None
    params: dict[str, Any] | None = None
    call: Callable[[str], Any] | None = None  # given the database URL (the Python-side reads)
    goal_ms: float = GOAL_READ_MS


def _stats_document(url: str) -> Any:
    with psycopg.connect(url, autocommit=True) as conn:
        return collect_stats(conn, prices={})


def _console_snapshot(url: str) -> Any:
    store = Store(url, prices={}, max_size=1)
    store.open()
    try:
        return store.snapshot()
    finally:
        store.close()


STATS_PARAMS: dict[str, dict[str, Any]] = {
    "stats_queues": {},
    "stats_runs": {"run_id": None, "limit": 20},
    "stats_workspaces": {"workspace_id": None},
    "stats_workspace_unpriced": {"workspace_id": None},
    "stats_dead_letters_by_reason": {},
    "stats_dead_letters_by_run": {"run_id": None, "limit": 20},
    "stats_ai_costs": {"run_id": None, "limit": 20},
    "stats_workspace_ai_costs": {"workspace_id": None},
    "stats_inboxes": {"limit": 100},
    "limits_usage": {},
    "limits_holders": {},
    "stats_fair_share": {},
}
CONSOLE_PARAMS: dict[str, dict[str, Any]] = {
    "console_throughput": {},
    "console_inboxes": {},
    "console_workspaces": {},
    "console_rate_limits": {},
    "console_audit_recent": {"limit": 50},
    "console_dead_letters": {
        "run_id": None,
        "reason": None,
        "error_class": None,
        "older_than_s": None,
        "newer_than_s": None,
        "limit": 100,
    },
}
SAMPLE_QUERIES = ("sample_queues", "sample_run_ai_costs", "sample_workspace_ai_costs")


def reads() -> list[Read]:
    found: list[Read] = [
        Read("stats --json (whole document)", "stats --json", call=_stats_document),
        Read("GET /api/stats + snapshot (sampler)", "console", call=_console_snapshot),
    ]
    found += [
        Read(name, "stats --json", sql=sqlfiles.query(name), params=p) for name, p in STATS_PARAMS.items()
    ]
    found += [Read(name, "console", sql=sqlfiles.query(name), params=p) for name, p in CONSOLE_PARAMS.items()]
    found += [Read(name, "metrics sample", sql=sqlfiles.query(name), params={}) for name in SAMPLE_QUERIES]
    found += [
        Read(name.removeprefix("view_"), "view", sql=text, params={})
        for name, text in READS_SQL.items()
        if name.startswith("view_")
    ]
    return found


# --- measuring ----------------------------------------------------------------------------------


def _explain(conn: Conn, statement: str, params: dict[str, Any]) -> tuple[str, bool]:
    """The plan's top line (actual time included) and whether JIT compiled anything."""
    lines = [str(r[0]) for r in conn.execute("EXPLAIN (ANALYZE) " + statement, params)]
    return lines[0].strip(), any(line.strip().startswith("JIT:") for line in lines)


def _time_sql(conn: Conn, statement: str, params: dict[str, Any], samples: int) -> list[float]:
    times: list[float] = []
    for _ in range(samples):
        started = time.perf_counter()
        conn.execute(statement, params).fetchall()
        times.append((time.perf_counter() - started) * 1000)
    return times


def measure_read(url: str, read: Read) -> dict[str, Any]:
    row: dict[str, Any] = {"read": read.name, "who": read.who}
    if read.call is not None:
        read.call(url)  # warm
        times = []
        for _ in range(SAMPLES):
            started = time.perf_counter()
            read.call(url)
            times.append((time.perf_counter() - started) * 1000)
        row.update(ms=round(statistics.median(times), 1), plan=None, jit=None)
    else:
        assert read.sql is not None
        with common.connect(url) as conn:
            plan, jit = _explain(conn, read.sql, read.params or {})
            times = _time_sql(conn, read.sql, read.params or {}, SAMPLES)
        row.update(ms=round(statistics.median(times), 1), plan=plan, jit=jit)
    row["samples_ms"] = [round(t, 1) for t in times]
    row["goal_ms"] = read.goal_ms
    return row


def measure_ticks(url: str) -> list[dict[str, Any]]:
    """The producer with nothing to do (sweep and demand probes only), the sweep alone, and a
    tick that queues 500 (rows made due in a transaction that is rolled back each time).

    EXPLAIN cannot see inside plpgsql (and auto_explain is not in every build), so JIT is
    shown by timing each tick twice: as the server runs it, and with ``SET jit = off`` in the
    session (which a function's own ``SET jit`` clause overrides)."""
    rows: list[dict[str, Any]] = []
    for key, name, goal in (
        ("producer_tick", "idle producer tick", GOAL_IDLE_TICK_MS),
        ("producer_sweep", "stale sweep, nothing stale", GOAL_IDLE_TICK_MS),
    ):
        with common.connect(url) as conn:
            conn.execute(READS_SQL[key]).fetchall()
            times = _time_sql(conn, READS_SQL[key], {}, TICK_SAMPLES)
            conn.execute("SET jit = off")
            no_jit = _time_sql(conn, READS_SQL[key], {}, TICK_SAMPLES)
        rows.append(_tick_row(name, times, no_jit, goal))
    wrong: list[int | None] = []
    row = _tick_row(
        "producer tick queueing 500",
        _ticks_500(url, jit=True, wrong=wrong),
        _ticks_500(url, jit=False, wrong=wrong),
        GOAL_TICK_500_MS,
    )
    row["queued_other_than_500"] = wrong  # must stay empty
    rows.append(row)
    return rows


def _ticks_500(url: str, *, jit: bool, wrong: list[int | None]) -> list[float]:
    """Each sample must queue exactly 500; any other count is appended to ``wrong``."""
    times: list[float] = []
    for sample in range(TICK_SAMPLES + 1):
        with common.connect(url) as conn:
            if not jit:
                conn.execute("SET jit = off")
            conn.execute("BEGIN")
            conn.execute(SEED_SQL["make_due"], {"runs": 20, "rows": 600})
            started = time.perf_counter()
            queued = conn.execute(READS_SQL["producer_tick"]).fetchone()
            elapsed = (time.perf_counter() - started) * 1000
            conn.execute("ROLLBACK")
        if queued is None or int(queued[0]) != 500:  # recorded, not raised: a long run keeps its data
            wrong.append(None if queued is None else int(queued[0]))
        if sample > 0:  # the first one warms the caches
            times.append(elapsed)
    return times


def _tick_row(name: str, times: list[float], no_jit: list[float], goal: float) -> dict[str, Any]:
    ms = statistics.median(times)
    no_jit_ms = statistics.median(no_jit)
    return {
        "read": name,
        "who": "producer",
        "ms": round(ms, 2),
        "session_jit_off_ms": round(no_jit_ms, 2),
        "plan": f"median {ms:.1f} ms as run, {no_jit_ms:.1f} ms with the session's jit off",
        "jit": None,
        "samples_ms": [round(t, 2) for t in times],
        "goal_ms": goal,
    }


def baseline_queries(ref: str) -> dict[str, str]:
    """The named queries of db/*queries.sql at ``ref`` (git), as the code then ran them.

    ``stats_no_jit`` did not exist: the old transaction began without it, so it is a no-op."""
    header = re.compile(r"^-- name: (?P<name>[a-z_][a-z0-9_]*)\s*$", re.MULTILINE)
    named: dict[str, str] = {"stats_no_jit": "SELECT 1"}
    for file_name in sqlfiles.QUERY_FILES:
        text = subprocess.run(
            ["git", "show", f"{ref}:db/{file_name}"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout
        headers = list(header.finditer(text))
        for index, found in enumerate(headers):
            end = headers[index + 1].start() if index + 1 < len(headers) else len(text)
            named[found["name"]] = text[found.end() : end].strip()
    return named


def measure_all(url: str, label: str, queries: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Every read; with ``queries``, the named statements are those instead of this checkout's."""
    print(f"  measuring {label} …", flush=True)
    common.checkpoint()
    with contextlib.ExitStack() as stack:
        if queries is not None:
            stack.enter_context(mock.patch.object(sqlfiles, "queries", lambda: queries))
        rows = [measure_read(url, read) for read in reads()]
    rows += measure_ticks(url)
    for row in rows:
        row["side"] = label
    return rows


# --- the database ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _migrations_before(version: int) -> Iterator[None]:
    """`migrate` sees only the migrations below ``version``: the schema before it."""
    every = sqlfiles.migrations
    with mock.patch.object(sqlfiles, "migrations", lambda: [m for m in every() if m.version < version]):
        yield


def seed(url: str, sizes: Sizes) -> dict[str, float]:
    params = asdict(sizes)
    seconds: dict[str, float] = {}
    with common.connect(url) as conn:
        for name, statement in SEED_SQL.items():
            if not name.startswith("seed_"):
                continue
            started = time.perf_counter()
            conn.execute(statement, params)
            seconds[name] = round(time.perf_counter() - started, 1)
            print(f"  {name}: {seconds[name]} s", flush=True)
        started = time.perf_counter()
        conn.execute("VACUUM ANALYZE")
        seconds["vacuum_analyze"] = round(time.perf_counter() - started, 1)
    return seconds


def drop_history(url: str) -> float:
    started = time.perf_counter()
    with common.connect(url) as conn:
        conn.execute(READS_SQL["drop_history_messages"])
        conn.execute(READS_SQL["drop_history_runs"])
        conn.execute("VACUUM ANALYZE")
    return round(time.perf_counter() - started, 1)


def run(quick: bool) -> dict[str, Any]:
    divisor = int(os.environ.get(DIVISOR_ENV, "1"))
    sizes = QUICK if quick else FULL.divided(divisor) if divisor > 1 else FULL
    load_at_start = os.getloadavg()
    with contextlib.ExitStack() as stack:
        with _migrations_before(SCALE_MIGRATION):  # only while fresh_database migrates
            url = stack.enter_context(common.fresh_database("scale"))
        seed_s = seed(url, sizes)
        table_mb = _sizes_mb(url)
        baseline_ref = os.environ.get(BASELINE_REF_ENV, BASELINE_REF)
        before = measure_all(url, "before", baseline_queries(baseline_ref))
        started = time.perf_counter()
        migrate(url)  # applies 0020 (and only it) to the seeded database
        migrate_s = round(time.perf_counter() - started, 1)
        with common.connect(url) as conn:
            conn.execute("VACUUM ANALYZE")  # as after the seed: the new indexes' visibility and stats
        after = measure_all(url, "after")
        drop_s = drop_history(url)
        no_history = measure_all(url, "after, no history")
    return _result(
        sizes,
        divisor,
        baseline_ref,
        load_at_start,
        seed_s,
        table_mb,
        migrate_s,
        drop_s,
        before,
        after,
        no_history,
    )


def _sizes_mb(url: str) -> dict[str, float]:
    with common.connect(url) as conn:
        rows = conn.execute(READS_SQL["table_sizes"]).fetchall()
    return {str(name): float(mb) for name, mb in rows}


def _result(
    sizes: Sizes,
    divisor: int,
    baseline_ref: str,
    load_at_start: tuple[float, float, float],
    seed_s: dict[str, float],
    table_mb: dict[str, float],
    migrate_s: float,
    drop_s: float,
    before: list[dict[str, Any]],
    after: list[dict[str, Any]],
    no_history: list[dict[str, Any]],
) -> dict[str, Any]:
    by_name_after = {row["read"]: row for row in after}
    by_name_nohist = {row["read"]: row for row in no_history}
    table = []
    for row in before:
        a = by_name_after[row["read"]]
        n = by_name_nohist[row["read"]]
        table.append(
            {
                "read": row["read"],
                "who": row["who"],
                "before ms": row["ms"],
                "after ms": a["ms"],
                "before/after": round(row["ms"] / a["ms"], 1) if a["ms"] else None,
                "after, no history ms": n["ms"],
                "goal ms": row["goal_ms"],
                "met": a["ms"] <= row["goal_ms"],
                "JIT before/after": f"{_yes(row['jit'])}/{_yes(a['jit'])}",
            }
        )
    plans = [
        {"read": row["read"], "before": row["plan"], "after": by_name_after[row["read"]]["plan"]}
        for row in before
        if row["plan"]
    ]
    return {
        "title": f"Operator reads at scale ({_size_label(sizes, divisor)} size)",
        "sizes": asdict(sizes),
        "divisor": divisor,
        "baseline": f"migrations below {SCALE_MIGRATION:04d} and the named queries of {baseline_ref}",
        "load_at_start": [round(x, 2) for x in load_at_start],
        "load_note": "shared 2-core box loaded by other engineers' test runs: "
        "compare ratios and plans, not absolute times",
        "seed_s": seed_s,
        "table_mb": table_mb,
        "migrate_0020_s": migrate_s,
        "drop_history_s": drop_s,
        "table": table,
        "more_tables": [{"title": "plan top lines", "rows": plans}],
        "before": before,
        "after": after,
        "after_no_history": no_history,
        "notes": [
            f"load average at start {load_at_start[0]:.2f} on {os.cpu_count()} CPUs (shared box)",
            f"0020 applied to the seeded database in {migrate_s} s (index builds)",
        ],
    }


def _size_label(sizes: Sizes, divisor: int) -> str:
    if sizes == QUICK:
        return "quick"
    return f"1/{divisor}" if divisor > 1 else "full"


def _yes(value: bool | None) -> str:
    return "?" if value is None else "yes" if value else "no"
