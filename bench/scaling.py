"""Scaling: throughput against concurrency and against processes, next to the two ceilings.

Why: a consumer at AI latency L with C slots can do at most C / L messages per second
(Little's law) and at most what the provider's rate limit allows. We claim it follows the
first line until the second one binds, from 1 slot to 256 and from 1 process to 4 — i.e.
no hidden serialisation (a lock, a pool, a read loop that waits for the slowest message).

How: AI latency 2 s (±10 %), 0.2 s per send, split on (2 AI requests per message), so
one message takes ~4.4 s unloaded. The provider budget is ``BENCH_RPM`` (6,000 requests a
minute → 50 msg/s), split evenly between processes as an operator must (aiolimiter is
per process). Each point is a fresh run of max(6, 4 x slots) messages queued at once;
msg/s is the steady rate (all slots busy, first and last waves excluded).

* concurrency 1, 8, 32, 128, 256 in one process;
* 1-4 processes at concurrency 64 each.

"% of bound" divides by slots ÷ the latency each point measured (slot utilisation: Little's
law with the real latency, which includes any wait for the rate limiter); "% of min line"
divides by min(slots ÷ unloaded latency, rate limit): the plotted ceiling.

Sizes: BENCH_SCALING_CONCURRENCY (1,8,32,128,256), BENCH_SCALING_PROCESSES (1,2,3,4),
BENCH_RPM (6000).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import common, fleet

SEND_LATENCY_S = 0.2
PER_PROCESS_CONCURRENCY = 64
AI_REQUESTS_PER_MESSAGE = 2  # split on: generate + split


def run(quick: bool) -> dict[str, Any]:
    load = fleet.other_load()
    latency = 0.2 if quick else 2.0
    concurrencies = fleet.env_ints("BENCH_SCALING_CONCURRENCY", [1, 8, 64] if quick else [1, 8, 32, 128, 256])
    process_counts = fleet.env_ints("BENCH_SCALING_PROCESSES", [1, 2] if quick else [1, 2, 3, 4])
    rpm = fleet.env_int("BENCH_RPM", 12_000 if quick else 6_000)
    rate_limit = rpm / 60 / AI_REQUESTS_PER_MESSAGE
    points: list[dict[str, Any]] = []
    with fleet.simulator(ai_latency_s=latency, send_latency_s=SEND_LATENCY_S) as sim:
        with common.fresh_database("scaling") as url:
            for concurrency in concurrencies:
                points.append(_point(url, sim, "concurrency", 1, concurrency, rpm))
            for processes in process_counts:
                points.append(_point(url, sim, "processes", processes, PER_PROCESS_CONCURRENCY, rpm))
    unloaded = min(p["latency_s"] for p in points if p["latency_s"])
    for p in points:
        slots = p["processes"] * p["concurrency"]
        p["little_line"] = slots / unloaded
        p["ceiling"] = min(p["little_line"], rate_limit)
        p["pct_of_ceiling"] = 100 * p["steady_rate"] / p["ceiling"]
    table = [
        {
            "sweep": p["sweep"],
            "processes": p["processes"],
            "concurrency": p["concurrency"],
            "messages": p["messages"],
            "msg/s (steady)": p["steady_rate"],
            "msg/s (whole run)": p["rate"],
            "latency s": p["latency_s"],
            "% of bound": p["pct_of_bound"],
            "Little line msg/s": p["little_line"],
            "rate limit msg/s": rate_limit,
            "% of min line": p["pct_of_ceiling"],
            "CPU ms/msg": p["cpu_ms"],
        }
        for p in points
    ]
    return {
        "load_at_start": load,
        "title": f"Scaling at AI latency {latency:g} s: concurrency and processes vs Little's law "
        "and the rate limit",
        "params": {
            "ai_latency_s": latency,
            "send_latency_s": SEND_LATENCY_S,
            "rpm_total": rpm,
            "rate_limit_msg_per_s": rate_limit,
            "unloaded_latency_s": unloaded,
        },
        "table": table,
        "points": points,
        "notes": [
            f"unloaded latency {unloaded:.2f} s per message (the lowest measured); rate limit {rpm:,} AI "
            f"requests/min in total = {rate_limit:g} msg/s at {AI_REQUESTS_PER_MESSAGE} requests per "
            "message, split evenly between processes",
            "% of bound = steady msg/s ÷ (slots ÷ that point's own measured latency): slot utilisation; "
            "% of min line = steady msg/s ÷ min(slots ÷ unloaded latency, rate limit)",
        ],
    }


def _point(
    url: str, sim: fleet.SimulatorProcess, sweep: str, processes: int, concurrency: int, rpm: int
) -> dict[str, Any]:
    slots = processes * concurrency
    messages = max(6, 4 * slots)
    print(
        f"  {sweep}: {processes} process(es) x concurrency {concurrency}, {messages:,} messages …", flush=True
    )
    m = fleet.measure(
        url,
        [sim],
        label=f"scaling {processes}x{concurrency}",
        messages=messages,
        processes=processes,
        concurrency=concurrency,
        settings={"ai_requests_per_minute": max(1, rpm // processes)},
    )
    return {
        "sweep": sweep,
        "processes": processes,
        "concurrency": concurrency,
        "messages": m.timing.messages,
        "steady_rate": m.timing.steady_rate,
        "rate": m.timing.rate,
        "latency_s": m.mean_latency_s,
        "little_bound": m.little_bound,
        "pct_of_bound": 100 * m.timing.steady_rate / m.little_bound if m.little_bound else None,
        "cpu_ms": 1000 * m.consumer_cpu_s / max(1, m.timing.messages),
        "peak_rss_mb": m.peak_rss_mb,
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = result["params"]
    points = result["points"]
    machine = result["machine"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, sweep, key, xlabel in (
        (left, "concurrency", "concurrency", "concurrency (one process)"),
        (right, "processes", "processes", f"consumer processes (concurrency {PER_PROCESS_CONCURRENCY} each)"),
    ):
        chosen = [p for p in points if p["sweep"] == sweep]
        if not chosen:
            continue
        xs = [p[key] for p in chosen]
        ax.plot(xs, [p["steady_rate"] for p in chosen], "o-", color="tab:green", label="measured (steady)")
        ax.plot(
            xs,
            [p["little_line"] for p in chosen],
            "--",
            color="tab:blue",
            label="Little's law: slots ÷ latency",
        )
        ax.axhline(params["rate_limit_msg_per_s"], color="tab:red", linestyle=":", label="AI rate limit")
        for p in chosen:
            ax.annotate(
                f"{p['pct_of_ceiling']:.0f}%",
                (p[key], p["steady_rate"]),
                textcoords="offset points",
                xytext=(0, -14),
                ha="center",
                fontsize=8,
            )
        if sweep == "concurrency":
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel(xlabel)
        ax.set_ylabel("messages per second")
        ax.legend(fontsize=8)
    left.set_title("One process, more slots (log-log)", fontsize=10)
    right.set_title("More processes, the rate-limit budget split between them", fontsize=10)
    fig.suptitle(result["title"], fontsize=11)
    fig.text(
        0.01,
        0.01,
        f"{machine['cpu_model']}, {machine['cpu_logical']} CPUs, PostgreSQL {machine['postgresql']}; "
        f"AI {params['ai_latency_s']:g} s, send {params['send_latency_s']:g} s, split on; "
        "% = of min(Little, limit)",
        fontsize=7,
    )
    fig.tight_layout(rect=(0, 0.04, 1, 0.95))
    fig.savefig(path, dpi=120)
    plt.close(fig)
