"""Sender safety (issue 13): pacing across processes, quiet hours, and what the checks cost.

Why: a paced inbox must hold its limit across every consumer process without slowing the
unpaced inboxes beside it; messages due in quiet hours must wait for their window and then
drain at the pace, not in a burst; and the checks must cost next to nothing per message.

How (two `campaignq consume` processes, `campaignq simulate`, a fresh database each):
1. pacing — an inbox paced at 30/min beside an unpaced one. The unpaced inbox's finish time
   alone, then again with the paced backlog queued at the same moment; the paced inbox's
   busiest 10 s window (from the simulator's record of accepted sends) against its limit
   (30/min = 5 per 10 s; the guarantee is limit + 1 at most) and the gateway's 429 count.
2. quiet hours — three campaigns whose leads live in Tokyo (zone from the phone), São Paulo
   (own column) and Berlin (campaign zone), one window per campaign in local time opening a
   few seconds from now, all through one inbox paced at 60/min: sends before the opening
   (must be 0), and the busiest 10 s window while the backlog drains (limit 10, + 1).
3. overhead — consumer CPU per message, unpaced inbox without windows (baseline) against the
   same run with every check active (a send window that is open, the lead's zone derived
   from the phone, a daily cap large enough never to bite, which books a slot per message:
   one more short statement per message). Plus the pure checks alone, timed in-process.

Sizes: BENCH_PACING_PACED (20), BENCH_PACING_FREE (300), BENCH_PACING_QUIET (30),
BENCH_PACING_OVERHEAD (1500), BENCH_PACING_PASSES (3). Quick: 6 / 60 / 9 / 100, 2 passes.
"""

from __future__ import annotations

import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from psycopg.types.json import Jsonb

from bench import common, fleet

AI_LATENCY_S = 0.2
SEND_LATENCY_S = 0.05
PACED_PER_MINUTE = 30
QUIET_PER_MINUTE = 60
CONSUMERS = 2
CONCURRENCY = 32


def _campaign(
    conn: Any,
    *,
    inbox_id: uuid.UUID,
    workspace_id: uuid.UUID,
    phones: list[str],
    lead_timezone: str | None = None,
    window: tuple[str, str] | None = None,
    config_timezone: str | None = None,
) -> uuid.UUID:
    config = conn.execute(
        "INSERT INTO campaign_configs (workspace_id, name, ai_model, system_prompt, inbox_id, split_messages,"
        " max_parts, send_window_start, send_window_end, timezone) VALUES (%s, 'bench', 'openai/gpt-4o-mini',"
        " 'You write short, friendly WhatsApp messages.', %s, false, 1, %s, %s, %s) RETURNING id",
        (
            workspace_id,
            inbox_id,
            window[0] if window else None,
            window[1] if window else None,
            config_timezone,
        ),
    ).fetchone()
    run = conn.execute(
        "INSERT INTO campaign_runs (config_id, status, leads_total, leads_processed, started_at) "
        "VALUES (%s, 'running', %s, 0, now()) RETURNING id",
        (config[0], len(phones)),
    ).fetchone()
    conn.execute(
        "WITH l AS (INSERT INTO leads (workspace_id, name, phone, custom_fields, timezone) "
        "  SELECT %s, 'Lead ' || ord, phone, %s, %s FROM unnest(%s::text[]) WITH ORDINALITY t(phone, ord) "
        "  RETURNING id) "
        "INSERT INTO campaign_messages (run_id, lead_id, status, scheduled_at) "
        "SELECT %s, id, 'pending', now() - interval '1 minute' FROM l",
        (workspace_id, Jsonb({"city": "São Paulo"}), lead_timezone, phones, run[0]),
    )
    return uuid.UUID(str(run[0]))


def _inbox(
    conn: Any,
    workspace_id: uuid.UUID,
    instance: str,
    *,
    max_sends_per_minute: int | None = None,
    daily_send_cap: int | None = None,
) -> uuid.UUID:
    row = conn.execute(
        "INSERT INTO inboxes (workspace_id, name, instance, max_sends_per_minute, daily_send_cap) "
        "VALUES (%s, %s, %s, %s, %s) RETURNING id",
        (workspace_id, instance, instance, max_sends_per_minute, daily_send_cap),
    ).fetchone()
    return uuid.UUID(str(row[0]))


def _phones(prefix: str, n: int, offset: int = 0) -> list[str]:
    return [f"{prefix}{offset + i:07d}" for i in range(n)]


def _busiest(times: list[float], window_s: float) -> int:
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - window_s:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def _finish_s(url: str, run_id: uuid.UUID) -> float:
    with common.connect(url) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM max(finished_at) - min(queued_at))::double precision "
            "FROM campaign_messages WHERE run_id = %s",
            (run_id,),
        ).fetchone()
    return round(float(row[0] or 0.0), 2) if row else 0.0


def _env(url: str, sim: fleet.SimulatorProcess, **settings: Any) -> dict[str, str]:
    return fleet.consumer_env(
        url, sim.ai_base_url, sim.base_url, concurrency=CONCURRENCY, window_open_spread_s=1, **settings
    )


def _sends(sim: fleet.SimulatorProcess) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = sim.request("/_sim/sends")["sends"]
    return result


# --- 1. pacing beside an unpaced inbox ----------------------------------------------------------


def _free_alone(sim: fleet.SimulatorProcess, n_free: int) -> float:
    with common.fresh_database("pacing_alone") as url:
        ws = uuid.uuid4()
        with common.connect(url) as conn:
            free_inbox = _inbox(conn, ws, "free")
            free_run = _campaign(conn, inbox_id=free_inbox, workspace_id=ws, phones=_phones("+55119", n_free))
        consumers = fleet.start_consumers(_env(url, sim), CONSUMERS, label="pacing-alone")
        try:
            fleet.enqueue_all(url)
            fleet.wait_terminal(url, [free_run], n_free, timeout_s=300, watch=consumers)
        finally:
            fleet.stop_processes(consumers)
        return _finish_s(url, free_run)


def _paced_beside_free(sim: fleet.SimulatorProcess, n_paced: int, n_free: int) -> dict[str, Any]:
    sim.reset()
    sim.request(
        "/_sim/faults",
        {"instance_rate_limits": {"paced": PACED_PER_MINUTE // 6 + 1}, "instance_rate_window_s": 10},
    )
    with common.fresh_database("pacing_beside") as url:
        ws = uuid.uuid4()
        with common.connect(url) as conn:
            paced_inbox = _inbox(conn, ws, "paced", max_sends_per_minute=PACED_PER_MINUTE)
            free_inbox = _inbox(conn, ws, "free")
            paced_run = _campaign(
                conn, inbox_id=paced_inbox, workspace_id=ws, phones=_phones("+55118", n_paced)
            )
            free_run = _campaign(conn, inbox_id=free_inbox, workspace_id=ws, phones=_phones("+55119", n_free))
        consumers = fleet.start_consumers(_env(url, sim), CONSUMERS, label="pacing-beside")
        try:
            fleet.enqueue_all(url)
            fleet.wait_terminal(url, [free_run], n_free, timeout_s=300, watch=consumers)
            free_s = _finish_s(url, free_run)
            fleet.wait_terminal(url, [paced_run], n_paced, timeout_s=60 + n_paced * 4, watch=consumers)
        finally:
            fleet.stop_processes(consumers)
        sends = _sends(sim)
        paced_times = [s["at"] for s in sends if s["instance"] == "paced"]
        stats = sim.stats()["send_by_instance"]
        with common.connect(url) as conn:
            burnt = conn.execute(
                "SELECT coalesce(sum(retry_count), 0), count(*) FILTER (WHERE held_reason = 'pace') "
                "FROM campaign_messages"
            ).fetchone()
        gaps = [b - a for a, b in zip(sorted(paced_times), sorted(paced_times)[1:], strict=False)]
        return {
            "free_finish_s": free_s,
            "paced_finish_s": _finish_s(url, paced_run),
            "paced_sends": len(paced_times),
            "paced_busiest_10s": _busiest(paced_times, 10.0),
            "paced_limit_10s": PACED_PER_MINUTE // 6,
            "paced_gap_min_s": round(min(gaps), 2) if gaps else None,
            "paced_gap_mean_s": round(sum(gaps) / len(gaps), 2) if gaps else None,
            "paced_gap_max_s": round(max(gaps), 2) if gaps else None,
            "gateway_429s_paced": int(stats.get("paced:rate_limited_130429", 0)),
            "attempts_burnt": int(burnt[0]) if burnt else None,
            "messages_held_for_pace": int(burnt[1]) if burnt else None,
        }


# --- 2. quiet hours -------------------------------------------------------------------------------


def _quiet_hours(sim: fleet.SimulatorProcess, n_each: int) -> dict[str, Any]:
    sim.reset()
    opens_in_s = 12.0
    with common.fresh_database("pacing_quiet") as url:
        ws = uuid.uuid4()
        opens_at = datetime.now(UTC) + timedelta(seconds=opens_in_s)
        runs: list[uuid.UUID] = []
        with common.connect(url) as conn:
            inbox = _inbox(conn, ws, "quiet", max_sends_per_minute=QUIET_PER_MINUTE)
            for prefix, lead_tz, config_tz, zone in (
                ("+8131", None, "UTC", "Asia/Tokyo"),  # zone from the phone
                ("+55119", "America/Sao_Paulo", "UTC", "America/Sao_Paulo"),  # lead's own zone
                ("+7912", None, "Europe/Berlin", "Europe/Berlin"),  # Russia has many zones: campaign's
            ):
                local = opens_at.astimezone(ZoneInfo(zone))
                window = (local.strftime("%H:%M:%S"), (local + timedelta(hours=2)).strftime("%H:%M:%S"))
                runs.append(
                    _campaign(
                        conn,
                        inbox_id=inbox,
                        workspace_id=ws,
                        phones=_phones(prefix, n_each),
                        lead_timezone=lead_tz,
                        window=window,
                        config_timezone=config_tz,
                    )
                )
        consumers = fleet.start_consumers(_env(url, sim), CONSUMERS, label="pacing-quiet")
        try:
            fleet.enqueue_all(url)
            fleet.wait_terminal(url, runs, 3 * n_each, timeout_s=120 + n_each * 3 * 2, watch=consumers)
        finally:
            fleet.stop_processes(consumers)
        times = [s["at"] for s in _sends(sim) if s["instance"] == "quiet"]
        open_epoch = opens_at.replace(microsecond=0).timestamp()
        with common.connect(url) as conn:
            row = conn.execute(
                "SELECT coalesce(sum(retry_count), 0), count(*) FILTER (WHERE held_reason IS NOT NULL), "
                "count(*) FILTER (WHERE status = 'sent') FROM campaign_messages"
            ).fetchone()
        return {
            "messages": 3 * n_each,
            "sent": int(row[2]) if row else 0,
            "sends_before_window": sum(1 for t in times if t < open_epoch),
            "first_send_after_opening_s": round(min(times) - open_epoch, 2) if times else None,
            "drain_s": round(max(times) - min(times), 2) if times else None,
            "busiest_10s": _busiest(times, 10.0),
            "limit_10s": QUIET_PER_MINUTE // 6,
            "attempts_burnt": int(row[0]) if row else None,
        }


# --- 3. overhead ------------------------------------------------------------------------------------


CPU_CASES = {
    "baseline": "baseline: no window, no pace, no cap",
    "checks": "checks: window (open) + lead zone from the phone",
    "booking": "checks + daily cap: one slot booked per message",
}


def _cpu_per_message(sim: fleet.SimulatorProcess, n: int, *, case: str) -> dict[str, Any]:
    sim.reset()
    with common.fresh_database(f"pacing_{case}") as url:
        ws = uuid.uuid4()
        with common.connect(url) as conn:
            inbox = _inbox(conn, ws, "cpu", daily_send_cap=1_000_000 if case == "booking" else None)
            run_id = _campaign(
                conn,
                inbox_id=inbox,
                workspace_id=ws,
                phones=_phones("+55119", n),
                window=("00:00:00", "23:59:59") if case != "baseline" else None,
            )
        consumers = fleet.start_consumers(_env(url, sim), CONSUMERS, label=f"pacing-{case}")
        try:
            cpu0 = sum(fleet.cpu_seconds(c.pid) for c in consumers)
            pg0 = fleet.postgres_cpu_s(url)
            fleet.enqueue_all(url)
            fleet.wait_terminal(url, [run_id], n, timeout_s=600, watch=consumers)
            cpu = sum(fleet.cpu_seconds(c.pid) for c in consumers) - cpu0
            pg = fleet.postgres_cpu_s(url) - pg0
        finally:
            fleet.stop_processes(consumers)
        return {
            "case": CPU_CASES[case],
            "messages": n,
            "consumer_cpu_ms_per_msg": round(cpu / n * 1000, 3),
            "postgres_cpu_ms_per_msg": round(pg / n * 1000, 3),
            "finish_s": _finish_s(url, run_id),
        }


def _pure_checks_us() -> float:
    """µs per message of the pure checks (zone from the phone, window open?), cache warm as
    in a consumer that sees the same prefixes again."""
    from consumer.core.models import SenderContext
    from consumer.runtime.sender_safety import window_hold

    sender = SenderContext(
        window_start=datetime.min.time(), window_end=datetime.max.time().replace(microsecond=0)
    )
    rng = random.Random(1)
    phones = _phones("+49151", 2000)
    now = datetime.now(UTC)
    started = time.perf_counter()
    rounds = 10
    for _ in range(rounds):
        for phone in phones:
            window_hold(sender, phone, now, spread_s=60.0, rng=rng)
    return (time.perf_counter() - started) / (rounds * len(phones)) * 1e6


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f}%"


def run(quick: bool) -> dict[str, Any]:
    load = fleet.other_load()
    n_paced = fleet.env_int("BENCH_PACING_PACED", 6 if quick else 20)
    n_free = fleet.env_int("BENCH_PACING_FREE", 60 if quick else 300)
    n_quiet = fleet.env_int("BENCH_PACING_QUIET", 9 if quick else 30) // 3
    n_cpu = fleet.env_int("BENCH_PACING_OVERHEAD", 100 if quick else 1500)
    with fleet.simulator(ai_latency_s=AI_LATENCY_S, send_latency_s=SEND_LATENCY_S, name="sim-pacing") as sim:
        print("  unpaced inbox alone …", flush=True)
        alone_s = _free_alone(sim, n_free)
        print("  paced 30/min beside it …", flush=True)
        beside = _paced_beside_free(sim, n_paced, n_free)
        print("  quiet hours across three zones …", flush=True)
        quiet = _quiet_hours(sim, n_quiet)
        print("  overhead …", flush=True)
        # Interleaved passes (A B C A B C …) so a change in the box's load hits every case alike.
        samples: dict[str, list[dict[str, Any]]] = {case: [] for case in CPU_CASES}
        for _ in range(fleet.env_int("BENCH_PACING_PASSES", 2 if quick else 3)):
            for case in CPU_CASES:
                samples[case].append(_cpu_per_message(sim, n_cpu, case=case))
    pure_us = _pure_checks_us()
    per_msg = {case: sum(r["consumer_cpu_ms_per_msg"] for r in rs) / len(rs) for case, rs in samples.items()}
    pg_per_msg = {
        case: sum(r["postgres_cpu_ms_per_msg"] for r in rs) / len(rs) for case, rs in samples.items()
    }
    base_ms = per_msg["baseline"]
    overhead_pct = (per_msg["checks"] / base_ms - 1) * 100 if base_ms else None
    booking_pct = (per_msg["booking"] / base_ms - 1) * 100 if base_ms else None
    pure_pct = pure_us / 1000 / base_ms * 100 if base_ms else None
    table = [
        {"measure": "unpaced inbox finish, alone (s)", "value": alone_s},
        {"measure": "unpaced inbox finish, beside paced backlog (s)", "value": beside["free_finish_s"]},
        {
            "measure": "unpaced finish ratio (beside / alone)",
            "value": round(beside["free_finish_s"] / alone_s, 2) if alone_s else None,
        },
        {"measure": "paced busiest 10 s window (limit 5, bound 6)", "value": beside["paced_busiest_10s"]},
        {
            "measure": "paced gaps min / mean / max (s)",
            "value": f"{beside['paced_gap_min_s']} / "
            f"{beside['paced_gap_mean_s']} / {beside['paced_gap_max_s']}",
        },
        {"measure": "gateway 429s on the paced inbox", "value": beside["gateway_429s_paced"]},
        {"measure": "quiet hours: sends before the window", "value": quiet["sends_before_window"]},
        {
            "measure": "quiet hours: busiest 10 s while draining (limit 10, bound 11)",
            "value": quiet["busiest_10s"],
        },
        {
            "measure": "attempts burnt (pacing + quiet hours)",
            "value": beside["attempts_burnt"] + quiet["attempts_burnt"],
        },
        {"measure": "consumer CPU per message, baseline (ms)", "value": round(base_ms, 3)},
        {
            "measure": "consumer CPU per message, window + zone checks (ms)",
            "value": round(per_msg["checks"], 3),
        },
        {"measure": "consumer CPU overhead of the checks (%)", "value": _pct(overhead_pct)},
        {
            "measure": "pure checks alone (µs/msg; % of baseline CPU)",
            "value": f"{pure_us:.1f}; {_pct(pure_pct)}",
        },
        {"measure": "consumer CPU per message, + cap booking (ms)", "value": round(per_msg["booking"], 3)},
        {"measure": "consumer CPU overhead with a booking per message (%)", "value": _pct(booking_pct)},
        {
            "measure": "PostgreSQL CPU per message: baseline / checks / booking (ms)",
            "value": " / ".join(f"{pg_per_msg[c]:.2f}" for c in CPU_CASES),
        },
    ]
    return {
        "title": "Sender safety: pacing, quiet hours, overhead",
        "table": table,
        "pacing": {"unpaced_alone_finish_s": alone_s, **beside, "per_minute": PACED_PER_MINUTE},
        "quiet_hours": {**quiet, "per_minute": QUIET_PER_MINUTE},
        "overhead": {
            "samples": samples,
            "consumer_cpu_ms_per_msg": per_msg,
            "postgres_cpu_ms_per_msg": pg_per_msg,
            "checks_overhead_pct": overhead_pct,
            "booking_overhead_pct": booking_pct,
            "pure_checks_us_per_msg": pure_us,
            "pure_checks_pct_of_baseline": pure_pct,
        },
        "other_load": load,
        "notes": [
            f"{CONSUMERS} consumer processes x concurrency {CONCURRENCY}; AI latency {AI_LATENCY_S} s, "
            f"send latency {SEND_LATENCY_S} s; box load at start {load}",
            "busiest windows count sends the simulator accepted (its clock), per inbox",
            "CPU per message: mean of interleaved runs per case (see overhead.samples); "
            "the booking case adds one statement per message (what any paced or capped inbox "
            "pays); figures on a shared 2-core box move by several % run to run",
        ],
    }
