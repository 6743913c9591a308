"""Why fair share is not PGMQ's `read_grouped_rr`: what it does at depth, with numbers.

Issue 12 offered consumer-side grouped reads (`pgmq.read_grouped_rr` with an
`x-pgmq-group` header per workspace) as an alternative to just-in-time queueing, and asked
to check whether a group is blocked while its head message is in flight and how the read
scans at depth. This probe queues the fairness workload (10,000 / 1,000 / 100 messages in
three groups, biggest first) in a scratch queue and measures, on the same queue:

1. what `read_grouped_rr(qty 64)` returns to a first reader (shares per group), and what a
   second reader gets while the first still holds its messages (head of every group in
   flight) — the consumers' concurrency under grouped reads;
2. the time of one read, `read_grouped_rr` vs plain `read`, at that depth (median of
   repeated reads, messages released between reads so the depth stays the same).
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from typing import Any

from psycopg.types.json import Jsonb

from bench import common, fleet

SIZES = {"A": 10_000, "B": 1_000, "C": 100}
QUICK_SIZES = {"A": 1_000, "B": 100, "C": 10}
QTY = 64
SAMPLES = 15
QUEUE = "grouped_probe"


def _queue(conn: Any, sizes: dict[str, int]) -> None:
    conn.execute("SELECT pgmq.create(%s)", (QUEUE,))
    for group, n in sizes.items():  # biggest first, as in bench/fairness.py
        conn.execute(
            "SELECT count(*) FROM pgmq.send_batch(%s, %s::jsonb[], %s::jsonb[])",
            (QUEUE, [Jsonb({"g": group, "i": i}) for i in range(n)], [Jsonb({"x-pgmq-group": group})] * n),
        )


def _groups(rows: list[tuple[Any, ...]]) -> dict[str, int]:
    return dict(Counter(str(r[1]["g"]) for r in rows))


def _median_ms(conn: Any, statement: str) -> float:
    samples = []
    for _ in range(SAMPLES):
        with conn.transaction():
            started = time.perf_counter()
            rows = conn.execute(statement, (QUEUE, 30, QTY)).fetchall()
            samples.append((time.perf_counter() - started) * 1000)
            ids = [r[0] for r in rows]
            conn.execute(
                f"UPDATE pgmq.q_{QUEUE} SET vt = now() - interval '1 s' WHERE msg_id = ANY(%s)",  # noqa: S608 (constant)
                (ids,),
            )
    return round(statistics.median(samples), 2)


def run(quick: bool) -> dict[str, Any]:
    sizes = QUICK_SIZES if quick else SIZES
    load = fleet.other_load()
    with common.fresh_database("grouped") as url, common.connect(url) as first, common.connect(url) as second:
        _queue(first, sizes)
        first.execute("ANALYZE")
        read_rr = "SELECT msg_id, message FROM pgmq.read_grouped_rr(%s, %s, %s)"
        read_plain = "SELECT msg_id, message FROM pgmq.read(%s, %s, %s)"
        held = first.execute(read_rr, (QUEUE, 30, QTY)).fetchall()
        while_held = second.execute(read_rr, (QUEUE, 30, QTY)).fetchall()
        plain_while_held = second.execute(read_plain, (QUEUE, 30, QTY)).fetchall()
        first.execute(f"UPDATE pgmq.q_{QUEUE} SET vt = now() - interval '1 s'")  # noqa: S608 (constant)
        grouped_ms = _median_ms(first, read_rr)
        plain_ms = _median_ms(first, read_plain)
    depth = sum(sizes.values())
    table = [
        {"read": "first reader, read_grouped_rr", "messages": len(held), "by group": _groups(held)},
        {
            "read": "second reader while the first holds them, read_grouped_rr",
            "messages": len(while_held),
            "by group": _groups(while_held),
        },
        {
            "read": "second reader while the first holds them, plain read",
            "messages": len(plain_while_held),
            "by group": _groups(plain_while_held),
        },
    ]
    return {
        "title": f"read_grouped_rr at depth {depth:,} (3 groups), qty {QTY}",
        "table": table,
        "more_tables": [
            {
                "title": "median ms per read at that depth",
                "rows": [
                    {"read": "read_grouped_rr", "ms": grouped_ms},
                    {"read": "plain read", "ms": plain_ms},
                ],
            }
        ],
        "depth": depth,
        "grouped_ms": grouped_ms,
        "plain_ms": plain_ms,
        "load_at_start": load,
        "notes": [f"box load at start: {load}"],
    }
