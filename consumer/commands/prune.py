"""`campaignq prune`."""

from __future__ import annotations

import argparse

from ..ops.migrate import connect
from ..ops.prune import DEFAULT_BATCH_SIZE, prune_archives
from ._args import duration_s, positive_int
from ._common import database_url, settings_from

HELP = "delete archived queue messages older than a retention (the PGMQ archive otherwise grows forever)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--older-than",
        type=duration_s,
        required=True,
        metavar="DURATION",
        help="retention: delete what was archived longer ago than this, e.g. 7d",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=DEFAULT_BATCH_SIZE,
        metavar="N",
        help=f"rows deleted per transaction (default {DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument("--dry-run", action="store_true", help="count what would be deleted; delete nothing")


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    with connect(database_url(settings)) as conn:
        results = prune_archives(
            conn, older_than_s=args.older_than, batch_size=args.batch_size, dry_run=args.dry_run
        )
    for result in results:
        cutoff = result.before.isoformat(timespec="seconds")
        if args.dry_run:
            oldest = (
                result.oldest_archived_at.isoformat(timespec="seconds") if result.oldest_archived_at else "-"
            )
            print(
                f"pgmq.a_{result.queue_name}: would delete {result.prunable} archived before {cutoff} "
                f"(oldest {oldest})"
            )
        else:
            print(f"pgmq.a_{result.queue_name}: deleted {result.deleted} archived before {cutoff}")
    return 0
