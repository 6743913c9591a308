"""`campaignq produce`."""

from __future__ import annotations

import argparse
import asyncio
import signal
import threading
from types import FrameType

from ..ops.migrate import connect
from ..runtime.pregenerate import run_pregenerate
from ..runtime.producer import ProducerLoop, enqueue_due
from ..settings import Settings
from ._args import duration_s
from ._common import database_url, settings_from

HELP = "move due campaign_messages into the PGMQ queue (once, or every few seconds)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="run the producer once and print the count")
    mode.add_argument(
        "--every",
        type=duration_s,
        metavar="DURATION",
        dest="producer_interval_s",
        help="run in a loop, e.g. --every 5s (env CAMPAIGNQ_PRODUCER_INTERVAL_S, default 5s)",
    )
    parser.add_argument(
        "--pregenerate",
        action="store_true",
        help="also run the batch pre-generation tick (`campaignq pregenerate`) every "
        "CAMPAIGNQ_PREGEN_INTERVAL_S in this process",
    )
    parser.add_argument(
        "--limit",
        type=int,
        dest="producer_batch_size",
        metavar="N",
        help="most rows queued per call (env CAMPAIGNQ_PRODUCER_BATCH_SIZE, default 5000)",
    )


def run(args: argparse.Namespace) -> int:
    settings = settings_from(
        args, producer_interval_s="producer_interval_s", producer_batch_size="producer_batch_size"
    )
    url = database_url(settings)
    if args.once:
        with connect(url) as conn:
            print(
                enqueue_due(
                    conn,
                    settings.producer_batch_size,
                    horizon_s=settings.queue_horizon_s,
                    min_depth=settings.queue_min_depth,
                )
            )
        return 0
    stop_event = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        stop_event.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    pregen_thread = None
    if args.pregenerate:
        pregen_thread = threading.Thread(
            target=pregenerate_until, args=(settings, url, stop_event), name="pregenerate", daemon=True
        )
        pregen_thread.start()
    also = " with pre-generation" if args.pregenerate else ""
    print(
        f"campaignq produce: queueing due messages every {settings.producer_interval_s:g} s "
        f"(at most {settings.producer_batch_size} per tick){also}; Ctrl-C or SIGTERM stops",
        flush=True,
    )
    loop = ProducerLoop(
        url=url,
        interval_s=settings.producer_interval_s,
        batch_size=settings.producer_batch_size,
        stop_event=stop_event,
        queue_horizon_s=settings.queue_horizon_s,
        queue_min_depth=settings.queue_min_depth,
    )
    loop.run()
    if pregen_thread is not None:
        pregen_thread.join(timeout=30)
    print(f"producer stopped; queued {loop.queued_total} messages")
    return 0


def pregenerate_until(settings: Settings, url: str, stop_event: threading.Event) -> None:
    """The producer's optional pre-generation tick, in its own thread and event loop.

    A failed tick (database or provider down) is logged and retried at the next one: the
    producer itself must never stop because the Batch API is unavailable.
    """
    from loguru import logger

    while not stop_event.is_set():
        try:
            asyncio.run(run_pregenerate(settings, url, once=True))
        except Exception as exc:
            logger.warning(
                "pregenerate tick failed ({}); retrying in {:.0f} s", exc, settings.pregen_interval_s
            )
        stop_event.wait(settings.pregen_interval_s)
