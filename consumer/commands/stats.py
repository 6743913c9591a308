"""`campaignq stats`."""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from typing import Any

import psycopg
from rich.console import Console
from rich.live import Live
from rich.text import Text

from ..errors import DatabaseUnavailableError, one_line
from ..ops.migrate import connect
from ..ops.stats import DEFAULT_RUNS_LIMIT, collect_stats, render_stats
from ..settings import Settings
from ._args import duration_s, positive_int
from ._common import database_url, settings_from

HELP = "queues, run progress, per-workspace totals and dead letters (table, --json, --watch)"
DEFAULT_WATCH_S = 2.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run", type=uuid.UUID, metavar="RUN_ID", help="show this run (and its workspace) only"
    )
    parser.add_argument("--json", action="store_true", help="print JSON (one document per refresh)")
    parser.add_argument(
        "--watch",
        nargs="?",
        const=DEFAULT_WATCH_S,
        type=duration_s,
        metavar="SECONDS",
        help=f"refresh every SECONDS (default {DEFAULT_WATCH_S:g}) until Ctrl-C",
    )
    parser.add_argument(
        "--runs",
        type=positive_int,
        default=DEFAULT_RUNS_LIMIT,
        metavar="N",
        help=f"most runs listed (default {DEFAULT_RUNS_LIMIT})",
    )


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    url = database_url(settings)
    if args.watch is None:
        with connect(url) as conn:
            _emit(_collect(conn, settings, args), as_json=args.json)
        return 0
    try:
        _watch(url, settings, args)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a watch ends
    return 0


def _collect(conn: psycopg.Connection[Any], settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    return collect_stats(conn, prices=settings.model_prices, run_id=args.run, runs_limit=args.runs)


def _emit(stats: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(stats, indent=2), flush=True)
    else:
        _console().print(render_stats(stats))


def _watch(url: str, settings: Settings, args: argparse.Namespace) -> None:
    """Refresh until interrupted; a lost database shows as a line and is retried, not fatal."""
    interval_s = max(0.2, float(args.watch))
    if args.json:
        _watch_json(url, settings, args, interval_s)
    else:
        _watch_table(url, settings, args, interval_s)


def _watch_json(url: str, settings: Settings, args: argparse.Namespace, interval_s: float) -> None:
    """JSON lines: one complete document per refresh, for piping into jq."""
    with connect(url) as conn:
        while True:
            print(json.dumps(_collect(conn, settings, args)), flush=True)
            time.sleep(interval_s)


def _watch_table(url: str, settings: Settings, args: argparse.Namespace, interval_s: float) -> None:
    conn: psycopg.Connection[Any] | None = None
    try:
        with Live(Text("loading…"), console=_console(), auto_refresh=False) as live:
            while True:
                try:
                    if conn is None or conn.closed:
                        conn = connect(url)
                    live.update(render_stats(_collect(conn, settings, args)), refresh=True)
                except (psycopg.OperationalError, DatabaseUnavailableError) as exc:
                    message = one_line(exc)
                    live.update(Text(f"{message}; retrying every {interval_s:g} s"), refresh=True)
                    if conn is not None:
                        conn.close()
                    conn = None
                time.sleep(interval_s)
    finally:
        if conn is not None:
            conn.close()


def _console() -> Console:
    """A terminal's own width; piped output gets room for the widest table instead of 80."""
    return Console() if sys.stdout.isatty() else Console(width=140)
