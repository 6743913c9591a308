"""One AI request budget shared by every consumer process: a leased slice of a `rate_limits` row.

Why a lease and not a counter row: a statement per request would put the database on every
AI call's path. Instead each process refreshes its slice about once a second with ONE
statement (`campaignq_lease_rate_limit`, db/migrations/0008) that reports what it used and
wants and returns its grant; between refreshes a local token bucket spends the grant.

* A SIGKILLed process stops refreshing; its slice expires after `lease_s` and the others'
  next refresh takes it back (a few seconds).
* A new process starts with an empty bucket and is only granted budget the others have
  handed back at their own refresh, so the sum of grants never exceeds the budget
  (see `fairshare.grant_rpm`); bursts are bounded by one second of each slice.
* An `UPDATE rate_limits` is seen at the next refresh (≤ `refresh_s`).
* A 429 seen by any process is written to `rate_limit_cooldowns` at once and read by every
  other process at its next refresh: the cooldown slows every process.
* No `rate_limits` row: no gate at all, only the process's own
  `CAMPAIGNQ_AI_REQUESTS_PER_MINUTE` (which also caps what this process asks for).
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from loguru import logger
from psycopg_pool import AsyncConnectionPool

from ..core.fairshare import TokenBucket, wanted_rpm
from ..errors import one_line
from ..sql import query
from .db import DATABASE_ERRORS
from .metrics import ConsumerMetrics

AI_BUDGET = "ai"
# The bucket re-checks its rate at least this often while a request waits, so a bigger grant
# or a removed budget is used without waiting for the sleep computed under the old rate.
MAX_WAIT_STEP_S = 0.25


@dataclass(frozen=True)
class LeaseState:
    """What the last refresh returned. `budget_rpm is None`: no shared budget configured."""

    budget_rpm: int | None
    granted_rpm: int | None
    holders: int
    cooldown_until_epoch_s: float | None


class SharedBudget:
    """A process's slice of one shared budget: `acquire()` per request, `run()` as a side task."""

    def __init__(
        self,
        *,
        pool: AsyncConnectionPool[Any] | None,
        cap_rpm: int,
        name: str = AI_BUDGET,
        refresh_s: float = 1.0,
        lease_s: float = 3.0,
        metrics: ConsumerMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._pool = pool
        self.name = name
        self.cap_rpm = cap_rpm
        self.refresh_s = refresh_s
        self.lease_s = lease_s
        self.metrics = metrics
        self._clock = clock
        self._wall_clock = wall_clock
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.state: LeaseState | None = None
        self._bucket = TokenBucket(rate_per_s=0.0, now=clock())
        self._turn = asyncio.Lock()  # one waiter on the bucket at a time, the rest queue FIFO
        self._known = asyncio.Event()
        self._lease_valid_until = 0.0
        self._requests_total = 0
        self._requests_at_refresh = 0
        self._last_refresh = clock()
        self._saturated = False
        self._cooldown_written_until = 0.0
        self._background: set[asyncio.Task[None]] = set()

    # --- the request path ------------------------------------------------------------------

    async def acquire(self) -> None:
        """Wait for one request's worth of the shared budget (no-op without a budget row)."""
        await self._known.wait()
        state = self.state
        if state is None or state.budget_rpm is None:
            self._count_request()
            return
        if not self._turn.locked() and self._clock() < self._lease_valid_until:
            # Fast path, no waiter ahead of us: one bucket check, no lock.
            if self._bucket.try_take(self._clock()) <= 0:
                self._count_request()
                return
        async with self._turn:
            while True:
                state = self.state
                if state is None or state.budget_rpm is None:
                    break
                wait_s = (
                    self._bucket.try_take(self._clock())
                    if self._clock() < self._lease_valid_until
                    else math.inf
                )
                if wait_s <= 0:
                    break
                self._saturated = True
                await asyncio.sleep(min(wait_s, MAX_WAIT_STEP_S))
        self._count_request()

    def _count_request(self) -> None:
        self._requests_total += 1
        if self.metrics is not None:
            self.metrics.ai_budget_requests.inc()

    def cooldown_remaining_s(self) -> float:
        """Seconds of a cooldown another process (or this one) stored in the database."""
        state = self.state
        if state is None or state.cooldown_until_epoch_s is None:
            return 0.0
        return max(0.0, state.cooldown_until_epoch_s - self._wall_clock())

    def report_cooldown(self, seconds: float, reason: str) -> None:
        """Share a provider cooldown with every process now (one statement, in the background)."""
        until = self._wall_clock() + seconds
        if self._pool is None or until <= self._cooldown_written_until + 0.5:
            return  # already shared (the 429s of one burst arrive together)
        self._cooldown_written_until = until
        task = asyncio.get_running_loop().create_task(
            self._write_cooldown(seconds, reason), name="campaignq-ai-cooldown"
        )
        # The loop keeps only a weak reference to a task: hold it until it is done.
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _write_cooldown(self, seconds: float, reason: str) -> None:
        if self._pool is None:
            return
        try:
            async with self._pool.connection() as conn:
                await conn.execute(
                    query("rate_limit_cooldown"),
                    {"name": self.name, "seconds": seconds, "holder": self.holder, "reason": reason},
                )
        except DATABASE_ERRORS as exc:
            logger.warning("could not share the AI cooldown with other processes: {}", one_line(exc))

    # --- the refresh loop ------------------------------------------------------------------

    async def run(self) -> None:
        """Refresh every `refresh_s` until cancelled; a failed refresh keeps the lease until it ends."""
        while True:
            try:
                await self.refresh_once()
            except DATABASE_ERRORS as exc:
                logger.warning("could not refresh the shared AI budget: {}", one_line(exc))
            await asyncio.sleep(self.refresh_s)

    async def refresh_once(self) -> LeaseState:
        if self._pool is None:
            self._apply(LeaseState(None, None, 0, None), self._clock())
            return self.state  # type: ignore[return-value]
        now = self._clock()
        elapsed_s = max(1e-3, now - self._last_refresh)
        used = self._requests_total - self._requests_at_refresh
        used_rpm = used * 60.0 / elapsed_s
        # A process that never held a slice asks for its whole cap: the grant rule already keeps
        # it to what the others have handed back, and asking little would stall its start.
        never_held = self.state is None or self.state.granted_rpm is None
        saturated = self._saturated or self._turn.locked() or never_held
        wanted = wanted_rpm(cap_rpm=self.cap_rpm, used_rpm=used_rpm, saturated=saturated)
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                query("lease_rate_limit"),
                {
                    "name": self.name,
                    "holder": self.holder,
                    "host": socket.gethostname(),
                    "pid": os.getpid(),
                    "cap_rpm": self.cap_rpm,
                    "wanted_rpm": wanted,
                    "used_rpm": round(used_rpm),
                    "requests": self._requests_total,
                    "lease_s": self.lease_s,
                },
            )
            row = await cur.fetchone()
        if row is None:  # a function returning one row always does; be explicit for mypy
            raise psycopg.DataError("campaignq_lease_rate_limit returned no row")
        budget, granted, holders, cooldown_until = row
        state = LeaseState(
            budget_rpm=None if budget is None else int(str(budget)),
            granted_rpm=None if granted is None else int(str(granted)),
            holders=int(str(holders)),
            cooldown_until_epoch_s=cooldown_until.timestamp()
            if isinstance(cooldown_until, datetime)
            else None,
        )
        self._requests_at_refresh += used
        self._last_refresh = now
        self._saturated = False
        self._apply(state, now)
        return state

    def _apply(self, state: LeaseState, now: float) -> None:
        previous = self.state
        self.state = state
        # The grant is ours until the lease would expire server-side: never spend past it.
        self._lease_valid_until = now + self.lease_s
        self._bucket.set_rate((state.granted_rpm or 0) / 60.0, self._clock())
        if previous is None or previous.budget_rpm != state.budget_rpm:
            if state.budget_rpm is None:
                logger.info(
                    "no shared AI budget (no rate_limits row '{}'): own cap {} rpm", self.name, self.cap_rpm
                )
            else:
                logger.info(
                    "shared AI budget '{}': {} rpm across {} process{}",
                    self.name,
                    state.budget_rpm,
                    state.holders,
                    "" if state.holders == 1 else "es",
                )
        if self.metrics is not None:
            self.metrics.ai_budget_rpm.set(-1 if state.budget_rpm is None else state.budget_rpm)
            self.metrics.ai_budget_slice_rpm.set(
                self.cap_rpm if state.granted_rpm is None else state.granted_rpm
            )
            self.metrics.ai_budget_holders.set(state.holders)
        self._known.set()

    async def release(self) -> None:
        """Hand the slice back at once on a clean shutdown (a crash waits for the lease to end)."""
        if self._pool is None:
            return
        try:
            async with self._pool.connection() as conn:
                await conn.execute(query("release_rate_limit"), {"name": self.name, "holder": self.holder})
        except DATABASE_ERRORS as exc:
            logger.debug("could not release the AI budget slice: {}", one_line(exc))
