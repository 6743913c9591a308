"""The Python floor: the least a Python consumer can spend per message, started beside campaignq.

Why: issue 15 asks for campaignq's consumer CPU per message to be at most 1.5x that of "a
minimal loop in bench/ (asyncio + aiohttp + psycopg, batched read → the same HTTP calls →
batched archive, no validation, no logging) measured beside it in the same run". The
absolute numbers of a shared 2-core box move from run to run; the ratio to a floor measured
minutes apart on the same server, simulator and data does not move nearly as much.

How: the loop itself is bench/floor_loop.py, run as its own process (``python -m
bench.floor_loop``) so /proc times it exactly as it times a `campaignq consume`. This
module starts it against a benchmark database and a simulator; bench/cost.py measures it
(`cost.measure(side="floor")`) with the same seeding, producer, governance rows and
counters as the consumer. What the loop does per message: campaignq's AI request (same
JSON shape; the strict parts schema when the campaign splits), then one send per part;
per read one ``pgmq.read`` joined to the rows it needs; per flush one ``pgmq.archive(ids[])``
and one ``UPDATE … FROM unnest(…)``.

Sizes: 64 in flight, reads of up to 64 (`cost.CONCURRENCY`, `cost.BATCH`).
"""

from __future__ import annotations

from bench import fleet
from consumer.devtools.processes import Child, child_env

READY_LINE = "floor: ready"  # printed by bench/floor_loop.py once connected


def start_floor(
    url: str, ai_base_url: str, whatsapp_base_url: str, *, concurrency: int, batch: int, label: str
) -> Child:
    """``python -m bench.floor_loop`` (see bench/floor_loop.py) on `url`'s queue; returns at once:
    the loop polls an empty queue, so messages queued afterwards are found."""
    return fleet.spawn_in_tree(
        f"{label}-floor",
        [
            "-m",
            "bench.floor_loop",
            "--database-url",
            url,
            "--ai-base-url",
            ai_base_url,
            "--ai-key",
            fleet.AI_KEY,
            "--whatsapp-base-url",
            whatsapp_base_url,
            "--whatsapp-key",
            fleet.WHATSAPP_KEY,
            "--concurrency",
            str(concurrency),
            "--batch",
            str(batch),
        ],
        env=child_env({}),
        tree=None,
    )
