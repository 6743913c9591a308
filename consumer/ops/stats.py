"""`campaignq stats`: the operator views (db/migrations/0005) as a rich table or stable JSON.

The numbers come from the SQL views and nothing else, so psql users and the CLI always
agree. The one thing a view cannot know is the application's price table: rows whose cost
was not stored (a model missing from the table when the message was generated) are priced
here with the current `Settings.model_prices`, and what still has no price is counted in
`unpriced_messages` so a cost is never silently understated.

The JSON keys are listed below and documented in docs/operations.md; they are a contract:
add keys freely, never rename or remove one without bumping `STATS_SCHEMA_VERSION`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import psycopg
from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from ..core.costs import estimate_cost_usd
from ..core.pacing import InboxSafety, daily_cap
from ..settings import ModelPrice
from ..sql import query

STATS_SCHEMA_VERSION = 1
DEFAULT_RUNS_LIMIT = 20

QUEUE_KEYS = (
    "queue_name",
    "role",
    "depth",
    "visible",
    "in_flight",
    "delayed",
    "oldest_age_s",
    "dead_letters",
    "archived_estimate",
)
RUN_KEYS = (
    "run_id",
    "workspace_id",
    "config_id",
    "campaign",
    "ai_model",
    "run_status",
    "leads_total",
    "leads_processed",
    "messages",
    "pending",
    "queued",
    "in_progress",
    "sent",
    "failed",
    "skipped",
    "done_pct",
    "retries",
    "retried_messages",
    "deferrals",
    "tokens",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "unpriced_messages",
    "ai_ms_p50",
    "ai_ms_p95",
    "split_ms_p50",
    "split_ms_p95",
    "send_ms_p50",
    "send_ms_p95",
    "sent_last_minute",
    "sent_per_minute",
    "started_at",
    "finished_at",
    "last_sent_at",
)
WORKSPACE_KEYS = (
    "workspace_id",
    "period",
    "finished",
    "sent",
    "failed",
    "skipped",
    "retries",
    "timeouts",
    "rate_limited",
    "tokens",
    "cost_usd",
    "unpriced_messages",
    "ai_ms_p50",
    "ai_ms_p95",
    "send_ms_p50",
    "send_ms_p95",
    "sent_per_minute",
)
DEAD_LETTER_KEYS = ("reason", "error_class", "dead_letters", "runs", "oldest_at", "newest_at")
DEAD_LETTER_RUN_KEYS = ("run_id", "workspace_id", "reason", "dead_letters", "oldest_at", "newest_at")
AI_COST_KEYS = (
    "run_id",
    "workspace_id",
    "ai_model",
    "run_status",
    "pause_reason",
    "budget_exhausted",
    "ai_cost_cap_usd",
    "generated",
    "batch_generated",
    "ai_calls",
    "ai_calls_per_message",
    "prompt_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "cached_token_share",
    "cost_usd",
    "cost_per_1000_messages_usd",
)
WORKSPACE_AI_COST_KEYS = (
    "workspace_id",
    "day",
    "generated",
    "batch_generated",
    "ai_calls",
    "prompt_tokens",
    "cached_tokens",
    "cached_token_share",
    "cost_usd",
    "cost_per_1000_messages_usd",
    "daily_ai_cost_cap_usd",
    "runs_budget_exhausted",
)
# Issue 13 (sender safety): inboxes that are paced, capped, warming up, paused, or have
# messages waiting (held) or skipped for opt-out; view `campaignq_inbox_safety` (0009).
INBOX_KEYS = (
    "inbox_id",
    "workspace_id",
    "name",
    "instance",
    "max_sends_per_minute",
    "daily_send_cap",
    "daily_cap_today",
    "messages_today",
    "bubbles_booked",
    "next_slot_at",
    "paused_at",
    "pause_reason",
    "rate_limited_recent",
    "last_rate_limited_at",
    "held",
    "held_send_window",
    "held_pace",
    "held_daily_cap",
    "held_inbox_paused",
    "skipped_opted_out_24h",
)
# Fair share and the shared AI budget (issue 12, views in db/migrations/0008).
BUDGET_KEYS = (
    "name",
    "requests_per_minute",
    "holders",
    "granted_rpm",
    "wanted_rpm",
    "used_rpm",
    "used_pct",
    "cooldown_until",
)
BUDGET_HOLDER_KEYS = (
    "name",
    "holder",
    "host",
    "pid",
    "cap_rpm",
    "wanted_rpm",
    "granted_rpm",
    "used_rpm",
    "seen_at",
)
FAIR_SHARE_KEYS = ("workspace_id", "weight", "running_runs", "due", "in_queue", "share_pct")
TOP_LEVEL_KEYS = (
    "schema_version",
    "generated_at",
    "queues",
    "runs",
    "workspaces",
    "dead_letters",
    "dead_letters_by_run",
    "ai_costs",
    "workspace_ai_costs",
    "inboxes",
    "budgets",
    "budget_holders",
    "fair_share",
)


def collect_stats(
    conn: psycopg.Connection[Any],
    *,
    prices: Mapping[str, ModelPrice],
    run_id: uuid.UUID | None = None,
    runs_limit: int = DEFAULT_RUNS_LIMIT,
) -> dict[str, Any]:
    """Everything `stats` shows, JSON-ready, read in one repeatable-read snapshot."""
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        conn.execute(query("stats_no_jit"))
        row = conn.execute(query("stats_now")).fetchone()
        generated_at = row[0] if row else None
        queues = _rows(conn, "stats_queues", {})
        runs = _rows(conn, "stats_runs", {"run_id": run_id, "limit": runs_limit})
        workspace_id = None
        if run_id is not None:  # that run's workspace only; an unknown run matches no workspace
            workspace_id = runs[0]["workspace_id"] if runs else uuid.UUID(int=0)
        workspaces = _rows(conn, "stats_workspaces", {"workspace_id": workspace_id})
        unpriced = _rows(conn, "stats_workspace_unpriced", {"workspace_id": workspace_id})
        by_reason = _rows(conn, "stats_dead_letters_by_reason", {})
        by_run = _rows(conn, "stats_dead_letters_by_run", {"run_id": run_id, "limit": runs_limit})
        ai_costs = _rows(conn, "stats_ai_costs", {"run_id": run_id, "limit": runs_limit})
        workspace_ai_costs = _rows(conn, "stats_workspace_ai_costs", {"workspace_id": workspace_id})
        inboxes = _rows(conn, "stats_inboxes", {"limit": 100})
        budgets = _rows(conn, "limits_usage", {})
        holders = _rows(conn, "limits_holders", {})
        fair_share = _rows(conn, "stats_fair_share", {})
    for inbox in inboxes:
        inbox["daily_cap_today"] = _cap_today(inbox, generated_at)
    for run in runs:
        _price_run(run, prices)
    _price_workspaces(workspaces, unpriced, prices)
    return {
        "schema_version": STATS_SCHEMA_VERSION,
        "generated_at": _jsonable(generated_at),
        "queues": _project(queues, QUEUE_KEYS),
        "runs": _project(runs, RUN_KEYS),
        "workspaces": _project(workspaces, WORKSPACE_KEYS),
        "dead_letters": _project(by_reason, DEAD_LETTER_KEYS),
        "dead_letters_by_run": _project(by_run, DEAD_LETTER_RUN_KEYS),
        "ai_costs": _project(ai_costs, AI_COST_KEYS),
        "workspace_ai_costs": _project(workspace_ai_costs, WORKSPACE_AI_COST_KEYS),
        "inboxes": _project(inboxes, INBOX_KEYS),
        "budgets": _project(budgets, BUDGET_KEYS),
        "budget_holders": _project(holders, BUDGET_HOLDER_KEYS),
        "fair_share": _project(fair_share, FAIR_SHARE_KEYS),
    }


def _cap_today(inbox: Mapping[str, Any], now: datetime | None) -> int | None:
    """Today's cap with the warm-up curve applied (the same maths the consumer uses)."""
    safety = InboxSafety(
        inbox_id=inbox["inbox_id"],
        daily_send_cap=inbox["daily_send_cap"],
        warmup_started_at=inbox["warmup_started_at"],
        warmup_first_day_cap=inbox["warmup_first_day_cap"],
        warmup_daily_growth=float(inbox["warmup_daily_growth"] or 1.5),
    )
    return daily_cap(safety, now or datetime.now(UTC))


def _rows(conn: psycopg.Connection[Any], name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    cur = conn.execute(query(name), params)
    columns = [column.name for column in cur.description or ()]
    return [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]


def _price_run(run: dict[str, Any], prices: Mapping[str, ModelPrice]) -> None:
    """Add the price-table estimate for rows stored without a cost (see the module docstring)."""
    if not run["unpriced_messages"]:
        return
    extra = estimate_cost_usd(
        model=run["ai_model"],
        prompt_tokens=int(run["unpriced_prompt_tokens"]),
        completion_tokens=int(run["unpriced_completion_tokens"]),
        reported_cost_usd=None,
        prices=prices,
    )
    if extra is not None:
        run["cost_usd"] = Decimal(run["cost_usd"]) + Decimal(str(round(extra, 6)))
        run["unpriced_messages"] = 0


def _price_workspaces(
    workspaces: list[dict[str, Any]], unpriced: Iterable[dict[str, Any]], prices: Mapping[str, ModelPrice]
) -> None:
    by_key = {(w["workspace_id"], w["period"]): w for w in workspaces}
    for group in unpriced:
        workspace = by_key.get((group["workspace_id"], group["period"]))
        if workspace is None:
            continue
        extra = estimate_cost_usd(
            model=group["ai_model"],
            prompt_tokens=int(group["prompt_tokens"]),
            completion_tokens=int(group["completion_tokens"]),
            reported_cost_usd=None,
            prices=prices,
        )
        if extra is not None:
            workspace["cost_usd"] = Decimal(workspace["cost_usd"]) + Decimal(str(round(extra, 6)))
            workspace["unpriced_messages"] = max(
                0, int(workspace["unpriced_messages"]) - int(group["messages"])
            )


def _project(rows: Iterable[Mapping[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    return [{key: _jsonable(row.get(key)) for key in keys} for row in rows]


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):  # counts are bigint (int); every numeric column is a measure
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return value


# --- rendering -------------------------------------------------------------------------------------


def render_stats(stats: Mapping[str, Any]) -> RenderableType:
    """The sections as compact rich tables; empty sections say so instead of vanishing."""
    runs = stats["runs"]
    return Group(
        Text(f"campaignq stats at {_when(stats['generated_at'])} UTC", style="bold"),
        _queues_table(stats["queues"]),
        _runs_progress_table(runs),
        _runs_cost_table(runs),
        _workspaces_table(stats["workspaces"]),
        _ai_costs_table(stats.get("ai_costs", [])),
        _dead_letters_table(stats["dead_letters"]),
        _inboxes_table(stats.get("inboxes", [])),
        _budgets_table(stats.get("budgets", []), stats.get("budget_holders", [])),
        _fair_share_table(stats.get("fair_share", [])),
    )


def _budgets_table(budgets: Sequence[Mapping[str, Any]], holders: Sequence[Mapping[str, Any]]) -> Table:
    table = _table(
        "Shared budgets (rpm)", ("budget / holder", "budget", "granted", "wanted", "used", "used %")
    )
    if not budgets:
        table.add_row("none: each process keeps its own cap", "", "", "", "", "")
    for b in budgets:
        cooling = " (cooling down)" if b.get("cooldown_until") else ""
        table.add_row(
            f"{b['name']}{cooling}",
            _n(b["requests_per_minute"]),
            _n(b["granted_rpm"]),
            _n(b["wanted_rpm"]),
            _n(b["used_rpm"]),
            f"{b['used_pct']}",
        )
        for h in holders:
            if h["name"] == b["name"]:
                table.add_row(
                    f"  {h['holder']}", "", _n(h["granted_rpm"]), _n(h["wanted_rpm"]), _n(h["used_rpm"]), ""
                )
    return table


def _fair_share_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    table = _table(
        "Fair share (running workspaces)", ("workspace", "weight", "runs", "due", "in queue", "share %")
    )
    if not rows:
        table.add_row("none running", "", "", "", "", "")
    for r in rows:
        table.add_row(
            str(r["workspace_id"]),
            _n(r["weight"]),
            _n(r["running_runs"]),
            _n(r["due"]),
            _n(r["in_queue"]),
            f"{r['share_pct']}",
        )
    return table


def _table(title: str, headers: Sequence[str], *, left: int = 1) -> Table:
    """A borderless table; the first `left` columns are labels, the others numbers."""
    table = Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    for index, header in enumerate(headers):
        table.add_column(header, justify="left" if index < left else "right", no_wrap=True)
    return table


def _queues_table(queues: Sequence[Mapping[str, Any]]) -> Table:
    table = _table(
        "Queues", ("queue", "depth", "visible", "in flight", "delayed", "oldest", "DLQ", "archived~")
    )
    for q in queues:
        table.add_row(
            q["queue_name"],
            _n(q["depth"]),
            _n(q["visible"]),
            _n(q["in_flight"]),
            _n(q["delayed"]),
            _age(q["oldest_age_s"]),
            _n(q["dead_letters"]),
            _n(q["archived_estimate"]),
        )
    return table


def _runs_progress_table(runs: Sequence[Mapping[str, Any]]) -> Table:
    headers = (
        "run",
        "campaign",
        "status",
        "done",
        "sent",
        "failed",
        "skipped",
        "waiting",
        "retries",
        "sent/min",
    )
    table = _table("Runs: progress (active, or finished in the last day)", headers, left=3)
    if not runs:
        table.add_row("-", "no runs", *[""] * (len(headers) - 2))
    for r in runs:
        waiting = int(r["pending"]) + int(r["queued"]) + int(r["in_progress"])
        table.add_row(
            str(r["run_id"])[:8],
            str(r["campaign"])[:32],
            str(r["run_status"]),
            f"{_n(r['done_pct'])}%",
            _n(r["sent"]),
            _n(r["failed"]),
            _n(r["skipped"]),
            _n(waiting),
            _n(r["retries"]),
            f"{_n(r['sent_last_minute'])} (avg {_n(r['sent_per_minute'])})",
        )
    return table


def _runs_cost_table(runs: Sequence[Mapping[str, Any]]) -> Table:
    headers = ("run", "model", "tokens", "cost $", "ai ms p50/95", "split ms p50/95", "send ms p50/95")
    table = _table("Runs: cost and stage latency", headers, left=2)
    for r in runs:
        table.add_row(
            str(r["run_id"])[:8],
            str(r["ai_model"])[:28],
            _n(r["tokens"]),
            _cost(r["cost_usd"], r["unpriced_messages"]),
            _pair(r["ai_ms_p50"], r["ai_ms_p95"]),
            _pair(r["split_ms_p50"], r["split_ms_p95"]),
            _pair(r["send_ms_p50"], r["send_ms_p95"]),
        )
    return table


def _workspaces_table(workspaces: Sequence[Mapping[str, Any]]) -> Table:
    headers = (
        "workspace",
        "period",
        "sent",
        "failed",
        "skipped",
        "retries",
        "timeouts",
        "429s",
        "tokens",
        "cost $",
        "ai ms p50/95",
        "sent/min",
    )
    table = _table("Workspaces: messages finished in the last 1h / 24h", headers, left=2)
    if not workspaces:
        table.add_row("-", "none", *[""] * (len(headers) - 2))
    for w in workspaces:
        table.add_row(
            str(w["workspace_id"])[:8],
            str(w["period"]),
            _n(w["sent"]),
            _n(w["failed"]),
            _n(w["skipped"]),
            _n(w["retries"]),
            _n(w["timeouts"]),
            _n(w["rate_limited"]),
            _n(w["tokens"]),
            _cost(w["cost_usd"], w["unpriced_messages"]),
            _pair(w["ai_ms_p50"], w["ai_ms_p95"]),
            _n(w["sent_per_minute"]),
        )
    return table


def _ai_costs_table(costs: Sequence[Mapping[str, Any]]) -> Table:
    """Issue 14: calls per message, prompt-cache share, cost per 1,000 and the spend cap."""
    headers = ("run", "status", "generated", "batch", "calls/msg", "cached %", "cost $", "$/1k msgs", "cap $")
    table = _table("Runs: LLM cost", headers, left=2)
    if not costs:
        table.add_row("-", "no runs", *[""] * (len(headers) - 2))
    for c in costs:
        status = str(c["run_status"]) + (f" ({c['pause_reason']})" if c["pause_reason"] else "")
        share = c["cached_token_share"]
        table.add_row(
            str(c["run_id"])[:8],
            status,
            _n(c["generated"]),
            _n(c["batch_generated"]),
            _n(c["ai_calls_per_message"]),
            "-" if share is None else f"{100 * float(share):.0f}",
            f"{float(c['cost_usd'] or 0):.4f}",
            "-"
            if c["cost_per_1000_messages_usd"] is None
            else f"{float(c['cost_per_1000_messages_usd']):.4f}",
            "-" if c["ai_cost_cap_usd"] is None else f"{float(c['ai_cost_cap_usd']):.4f}",
        )
    return table


def _dead_letters_table(letters: Sequence[Mapping[str, Any]]) -> Table:
    table = _table(
        "Dead letters by reason", ("reason", "error class", "count", "runs", "oldest", "newest"), left=2
    )
    if not letters:
        table.add_row("none", "", "0", "", "", "")
    for d in letters:
        table.add_row(
            str(d["reason"]),
            str(d["error_class"]),
            _n(d["dead_letters"]),
            _n(d["runs"]),
            _when(d["oldest_at"]),
            _when(d["newest_at"]),
        )
    return table


def _inboxes_table(inboxes: Sequence[Mapping[str, Any]]) -> Table:
    table = _table(
        "Inboxes (sender safety)",
        ("inbox", "paused", "pace/min", "today/cap", "held: window", "pace", "cap", "paused", "opted out"),
        left=2,
    )
    if not inboxes:
        table.add_row("none paced, capped or paused", "", "", "", "", "", "", "", "")
    for i in inboxes:
        cap = i["daily_cap_today"]
        table.add_row(
            str(i["name"] or i["instance"]),
            str(i["pause_reason"] or "paused") if i["paused_at"] else "-",
            _n(i["max_sends_per_minute"]),
            f"{_n(i['messages_today'])}/{_n(cap)}",
            _n(i["held_send_window"]),
            _n(i["held_pace"]),
            _n(i["held_daily_cap"]),
            _n(i["held_inbox_paused"]),
            _n(i["skipped_opted_out_24h"]),
        )
    return table


def _n(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 10 else f"{value:,.1f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _pair(p50: Any, p95: Any) -> str:
    return "-" if p50 is None and p95 is None else f"{_n(p50)}/{_n(p95)}"


def _cost(cost: Any, unpriced: Any) -> str:
    text = f"{float(cost or 0):.4f}"
    return f"{text} (+{unpriced} unpriced)" if unpriced else text


def _age(seconds: Any) -> str:
    if seconds is None:
        return "-"
    s = float(seconds)
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def _when(value: Any) -> str:
    return "-" if value is None else str(value)[:19].replace("T", " ")
