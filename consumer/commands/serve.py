"""`campaignq serve`: the operator console."""

from __future__ import annotations

import argparse

from ..ops.console.server import check_bind, serve
from ._common import database_url, settings_from

HELP = "operator console: live pages and an API for queues, runs, dead letters, budgets and inboxes"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="bind address (env CAMPAIGNQ_CONSOLE_HOST, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (env CAMPAIGNQ_CONSOLE_PORT, 8900; 0 = any free)")


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args, host="console_host", port="console_port")
    config = check_bind(settings)  # refuse a bad bind before starting an embedded database
    return serve(settings, database_url(settings, keep_running=True), config)
