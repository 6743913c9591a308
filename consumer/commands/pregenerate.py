"""`campaignq pregenerate`."""

from __future__ import annotations

import argparse
import asyncio
import signal

from ..runtime.pregenerate import run_pregenerate
from ._args import duration_s
from ._common import database_url, settings_from

HELP = "generate messages due hours ahead through the provider's Batch API (about half price)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="one tick: poll open batches, submit one new batch")
    mode.add_argument(
        "--every",
        type=duration_s,
        metavar="DURATION",
        dest="pregen_interval_s",
        help="loop period, e.g. --every 1m (env CAMPAIGNQ_PREGEN_INTERVAL_S, default 60s)",
    )
    parser.add_argument(
        "--batch-api",
        choices=("auto", "openrouter", "openai", "off"),
        dest="ai_batch_api",
        help="which Batch API (env CAMPAIGNQ_AI_BATCH_API, default auto: by the AI base URL's host)",
    )
    parser.add_argument(
        "--min-ahead",
        type=duration_s,
        metavar="DURATION",
        dest="pregen_min_ahead_s",
        help="only messages due at least this far ahead (env CAMPAIGNQ_PREGEN_MIN_AHEAD_S, default 2h)",
    )


def run(args: argparse.Namespace) -> int:
    settings = settings_from(
        args,
        pregen_interval_s="pregen_interval_s",
        pregen_min_ahead_s="pregen_min_ahead_s",
        ai_batch_api="ai_batch_api",
    )
    url = database_url(settings)

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        return await run_pregenerate(settings, url, once=bool(args.once), stop=stop)

    return asyncio.run(main())
