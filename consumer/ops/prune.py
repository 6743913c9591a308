"""`campaignq prune`: delete archived queue messages older than a retention.

PGMQ archives every finished message (a DELETE + INSERT into ``pgmq.a_<queue>``) and never
deletes them, so without this the archive grows forever. Deletion runs in short batches,
one transaction each (``campaignq_prune_archive``), oldest first through PGMQ's archived_at
index: a large backlog never holds locks for long nor keeps vacuum from doing its work.
The cutoff is computed once, so a prune that runs for a while still ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from ..sql import query

ARCHIVED_QUEUES = ("campaign_messages", "campaign_messages_dlq")
DEFAULT_BATCH_SIZE = 5000


@dataclass(frozen=True)
class PruneResult:
    queue_name: str
    before: datetime
    deleted: int
    # Only a dry run counts (an index-only range count): a real prune reports what it deleted.
    prunable: int | None = None
    oldest_archived_at: datetime | None = None


def prune_archives(
    conn: psycopg.Connection[Any],
    *,
    older_than_s: float,
    batch_size: int = DEFAULT_BATCH_SIZE,
    dry_run: bool = False,
) -> list[PruneResult]:
    """Delete (or, with `dry_run`, count) archived messages archived more than `older_than_s` ago.

    `conn` must be in autocommit mode so that every batch commits on its own.
    """
    if older_than_s < 0:
        raise ValueError("older_than_s must not be negative")
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    row = conn.execute(query("prune_cutoff"), {"older_than_s": older_than_s}).fetchone()
    assert row is not None  # noqa: S101 (a SELECT of an expression always returns a row)
    before: datetime = row[0]
    if dry_run:
        rows = conn.execute(query("prune_count"), {"before": before}).fetchall()
        return [
            PruneResult(str(name), before, 0, prunable=int(count), oldest_archived_at=oldest)
            for name, count, oldest in rows
        ]
    results: list[PruneResult] = []
    for queue_name in ARCHIVED_QUEUES:
        deleted = 0
        while True:
            params = {"queue": queue_name, "before": before, "limit": batch_size}
            batch_row = conn.execute(query("prune_archive_batch"), params).fetchone()
            batch = int(batch_row[0]) if batch_row and batch_row[0] is not None else 0
            deleted += batch
            if batch < batch_size:
                break
        results.append(PruneResult(queue_name, before, deleted))
    return results
