"""The producer loop around the SQL function ``enqueue_due_campaign_messages``.

pg_cron runs the same function where installed (`campaignq migrate --schedule-producer`);
this loop is for servers without it. It survives database restarts: a lost connection is
logged and retried with capped exponential backoff, never an exit.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass

import psycopg
from loguru import logger

from ..errors import one_line
from ..sql import query
from .db import TRANSIENT_DB_ERRORS

RECONNECT_DELAY_MAX_S = 30.0


def enqueue_due(
    conn: psycopg.Connection[tuple[object, ...]],
    limit: int,
    *,
    horizon_s: float | None = None,
    min_depth: int | None = None,
) -> int:
    """One producer call in its own transaction; returns how many messages it queued.

    `horizon_s` / `min_depth` are the just-in-time target of the fair-share producer (see
    db/migrations/0008), set for this call's own transaction in the same statement: behind a
    transaction pooler a session setting would stay on whichever server connection ran it.
    Left out, the SQL reads the database's settings (`ALTER DATABASE … SET
    campaignq.queue_horizon_s = …`) or 0008's defaults — as pg_cron does.
    """
    with conn.transaction():
        if horizon_s is None and min_depth is None:
            row = conn.execute(query("enqueue_due"), {"limit": limit}).fetchone()
        else:
            params = {
                "limit": limit,
                "horizon_s": str(horizon_s if horizon_s is not None else 15.0),
                "min_depth": str(min_depth if min_depth is not None else 500),
            }
            row = conn.execute(query("enqueue_due_with_target"), params).fetchone()
    return int(str(row[0])) if row else 0


def resume_within_budget(conn: psycopg.Connection[tuple[object, ...]]) -> int:
    """Resume runs paused for budget whose caps leave room again (0010): a new UTC day
    frees a workspace's daily cap without anyone touching it."""
    row = conn.execute(query("resume_within_budget")).fetchone()
    resumed = int(str(row[0])) if row else 0
    if resumed:
        logger.info("resumed {} run(s) paused for budget: their caps leave room again", resumed)
    return resumed


@dataclass
class ProducerLoop:
    url: str
    interval_s: float
    batch_size: int
    stop_event: threading.Event
    queue_horizon_s: float = 15.0
    queue_min_depth: int = 500
    queued_total: int = 0

    def run(self) -> None:
        reconnect_delay_s = 0.0
        while not self.stop_event.is_set():
            try:
                # prepare_threshold=None: this loop runs the same statement forever, which psycopg
                # would prepare server-side after 5 runs, and behind a transaction pooler the next
                # run may land on a server connection that does not have it.
                with psycopg.connect(
                    self.url, autocommit=True, connect_timeout=10, prepare_threshold=None
                ) as conn:
                    if reconnect_delay_s:
                        logger.info("producer reconnected to the database")
                    reconnect_delay_s = 0.0
                    self._produce_until_stopped(conn)
            except TRANSIENT_DB_ERRORS as exc:
                reconnect_delay_s = min(RECONNECT_DELAY_MAX_S, max(0.5, reconnect_delay_s * 2))
                delay_s = random.uniform(reconnect_delay_s / 2, reconnect_delay_s)  # noqa: S311 (jitter)
                logger.warning(
                    "producer lost the database ({}); retrying in {:.1f} s",
                    one_line(exc),
                    delay_s,
                )
                self.stop_event.wait(delay_s)

    def _produce_until_stopped(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        while not self.stop_event.is_set():
            started = time.perf_counter()
            resume_within_budget(conn)
            queued = enqueue_due(
                conn, self.batch_size, horizon_s=self.queue_horizon_s, min_depth=self.queue_min_depth
            )
            self.queued_total += queued
            if queued:
                logger.info(
                    "queued {} due messages in {:.0f} ms", queued, (time.perf_counter() - started) * 1000
                )
            if queued < self.batch_size:  # backlog drained: wait for the next tick
                self.stop_event.wait(self.interval_s)
