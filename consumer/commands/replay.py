"""`campaignq replay`."""

from __future__ import annotations

import argparse
import json
import uuid

from ..ops.migrate import connect
from ..ops.replay import DEFAULT_BATCH_SIZE, ReplayFilters, format_report, replay_dead_letters
from ._args import duration_s, positive_int
from ._common import database_url, settings_from

HELP = (
    "move dead letters back to campaign_messages (rows back to queued, attempts reset); "
    "all, or filtered by run / reason / age, with --dry-run"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", type=uuid.UUID, metavar="RUN_ID", help="only dead letters of this run")
    parser.add_argument(
        "--reason", metavar="TEXT", help="only this dead-letter reason (max_attempts, permanent, …)"
    )
    parser.add_argument(
        "--older-than",
        type=duration_s,
        metavar="DURATION",
        help="only letters dead-lettered at least this long ago, e.g. 30m",
    )
    parser.add_argument(
        "--newer-than",
        type=duration_s,
        metavar="DURATION",
        help="only letters dead-lettered within this window, e.g. 2h",
    )
    parser.add_argument("--limit", type=positive_int, metavar="N", help="examine at most N dead letters")
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=DEFAULT_BATCH_SIZE,
        metavar="N",
        help=f"dead letters per transaction (default {DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument("--dry-run", action="store_true", help="print what would move; change nothing")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    filters = ReplayFilters(
        run_id=args.run,
        reason=args.reason,
        older_than_s=args.older_than,
        newer_than_s=args.newer_than,
        limit=args.limit,
    )
    with connect(database_url(settings)) as conn:
        report = replay_dead_letters(conn, filters, dry_run=args.dry_run, batch_size=args.batch_size)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print("\n".join(format_report(report)))
    return 0
