"""Cost per message, before / now / the Python floor, measured side by side in one run.

Why: at 2 s of AI latency a consumer is waiting, not working, so throughput says nothing
about efficiency. With zero-latency providers (the simulator in another process) the
consumer runs flat out and what it spends per message is its own overhead: the number
that decides how many messages one core can move. Issue 15's targets: consumer CPU
≤ 1.0 ms/msg split off, ≤ 1.5 ms split on, and at most 1.5x the *Python floor* — a
minimal asyncio + aiohttp + psycopg loop doing the same HTTP calls with batched PGMQ
reads and archives (bench/floor.py, bench/floor_loop.py) — measured beside it; PostgreSQL CPU ≤ 1.0 ms/msg.
A number measured on a shared 2-core box moves with the box, so "before" (the tree of
`fleet.BASELINE_REF`, the state before issue 15) runs in the same invocation, on the same
server, interleaved with "now" and the floor: the ratios survive the noise that the
absolute numbers do not.

How: one migrated database (with ``track_functions = 'all'``), one zero-latency
simulator. For each pass (``BENCH_COST_PASSES``, the order of the sides rotating from
pass to pass) and each split mode (off: 1 AI call + 1 send; on: 1 structured AI call +
2-3 sends), each side processes a freshly seeded run of N messages: "now" and "before"
are one `campaignq consume` at concurrency 64 (batch 64) — "before" imports the baseline
tree (``git archive REF``, see `fleet.baseline_tree`) —, the floor is one
``python -m bench.floor_loop`` at 64 in flight. Governance stays on: a shared AI budget
row (never binding), a workspace weight, an open send window, and the producer's
just-in-time mode at the database's defaults in a thread (`fleet.ProducerThread`),
which queues the run. CPU = user + sys from /proc of the side's process between "ready"
and the last outcome; PostgreSQL's (all its processes) and the simulator's over the same
window. Transactions per message: ``pg_stat_database`` commit + rollback deltas from
before the side starts to after it exits, minus the producer's calls and the benchmark's
own polls. Function calls per message: ``pg_stat_user_functions`` deltas (every PL/pgSQL
or SQL function call, nested ones included). Statements per message only where
``pg_stat_statements`` is installed (``BENCH_DATABASE_URL`` on a server that preloads it).
The table gives each side's median over the passes and the min-max spread.
Optionally py-spy then samples a "now" consumer (bench/profile.py) and a bare PGMQ
read → archive loop prices the database alone.

Sizes: BENCH_COST_MESSAGES (6,000; quick 400), BENCH_COST_PASSES (5; quick 2),
BENCH_COST_SIDES ("floor,now,before"), BENCH_BASELINE_REF (bcfb24a), BENCH_PROFILE_S
(10; quick 0 = off), BENCH_CEILING_MESSAGES (50,000; quick 0 = off).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import common, fleet, floor, profile
from consumer.devtools.processes import Child

CONCURRENCY = 64
BATCH = 64
TARGET_MS = {"split off": 1.0, "split on": 1.5}
FLOOR_RATIO_TARGET = 1.5
POSTGRES_TARGET_MS = 1.0
SIDES = ("floor", "now", "before")
SIDE_NAMES = {"floor": "Python floor", "now": "now", "before": "before"}
READY_TIMEOUT_S = 30.0


@dataclass
class Pass:
    """One side processing one seeded run: what /proc, the database and the simulator saw."""

    side: str
    split: str
    messages: int
    wall_s: float
    cpu_s: float
    postgres_cpu_s: float
    simulator_cpu_s: float
    transactions: int
    function_calls: dict[str, int] = field(default_factory=dict)
    statements: int | None = None
    ai_requests: int = 0
    sends: int = 0
    state_requests: int = 0
    box_cpu_s: float = 0.0  # the whole machine, every process, over the same window

    @property
    def other_cores(self) -> float:
        """Cores busy with work that is not this measurement's (other people's on a shared box)."""
        ours = self.cpu_s + self.postgres_cpu_s + self.simulator_cpu_s
        return max(0.0, self.box_cpu_s - ours) / self.wall_s if self.wall_s else 0.0

    def per_msg(self, value: float) -> float:
        return value / self.messages if self.messages else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "msg/s": self.messages / self.wall_s if self.wall_s else 0.0,
            "CPU ms/msg": 1000 * self.per_msg(self.cpu_s),
            "PostgreSQL CPU ms/msg": 1000 * self.per_msg(self.postgres_cpu_s),
            "simulator CPU ms/msg": 1000 * self.per_msg(self.simulator_cpu_s),
            "transactions/msg": self.per_msg(self.transactions),
            "function calls/msg": self.per_msg(sum(self.function_calls.values())),
            "statements/msg": None if self.statements is None else self.per_msg(self.statements),
            "AI requests/msg": self.per_msg(self.ai_requests),
            "sends/msg": self.per_msg(self.sends),
            "state checks/msg": self.per_msg(self.state_requests),
            "other work (cores)": self.other_cores,
        }


def _sides() -> list[str]:
    sides = [s.strip() for s in os.environ.get("BENCH_COST_SIDES", ",".join(SIDES)).split(",") if s.strip()]
    unknown = set(sides) - set(SIDES)
    if unknown:
        raise ValueError(f"BENCH_COST_SIDES: unknown side(s) {sorted(unknown)}; known: {', '.join(SIDES)}")
    return sides


def _wait_ready(child: Child, line: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while line not in child.log():
        if not child.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"{child.name} did not start; see {child.log_path}:\n{child.log_tail()}")
        time.sleep(0.02)


def _start(side: str, url: str, sim: fleet.SimulatorProcess, label: str) -> Child:
    if side == "floor":
        child = floor.start_floor(
            url, sim.ai_base_url, sim.base_url, concurrency=CONCURRENCY, batch=BATCH, label=label
        )
        _wait_ready(child, floor.READY_LINE)
        return child
    env = fleet.consumer_env(
        url,
        sim.ai_base_url,
        sim.base_url,
        concurrency=CONCURRENCY,
        batch_size=BATCH,
        db_pool_max_size=fleet.pool_size(1, CONCURRENCY),
    )
    tree = fleet.baseline_tree() if side == "before" else None
    return fleet.start_consumers(env, 1, label=label, tree=tree)[0]


def measure(
    url: str, sim: fleet.SimulatorProcess, *, side: str, split: bool, messages: int, label: str
) -> Pass:
    """Seed a run (governance on), start `side`, let the producer queue it, wait for every outcome."""
    seeded = fleet.seed_run(url, messages, split=split)
    fleet.governance_on(url, seeded.run_ids)
    sim.reset()
    counters0 = fleet.db_counters(url)
    child = _start(side, url, sim, label)
    polls = 0

    def count_poll(_: int) -> None:
        nonlocal polls
        polls += 1

    try:
        cpu0, sim0, pg0 = fleet.cpu_seconds(child.pid), sim.cpu_s(), fleet.postgres_cpu_s(url)
        box0 = fleet.box_busy_cpu_s()
        started = time.monotonic()
        with fleet.ProducerThread(url) as producer:
            fleet.wait_terminal(
                url, seeded.run_ids, messages, timeout_s=600, watch=[child], on_poll=count_poll
            )
            wall_s = time.monotonic() - started
            cpu1, sim1, pg1 = fleet.cpu_seconds(child.pid), sim.cpu_s(), fleet.postgres_cpu_s(url)
            box1 = fleet.box_busy_cpu_s()
    finally:
        fleet.stop_processes([child])
    stats = sim.stats()
    time.sleep(0.2)  # the side's backends exit (and flush their counters) as it disconnects
    delta = fleet.db_counters(url).minus(counters0)
    return Pass(
        side=side,
        split="split on" if split else "split off",
        messages=messages,
        wall_s=wall_s,
        cpu_s=cpu1 - cpu0,
        postgres_cpu_s=pg1 - pg0,
        simulator_cpu_s=sim1 - sim0,
        # The producer's calls (one transaction each) and our polls are not the side's.
        transactions=delta.transactions - producer.calls - polls,
        function_calls=delta.function_calls,
        statements=delta.statements,
        ai_requests=int(stats["ai"]["requests"]),
        sends=int(stats["send"]["requests"]),
        state_requests=int(stats["state"]["requests"]),
        box_cpu_s=box1 - box0,
    )


def ceiling(url: str, messages: int) -> dict[str, Any]:
    """Bare PGMQ on one connection: send_batch N, then read(qty=100) → archive(ids[]) until empty."""
    payload = json.dumps({"v": 1, "campaign_message_id": "00000000-0000-4000-8000-000000000000"})
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
        done = 0
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
        seconds = time.perf_counter() - started
        pg_cpu = fleet.postgres_cpu_s(url) - pg0
    return {
        "messages": done,
        "msg_per_s": done / seconds if seconds else 0.0,
        "postgres_cpu_ms_per_msg": 1000 * pg_cpu / done if done else None,
    }


def run(quick: bool) -> dict[str, Any]:
    load = fleet.other_load()
    messages = fleet.env_int("BENCH_COST_MESSAGES", 400 if quick else 6_000)
    passes = fleet.env_int("BENCH_COST_PASSES", 2 if quick else 5)
    profile_s = float(fleet.env_int("BENCH_PROFILE_S", 0 if quick else 10))
    ceiling_messages = fleet.env_int("BENCH_CEILING_MESSAGES", 0 if quick else 50_000)
    sides = _sides()
    if "before" in sides:
        print(f"  extracting the baseline tree {fleet.baseline_ref()} …", flush=True)
        fleet.baseline_tree()  # fails early and clearly without git or the commit
    results: list[Pass] = []
    profiled: profile.Profile | None = None
    db: dict[str, Any] | None = None
    box0 = fleet.box_busy_cpu_s()
    t0 = time.monotonic()
    with fleet.simulator(ai_latency_s=0.0, send_latency_s=0.0) as sim, common.fresh_database("cost") as url:
        fleet.enable_function_tracking(url)
        # Warm-up: the server's caches, the simulator's first connections.
        measure(url, sim, side="now", split=True, messages=100 if quick else 300, label="cost-warmup")
        for index in range(passes):
            order = sides[index % len(sides) :] + sides[: index % len(sides)]
            for split in (False, True):
                for side in order:
                    mode = "split on" if split else "split off"
                    print(
                        f"  pass {index + 1}/{passes}, {mode}, {SIDE_NAMES[side]}: {messages:,} …", flush=True
                    )
                    one = measure(
                        url,
                        sim,
                        side=side,
                        split=split,
                        messages=messages,
                        label=f"cost-{side}-{'on' if split else 'off'}-{index + 1}",
                    )
                    results.append(one)
                    summary = one.summary()
                    print(
                        f"    {summary['CPU ms/msg']:.3f} ms/msg, "
                        f"PostgreSQL {summary['PostgreSQL CPU ms/msg']:.3f}, {summary['msg/s']:,.0f} msg/s",
                        flush=True,
                    )
        measured_s = time.monotonic() - t0
        box_cores = (fleet.box_busy_cpu_s() - box0) / measured_s if measured_s else 0.0
        if profile_s > 0 and profile.available():
            profiled = _profile(url, sim, results, profile_s)
        if ceiling_messages > 0:
            print(
                f"  database ceiling: bare PGMQ read(100) → archive(ids[]) of {ceiling_messages:,} …",
                flush=True,
            )
            db = ceiling(url, ceiling_messages)
    report = _report(results, sides, messages, passes, profiled, db)
    report["params"]["load_at_start"] = load
    report["params"]["box_cores_busy_during_passes"] = round(box_cores, 2)
    return report


def _profile(
    url: str, sim: fleet.SimulatorProcess, results: list[Pass], profile_s: float
) -> profile.Profile | None:
    print(f"  profiling a split-on consumer (now) with py-spy for {profile_s:g} s …", flush=True)
    raw = common.OUT_DIR / "logs" / "consumer-profile.raw"
    holder: dict[str, Path | None] = {}

    def during(consumers: list[fleet.ConsumerProcess]) -> None:
        time.sleep(0.5)  # past the first batch claim
        holder["raw"] = profile.record(consumers[0].pid, raw, duration_s=profile_s)

    rates = [p.messages / p.wall_s for p in results if p.side == "now" and p.split == "split on" and p.wall_s]
    rate = statistics.median(rates) if rates else 500.0
    fleet.measure(
        url,
        [sim],
        label="profiled",
        messages=int(rate * (profile_s + 3)),
        concurrency=CONCURRENCY,
        split=True,
        during=during,
    )
    return profile.summarise(raw) if holder.get("raw") else None


def _median_spread(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def aggregate(results: list[Pass]) -> dict[str, dict[str, dict[str, Any]]]:
    """split mode → side → each summary key's median, plus the CPU's min and max over passes."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for mode in ("split off", "split on"):
        for side in SIDES:
            passes = [p.summary() for p in results if p.split == mode and p.side == side]
            if not passes:
                continue
            agg: dict[str, Any] = {"passes": len(passes)}
            for key in passes[0]:
                values = [s[key] for s in passes if s[key] is not None]
                agg[key] = statistics.median(values) if values else None
            cpu = [s["CPU ms/msg"] for s in passes]
            agg["CPU ms/msg"], agg["CPU min"], agg["CPU max"] = _median_spread(cpu)
            agg["all CPU ms/msg"] = cpu
            out.setdefault(mode, {})[side] = agg
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _report(
    results: list[Pass],
    sides: list[str],
    messages: int,
    passes: int,
    profiled: profile.Profile | None,
    db: dict[str, Any] | None,
) -> dict[str, Any]:
    agg = aggregate(results)
    table: list[dict[str, Any]] = []
    ratios: dict[str, dict[str, float | None]] = {}
    for mode, by_side in agg.items():
        now = by_side.get("now", {}).get("CPU ms/msg")
        ratios[mode] = {
            "now/floor": _ratio(now, by_side.get("floor", {}).get("CPU ms/msg")),
            "now/before": _ratio(now, by_side.get("before", {}).get("CPU ms/msg")),
            "before/floor": _ratio(
                by_side.get("before", {}).get("CPU ms/msg"), by_side.get("floor", {}).get("CPU ms/msg")
            ),
        }
        for side, a in by_side.items():
            cpu = a["CPU ms/msg"]
            floor_cpu = by_side.get("floor", {}).get("CPU ms/msg")
            table.append(
                {
                    "measurement": f"{mode}: {SIDE_NAMES[side]}",
                    "CPU ms/msg (median)": cpu,
                    "spread": f"{a['CPU min']:.2f}-{a['CPU max']:.2f}",
                    "x floor": _ratio(cpu, floor_cpu) if side != "floor" else None,
                    "x before": _ratio(cpu, by_side.get("before", {}).get("CPU ms/msg"))
                    if side == "now"
                    else None,
                    "target": None
                    if side == "floor"
                    else f"{'≤' if cpu <= TARGET_MS[mode] else '>'} {TARGET_MS[mode]:g} ms",
                    "PostgreSQL CPU ms/msg": a["PostgreSQL CPU ms/msg"],
                    "simulator CPU ms/msg": a["simulator CPU ms/msg"],
                    "msg/s": a["msg/s"],
                    "xacts/msg": a["transactions/msg"],
                    "fn calls/msg": a["function calls/msg"],
                    "statements/msg": a["statements/msg"],
                    "AI req/msg": a["AI requests/msg"],
                    "sends/msg": a["sends/msg"],
                    "other work (cores)": a["other work (cores)"],
                }
            )
    if all(row["statements/msg"] is None for row in table):
        for row in table:
            del row["statements/msg"]
    functions = _function_table(results)
    more: list[dict[str, Any]] = []
    if functions:
        more.append(
            {
                "title": "Function calls per message (pg_stat_user_functions, median of passes)",
                "rows": functions,
            }
        )
    if db is not None:
        more.append(
            {
                "title": "Database ceiling: bare PGMQ read(100) → archive(ids[]), one connection",
                "rows": [
                    {
                        "messages": db["messages"],
                        "msg/s": db["msg_per_s"],
                        "PostgreSQL CPU ms/msg": db["postgres_cpu_ms_per_msg"],
                    }
                ],
            }
        )
    if profiled is not None and profiled.samples:
        now_on = agg.get("split on", {}).get("now", {}).get("CPU ms/msg") or 0.0
        more.append(
            {
                "title": f"Where a split-on consumer's CPU goes (py-spy, {profiled.samples:,} samples)",
                "rows": [
                    {
                        "library (innermost frame)": name,
                        "share %": 100 * share,
                        "≈ µs/msg": 1000 * now_on * share,
                    }
                    for name, share in profiled.shares(profiled.self_time)
                ],
            }
        )
    ratio_notes = [
        f"{mode}: now/floor {_fmt(r['now/floor'])} (target ≤ {FLOOR_RATIO_TARGET:g}), "
        f"now/before {_fmt(r['now/before'])}, before/floor {_fmt(r['before/floor'])}"
        for mode, r in ratios.items()
    ]
    statements_known = any(p.statements is not None for p in results)
    notes = [
        *ratio_notes,
        f"zero-latency simulator in its own process; one consumer (or the floor) at {CONCURRENCY} in flight; "
        f"{messages:,} messages per pass, {passes} interleaved passes per side (median, min-max); "
        "CPU = user + sys from /proc between 'ready' and the last outcome",
        f"'before' = {fleet.baseline_ref()} ({fleet.baseline_commit() or 'commit unknown'}) run from "
        "`git archive` with PYTHONPATH on the same migrated database",
        "governance on: shared AI budget row (non-binding), workspace weight, open send window, "
        "just-in-time producer at defaults (in the benchmark's thread; its SQL counts as PostgreSQL CPU)",
        f"PostgreSQL target ≤ {POSTGRES_TARGET_MS:g} ms/msg: its CPU includes the producer's queueing",
        "xacts/msg: pg_stat_database commit+rollback deltas minus the producer's calls and our polls; "
        "fn calls/msg: pg_stat_user_functions (track_functions=all): nested calls, triggers and "
        "the producer's calls included; "
        + (
            "statements/msg: pg_stat_statements"
            if statements_known
            else "statements/msg: not available (no pg_stat_statements on this server)"
        ),
    ]
    return {
        "title": "Cost per message with zero-latency providers: campaignq before / now / the Python floor",
        "params": {
            "messages": messages,
            "passes": passes,
            "sides": sides,
            "concurrency": CONCURRENCY,
            "batch": BATCH,
            "baseline_ref": fleet.baseline_ref(),
            "baseline_commit": fleet.baseline_commit(),
            "targets_ms": TARGET_MS,
            "floor_ratio_target": FLOOR_RATIO_TARGET,
            "postgres_target_ms": POSTGRES_TARGET_MS,
        },
        "table": table,
        "more_tables": more,
        "aggregate": agg,
        "ratios": ratios,
        "passes_raw": [
            {"side": p.side, "split": p.split, **p.summary(), "function_calls": p.function_calls}
            for p in results
        ],
        "ceiling": db,
        "profile": None
        if profiled is None
        else {
            "samples": profiled.samples,
            "self": profiled.shares(profiled.self_time),
            "inclusive": profiled.shares(profiled.inclusive),
        },
        "notes": notes,
    }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _function_table(results: list[Pass]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for mode in ("split off", "split on"):
        for side in SIDES:
            passes = [p for p in results if p.split == mode and p.side == side]
            if not passes:
                continue
            names = sorted({n for p in passes for n in p.function_calls})
            per = {n: statistics.median(p.per_msg(p.function_calls.get(n, 0)) for p in passes) for n in names}
            top = sorted(per.items(), key=lambda kv: -kv[1])[:6]
            rows.append(
                {
                    "measurement": f"{mode}: {SIDE_NAMES[side]}",
                    "total/msg": sum(per.values()),
                    "top functions (calls/msg)": ", ".join(f"{n.split('.', 1)[-1]} {v:.2f}" for n, v in top),
                }
            )
    return rows


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    machine = result["machine"]
    agg = result["aggregate"]
    modes = list(agg)
    colors = {"before": "tab:gray", "now": "tab:green", "floor": "tab:purple"}
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    width = 0.26
    for offset, side in enumerate(("before", "now", "floor")):
        xs = [i + (offset - 1) * width for i in range(len(modes))]
        present = [(x, agg[m][side]) for x, m in zip(xs, modes, strict=True) if side in agg[m]]
        if not present:
            continue
        values = [a["CPU ms/msg"] for _, a in present]
        errors = [
            [a["CPU ms/msg"] - a["CPU min"] for _, a in present],
            [a["CPU max"] - a["CPU ms/msg"] for _, a in present],
        ]
        bars = left.bar(
            [x for x, _ in present],
            values,
            width,
            yerr=errors,
            capsize=3,
            color=colors[side],
            label=SIDE_NAMES[side],
        )
        left.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=8, padding=2)
        pg = [a["PostgreSQL CPU ms/msg"] for _, a in present]
        right.bar([x for x, _ in present], pg, width, color=colors[side], label=SIDE_NAMES[side])
    for i, mode in enumerate(modes):
        left.hlines(
            TARGET_MS[mode], i - 1.5 * width, i + 1.5 * width, colors="tab:red", linestyles="--", linewidth=1
        )
        ratio = result["ratios"][mode].get("now/floor")
        if ratio:
            left.annotate(
                f"now/floor {ratio:.2f}x",
                (i, 0),
                xytext=(0, -28),
                textcoords="offset points",
                ha="center",
                fontsize=8,
            )
    left.set_xticks(range(len(modes)), modes)
    left.set_ylabel("consumer CPU ms per message (median, min-max)")
    left.set_title("Consumer CPU per message (red: issue 15 target)", fontsize=10)
    left.legend(fontsize=8)
    right.axhline(POSTGRES_TARGET_MS, color="tab:red", linestyle="--", linewidth=1, label="target")
    right.set_xticks(range(len(modes)), modes)
    right.set_ylabel("PostgreSQL CPU ms per message (median)")
    right.set_title("PostgreSQL CPU per message (producer included)", fontsize=10)
    right.legend(fontsize=8)
    fig.suptitle(result["title"], fontsize=11)
    load = result["params"].get("load_at_start", {})
    fig.text(
        0.01,
        0.01,
        f"{machine['cpu_model']}, {machine['cpu_logical']} CPUs (consumer, PostgreSQL, simulator); "
        f"PostgreSQL {machine['postgresql']}; load at start {load.get('load_1m')}, "
        f"{result['params'].get('box_cores_busy_during_passes')} cores busy on the box during the passes; "
        f"before = {result['params']['baseline_ref']}; {result['params']['passes']} passes",
        fontsize=7,
    )
    fig.tight_layout(rect=(0, 0.05, 1, 0.95))
    fig.savefig(path, dpi=120)
    plt.close(fig)
