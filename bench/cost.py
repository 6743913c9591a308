"""Our cost per message: consumer CPU seconds ÷ messages, next to the database's own ceiling.

Why: at 2 s of AI latency a consumer is waiting, not working, so throughput says nothing
about efficiency. With zero-latency providers (the simulator in another process) the
consumer runs flat out and what it spends per message is its own overhead: the number
that decides how many messages one core can move. Target: ≤ 2 ms of consumer CPU per
message. Next to it, the ceiling nothing in Python can beat: a bare PGMQ loop
(``read(qty=100)`` → ``archive(ids[])``, one connection) on the same server.

How: one `campaignq consume` at concurrency 64 (batch 64), a run of N messages queued at
once; CPU = user + sys of the consumer process from /proc (psutil) between queueing and
the last outcome. PostgreSQL's and the simulator's CPU are reported beside it, so the
whole box's cost per message is visible. Split on (generate + split = 2 AI requests, 2-3
sends) and off (1 + 1); once more split on with WARNING logs, to price the per-message log
line. Then py-spy samples a consumer during another split-on run and the stacks are
folded by library and by operation (bench/profile.py).

Sizes: BENCH_COST_MESSAGES (6,000), BENCH_CEILING_MESSAGES (50,000), BENCH_PROFILE_S (10).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from bench import common, fleet, profile

TARGET_MS = 2.0
CONCURRENCY = 64


def ceiling(url: str, messages: int) -> dict[str, Any]:
    """Bare PGMQ on one connection: send_batch N, then read(qty=100) → archive(ids[]) until empty."""
    payload = json.dumps(
        {
            "v": 1,
            "campaign_message_id": "00000000-0000-4000-8000-000000000000",
            "run_id": "00000000-0000-4000-8000-000000000001",
            "lead_id": "00000000-0000-4000-8000-000000000002",
        }
    )
    with common.connect(url) as conn:
        conn.execute("SELECT pgmq.create('bench_ceiling')")
        conn.execute(
            "SELECT count(*) FROM pgmq.send_batch('bench_ceiling', "
            "(SELECT array_agg(%s::jsonb) FROM generate_series(1, %s)))",
            (payload, messages),
        )
        conn.execute("VACUUM ANALYZE pgmq.q_bench_ceiling")
        common.checkpoint()
        pg0 = fleet.postgres_cpu_s(url)
        started = time.perf_counter()
        done = rounds = 0
        while True:
            ids = [
                row[0]
                for row in conn.execute(
                    "SELECT msg_id FROM pgmq.read(queue_name => 'bench_ceiling', vt => 30, qty => 100)"
                ).fetchall()
            ]
            if not ids:
                break
            conn.execute("SELECT pgmq.archive('bench_ceiling', %s::bigint[])", (ids,))
            done += len(ids)
            rounds += 1
        seconds = time.perf_counter() - started
        pg_cpu = fleet.postgres_cpu_s(url) - pg0
    return {
        "messages": done,
        "round_trips": rounds * 2 + 1,
        "seconds": seconds,
        "msg_per_s": done / seconds if seconds else 0.0,
        "wall_us_per_msg": 1e6 * seconds / done if done else None,
        "postgres_cpu_us_per_msg": 1e6 * pg_cpu / done if done else None,
    }


def _row(label: str, m: fleet.Measurement) -> dict[str, Any]:
    n = max(1, m.timing.messages)
    return {
        "measurement": label,
        "messages": m.timing.messages,
        "msg/s": m.timing.rate,
        "consumer CPU ms/msg": 1000 * m.consumer_cpu_s / n,
        "PostgreSQL CPU ms/msg": 1000 * m.postgres_cpu_s / n,
        "simulator CPU ms/msg": 1000 * m.simulator_cpu_s / n,
        "AI req/msg": 2 if "split on" in label else 1,
        "bubbles/msg": m.timing.parts,
        "vs target": f"{'≤' if 1000 * m.consumer_cpu_s / n <= TARGET_MS else '>'} {TARGET_MS:g} ms",
    }


def run(quick: bool) -> dict[str, Any]:
    load = fleet.other_load()
    messages = fleet.env_int("BENCH_COST_MESSAGES", 600 if quick else 6_000)
    ceiling_messages = fleet.env_int("BENCH_CEILING_MESSAGES", 5_000 if quick else 50_000)
    profile_s = float(fleet.env_int("BENCH_PROFILE_S", 2 if quick else 10))
    measurements: dict[str, fleet.Measurement] = {}
    profiled: profile.Profile | None = None
    with fleet.simulator(ai_latency_s=0.0, send_latency_s=0.0) as sim, common.fresh_database("cost") as url:
        # Warm-up: the first run pays for imports, JIT-less caches and the pool's connections.
        fleet.measure(url, [sim], label="warmup", messages=100 if quick else 200, concurrency=CONCURRENCY)
        variants: list[tuple[str, bool, dict[str, Any]]] = [("split off", False, {}), ("split on", True, {})]
        if not quick:  # what the per-message INFO line costs
            variants.append(("split on, WARNING logs", True, {"log_level": "WARNING"}))
        for label, split, settings in variants:
            print(f"  {label}: {messages:,} messages …", flush=True)
            measurements[label] = fleet.measure(
                url,
                [sim],
                label=label,
                messages=messages,
                concurrency=CONCURRENCY,
                split=split,
                settings=settings,
            )
        if profile.available():
            print(f"  profiling a split-on consumer with py-spy for {profile_s:g} s …", flush=True)
            raw = common.OUT_DIR / "logs" / "consumer-profile.raw"
            holder: dict[str, Path | None] = {}

            def during(consumers: list[fleet.ConsumerProcess]) -> None:
                time.sleep(0.5)  # past the first batch claim
                holder["raw"] = profile.record(consumers[0].pid, raw, duration_s=profile_s)

            rate = measurements["split on"].timing.rate or 500.0
            fleet.measure(
                url,
                [sim],
                label="profiled",
                messages=int(rate * (profile_s + 3)),
                concurrency=CONCURRENCY,
                split=True,
                during=during,
            )
            if holder.get("raw"):
                profiled = profile.summarise(raw)
        print(
            f"  database ceiling: bare PGMQ read(100) → archive(ids[]) of {ceiling_messages:,} …", flush=True
        )
        db = ceiling(url, ceiling_messages)
    result = _report(measurements, db, profiled, messages)
    result["params"]["load_at_start"] = load
    return result


def _report(
    measurements: dict[str, fleet.Measurement],
    db: dict[str, Any],
    profiled: profile.Profile | None,
    messages: int,
) -> dict[str, Any]:
    table = [_row(label, m) for label, m in measurements.items()]
    table.append(
        {
            "measurement": "database ceiling: bare PGMQ read(100) → archive(ids[]), 1 connection",
            "messages": db["messages"],
            "msg/s": db["msg_per_s"],
            "consumer CPU ms/msg": None,
            "PostgreSQL CPU ms/msg": db["postgres_cpu_us_per_msg"] / 1000
            if db["postgres_cpu_us_per_msg"]
            else None,
        }
    )
    more: list[dict[str, Any]] = []
    split_on = measurements["split on"]
    cpu_ms = 1000 * split_on.consumer_cpu_s / max(1, split_on.timing.messages)
    if profiled is not None and profiled.samples:
        more.append(
            {
                "title": f"Where a split-on consumer's CPU goes (py-spy, {profiled.samples:,} samples)",
                "rows": [
                    {
                        "library (innermost frame)": name,
                        "share %": 100 * share,
                        "≈ µs/msg": 1000 * cpu_ms * share,
                    }
                    for name, share in profiled.shares(profiled.self_time)
                ],
            }
        )
        more.append(
            {
                "title": "... and by operation (anywhere on the stack)",
                "rows": [
                    {"operation": name, "share %": 100 * share, "≈ µs/msg": 1000 * cpu_ms * share}
                    for name, share in profiled.shares(profiled.inclusive)
                ],
            }
        )
    notes = [
        f"zero-latency simulator in its own process; one consumer at concurrency {CONCURRENCY}; "
        f"{messages:,} messages per row, queued at once; CPU = user + sys from /proc between queueing and "
        "the last outcome",
        "PostgreSQL and simulator CPU: all processes of the benchmark's own server / simulator over the same "
        "window (they share the 2 cores with the consumer)",
        f"target: ≤ {TARGET_MS:g} ms consumer CPU per message",
    ]
    return {
        "title": "Cost per message: consumer CPU with zero-latency providers, next to the database ceiling",
        "params": {
            "messages": messages,
            "concurrency": CONCURRENCY,
            "ceiling_messages": db["messages"],
        },
        "table": table,
        "more_tables": more,
        "measurements": {label: {**m.row(), **_row(label, m)} for label, m in measurements.items()},
        "ceiling": db,
        "profile": None
        if profiled is None
        else {
            "samples": profiled.samples,
            "self": profiled.shares(profiled.self_time),
            "inclusive": profiled.shares(profiled.inclusive),
            "top_frames": [(f, n) for f, n in profiled.top_frames.most_common(40)],
        },
        "notes": notes,
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    machine = result["machine"]
    measurements = result["measurements"]
    labels = list(measurements)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [1.1, 1]})
    parts = [
        ("consumer CPU ms/msg", "tab:green", "consumer"),
        ("PostgreSQL CPU ms/msg", "tab:blue", "PostgreSQL"),
        ("simulator CPU ms/msg", "tab:gray", "simulator (fake providers)"),
    ]
    bottoms = [0.0] * len(labels)
    for key, color, name in parts:
        values = [measurements[label][key] or 0.0 for label in labels]
        left.bar(labels, values, bottom=bottoms, color=color, label=name)
        bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
    for i, label in enumerate(labels):
        consumer_ms = measurements[label]["consumer CPU ms/msg"]
        left.annotate(f"consumer {consumer_ms:.2f} ms", (i, bottoms[i]), ha="center", va="bottom", fontsize=8)
    left.axhline(
        TARGET_MS, color="tab:red", linestyle="--", linewidth=1, label=f"target {TARGET_MS:g} ms (consumer)"
    )
    left.set_ylabel("CPU ms per message (stacked: whole box)")
    left.set_title("CPU per message, zero-latency providers", fontsize=10)
    left.legend(fontsize=8)
    left.tick_params(axis="x", labelsize=8)

    rates = [measurements[label]["msg/s"] for label in labels] + [result["ceiling"]["msg_per_s"]]
    names = [*labels, "bare PGMQ\nread→archive"]
    bars = right.bar(names, rates, color=["tab:green"] * len(labels) + ["tab:purple"])
    right.bar_label(bars, labels=[f"{r:,.0f}" for r in rates], fontsize=8)
    right.set_yscale("log")
    right.set_ylabel("messages per second (log scale)")
    right.set_title("Throughput: one consumer vs the database ceiling", fontsize=10)
    right.tick_params(axis="x", labelsize=8)
    fig.suptitle(result["title"], fontsize=11)
    fig.text(
        0.01,
        0.01,
        f"{machine['cpu_model']}, {machine['cpu_logical']} CPUs (shared by consumer, PostgreSQL and "
        f"simulator), PostgreSQL {machine['postgresql']}",
        fontsize=7,
    )
    fig.tight_layout(rect=(0, 0.04, 1, 0.95))
    fig.savefig(path, dpi=120)
    plt.close(fig)
