"""`campaignq replay`: dead letters back to the main queue, one transaction per batch.

Every decision (replay, or archive because the row is gone / already sent / already queued,
or keep because the run is not running) is taken by the SQL function
``campaignq_replay_dead_letters`` under the same row locks as the writes, so two replays, a
replay and the producer, or a replay and a consumer can never disagree. This module pages
through the DLQ, rolls each batch back for ``--dry-run`` and summarises what happened.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import psycopg

from ..sql import query

DEFAULT_BATCH_SIZE = 500

ACTION_REPLAYED = "replayed"
# Why a dead letter was archived instead of replayed, in words an operator reads.
ARCHIVE_WHY = {
    "archived_sent": "row already sent: never re-sent",
    "archived_missing": "row no longer exists (or the payload names none)",
    "archived_in_flight": "row already queued or being processed by a live message",
    "archived_invalid_payload": "payload does not name this row consistently: never replayed",
}


@dataclass(frozen=True)
class ReplayFilters:
    """Which dead letters to consider; None means "any". Ages are of the dead letter itself."""

    run_id: uuid.UUID | None = None
    reason: str | None = None
    older_than_s: float | None = None
    newer_than_s: float | None = None
    limit: int | None = None


@dataclass(frozen=True)
class LetterOutcome:
    dlq_msg_id: int
    campaign_message_id: uuid.UUID | None
    run_id: uuid.UUID | None
    reason: str
    previous_status: str | None
    action: str


@dataclass
class ReplayReport:
    dry_run: bool
    letters: list[LetterOutcome] = field(default_factory=list)

    @property
    def replayed(self) -> list[LetterOutcome]:
        return [letter for letter in self.letters if letter.action == ACTION_REPLAYED]

    @property
    def archived(self) -> list[LetterOutcome]:
        return [letter for letter in self.letters if letter.action.startswith("archived_")]

    @property
    def kept(self) -> list[LetterOutcome]:
        return [letter for letter in self.letters if letter.action.startswith("kept_")]

    def by_action(self) -> dict[str, int]:
        return dict(Counter(letter.action for letter in self.letters))

    def replayed_by_reason_and_run(self) -> list[tuple[str, uuid.UUID | None, int]]:
        counts = Counter((letter.reason, letter.run_id) for letter in self.replayed)
        return sorted(
            ((reason, run_id, n) for (reason, run_id), n in counts.items()),
            key=lambda item: (-item[2], item[0], str(item[1])),
        )

    def to_json(self) -> dict[str, Any]:
        """Stable keys, documented in docs/operations.md."""
        return {
            "dry_run": self.dry_run,
            "examined": len(self.letters),
            "by_action": self.by_action(),
            "replayed_by_reason_and_run": [
                {"reason": reason, "run_id": _str(run_id), "count": n}
                for reason, run_id, n in self.replayed_by_reason_and_run()
            ],
            "letters": [
                {
                    "dlq_msg_id": letter.dlq_msg_id,
                    "campaign_message_id": _str(letter.campaign_message_id),
                    "run_id": _str(letter.run_id),
                    "reason": letter.reason,
                    "previous_status": letter.previous_status,
                    "action": letter.action,
                }
                for letter in self.letters
            ],
        }


def replay_dead_letters(
    conn: psycopg.Connection[Any],
    filters: ReplayFilters,
    *,
    dry_run: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> ReplayReport:
    """Replay (or, with `dry_run`, compute exactly what a replay would do) batch by batch.

    `conn` must be in autocommit mode: each batch opens its own transaction, so a large
    replay never holds thousands of row locks at once, and a dry run rolls each one back.
    A dry run executes the very same function and rolls back, so it cannot drift from the
    real thing.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    report = ReplayReport(dry_run=dry_run)
    after_msg_id = 0
    remaining = filters.limit
    while remaining is None or remaining > 0:
        size = batch_size if remaining is None else min(batch_size, remaining)
        batch = _one_batch(conn, filters, after_msg_id=after_msg_id, size=size, dry_run=dry_run)
        report.letters.extend(batch)
        if remaining is not None:
            remaining -= len(batch)
        if len(batch) < size:
            break  # fewer than asked: nothing unlocked matches after this point
        after_msg_id = batch[-1].dlq_msg_id
    return report


def _one_batch(
    conn: psycopg.Connection[Any], filters: ReplayFilters, *, after_msg_id: int, size: int, dry_run: bool
) -> list[LetterOutcome]:
    params = {
        "limit": size,
        "after_msg_id": after_msg_id,
        "run_id": filters.run_id,
        "reason": filters.reason,
        "older_than_s": filters.older_than_s,
        "newer_than_s": filters.newer_than_s,
    }
    rows: list[tuple[Any, ...]] = []
    with conn.transaction():
        rows = conn.execute(query("replay_dead_letters"), params).fetchall()
        if dry_run:
            raise psycopg.Rollback()
    return [
        LetterOutcome(
            dlq_msg_id=int(row[0]),
            campaign_message_id=row[1],
            run_id=row[2],
            reason=str(row[3]),
            previous_status=row[4],
            action=str(row[5]),
        )
        for row in rows
    ]


def format_report(report: ReplayReport, *, max_listed: int = 20) -> list[str]:
    """Human summary: what moved (by reason and run), what was archived and why, what stayed."""
    lines: list[str] = []
    if report.dry_run:
        lines.append("dry run: nothing was changed")
    if not report.letters:
        lines.append("no dead letters match")
        return lines
    verb = "would replay" if report.dry_run else "replayed"
    lines.append(f"{verb} {len(report.replayed)} dead letter(s) to campaign_messages")
    if report.replayed:
        lines.append(f"  {'count':>7}  {'reason':<20} run")
        for reason, run_id, n in report.replayed_by_reason_and_run():
            lines.append(f"  {n:>7}  {reason:<20} {_str(run_id) or '-'}")
    if report.archived:
        verb = "would archive" if report.dry_run else "archived"
        lines.append(f"{verb} {len(report.archived)} dead letter(s) instead of replaying them:")
        for letter in report.archived[:max_listed]:
            lines.append(
                f"  dlq {letter.dlq_msg_id}  message {_str(letter.campaign_message_id) or '-'}  "
                f"{ARCHIVE_WHY.get(letter.action, letter.action)}"
            )
        if len(report.archived) > max_listed:
            lines.append(f"  … and {len(report.archived) - max_listed} more")
    if report.kept:
        kept = Counter(letter.action.removeprefix("kept_run_") for letter in report.kept)
        summary = ", ".join(f"{n} of {status} runs" for status, n in sorted(kept.items()))
        lines.append(
            f"kept {len(report.kept)} dead letter(s) in the DLQ ({summary}): "
            "resume the run, then replay again"
        )
    return lines


def _str(value: uuid.UUID | None) -> str | None:
    return str(value) if value is not None else None
