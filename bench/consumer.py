"""Consumer throughput vs the audited sequential design, and memory at high concurrency.

Why: audit problem 1 is the whole reason this project exists — one message at a time,
~5 messages a minute per instance. Issue 3 claims one `campaignq consume` process at
concurrency 64 is ≥ 50x that design at 2 s of AI latency and reaches ≥ 85 % of the
Little's-law bound (concurrency ÷ per-message latency); issue 5 asks for the ratio at
0.5 / 2 / 5 s. Memory: at concurrency 256 over 10,000 messages the process must stay
under 200 MB and not grow between the first and the last thousand.

How, per AI latency (same run, same data):
1. One database seeded once with a running run of N messages (split on, 2-3 bubbles each);
   each side works in its own byte-identical clone.
2. Ours: one `campaignq consume --concurrency 64` subprocess, idle and connected, then the
   producer queues the whole run at once; timed by the database (queued_at → finished_at).
3. Theirs: ``bench/sequential.py`` (the audit's design, back-to-back invocations of 5) on
   the first ``BENCH_BASELINE_MESSAGES`` of the same run. It is latency-bound (each
   message costs generate + split + sends, strictly in sequence), so a sample gives its
   rate: running it over all 1,000 messages would take over an hour at 2 s.
Both sides use the same simulator process (AI latency ±10 % jitter, 0.2 s per send,
typing delays off) over loopback HTTP.

Sizes: BENCH_MESSAGES (1,000), BENCH_LATENCIES (0.5,2,5), BENCH_CONCURRENCY (64),
BENCH_BASELINE_MESSAGES (10), BENCH_RSS_MESSAGES (10,000), BENCH_RSS_CONCURRENCY (256).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import common, fleet, sequential
from bench.producer import prepare_original

SEND_LATENCY_S = 0.2
RATIO_TARGET = 50.0
LITTLE_TARGET = 0.85
RSS_TARGET_MB = 200.0


@dataclass(frozen=True)
class Sizes:
    messages: int
    latencies: list[float]
    concurrency: int
    baseline_messages: int
    rss_messages: int
    rss_concurrency: int
    rss_latency_s: float


def sizes(quick: bool) -> Sizes:
    if quick:
        return Sizes(
            messages=fleet.env_int("BENCH_MESSAGES", 150),
            latencies=fleet.env_floats("BENCH_LATENCIES", [0.2]),
            concurrency=fleet.env_int("BENCH_CONCURRENCY", 64),
            baseline_messages=fleet.env_int("BENCH_BASELINE_MESSAGES", 5),
            rss_messages=fleet.env_int("BENCH_RSS_MESSAGES", 600),
            rss_concurrency=fleet.env_int("BENCH_RSS_CONCURRENCY", 256),
            rss_latency_s=0.2,
        )
    return Sizes(
        messages=fleet.env_int("BENCH_MESSAGES", 1_000),
        latencies=fleet.env_floats("BENCH_LATENCIES", [0.5, 2.0, 5.0]),
        concurrency=fleet.env_int("BENCH_CONCURRENCY", 64),
        baseline_messages=fleet.env_int("BENCH_BASELINE_MESSAGES", 10),
        rss_messages=fleet.env_int("BENCH_RSS_MESSAGES", 10_000),
        rss_concurrency=fleet.env_int("BENCH_RSS_CONCURRENCY", 256),
        rss_latency_s=2.0,
    )


def run(quick: bool) -> dict[str, Any]:
    load = fleet.other_load()
    s = sizes(quick)
    comparisons: list[dict[str, Any]] = []
    with fleet.simulator(ai_latency_s=s.latencies[0], send_latency_s=SEND_LATENCY_S) as sim:
        with common.fresh_database("consumer_seed") as seed_url:
            seeded = fleet.seed_run(seed_url, s.messages, split=True)
            for latency in s.latencies:
                sim.configure(ai_latency_s=latency, send_latency_s=SEND_LATENCY_S)
                print(f"  AI latency {latency:g} s: ours, {s.messages:,} messages …", flush=True)
                with common.clone_database(seed_url, f"ours_{latency:g}") as url:
                    ours = fleet.measure(
                        url,
                        [sim],
                        label=f"ours {latency:g}s",
                        messages=s.messages,
                        concurrency=s.concurrency,
                        seeded=seeded,
                    )
                print(f"  AI latency {latency:g} s: sequential design, {s.baseline_messages} messages …")
                with common.clone_database(seed_url, f"seq_{latency:g}") as url:
                    prepare_original(url, "audited")
                    sim.reset()
                    theirs = sequential.run(
                        url,
                        ai_base_url=sim.ai_base_url,
                        whatsapp_base_url=sim.base_url,
                        ai_key=fleet.AI_KEY,
                        whatsapp_key=fleet.WHATSAPP_KEY,
                        max_messages=s.baseline_messages,
                    )
                comparisons.append(_compare(latency, ours, theirs))
        print(f"  memory: concurrency {s.rss_concurrency}, {s.rss_messages:,} messages …", flush=True)
        sim.configure(ai_latency_s=s.rss_latency_s, send_latency_s=SEND_LATENCY_S)
        with common.fresh_database("consumer_rss") as url:
            rss_run = fleet.measure(
                url, [sim], label="rss", messages=s.rss_messages, concurrency=s.rss_concurrency
            )
    memory = _memory(rss_run, s)
    result = _report(s, comparisons, memory)
    result["params"]["load_at_start"] = load
    return result


def _compare(latency: float, ours: fleet.Measurement, theirs: sequential.SequentialResult) -> dict[str, Any]:
    bound = ours.little_bound
    return {
        "ai_latency_s": latency,
        "ours": {**ours.row(), "parts": ours.timing.parts, "failed": ours.timing.failed},
        "ours_rate": ours.timing.rate,
        "ours_steady_rate": ours.timing.steady_rate,
        "ours_latency_s": ours.mean_latency_s,
        "little_bound": bound,
        "little_efficiency": ours.timing.steady_rate / bound if bound else None,
        "little_efficiency_whole_run": ours.timing.rate / bound if bound else None,
        "ours_cpu_ms_per_msg": 1000 * ours.consumer_cpu_s / max(1, ours.timing.messages),
        "ours_peak_rss_mb": ours.peak_rss_mb,
        "duplicates": ours.extra["duplicates"],
        "theirs_rate": theirs.rate,
        "theirs_messages": theirs.messages,
        "theirs_failed": theirs.failed,
        "theirs_invocations": theirs.invocations,
        "theirs_per_message_s": statistics.mean(theirs.per_message_s) if theirs.per_message_s else None,
        "ratio": ours.timing.rate / theirs.rate if theirs.rate else None,
        "ratio_steady": ours.timing.steady_rate / theirs.rate if theirs.rate else None,
    }


def _rss_at(run: fleet.Measurement, done_target: int) -> float:
    """Consumer RSS (MB) at the moment `done_target` messages had finished."""
    progress = run.extra["progress"]
    when = next((t for t, done in progress if done >= done_target), progress[-1][0] if progress else 0.0)
    samples = run.extra["rss_samples"]
    before = [b for t, b in samples if t <= when]
    return float(before[-1] if before else samples[0][1]) / 2**20


def _memory(run: fleet.Measurement, s: Sizes) -> dict[str, Any]:
    first = _rss_at(run, min(1_000, s.rss_messages // 10))
    last = _rss_at(run, s.rss_messages - min(1_000, s.rss_messages // 10))
    return {
        "messages": run.timing.messages,
        "concurrency": s.rss_concurrency,
        "ai_latency_s": s.rss_latency_s,
        "peak_rss_mb": run.peak_rss_mb,
        "rss_after_first_thousand_mb": first,
        "rss_at_last_thousand_mb": last,
        "growth_mb": last - first,
        "msg_per_s": run.timing.rate,
        "steady_msg_per_s": run.timing.steady_rate,
        "little_efficiency": run.timing.steady_rate / run.little_bound if run.little_bound else None,
        "cpu_ms_per_msg": 1000 * run.consumer_cpu_s / max(1, run.timing.messages),
        "samples": [(round(t, 2), round(b / 2**20, 1)) for t, b in run.extra["rss_samples"]],
        "progress": [
            (round(t, 2), d) for t, d in run.extra["progress"][:: max(1, len(run.extra["progress"]) // 400)]
        ],
    }


def _report(s: Sizes, comparisons: list[dict[str, Any]], memory: dict[str, Any]) -> dict[str, Any]:
    table = [
        {
            "AI latency s": c["ai_latency_s"],
            "ours msg/s": c["ours_rate"],
            "ours steady msg/s": c["ours_steady_rate"],
            "sequential msg/s": c["theirs_rate"],
            "ratio": c["ratio"],
            "latency s/msg": c["ours_latency_s"],
            "Little bound msg/s": c["little_bound"],
            "% of bound (steady)": 100 * c["little_efficiency"] if c["little_efficiency"] else None,
            "% of bound (whole run)": 100 * c["little_efficiency_whole_run"]
            if c["little_efficiency_whole_run"]
            else None,
            "CPU ms/msg": c["ours_cpu_ms_per_msg"],
        }
        for c in comparisons
    ]
    memory_rows = [
        {
            "memory run": f"concurrency {memory['concurrency']}, {memory['messages']:,} msgs, "
            f"AI {memory['ai_latency_s']:g} s",
            "peak RSS MB": memory["peak_rss_mb"],
            "RSS after first 1k MB": memory["rss_after_first_thousand_mb"],
            "RSS at last 1k MB": memory["rss_at_last_thousand_mb"],
            "growth MB": memory["growth_mb"],
            "msg/s": memory["msg_per_s"],
            "% of bound (steady)": 100 * memory["little_efficiency"] if memory["little_efficiency"] else None,
        }
    ]
    notes = [
        f"ours: one `campaignq consume` at concurrency {s.concurrency}, split on, {s.messages:,} messages "
        f"queued at once; sequential: the audit's design (bench/sequential.py), batches of "
        f"{sequential.BATCH_SIZE} back to back, first {s.baseline_messages} messages of the same data",
        f"simulator: AI latency ±10 % jitter, {SEND_LATENCY_S:g} s per send, typing delays off on both "
        "sides; ratio = ours whole-run msg/s ÷ sequential msg/s",
        "Little bound = concurrency ÷ mean per-message latency measured inside the consumer "
        "(campaignq_message_seconds); steady = between the c-th and the (N-c)-th finish (c = concurrency): "
        "all slots busy, first and last waves excluded",
        f"targets: ratio ≥ {RATIO_TARGET:g}x at 2 s, ≥ {LITTLE_TARGET:.0%} of the Little bound, "
        f"peak RSS < {RSS_TARGET_MB:g} MB with no growth between the first and last thousand",
    ]
    return {
        "title": "Consumer: one process at concurrency 64 vs the audited sequential design",
        "params": {
            "messages": s.messages,
            "latencies": s.latencies,
            "concurrency": s.concurrency,
            "baseline_messages": s.baseline_messages,
            "send_latency_s": SEND_LATENCY_S,
            "rss_messages": s.rss_messages,
            "rss_concurrency": s.rss_concurrency,
        },
        "table": table,
        "more_tables": [{"title": "Consumer memory", "rows": memory_rows}],
        "comparisons": comparisons,
        "memory": memory,
        "notes": notes,
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    comparisons = result["comparisons"]
    memory = result["memory"]
    machine = result["machine"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    labels = [f"{c['ai_latency_s']:g} s" for c in comparisons]
    x = range(len(labels))
    width = 0.38
    ours = [c["ours_rate"] for c in comparisons]
    theirs = [c["theirs_rate"] for c in comparisons]
    bars_ours = left.bar(
        [i - width / 2 for i in x], ours, width, label="ours (1 process, c=64)", color="tab:green"
    )
    left.bar([i + width / 2 for i in x], theirs, width, label="audited sequential design", color="tab:gray")
    for bar, c in zip(bars_ours, comparisons, strict=True):
        if c["ratio"]:
            left.annotate(
                f"{c['ratio']:.0f}x",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                textcoords="offset points",
                xytext=(0, 8),
                ha="center",
                va="bottom",
                fontsize=9,
                fontweight="bold",
            )
    bounds = [c["little_bound"] for c in comparisons]
    left.scatter(
        [i - width / 2 for i in x], bounds, marker="_", s=600, color="black", label="Little's-law bound"
    )
    left.set_xticks(list(x), labels)
    left.set_xlabel("AI latency per call (split on: two calls per message)")
    left.set_ylabel("messages per second (log scale)")
    left.set_yscale("log")
    left.set_title("Throughput, same data, same run", fontsize=10)
    left.legend(fontsize=8)

    samples = memory["samples"]
    right.plot([t for t, _ in samples], [mb for _, mb in samples], color="tab:blue", label="RSS (MB)")
    right.axhline(200, color="tab:red", linestyle="--", linewidth=1, label="target 200 MB")
    right.set_ylim(0, max(220, max((mb for _, mb in samples), default=0) * 1.2))
    right.set_xlabel("seconds since the run was queued")
    right.set_ylabel("resident memory, MB")
    right.set_title(
        f"Memory at concurrency {memory['concurrency']}, {memory['messages']:,} messages "
        f"(peak {memory['peak_rss_mb']:.0f} MB, growth {memory['growth_mb']:+.1f} MB)",
        fontsize=10,
    )
    done = right.twinx()
    progress = memory["progress"]
    done.plot(
        [t for t, _ in progress],
        [d for _, d in progress],
        color="tab:green",
        alpha=0.5,
        label="messages done",
    )
    done.set_ylabel("messages done")
    right.legend(loc="lower right", fontsize=8)
    fig.suptitle(result["title"], fontsize=11)
    fig.text(
        0.01,
        0.01,
        f"{machine['cpu_model']}, {machine['cpu_logical']} CPUs, PostgreSQL {machine['postgresql']}; "
        "simulator on loopback, 0.2 s per send",
        fontsize=7,
    )
    fig.tight_layout(rect=(0, 0.04, 1, 0.95))
    fig.savefig(path, dpi=120)
    plt.close(fig)
