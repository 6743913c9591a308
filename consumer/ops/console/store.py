"""Every query the console issues, and nothing else: reads for the pages, the operator's
actions, each written to the audit in the transaction that makes the change.

The console reuses the CLI's synchronous code (`collect_stats`, `replay_dead_letters`)
rather than a second async copy: each call borrows a connection from a small pool and runs
in a worker thread (`asyncio.to_thread` in the app), so the event loop never blocks and
the numbers can never differ from `campaignq stats --json`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from ...logs import mask_phone, redact
from ...settings import ModelPrice
from ...sql import query
from ..replay import DEFAULT_BATCH_SIZE, LetterOutcome, ReplayReport, replay_dead_letters
from ..stats import _jsonable, collect_stats
from .filters import DeadLetterFilter

# run action -> (new status, statuses it may come from)
RUN_TRANSITIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "pause": ("paused", ("running", "scheduled")),
    "resume": ("running", ("paused",)),
    "cancel": ("cancelled", ("scheduled", "running", "paused")),
}
AI_BUDGET = "ai"
LIST_LIMIT = 200
AUDIT_LIMIT = 50


class NotFoundError(LookupError):
    """The run, inbox… named in the request does not exist (404)."""


class ConflictError(RuntimeError):
    """The action does not apply in the current state, e.g. resuming a running run (409)."""


@dataclass(frozen=True)
class Actor:
    """Who did it, as the audit shows it: the name of the token used, never the token."""

    name: str


class Store:
    def __init__(self, database_url: str, *, prices: Mapping[str, ModelPrice], max_size: int = 4) -> None:
        self._prices = prices
        self._pool = ConnectionPool(
            database_url,
            min_size=1,
            max_size=max_size,
            kwargs={"autocommit": True, "connect_timeout": 10},
            open=False,
            timeout=10,  # a page waits this long for a connection, then shows the outage (503)
            name="campaignq-console",
        )

    def open(self) -> None:
        self._pool.open(wait=False)

    def close(self) -> None:
        self._pool.close()

    # --- reads -------------------------------------------------------------------------------

    def ping(self) -> None:
        with self._pool.connection(timeout=5) as conn:
            conn.execute(query("console_ping"))

    def stats(self, *, run_id: uuid.UUID | None = None, runs_limit: int = 20) -> dict[str, Any]:
        with self._pool.connection() as conn:
            return collect_stats(conn, prices=self._prices, run_id=run_id, runs_limit=runs_limit)

    def snapshot(self) -> dict[str, Any]:
        """Everything the live pages show, from one connection: the shared sampler's one read."""
        with self._pool.connection() as conn:
            stats = collect_stats(conn, prices=self._prices)
            return {
                "stats": stats,
                "throughput": _rows(conn, "console_throughput", {}),
                "inboxes": _rows(conn, "console_inboxes", {}),
                "workspaces": _rows(conn, "console_workspaces", {}),
                "rate_limits": _rows(conn, "console_rate_limits", {}),
                "audit": _rows(conn, "console_audit_recent", {"limit": AUDIT_LIMIT}),
            }

    def audit(self, limit: int = AUDIT_LIMIT) -> list[dict[str, Any]]:
        with self._pool.connection() as conn:
            return _rows(conn, "console_audit_recent", {"limit": limit})

    def dead_letters(self, flt: DeadLetterFilter, *, limit: int = LIST_LIMIT) -> dict[str, Any]:
        """The first `limit` letters matching, how many match, errors redacted, phones masked."""
        with self._pool.connection() as conn:
            rows = _rows(conn, "console_dead_letters", {**_filter_params(flt), "limit": limit})
        matching = int(rows[0]["matching"]) if rows else 0
        letters = []
        for row in rows:
            row.pop("matching")
            row["lead_phone"] = mask_phone(row["lead_phone"]) if row["lead_phone"] else None
            row["error"] = redact(row["error"]) if row["error"] else None
            letters.append(row)
        return {"filter": flt.to_json(), "matching": matching, "shown": len(letters), "letters": letters}

    # --- actions -----------------------------------------------------------------------------

    def replay(
        self, flt: DeadLetterFilter, *, dry_run: bool, actor: Actor, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> ReplayReport:
        """Replay (or preview) every letter matching; the audit gets the filter and the counts."""
        with self._pool.connection() as conn:
            if flt.error_class is None:
                report = replay_dead_letters(
                    conn, flt.replay_filters(), dry_run=dry_run, batch_size=batch_size
                )
            else:
                report = _replay_of_class(conn, flt, dry_run=dry_run, batch_size=batch_size)
            result = {"examined": len(report.letters), "by_action": report.by_action()}
            _audit(conn, actor, "replay_preview" if dry_run else "replay", None, flt.to_json(), result)
        return report

    def set_run_status(self, run_id: uuid.UUID, action: str, *, actor: Actor) -> dict[str, Any]:
        """`action` is a key of RUN_TRANSITIONS (the route checked it)."""
        status, allowed_from = RUN_TRANSITIONS[action]
        with self._pool.connection() as conn, conn.transaction():
            row = conn.execute(
                query("console_set_run_status"),
                {"run_id": run_id, "status": status, "allowed_from": list(allowed_from)},
            ).fetchone()
            if row is None:
                current = conn.execute(query("console_run_status"), {"run_id": run_id}).fetchone()
                if current is None:
                    raise NotFoundError(f"no run {run_id}")
                raise ConflictError(
                    f"cannot {action} run {run_id}: it is {current[0]} "
                    f"(only from {' or '.join(allowed_from)})"
                )
            result = {"previous_status": row[0], "status": row[1]}
            _audit(conn, actor, f"run_{action}", str(run_id), {}, result)
        return {"run_id": str(run_id), **result}

    def set_workspace_weight(self, workspace_id: uuid.UUID, weight: int, *, actor: Actor) -> dict[str, Any]:
        with self._pool.connection() as conn, conn.transaction():
            row = conn.execute(
                query("console_set_workspace_weight"), {"workspace_id": workspace_id, "weight": weight}
            ).fetchone()
            if row is None:
                raise NotFoundError(f"no workspace {workspace_id}: no config, inbox or lead names it")
            result = {"weight": weight}
            _audit(conn, actor, "workspace_weight", str(workspace_id), {}, result)
        return {"workspace_id": str(workspace_id), **result}

    def set_rate_limit(self, name: str, rpm: int | None, *, actor: Actor) -> dict[str, Any]:
        """A budget of `rpm` requests per minute, or none (`rpm` None: each process its own)."""
        with self._pool.connection() as conn, conn.transaction():
            if rpm is None:
                conn.execute(query("console_delete_rate_limit"), {"name": name})
            else:
                conn.execute(query("console_set_rate_limit"), {"name": name, "rpm": rpm})
            result = {"requests_per_minute": rpm}
            _audit(conn, actor, "rate_limit", name, {}, result)
        return {"name": name, **result}

    def pause_inbox(self, inbox_id: uuid.UUID, reason: str, *, actor: Actor) -> dict[str, Any]:
        with self._pool.connection() as conn, conn.transaction():
            row = conn.execute(
                query("console_pause_inbox"), {"inbox_id": inbox_id, "reason": reason}
            ).fetchone()
            if row is None:
                raise NotFoundError(f"no inbox {inbox_id}")
            _audit(conn, actor, "inbox_pause", str(inbox_id), {}, {"reason": reason})
        return {"inbox_id": str(inbox_id), "paused": True, "reason": reason}

    def resume_inbox(self, inbox_id: uuid.UUID, *, actor: Actor) -> dict[str, Any]:
        with self._pool.connection() as conn, conn.transaction():
            row = conn.execute(query("console_resume_inbox"), {"inbox_id": inbox_id}).fetchone()
            if row is None:
                raise NotFoundError(f"no inbox {inbox_id}")
            _audit(conn, actor, "inbox_resume", str(inbox_id), {}, {})
        return {"inbox_id": str(inbox_id), "paused": False}

    def record_audit(self, actor: Actor, action: str, target: str | None, result: Mapping[str, Any]) -> None:
        with self._pool.connection() as conn:
            _audit(conn, actor, action, target, {}, result)

    # --- sessions (issue 22) ------------------------------------------------------------------

    def create_session(
        self, *, id_hash: str, role: str, fingerprint: str, client: str | None, idle_s: float
    ) -> None:
        """A login's session (and the audit row), removing the sessions idle past `idle_s`."""
        with self._pool.connection() as conn, conn.transaction():
            conn.execute(
                query("console_session_create"),
                {
                    "id_hash": id_hash,
                    "role": role,
                    "fingerprint": fingerprint,
                    "client": client,
                    "idle_s": idle_s,
                },
            )
            _audit(conn, Actor(role), "login", client, {}, {})

    def touch_session(self, id_hash: str, *, idle_s: float) -> tuple[str, str] | None:
        """(role, token fingerprint) of a live session, its last use moved to now; else None."""
        with self._pool.connection() as conn:
            row = conn.execute(
                query("console_session_touch"), {"id_hash": id_hash, "idle_s": idle_s}
            ).fetchone()
        return (str(row[0]), str(row[1])) if row else None

    def end_session(self, id_hash: str) -> None:
        with self._pool.connection() as conn:
            conn.execute(query("console_session_end"), {"id_hash": id_hash})

    # --- webhooks ----------------------------------------------------------------------------

    def set_connection_state(self, instance: str, state: str, *, at: datetime | None, actor: Actor) -> int:
        """Every inbox on `instance` takes `state`, unless it already holds a state reported at
        or after `at` (the event's own time; None: now): an older delivery never wins."""
        with self._pool.connection() as conn, conn.transaction():
            rows = conn.execute(
                query("console_set_connection_state"), {"instance": instance, "state": state, "at": at}
            ).fetchall()
            _audit(conn, actor, "connection_state", instance, {}, {"state": state, "inboxes": len(rows)})
        return len(rows)

    def record_opt_out_forms(self, instance: str, phones: Sequence[str], *, actor: Actor) -> int:
        """Opt out the leads stored under any of `phones` (every form of one WhatsApp number,
        core/jid.py `number_forms`: a reply from 553180000006 is the lead +5531980000006),
        in one transaction with one audit row."""
        changed = 0
        with self._pool.connection() as conn, conn.transaction():
            for phone in phones:
                row = conn.execute(
                    query("console_record_opt_out"), {"instance": instance, "phone": phone, "reason": "reply"}
                ).fetchone()
                changed += int(row[0]) if row and row[0] is not None else 0
            masked = mask_phone(phones[0]) if phones else ""
            _audit(conn, actor, "opt_out", instance, {}, {"phone": masked, "leads": changed})
        return changed

    def record_opt_out(self, instance: str, phone: str, *, actor: Actor) -> int:
        with self._pool.connection() as conn, conn.transaction():
            row = conn.execute(
                query("console_record_opt_out"), {"instance": instance, "phone": phone, "reason": "reply"}
            ).fetchone()
            changed = int(row[0]) if row and row[0] is not None else 0
            _audit(conn, actor, "opt_out", instance, {}, {"phone": mask_phone(phone), "leads": changed})
        return changed


def _replay_of_class(
    conn: psycopg.Connection[Any], flt: DeadLetterFilter, *, dry_run: bool, batch_size: int
) -> ReplayReport:
    """Replay filtered by error class too: lock a page of matching letters, replay exactly those.

    Same decisions as the CLI (the same SQL function does each letter), one transaction per
    page, rolled back for a dry run.
    """
    report = ReplayReport(dry_run=dry_run)
    after = 0
    remaining = flt.limit
    params = _filter_params(flt)
    while remaining is None or remaining > 0:
        size = batch_size if remaining is None else min(batch_size, remaining)
        outcomes: list[LetterOutcome] = []
        ids: list[int] = []
        with conn.transaction():
            ids = [
                int(r[0])
                for r in conn.execute(
                    query("console_lock_dead_letters_of_class"),
                    {**params, "after_msg_id": after, "limit": size},
                ).fetchall()
            ]
            if ids:
                rows = conn.execute(query("console_replay_locked_letters"), {"msg_ids": ids}).fetchall()
                outcomes = [LetterOutcome(int(r[0]), r[1], r[2], str(r[3]), r[4], str(r[5])) for r in rows]
            if dry_run:
                raise psycopg.Rollback()
        report.letters.extend(outcomes)
        if remaining is not None:
            remaining -= len(ids)
        if len(ids) < size:
            break
        after = ids[-1]
    return report


def _filter_params(flt: DeadLetterFilter) -> dict[str, Any]:
    return {
        "run_id": flt.run_id,
        "reason": flt.reason,
        "error_class": flt.error_class,
        "older_than_s": flt.older_than_s,
        "newer_than_s": flt.newer_than_s,
    }


def _audit(
    conn: psycopg.Connection[Any],
    actor: Actor,
    action: str,
    target: str | None,
    flt: Mapping[str, Any],
    result: Mapping[str, Any],
) -> None:
    conn.execute(
        query("console_audit_insert"),
        {
            "actor": actor.name,
            "action": action,
            "target": target,
            "filter": Jsonb(dict(flt)),
            "result": Jsonb(dict(result)),
        },
    )


def _rows(conn: psycopg.Connection[Any], name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query(name), params)
        return [{key: _jsonable(value) for key, value in row.items()} for row in cur.fetchall()]
