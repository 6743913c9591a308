"""`campaignq consume`."""

from __future__ import annotations

import argparse

from ..errors import ConfigurationError
from ._common import database_url, settings_from

HELP = "process queued messages: generate with the LLM, split, send over WhatsApp (long-lived)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--concurrency", type=int, help="messages processed at once (env CAMPAIGNQ_CONCURRENCY, 32)"
    )
    parser.add_argument("--batch-size", type=int, help="most messages read per round trip (50)")
    parser.add_argument(
        "--visibility-timeout",
        type=int,
        dest="visibility_timeout_s",
        metavar="SECONDS",
        help="lease length (env CAMPAIGNQ_VISIBILITY_TIMEOUT_S, 120)",
    )
    parser.add_argument(
        "--max-attempts", type=int, help="attempts before dead-lettering (env CAMPAIGNQ_MAX_ATTEMPTS, 3)"
    )
    parser.add_argument(
        "--requests-per-minute",
        type=int,
        dest="ai_requests_per_minute",
        help="AI request budget of this process (env CAMPAIGNQ_AI_REQUESTS_PER_MINUTE)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        dest="drain_timeout_s",
        metavar="SECONDS",
        help="how long SIGTERM waits for in-flight messages (30)",
    )
    parser.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")


def run(args: argparse.Namespace) -> int:
    settings = settings_from(
        args,
        concurrency="concurrency",
        batch_size="batch_size",
        visibility_timeout_s="visibility_timeout_s",
        max_attempts="max_attempts",
        ai_requests_per_minute="ai_requests_per_minute",
        drain_timeout_s="drain_timeout_s",
        metrics_port="metrics_port",
    )
    missing = [
        name
        for name, key in (
            ("CAMPAIGNQ_AI_API_KEY (or OPENROUTER_API_KEY)", settings.ai_key()),
            ("CAMPAIGNQ_WHATSAPP_API_KEY", settings.whatsapp_key()),
        )
        if not key
    ]
    if missing:
        # Without keys every provider call would be refused: stop now, in one line, rather
        # than start and fail message after message (or idle on an empty queue, looking fine).
        raise ConfigurationError(
            f"consume needs the provider keys: set {' and '.join(missing)} "
            "(`campaignq demo` runs everything against the local simulator)"
        )
    # Imported here: `campaignq --help` and the other commands do not load the runtime.
    from ..runtime import eventloop
    from ..runtime.consume import run_consumer

    url = database_url(settings)
    return eventloop.run(run_consumer(settings, url), kind=settings.event_loop)
