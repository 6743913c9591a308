"""One AI budget shared by every consumer: 3 processes, 600 requests/min, one SIGKILLed mid-run.

Why: `CAMPAIGNQ_AI_REQUESTS_PER_MINUTE` alone is per process, so scaling out meant splitting
the provider's budget by hand, a dead process's share was wasted and a new one overshot.
With `rate_limits` row 'ai' every process leases a slice (db/migrations/0008, consumer/runtime/budget.py).

Budget run: a backlog far larger than the budget allows in the run, 3 consumers (own cap 600
rpm each, so the shared row is what binds), one SIGKILLed after `KILL_AT_S`, a new one
started at `JOIN_AT_S` (it must join without overshoot). From the
simulator's own arrival times of AI requests:
* the busiest 5-second window against the budget (bound: 5 s of budget + 1 s of burst);
* the share of the budget used while the backlog waits (goal ≥ 95%), over the whole run
  after the first slice refresh, and split before / after the kill.

Overhead run (same run, one process, no binding limit): end-to-end msg/s and consumer CPU
per message with no `rate_limits` row (the gate is off) vs a row too large to bind (every
request goes through the slice's token bucket and each process refreshes once a second).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from bench import common, fleet

BUDGET_RPM = 600
PROCESSES = 3
RUN_S = 45.0
KILL_AT_S = 18.0
JOIN_AT_S = 30.0
QUICK_RUN_S = 16.0
QUICK_KILL_AT_S = 7.0
QUICK_JOIN_AT_S = 11.0
OVERHEAD_MESSAGES = 3000
QUICK_OVERHEAD_MESSAGES = 600
WINDOW_S = 5.0


def _ai_times(sim: fleet.SimulatorProcess) -> list[float]:
    return sorted(float(r["t"]) for r in sim.request("/_sim/ai-requests")["requests"])


def busiest(times: list[float], window_s: float) -> int:
    best = start = 0
    for end, t in enumerate(times):
        while times[start] <= t - window_s:
            start += 1
        best = max(best, end - start + 1)
    return best


def used_share(times: list[float], start: float, end: float, budget_rpm: int) -> float:
    inside = sum(1 for t in times if start <= t < end)
    return inside / (budget_rpm / 60.0 * (end - start)) if end > start else 0.0


def budget_run(quick: bool, sim: fleet.SimulatorProcess) -> dict[str, Any]:
    run_s, kill_at_s, join_at_s = (
        (QUICK_RUN_S, QUICK_KILL_AT_S, QUICK_JOIN_AT_S) if quick else (RUN_S, KILL_AT_S, JOIN_AT_S)
    )
    backlog = int(BUDGET_RPM / 60 * run_s * 2)
    with common.fresh_database("budget") as url:
        seeded = fleet.seed_run(url, backlog, split=False)
        with common.connect(url) as conn:
            conn.execute(
                "INSERT INTO rate_limits (name, requests_per_minute) VALUES ('ai', %s)", (BUDGET_RPM,)
            )
        fleet.enqueue_all(url)
        sim.reset()
        env = fleet.consumer_env(
            url,
            sim.ai_base_url,
            sim.base_url,
            concurrency=16,
            batch_size=16,
            db_pool_max_size=4,
            ai_requests_per_minute=600,
        )
        consumers = fleet.start_consumers(env, PROCESSES, label="budget")
        started = time.monotonic()
        try:
            time.sleep(kill_at_s)
            killed_at = time.monotonic()
            consumers[0].process.send_signal(signal.SIGKILL)
            time.sleep(max(0.0, started + join_at_s - time.monotonic()))
            joined_at = time.monotonic()
            consumers += fleet.start_consumers(env, 1, label="budget-join")
            time.sleep(max(0.0, started + run_s - time.monotonic()))
            ended = time.monotonic()
            with common.connect(url) as conn:
                holders = conn.execute("SELECT count(*) FROM campaignq_rate_limit_holders").fetchone()
        finally:
            fleet.stop_processes(consumers)
        times = [t for t in _ai_times(sim) if started <= t < ended]
    assert seeded.messages == backlog
    first = times[0] if times else started
    steady_from = first + 1.0  # the first slice refresh (1 s) after the first request
    per_second = [sum(1 for t in times if first + s <= t < first + s + 1) for s in range(int(ended - first))]
    return {
        "budget_rpm": BUDGET_RPM,
        "processes": PROCESSES,
        "backlog": backlog,
        "run_s": round(ended - started, 1),
        "kill_at_s": round(killed_at - started, 1),
        "requests": len(times),
        "busiest_5s": busiest(times, WINDOW_S),
        "budget_5s": BUDGET_RPM / 60 * WINDOW_S,
        "bound_5s": BUDGET_RPM / 60 * (WINDOW_S + 1),
        "used_share_whole": round(used_share(times, steady_from, ended, BUDGET_RPM), 3),
        "used_share_before_kill": round(used_share(times, steady_from, killed_at, BUDGET_RPM), 3),
        "used_share_after_kill": round(used_share(times, killed_at, ended, BUDGET_RPM), 3),
        "used_share_first_5s_after_kill": round(used_share(times, killed_at, killed_at + 5, BUDGET_RPM), 3),
        "join_at_s": round(joined_at - started, 1),
        "busiest_5s_around_join": busiest(
            [t for t in times if joined_at - 5 <= t < joined_at + 10], WINDOW_S
        ),
        "used_share_after_join": round(used_share(times, joined_at, ended, BUDGET_RPM), 3),
        "joined_at_offset_s": round(joined_at - first, 2),
        "holders_at_end": int(holders[0]) if holders else None,
        "per_second": per_second,
        "first_request_s": round(first - started, 2),
        "killed_at_offset_s": round(killed_at - first, 2),
    }


def overhead_run(quick: bool, sim: fleet.SimulatorProcess) -> list[dict[str, Any]]:
    messages = QUICK_OVERHEAD_MESSAGES if quick else OVERHEAD_MESSAGES
    rows: list[dict[str, Any]] = []
    # Alternate the order over two passes: the box is shared, its load moves.
    for label in ("no budget row", "budget row (not binding)", "budget row (not binding)", "no budget row"):
        with common.fresh_database("budget_overhead") as url:
            if label.startswith("budget"):
                with common.connect(url) as conn:
                    conn.execute("INSERT INTO rate_limits (name, requests_per_minute) VALUES ('ai', 6000000)")
            m = fleet.measure(
                url,
                [sim],
                label=label,
                messages=messages,
                processes=1,
                concurrency=64,
                split=False,
                settings={"ai_requests_per_minute": 6_000_000},
            )
        rows.append(
            {
                "variant": label,
                "messages": m.timing.messages,
                "msg/s": round(m.timing.rate, 1),
                "consumer CPU ms/msg": round(1000 * m.consumer_cpu_s / m.timing.messages, 3),
            }
        )
    return rows


def gate_cost_us(requests: int = 200_000) -> dict[str, float]:
    """CPU per request of the shared-budget gate alone (in process, no I/O), vs no budget row.

    The end-to-end overhead runs above sit inside the shared box's noise; this isolates what
    the gate adds to each AI request (the once-a-second refresh is one statement on top).
    """
    import asyncio

    from consumer.runtime.budget import LeaseState, SharedBudget

    async def measure(budget_rpm: int | None) -> float:
        gate = SharedBudget(pool=None, cap_rpm=10**9)
        gate._apply(LeaseState(budget_rpm, budget_rpm, 1, None), time.monotonic())
        started = time.process_time()
        for _ in range(requests):
            await gate.acquire()
        return (time.process_time() - started) / requests * 1e6

    return {
        "no budget row us/request": round(asyncio.run(measure(None)), 3),
        "budget row us/request": round(asyncio.run(measure(10**9)), 3),
    }


def _mean(rows: list[dict[str, Any]], variant: str, key: str) -> float:
    values = [float(r[key]) for r in rows if r["variant"] == variant]
    return sum(values) / len(values)


def run(quick: bool) -> dict[str, Any]:
    load = fleet.other_load()
    with fleet.simulator(ai_latency_s=0.05, send_latency_s=0.01, name="budget-sim") as sim:
        budget = budget_run(quick, sim)
        overhead = overhead_run(quick, sim)
    gate = gate_cost_us()
    off, on = "no budget row", "budget row (not binding)"
    rate_ratio = _mean(overhead, on, "msg/s") / _mean(overhead, off, "msg/s")
    cpu_ratio = _mean(overhead, on, "consumer CPU ms/msg") / _mean(overhead, off, "consumer CPU ms/msg")
    table = [
        {"measure": "busiest 5 s window (requests)", "value": budget["busiest_5s"]},
        {"measure": "budget per 5 s", "value": budget["budget_5s"]},
        {"measure": "bound: 5 s of budget + 1 s burst", "value": budget["bound_5s"]},
        {"measure": "share of budget used, whole run", "value": budget["used_share_whole"]},
        {"measure": "share used before the kill", "value": budget["used_share_before_kill"]},
        {"measure": "share used after the kill", "value": budget["used_share_after_kill"]},
        {
            "measure": "share used, first 5 s after the kill",
            "value": budget["used_share_first_5s_after_kill"],
        },
        {
            "measure": "busiest 5 s window around a new process joining",
            "value": budget["busiest_5s_around_join"],
        },
        {"measure": "share used after the join", "value": budget["used_share_after_join"]},
        {"measure": "slice holders at the end (3 - 1 killed + 1 joined)", "value": budget["holders_at_end"]},
    ]
    return {
        "title": f"Shared AI budget: {PROCESSES} processes, {BUDGET_RPM} rpm, one SIGKILLed",
        "table": table,
        "more_tables": [{"title": "Overhead, one process, limit not binding (same run)", "rows": overhead}],
        "budget": budget,
        "overhead": overhead,
        "gate_cpu_us_per_request": gate,
        "overhead_msg_per_s_ratio": round(rate_ratio, 3),
        "overhead_cpu_per_msg_ratio": round(cpu_ratio, 3),
        "load_at_start": load,
        "notes": [
            f"box load at start: {load}",
            f"with/without budget row: msg/s x{rate_ratio:.3f}, consumer CPU/msg x{cpu_ratio:.3f}",
            f"gate alone, CPU per AI request: {gate}",
        ],
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budget = result["budget"]
    per_second = budget["per_second"]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(range(len(per_second)), per_second, width=0.9, label="AI requests per second (all processes)")
    ax.axhline(
        budget["budget_rpm"] / 60, color="red", linestyle="--", label=f"budget {budget['budget_rpm']} rpm"
    )
    ax.axvline(budget["killed_at_offset_s"], color="black", linestyle=":", label="one process SIGKILLed")
    if "joined_at_offset_s" in budget:
        ax.axvline(budget["joined_at_offset_s"], color="green", linestyle=":", label="a new process joins")
    ax.set_xlabel("seconds since the first request")
    ax.set_ylabel("requests / s")
    ax.set_title(
        f"{result['title']}\nbusiest 5 s: {budget['busiest_5s']} (budget {budget['budget_5s']:.0f}), "
        f"used {budget['used_share_whole']:.1%}",
        fontsize=9,
    )
    ax.legend(fontsize=8, loc="lower right")
    fig.text(0.01, 0.01, f"load at start {result['load_at_start']}", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
