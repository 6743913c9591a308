"""`campaignq migrate`."""

from __future__ import annotations

import argparse

from ..ops.migrate import migrate
from ._common import database_url, settings_from

HELP = "install PGMQ and apply the SQL migrations in db/ (safe to run twice or concurrently)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--schedule-producer",
        action="store_true",
        help="register the producer as a pg_cron job (needs pg_cron on the server)",
    )
    parser.add_argument(
        "--create-roles",
        action="store_true",
        help=(
            "create the least-privilege roles campaignq_worker (consume, produce), campaignq_console "
            "(serve, replay, limits) and campaignq_reader (stats), and their grants"
        ),
    )


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    report = migrate(
        database_url(settings),
        schedule_producer=args.schedule_producer,
        producer_interval_s=settings.producer_interval_s,
        producer_batch_size=settings.producer_batch_size,
        create_roles=args.create_roles,
        pooler=settings.db_pooler,
    )
    applied = ", ".join(report.applied) if report.applied else "none (up to date)"
    print(f"migrations applied: {applied}")
    if report.reapplied:
        print(f"migrations re-applied (superseded text): {', '.join(report.reapplied)}")
    if report.pgmq_installed_by:
        print(f"pgmq installed ({report.pgmq_installed_by})")
    if report.roles_created:
        print(f"roles created: {', '.join(report.roles_created)}")
    if report.cron_job_id is not None:
        print(f"producer scheduled with pg_cron (job {report.cron_job_id})")
    return 0
