"""`campaignq demo`."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console

from ..devtools.demo import DemoOptions, run_demo
from ..devtools.simulator import FAULT_PROFILES
from ._args import duration_s, positive_int
from ._common import database_url, settings_from

HELP = (
    "the main job end to end on this machine: embedded PostgreSQL, simulator, producer and "
    "consumers on a seeded campaign, with a progress bar and a report"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = DemoOptions()
    parser.add_argument(
        "--leads", type=positive_int, default=defaults.leads, metavar="N", help="leads due now (500)"
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=defaults.workers,
        metavar="K",
        help=f"`campaignq consume` processes ({defaults.workers})",
    )
    parser.add_argument(
        "--concurrency",
        type=positive_int,
        default=defaults.concurrency,
        metavar="C",
        help=f"messages in flight per consumer ({defaults.concurrency})",
    )
    parser.add_argument(
        "--ai-latency",
        type=duration_s,
        default=defaults.ai_latency_s,
        metavar="S",
        help=f"simulated AI latency per call, e.g. 2 or 800ms ({defaults.ai_latency_s:g} s)",
    )
    parser.add_argument(
        "--send-latency",
        type=duration_s,
        default=defaults.send_latency_s,
        metavar="S",
        help=f"simulated WhatsApp send latency ({defaults.send_latency_s * 1000:g} ms)",
    )
    parser.add_argument(
        "--faults",
        choices=sorted(FAULT_PROFILES),
        default=defaults.faults,
        metavar="PROFILE",
        help="inject the simulator's random faults so retries and dead letters show: "
        f"{', '.join(FAULT_PROFILES)} (none)",
    )
    parser.add_argument(
        "--keep-server",
        action="store_true",
        help="leave the embedded PostgreSQL running afterwards, for psql",
    )
    parser.add_argument("--seed", type=int, help="seed the demo data and the simulator's fault dice")
    parser.add_argument(
        "--serve",
        action="store_true",
        help="keep the operator console (whose URL the demo prints) open after the report, until Ctrl-C",
    )
    parser.add_argument(
        "--console-port",
        type=int,
        default=defaults.console_port,
        metavar="PORT",
        help="the console's port (default: any free one)",
    )


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    options = DemoOptions(
        leads=args.leads,
        workers=args.workers,
        concurrency=args.concurrency,
        ai_latency_s=args.ai_latency,
        send_latency_s=args.send_latency,
        faults=args.faults,
        keep_server=args.keep_server,
        seed=args.seed,
        serve=args.serve,
        console_port=args.console_port,
    )
    console = Console() if sys.stdout.isatty() else Console(width=160)
    url = database_url(settings, keep_running=options.keep_server)
    return run_demo(settings, url, options, console)
