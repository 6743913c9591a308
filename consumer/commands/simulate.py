"""`campaignq simulate`."""

from __future__ import annotations

import argparse
import asyncio
import signal

from ..devtools.simulator import FAULT_PROFILES, Simulator, fault_profile
from ..errors import ConfigurationError
from ..logs import configure_logging
from ._args import duration_s

HELP = "run the fake AI + WhatsApp providers on loopback (latency, faults) for demos and tests"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on, 0 for any (default 8080)")
    parser.add_argument(
        "--ai-latency",
        type=duration_s,
        metavar="DURATION",
        help="AI answer latency, e.g. 800ms (default 0)",
    )
    parser.add_argument(
        "--ai-jitter", type=duration_s, metavar="DURATION", help="± random spread on the AI latency"
    )
    parser.add_argument(
        "--send-latency", type=duration_s, metavar="DURATION", help="WhatsApp send latency (default 0)"
    )
    parser.add_argument(
        "--faults",
        choices=sorted(FAULT_PROFILES),
        default="none",
        metavar="PROFILE",
        help=f"random fault profile: {', '.join(FAULT_PROFILES)} (default none)",
    )
    parser.add_argument("--seed", type=int, help="seed the fault dice, for reproducible runs")
    parser.add_argument("--ai-key", help="accept only this AI bearer key (default: any non-empty key)")
    parser.add_argument(
        "--whatsapp-key", help="accept only this WhatsApp apikey (default: any non-empty key)"
    )


def run(args: argparse.Namespace) -> int:
    configure_logging(json_lines=bool(args.log_json), level=args.log_level or "INFO")
    overrides = {
        name: value
        for name, value in (
            ("ai_latency_s", args.ai_latency),
            ("ai_latency_jitter_s", args.ai_jitter),
            ("send_latency_s", args.send_latency),
            ("seed", args.seed),
        )
        if value is not None
    }
    simulator = Simulator(
        host=args.host,
        port=args.port,
        faults=fault_profile(args.faults, **overrides),
        ai_api_key=args.ai_key,
        whatsapp_api_key=args.whatsapp_key,
    )
    asyncio.run(_serve(simulator, profile=args.faults))
    return 0


async def _serve(simulator: Simulator, *, profile: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await simulator.start()
    except OSError as exc:
        raise ConfigurationError(f"simulator cannot listen: {exc.strerror or exc}") from exc
    try:
        print(f"simulator listening on {simulator.base_url} (faults: {profile})", flush=True)
        print(f"CAMPAIGNQ_AI_BASE_URL={simulator.ai_base_url}", flush=True)
        print(f"CAMPAIGNQ_WHATSAPP_BASE_URL={simulator.whatsapp_base_url}", flush=True)
        await stop.wait()
    finally:
        await simulator.stop()
    stats = simulator.stats()
    print(
        f"simulator stopped: {stats['ai']['requests']} AI requests, "
        f"{stats['send']['accepted']} sends accepted, {stats['send']['duplicates']} duplicates",
        flush=True,
    )
