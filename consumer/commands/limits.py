"""`campaignq limits`: the shared budgets (rate_limits) and workspace weights, shown and set.

Every change is one row in the database; consumers see a budget change at their next slice
refresh (`CAMPAIGNQ_AI_BUDGET_REFRESH_S`, 1 s) and the producer sees a weight at its next
tick, so nothing needs a restart.
"""

from __future__ import annotations

import argparse
import json
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any, LiteralString

import psycopg
from psycopg.rows import dict_row

from ..errors import ConfigurationError
from ..ops.migrate import connect
from ..sql import query
from ._args import positive_int
from ._common import database_url, settings_from

HELP = "show or set the shared AI budget (`limits set ai 6000`) and workspace weights (fair share)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    show = actions.add_parser("show", help="budgets, their use, who holds slices, weights (default)")
    set_ = actions.add_parser("set", help="set a budget: `set ai 6000` (requests per minute)")
    set_.add_argument("name", help="budget name; `ai` is the LLM provider's")
    set_.add_argument("requests_per_minute", type=positive_int, metavar="RPM")
    unset = actions.add_parser("unset", help="remove a budget: each process keeps only its own cap")
    unset.add_argument("name")
    weight = actions.add_parser("weight", help="set a workspace's fair-share weight (1..1000, default 1)")
    weight.add_argument("workspace_id", type=uuid.UUID, metavar="WORKSPACE_ID")
    weight.add_argument("weight", type=positive_int, metavar="WEIGHT")
    unweight = actions.add_parser("unweight", help="back to the default weight 1")
    unweight.add_argument("workspace_id", type=uuid.UUID, metavar="WORKSPACE_ID")
    for sub in (show, set_, unset, weight, unweight):
        sub.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    url = database_url(settings)
    action = args.action or "show"
    with connect(url) as conn:
        try:
            changed = _change(conn, action, args)
        except (psycopg.errors.CheckViolation, psycopg.errors.InvalidTextRepresentation) as exc:
            detail = exc.diag.message_primary or str(exc)
            raise ConfigurationError(f"rejected by the database: {detail}") from exc
        document = collect_limits(conn)
    if changed is not None:
        document["changed"] = changed
    if args.json:
        print(json.dumps(document, indent=2, default=_json_default))
    else:
        print(render_limits(document))
    return 0


def _change(conn: psycopg.Connection[Any], action: str, args: argparse.Namespace) -> dict[str, Any] | None:
    statements: dict[str, tuple[LiteralString, dict[str, Any]]] = {
        "set": (
            "limits_set",
            {"name": getattr(args, "name", None), "rpm": getattr(args, "requests_per_minute", 0)},
        ),
        "unset": ("limits_delete", {"name": getattr(args, "name", None)}),
        "weight": (
            "weights_set",
            {"workspace_id": getattr(args, "workspace_id", None), "weight": getattr(args, "weight", 0)},
        ),
        "unweight": ("weights_delete", {"workspace_id": getattr(args, "workspace_id", None)}),
    }
    if action not in statements:
        return None
    name, params = statements[action]
    row = conn.cursor(row_factory=dict_row).execute(query(name), params).fetchone()
    if row is None and action in ("unset", "unweight"):
        raise ConfigurationError(f"nothing to remove: {next(iter(params.values()))} is not set")
    return {"action": action, **{k: v for k, v in (row or {}).items()}}


def collect_limits(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """The `limits --json` document (also a part of `stats --json`)."""
    cur = conn.cursor(row_factory=dict_row)
    return {
        "rate_limits": cur.execute(query("limits_usage")).fetchall(),
        "holders": cur.execute(query("limits_holders")).fetchall(),
        "workspace_weights": cur.execute(query("weights_list")).fetchall(),
    }


def render_limits(document: dict[str, Any]) -> str:
    lines: list[str] = []
    if changed := document.get("changed"):
        lines.append("changed: " + ", ".join(f"{k}={v}" for k, v in changed.items()))
    lines.append("Shared budgets (rate_limits; consumers pick a change up within ~1 s):")
    if not document["rate_limits"]:
        lines.append("  none — each consumer keeps only its own CAMPAIGNQ_AI_REQUESTS_PER_MINUTE")
    for b in document["rate_limits"]:
        cooldown = f", cooling down until {b['cooldown_until']:%H:%M:%S}" if b["cooldown_until"] else ""
        lines.append(
            f"  {b['name']}: {b['requests_per_minute']} rpm, {b['holders']} holders, "
            f"granted {b['granted_rpm']}, wanted {b['wanted_rpm']}, "
            f"used {b['used_rpm']} ({b['used_pct']}%){cooldown}"
        )
    for h in document["holders"]:
        lines.append(
            f"    {h['name']} slice {h['granted_rpm']:>6} rpm  used {h['used_rpm']:>6}"
            f"  wants {h['wanted_rpm']:>6}  cap {h['cap_rpm']:>6}"
            f"  {h['holder']} (seen {h['seen_s_ago']} s ago)"
        )
    lines.append("Workspace weights (fair share; absent = 1):")
    if not document["workspace_weights"]:
        lines.append("  none — every workspace with due work gets an equal share")
    for w in document["workspace_weights"]:
        lines.append(f"  {w['workspace_id']}: {w['weight']}")
    return "\n".join(lines)


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
