"""The per-message cost figures of README.md and docs/benchmarks.md, rendered from bench/out.

Why: every figure in the docs must come from a file the code wrote, and a figure copied by
hand drifts the first time a benchmark is re-run. The blocks between
``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` in the two documents are rendered
here from ``bench/out/{cost,peer,endtoend,scale}.json``; ``python -m bench.report`` rewrites them
(``python -m bench`` does it after the benchmarks it ran), and ``tests/unit/test_bench_report.py``
fails when a block says something the files do not.

Each line names the file it comes from and the box's load average when that benchmark
started, since the box these run on is sometimes shared.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "bench" / "out"
DOCUMENTS = (ROOT / "README.md", ROOT / "docs" / "benchmarks.md")
SOURCES = ("cost", "peer", "endtoend", "scale")

Result = Mapping[str, Any]


class ReportError(RuntimeError):
    """A result file is missing or lacks a figure a block needs; the message names both."""


def load_results(out_dir: Path = OUT_DIR) -> dict[str, Result]:
    results: dict[str, Result] = {}
    for name in SOURCES:
        path = out_dir / f"{name}.json"
        try:
            results[name] = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ReportError(f"{path} is missing: run `python -m bench {name}`") from exc
    return results


# --- formatting ------------------------------------------------------------------------------


def _ms(value: float) -> str:
    return f"{value:.2f} ms"


def _x(value: float) -> str:
    return f"{value:.2f}x"


def _rate(value: float) -> str:
    return f"{value:,.0f}"


def _pct(fraction: float) -> str:
    return f"{100 * fraction:.1f} %"


def _load(result: Result) -> str:
    params = result.get("params", {})
    load = params.get("load_at_start") or result.get("load_at_start")
    if not load:
        return "load not recorded"
    if isinstance(load, Sequence):  # os.getloadavg() as recorded by bench/scale.py
        return f"load {load[0]:g} at start"
    return f"load {load['load_1m']:g} at start"


def _source(name: str, result: Result) -> str:
    return f"`bench/out/{name}.json` ({str(result.get('recorded_at', '?'))[:10]}, {_load(result)})"


def _need(result: Result, *path: str) -> Any:
    value: Any = result
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            raise ReportError(f"{result.get('benchmark', '?')}.json has no {'.'.join(path)}: re-run it")
        value = value[key]
    return value


# --- blocks ----------------------------------------------------------------------------------


def _cost_rows(cost: Result) -> list[str]:
    rows = []
    for split in ("split off", "split on"):
        agg = _need(cost, "aggregate", split)
        now, before, floor = agg["now"], agg["before"], agg["floor"]
        target = _need(cost, "params", "targets_ms", split)
        rows.append(
            f"| consumer CPU per message, zero latency, {split} | {_ms(before['CPU ms/msg'])} | "
            f"**{_ms(now['CPU ms/msg'])}** ({_x(now['CPU ms/msg'] / before['CPU ms/msg'])}) | "
            f"Python floor {_ms(floor['CPU ms/msg'])}: now **{_x(now['CPU ms/msg'] / floor['CPU ms/msg'])}** "
            f"the floor | ≤ {target:g} ms, ≤ {cost['params']['floor_ratio_target']:g}x the floor |"
        )
    off, on = _need(cost, "aggregate", "split off"), _need(cost, "aggregate", "split on")
    pg_target = cost["params"]["postgres_target_ms"]
    rows.append(
        "| PostgreSQL CPU per message, split off / on | "
        f"{_ms(off['before']['PostgreSQL CPU ms/msg'])} / {_ms(on['before']['PostgreSQL CPU ms/msg'])} | "
        f"**{_ms(off['now']['PostgreSQL CPU ms/msg'])} / {_ms(on['now']['PostgreSQL CPU ms/msg'])}** | "
        f"floor {_ms(off['floor']['PostgreSQL CPU ms/msg'])} / {_ms(on['floor']['PostgreSQL CPU ms/msg'])} "
        f"(producer included on every side) | ≤ {pg_target:g} ms |"
    )
    rows.append(
        "| transactions / SQL function calls per message, split on | "
        f"{on['before']['transactions/msg']:.2f} / {on['before']['function calls/msg']:.1f} | "
        f"**{on['now']['transactions/msg']:.2f} / {on['now']['function calls/msg']:.1f}** | "
        f"floor {on['floor']['transactions/msg']:.2f} / {on['floor']['function calls/msg']:.1f} | reported |"
    )
    rows.append(
        "| msg/s, one consumer at 64, zero latency, split off / on | "
        f"{_rate(off['before']['msg/s'])} / {_rate(on['before']['msg/s'])} | "
        f"**{_rate(off['now']['msg/s'])} / {_rate(on['now']['msg/s'])}** | "
        f"floor {_rate(off['floor']['msg/s'])} / {_rate(on['floor']['msg/s'])} | — |"
    )
    return rows


def _peer_rows(peer: Result) -> list[str]:
    ours, theirs = _need(peer, "summary", "campaignq"), _need(peer, "summary", "procrastinate")
    params = _need(peer, "params")
    version = params.get("procrastinate", "?")
    cap = params["wave_cap"]
    slots = params["concurrency"]
    return [
        f"| vs procrastinate {version}, zero latency: msg/s / worker CPU / PostgreSQL CPU / "
        "transactions per message | — | "
        f"**{_rate(ours['msg_per_s'])} / {_ms(ours['worker_cpu_ms_per_msg'])} / "
        f"{_ms(ours['postgres_cpu_ms_per_msg'])} / {ours['xacts_per_msg']:.2f}** | "
        f"procrastinate {_rate(theirs['msg_per_s'])} / {_ms(theirs['worker_cpu_ms_per_msg'])} / "
        f"{_ms(theirs['postgres_cpu_ms_per_msg'])} / {theirs['xacts_per_msg']:.2f} | ahead on each |",
        f"| vs procrastinate, {params['ai_latency_s']:g} s AI latency, {params['latency_messages']} messages "
        f"on {slots} slots: share of the Little's-law bound, start-up ramp included | — | "
        f"**{_pct(ours['little_share'])}** | procrastinate {_pct(theirs['little_share'])}; "
        f"waves cap any worker at {_pct(cap)} | ≥ 90 % |",
        "| vs procrastinate, idle worker: enqueue → first message done (zero latency) / "
        "cold start: spawn → first message | — | "
        f"**{1000 * ours['first_message_s']:.0f} ms / {ours['cold_start_s']:.2f} s** | "
        f"procrastinate {1000 * theirs['first_message_s']:.0f} ms / {theirs['cold_start_s']:.2f} s "
        "| < 0.5 s |",
    ]


def _endtoend_rows(e2e: Result) -> list[str]:
    points: Sequence[Mapping[str, Any]] = _need(e2e, "points")
    by_config: dict[tuple[int, int, int], dict[str, Mapping[str, Any]]] = {}
    for point in points:
        key = (point["processes"], point["concurrency"], point["runs"])
        by_config.setdefault(key, {})[point["side"]] = point
    latency = _need(e2e, "params", "ai_latency_s")
    rows = []
    for (processes, concurrency, runs), sides in by_config.items():
        now = sides.get("now")
        if now is None:
            raise ReportError("endtoend.json has no 'now' side: re-run it")
        before = sides.get("before")
        runs_text = "one run" if runs == 1 else f"{runs} runs"
        rows.append(
            f"| end to end, {latency:g} s AI latency, split on, whole box: {processes} x {concurrency}, "
            f"{runs_text} — msg/s (consumer CPU at {latency:g} s ÷ at zero latency) | "
            f"{_before_e2e(before)} | **{_rate(now['msg_per_s'])}** ({_ratio_or_dash(now)}) | "
            f"{now['msg_per_s'] * 3600 / 1e6:.2f}M/hour | ≥ 300 msg/s; ≤ 1.5x |"
        )
    return rows


def _ratio_or_dash(point: Mapping[str, Any] | None) -> str:
    if point is None or point.get("latency_cost_ratio") is None:
        return "n/a"
    return _x(point["latency_cost_ratio"])


def _before_e2e(point: Mapping[str, Any] | None) -> str:
    if point is None:
        return "—"
    return f"{_rate(point['msg_per_s'])} ({_ratio_or_dash(point)})"


def headline(results: Mapping[str, Result]) -> str:
    """The table of issue 15's goals: before (the baseline tree), now, what it is set beside."""
    cost, peer, e2e = results["cost"], results["peer"], results["endtoend"]
    ref = _need(cost, "params", "baseline_ref")
    lines = [
        f"| measurement | before (`{ref}`) | now | beside it | goal |",
        "|---|---|---|---|---|",
        *_cost_rows(cost),
        *_peer_rows(peer),
        *_endtoend_rows(e2e),
        "",
        f"Sources: {_source('cost', cost)}, {_source('peer', peer)}, {_source('endtoend', e2e)}. "
        "Before and now ran side by side in the same run of each benchmark, interleaved.",
    ]
    return "\n".join(lines)


def profile_table(results: Mapping[str, Result]) -> str:
    """Where a split-on consumer's CPU goes (py-spy), spread over the measured ms/msg."""
    cost = results["cost"]
    profile = cost.get("profile")
    if not profile:
        raise ReportError("cost.json has no profile: re-run `python -m bench cost` with py-spy installed")
    per_msg_us = 1000 * _need(cost, "aggregate", "split on", "now", "CPU ms/msg")
    rows = [
        "| library of the innermost frame | share | ≈ µs/msg | "
        "| operation anywhere on the stack | share | ≈ µs/msg |",
        "|---|---:|---:|---|---|---:|---:|",
    ]
    own, anywhere = list(profile["self"]), list(profile["inclusive"])
    for index in range(max(len(own), len(anywhere))):
        left = _share_cells(own, index, per_msg_us)
        right = _share_cells(anywhere, index, per_msg_us)
        rows.append(f"| {left} | | {right} |")
    rows += ["", f"py-spy, {profile['samples']:,} samples; {_source('cost', cost)}."]
    return "\n".join(rows)


def _share_cells(shares: Sequence[Sequence[Any]], index: int, per_msg_us: float) -> str:
    if index >= len(shares):
        return " | | "
    name, share = shares[index]
    return f"{name} | {100 * share:.1f} % | {share * per_msg_us:.0f}"


def endtoend_table(results: Mapping[str, Result]) -> str:
    """Every end-to-end configuration, before and now, with where the 2 cores went."""
    e2e = results["endtoend"]
    rows = [
        "| side | processes x concurrency | runs | **sustained msg/s** | per hour | consumers ms/msg "
        "(x zero latency) | PostgreSQL ms/msg | cores: consumers / PostgreSQL / simulators / other |",
        "|---|---|---:|---:|---:|---|---:|---|",
    ]
    for point in _need(e2e, "points"):
        cores = point["cores"]
        rows.append(
            f"| {point['side']} | {point['processes']} x {point['concurrency']} | {point['runs']} | "
            f"**{_rate(point['msg_per_s'])}** | {point['msg_per_s'] * 3600 / 1000:,.0f}k | "
            f"{_ms(point['ms_per_msg']['consumers'])} ({_ratio_or_dash(point)}) | "
            f"{_ms(point['ms_per_msg']['postgres'])} | {cores['consumers']:.2f} / {cores['postgres']:.2f} / "
            f"{cores['simulators']:.2f} / {cores['others']:.2f} |"
        )
    rows += ["", f"{_source('endtoend', e2e)}."]
    return "\n".join(rows)


def _ms_cell(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _divisor_note(scale: Result) -> str:
    divisor = int(scale.get("divisor", 1))
    return "" if divisor == 1 else f" (1/{divisor} of issue 25's size: the full seed did not fit the time)"


def scale_table(results: Mapping[str, Result]) -> str:
    """Every operator read and producer tick at issue 25's size: before 0020, after, and after
    with the finished history deleted (what "independent of history" means, measured)."""
    scale = results["scale"]
    sizes = _need(scale, "sizes")
    rows = [
        "| read | who | before ms | after ms | before/after | after, no history ms | goal ms | met |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    met = 0
    for row in _need(scale, "table"):
        ok = bool(row["met"])
        met += ok
        ratio = row["before/after"]
        rows.append(
            f"| {row['read']} | {row['who']} | {_ms_cell(row['before ms'])} | {_ms_cell(row['after ms'])} | "
            f"{'' if ratio is None else f'{ratio:.1f}x'} | {_ms_cell(row['after, no history ms'])} | "
            f"{row['goal ms']:g} | {'yes' if ok else '**no**'} |"
        )
    rows += [
        "",
        f"{met} of {len(scale['table'])} within their goal after 0020. Size: {sizes['pending']:,} pending in "
        f"{sizes['running_runs']:,} running runs of {sizes['workspaces']} workspaces, {sizes['archived']:,} "
        f"archived, {sizes['dead']:,} dead letters, {sizes['history']:,} finished rows in "
        f"{sizes['history_runs']:,} completed runs over {sizes['history_days']} days"
        f"{_divisor_note(scale)}. "
        f"{_need(scale, 'load_note')}; {_source('scale', scale)}.",
    ]
    return "\n".join(rows)


BLOCKS: dict[str, Callable[[Mapping[str, Result]], str]] = {
    "per-message-cost": headline,
    "cost-profile": profile_table,
    "endtoend-table": endtoend_table,
    "scale-reads": scale_table,
}
_BLOCK = re.compile(r"(<!-- bench:(?P<name>[a-z-]+) -->\n)(?P<body>.*?)(<!-- /bench:(?P=name) -->)", re.S)


def render(text: str, results: Mapping[str, Result]) -> str:
    """`text` with every known block replaced by what the result files say; unknown names raise."""

    def replace(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in BLOCKS:
            raise ReportError(f"unknown bench block {name!r}; known: {', '.join(BLOCKS)}")
        try:
            body = BLOCKS[name](results)
        except (KeyError, TypeError, IndexError) as exc:  # a file from an older benchmark version
            raise ReportError(f"block {name}: a result file lacks {exc!r}: re-run its benchmark") from exc
        return f"{match[1]}{body}\n{match[4]}"

    return _BLOCK.sub(replace, text)


def blocks_in(text: str) -> list[str]:
    return [match["name"] for match in _BLOCK.finditer(text)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a document is out of date")
    args = parser.parse_args(argv)
    results = load_results()
    stale = []
    for path in DOCUMENTS:
        text = path.read_text(encoding="utf-8")
        rendered = render(text, results)
        if rendered != text:
            stale.append(path)
            if not args.check:
                path.write_text(rendered, encoding="utf-8")
    verb = "out of date" if args.check else "rewrote"
    for path in stale:
        print(f"{verb}: {path.relative_to(ROOT)}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
