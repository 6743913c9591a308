"""`campaignq consume`: the long-lived loop that reads, leases and processes messages.

Shape (procrastinate's): wait for "new message, poll tick, free slot, or stop"; read at
most as many messages as there are free slots; one task per message; a heartbeat keeps
every held lease alive; a listener turns NOTIFY into an immediate read. `stop()` only sets
an event; the loop always leaves through the same drain path.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable
from typing import Any

from loguru import logger

from ..core import refill
from ..core.models import (
    CampaignConfig,
    ClaimedRow,
    InvalidPayloadError,
    MessageContext,
    QueueMessage,
    QueuePayload,
    parse_payload,
)
from ..errors import FatalError, one_line
from ..settings import Settings
from .ai import AIClient
from .db import DATABASE_ERRORS, Database, listen_connection
from .lease import Lease
from .metrics import ConsumerMetrics
from .pipeline import MessagePipeline
from .whatsapp import WhatsAppClient

EXIT_OK = 0
EXIT_FATAL = 3
DB_RETRY_DELAY_MAX_S = 10.0


class Worker:
    def __init__(
        self,
        *,
        settings: Settings,
        db: Database,
        ai: AIClient,
        whatsapp: WhatsAppClient,
        database_url: str,
        metrics: ConsumerMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.ai = ai
        self.whatsapp = whatsapp
        self.database_url = database_url
        self.metrics = metrics or ConsumerMetrics()
        self.pipeline = MessagePipeline(
            db=db, ai=ai, whatsapp=whatsapp, settings=settings, metrics=self.metrics, on_fatal=self._on_fatal
        )
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()  # NOTIFY: new messages since the last read
        # Set when the read loop should look again: the first slot freed since the last read,
        # the low-water mark of free slots reached, NOTIFY, or stop (see `core.refill`).
        self._refill = asyncio.Event()
        self._first_freed_at: float | None = None
        self._mean_message_s: float | None = None  # how long a slot works per message (core.refill)
        self._low_water = refill.low_water(
            concurrency=settings.concurrency,
            batch_size=settings.batch_size,
            configured=settings.refill_low_water,
        )
        # Keyed by (msg_id, read_ct): a message this process reads again after its earlier
        # lease expired is a new lease; the old one is revoked, never overwritten.
        self._leases: dict[tuple[int, int], Lease] = {}
        self._configs: dict[uuid.UUID, tuple[CampaignConfig, float]] = {}
        self._fatal: FatalError | None = None
        self.processed = 0

    # --- control --------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop reading; in-flight messages finish (up to the drain timeout). Signal-safe."""
        self._stop.set()
        self._refill.set()

    def _on_fatal(self, exc: FatalError) -> None:
        if self._fatal is None:
            self._fatal = exc
            logger.critical("fatal provider error, stopping this consumer: {}", exc)
        self._stop.set()
        self._refill.set()

    @property
    def in_flight(self) -> int:
        return len(self._leases)

    async def run(self) -> int:
        side_tasks = [asyncio.create_task(self._heartbeat(), name="campaignq-heartbeat")]
        if not self.db.transaction_pooled:
            side_tasks.append(asyncio.create_task(self._listen(), name="campaignq-listener"))
        logger.info(
            "consumer started: concurrency {}, batch {}, visibility timeout {} s{}",
            self.settings.concurrency,
            self.settings.batch_size,
            self.settings.visibility_timeout_s,
            f", behind a transaction pooler (polling every {self._idle_poll_s()} s instead of LISTEN)"
            if self.db.transaction_pooled
            else "",
        )
        try:
            await self._read_loop()
        finally:
            await self._drain()
            for task in side_tasks:
                task.cancel()
            await asyncio.gather(*side_tasks, return_exceptions=True)
        logger.info("consumer stopped after {} messages", self.processed)
        return EXIT_FATAL if self._fatal else EXIT_OK

    # --- reading --------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        db_delay_s = 0.0
        while not self._stop.is_set():
            cooldown_s = self.ai.cooldown_remaining_s()
            if cooldown_s > 0:
                self.metrics.rate_limit_waits.inc()
                self.metrics.rate_limit_wait_seconds.inc(cooldown_s)
                await self._wait_any(asyncio.sleep(cooldown_s))
                continue
            free = self.settings.concurrency - len(self._leases)
            first_freed_at = self._first_freed_at
            wait_s = refill.refill_wait_s(
                free=free,
                in_flight=len(self._leases),
                low_water=self._low_water,
                first_freed_age_s=0.0 if first_freed_at is None else time.monotonic() - first_freed_at,
                max_wait_s=refill.wait_cap_s(
                    max_wait_s=self.settings.refill_max_wait_s, mean_message_s=self._mean_message_s
                ),
                notified=self._wake.is_set(),
            )
            if wait_s is None or wait_s > 0:
                await self._wait_for_refill(wait_s)
                continue
            qty = min(free, self.settings.batch_size)
            try:
                self._wake.clear()
                self._first_freed_at = None  # slots freed from now on start a new window
                asked_at = time.monotonic()  # the lease starts no earlier than this
                batch = await self.db.read_and_claim(
                    qty=qty,
                    vt_s=self.settings.visibility_timeout_s,
                    cached_config_ids=self._fresh_config_ids(),
                )
                db_delay_s = 0.0
            except DATABASE_ERRORS as exc:
                db_delay_s = min(DB_RETRY_DELAY_MAX_S, max(0.5, db_delay_s * 2))
                logger.warning(
                    "cannot read from the queue ({}); retrying in {:.1f} s", one_line(exc), db_delay_s
                )
                await self._wait_any(asyncio.sleep(db_delay_s))
                continue
            self.metrics.batch_fill_ratio.observe(len(batch) / qty)
            if not batch:
                await self._wait_any(self._wake.wait(), asyncio.sleep(self._idle_poll_s()))
                continue
            await self._start(batch, asked_at=asked_at)

    def _idle_poll_s(self) -> float:
        """How long an idle worker waits before reading again. With LISTEN a new message wakes
        it at once; behind a transaction pooler (no LISTEN) it polls at the pooled interval,
        so a new message still waits a fraction of a second, not a full idle poll."""
        if self.db.transaction_pooled:
            return min(self.settings.poll_interval_s, self.settings.pooled_poll_interval_s)
        return self.settings.poll_interval_s

    async def _wait_for_refill(self, timeout_s: float | None) -> None:
        """Until `_refill` is set (a slot freed, low water, NOTIFY, stop) or `timeout_s` passed.

        One event and at most one timer handle: this runs once or twice per refill, so it
        avoids `_wait_any`'s task per awaitable."""
        self._refill.clear()
        if self._stop.is_set():
            return
        handle = (
            None if timeout_s is None else asyncio.get_running_loop().call_later(timeout_s, self._refill.set)
        )
        try:
            await self._refill.wait()
        finally:
            if handle is not None:
                handle.cancel()

    async def _wait_any(self, *waits: Awaitable[Any]) -> None:
        tasks = [asyncio.ensure_future(w) for w in (*waits, self._stop.wait())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _start(self, batch: list[tuple[QueueMessage, ClaimedRow | None]], *, asked_at: float) -> None:
        """One task per message read; their rows were claimed by the read itself
        (`Database.read_and_claim`), except those whose payload the database did not trust:
        parsed here, and claimed with one more statement when valid after all."""
        vt_s = self.settings.visibility_timeout_s
        self._revoke_superseded({msg.msg_id for msg, _ in batch})
        contexts: list[tuple[MessageContext, ClaimedRow | None]] = []
        unclaimed: list[tuple[QueueMessage, QueuePayload]] = []
        for msg, row in batch:
            try:
                payload = parse_payload(msg.message)
            except InvalidPayloadError as exc:
                contexts.append((MessageContext(msg=msg, payload=None, payload_error=str(exc)), None))
                self._leases[(msg.msg_id, msg.read_ct)] = Lease.taken(msg, None, asked_at=asked_at, vt_s=vt_s)
                continue
            if row is None:
                unclaimed.append((msg, payload))
            contexts.append((MessageContext(msg=msg, payload=payload), row))
            self._leases[(msg.msg_id, msg.read_ct)] = Lease.taken(
                msg, payload.campaign_message_id, asked_at=asked_at, vt_s=vt_s, renew=self._renew
            )
        late: dict[int, ClaimedRow] = {}
        if unclaimed:
            try:
                late = await self._claim(unclaimed)
            except DATABASE_ERRORS as exc:
                # Those were not claimed: they reappear after their visibility timeout and no
                # attempt is counted (their rows are still `queued`). The others go ahead.
                logger.warning(
                    "cannot load the context of {} messages ({}); they will reappear",
                    len(unclaimed),
                    one_line(exc),
                )
                for msg, _ in unclaimed:
                    self._leases.pop((msg.msg_id, msg.read_ct), None)
                gone = {msg.msg_id for msg, _ in unclaimed}
                contexts = [(ctx, row) for ctx, row in contexts if ctx.msg.msg_id not in gone]
        create_task = asyncio.create_task
        for ctx, row in contexts:
            claimed = row if row is not None else late.get(ctx.msg.msg_id)
            if claimed is not None:
                ctx.apply(claimed, self._config_for(claimed))
            lease = self._leases[(ctx.msg.msg_id, ctx.msg.read_ct)]
            lease.task = create_task(self._run_one(ctx, lease), name=f"campaignq-msg-{ctx.msg.msg_id}")
        self.metrics.in_flight.set(len(self._leases))

    async def _renew(self, lease: Lease) -> bool:
        """Extend one lease now (a send needs more room than is left): True when still held."""
        alive = await self.db.extend_leases([lease.key], vt_s=self.settings.visibility_timeout_s)
        return lease.msg.msg_id in alive

    def _revoke_superseded(self, msg_ids: set[int]) -> None:
        """This process read these messages again: any lease it still holds on them expired
        (PGMQ only hands out a message whose visibility timeout ended), so revoke it before
        the new one is recorded. Its task stops before its next send and cannot remove the
        new lease (leases are keyed by read_ct too)."""
        for lease in list(self._leases.values()):
            if lease.msg.msg_id in msg_ids and lease.revoke(
                "this process read the message again: lease expired"
            ):
                self.metrics.leases_lost.inc()
                logger.bind(msg_id=lease.msg.msg_id).warning("lease expired; the message was read again")

    async def _claim(self, valid: list[tuple[QueueMessage, QueuePayload]]) -> dict[int, ClaimedRow]:
        rows = await self.db.claim_batch(valid, cached_config_ids=self._fresh_config_ids())
        return {row.msg_id: row for row in rows}

    def _fresh_config_ids(self) -> list[uuid.UUID]:
        """The configs cached and still fresh: a claim need not send their columns again."""
        now = time.monotonic()
        return [cid for cid, (_, expires) in self._configs.items() if expires > now]

    def _config_for(self, row: ClaimedRow) -> CampaignConfig | None:
        """The row's config, cached for `config_cache_ttl_s`; the cached copy when not sent."""
        if row.config_id is None:
            return None
        if not row.config_sent:  # the cached copy was fresh
            cached = self._configs.get(row.config_id)
            return cached[0] if cached else None
        if row.config is not None:
            self._configs[row.config_id] = (row.config, time.monotonic() + self.settings.config_cache_ttl_s)
        return row.config

    async def _run_one(self, ctx: MessageContext, lease: Lease) -> str:
        started = time.monotonic()
        try:
            outcome = await self.pipeline.handle(ctx, lease)
            self.processed += 1
            return outcome
        except asyncio.CancelledError:
            raise
        except Exception:  # a database outage during the outcome write: the lease expires
            logger.opt(exception=True).error(
                "could not record the outcome of msg_id={}; it will reappear after its visibility timeout",
                ctx.msg.msg_id,
            )
            return "error"
        finally:
            self._leases.pop(lease.key, None)
            self.metrics.in_flight.set(len(self._leases))
            # Wake the read loop for the first slot freed since its last read (it arms the
            # max-wait timer then) and once enough slots are free to read a batch.
            now = time.monotonic()
            self._mean_message_s = refill.mean_message_s(self._mean_message_s, now - started)
            first = self._first_freed_at is None
            if first:
                self._first_freed_at = now
            if first or self.settings.concurrency - len(self._leases) >= self._low_water:
                self._refill.set()

    # --- side tasks -----------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        """Keep held leases alive so a slow message is never processed twice.

        Extends, in one statement, every lease confirmed more than about a third of the
        visibility timeout ago; each confirmed lease's local deadline moves to the moment the
        call was *issued* plus the timeout (a lower bound of the server's). A lease the
        database no longer recognises was lost, and one whose deadline passed unconfirmed
        (the database did not answer) may be: both are revoked — the task stops before its
        next send. After a failed extension the next try comes within a second, not a third
        of the timeout later.
        """
        vt_s = self.settings.visibility_timeout_s
        interval_s = max(0.5, vt_s / 3)
        budget_s = self._planned_attempt_s()
        delay_s = interval_s
        while True:
            await asyncio.sleep(delay_s)
            delay_s = interval_s
            now = time.monotonic()
            self._revoke_expired(now)
            held = [
                lease
                for lease in self._leases.values()
                if lease.lost is None and now - lease.confirmed_at >= interval_s * 0.9
            ]
            for lease in held:
                if now - lease.started > budget_s:
                    logger.bind(msg_id=lease.msg.msg_id, message_id=str(lease.message_id)).warning(
                        "message in progress for {:.0f} s, longer than planned ({:.0f} s)",
                        now - lease.started,
                        budget_s,
                    )
            if not held:
                continue
            asked_at = time.monotonic()
            try:
                alive = await self.db.extend_leases([lease.key for lease in held], vt_s=vt_s)
            except DATABASE_ERRORS as exc:
                logger.warning(
                    "could not extend {} leases ({}); their tasks stop before a send that would outlive them",
                    len(held),
                    one_line(exc),
                )
                delay_s = min(1.0, interval_s)
                continue
            for lease in held:
                if lease.msg.msg_id in alive:
                    lease.confirm(asked_at=asked_at, vt_s=vt_s)
                # A message that finished while the extension was on its way was archived,
                # not lost: only a lease we still hold and the database no longer knows is.
                elif self._leases.get(lease.key) is lease and lease.revoke(
                    "lease lost: another worker has it"
                ):
                    self.metrics.leases_lost.inc()
                    logger.bind(msg_id=lease.msg.msg_id).warning(
                        "lease lost while processing; another worker has it"
                    )

    def _revoke_expired(self, now: float) -> None:
        for lease in list(self._leases.values()):
            if lease.lost is None and lease.deadline <= now and lease.revoke("lease expired unconfirmed"):
                self.metrics.leases_lost.inc()
                logger.bind(msg_id=lease.msg.msg_id).warning(
                    "lease expired before the database confirmed an extension; stopping this message"
                )

    def _planned_attempt_s(self) -> float:
        s = self.settings
        return s.ai_timeout_s + s.split_timeout_s + 10 * (s.send_timeout_s + s.typing_delay_cap_s)

    async def _listen(self) -> None:
        """NOTIFY → immediate read. Only a shortcut: the poll still finds re-visible messages."""
        delay_s = 0.0
        while True:
            try:
                conn = await listen_connection(self.database_url)
                delay_s = 0.0
                async with conn:
                    async for _ in conn.notifies():
                        self._wake.set()
                        self._refill.set()
            except DATABASE_ERRORS as exc:
                delay_s = min(DB_RETRY_DELAY_MAX_S, max(0.5, delay_s * 2))
                logger.debug("listener reconnecting in {:.1f} s ({})", delay_s, one_line(exc))
                await asyncio.sleep(delay_s)

    # --- shutdown -------------------------------------------------------------------------------

    async def _drain(self) -> None:
        tasks = [lease.task for lease in self._leases.values() if lease.task is not None]
        if not tasks:
            return
        logger.info(
            "draining {} in-flight messages (up to {:.0f} s)", len(tasks), self.settings.drain_timeout_s
        )
        _, pending = await asyncio.wait(tasks, timeout=self.settings.drain_timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            logger.warning("drain timeout: released {} unfinished messages back to the queue", len(pending))
