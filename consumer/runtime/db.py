"""The consumer's only door to PostgreSQL: every statement comes from ``db/queries.sql``.

Each outcome is one call to a SQL function from ``db/migrations/0004_consumer_outcomes.sql``
(one round trip, one transaction, guarded by the (msg_id, read_ct) lease).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from loguru import logger
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from ..core.models import ClaimedRow, QueueMessage, QueuePayload
from ..errors import one_line
from ..sql import query

T = TypeVar("T")

QUEUE = "campaign_messages"
NOTIFY_CHANNEL = "pgmq.q_campaign_messages.INSERT"
# How long the pool keeps retrying one lost connection (backoff 1 s, 2 s, 4 s…) before it
# gives that slot up; a client asking for a connection afterwards starts a new attempt, so a
# consumer reconnects whatever the length of the outage. (0 would mean "give up at once":
# after a server restart every client then waited out the full pool timeout.)
POOL_RECONNECT_TIMEOUT_S = 30.0
# Errors that say "the database could not run this now" (connection lost, server shutting
# down or starting, statement timeout, deadlock, pool exhausted), as opposed to a bug.
TRANSIENT_DB_ERRORS: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    PoolTimeout,
    OSError,
)
# What a loop that keeps reading survives (logged, retried on its next turn): every driver
# and pool error, the transient ones above and also a refused statement, so a bad grant or a
# migration half-applied costs the loop a turn, not the process.
DATABASE_ERRORS: tuple[type[BaseException], ...] = (psycopg.Error, PoolTimeout, OSError)
PERSIST_FIRST_DELAY_S = 0.2
PERSIST_MAX_DELAY_S = 2.0


async def persist(call: Callable[[], Awaitable[T]], *, what: str, within_s: float) -> T:
    """Run a state-changing call until it succeeds, retrying transient database errors for
    up to `within_s` seconds (then the last error is raised).

    For the writes that record what already happened in the world (a part the gateway
    acknowledged, a generation we paid for, an outcome): losing them to a connection blip or
    a server restart would make the next holder redo the work, i.e. send a part twice. Every
    call retried here is safe to run twice: `record_part_sent` is monotonic, every other
    write is guarded by the (msg_id, read_ct) lease and does nothing once it is spent. The
    one ambiguity is a commit whose answer was lost: the retry then finds the lease spent
    and reports it lost, although the first try did the work.
    """
    deadline = time.monotonic() + within_s
    delay_s = PERSIST_FIRST_DELAY_S
    failures = 0
    while True:
        try:
            result = await call()
        except TRANSIENT_DB_ERRORS as exc:
            failures += 1
            if time.monotonic() + delay_s > deadline:
                raise
            if failures == 1:
                logger.warning(
                    "database unavailable while recording {} ({}); retrying for up to {:.0f} s",
                    what,
                    one_line(exc),
                    within_s,
                )
            await asyncio.sleep(delay_s)
            delay_s = min(PERSIST_MAX_DELAY_S, delay_s * 2)
            continue
        if failures:
            logger.info("recorded {} after {} failed tries", what, failures)
        return result


class Database:
    def __init__(
        self,
        *,
        pool: AsyncConnectionPool[Any],
        transaction_pooled: bool = False,
        statement_timeout_ms: int = 0,
    ) -> None:
        self.pool = pool
        # Behind a transaction-mode pooler (consumer/pooler.py) a session setting would leak to
        # whichever client gets the server connection next, so the statement timeout is set
        # per transaction instead of once per connection.
        self.transaction_pooled = transaction_pooled
        self.statement_timeout_ms = statement_timeout_ms
        # Statements sent, by query name: how tests (and curious operators) can see that a
        # batch costs one context query, not one per message.
        self.statements: Counter[str] = Counter()

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        max_size: int = 8,
        statement_timeout_ms: int = 15_000,
        timeout_s: float = 10.0,
        transaction_pooled: bool = False,
    ) -> Database:
        kwargs: dict[str, Any] = {"autocommit": True, "connect_timeout": 10}
        if transaction_pooled:
            # No server-side prepared statements (they stay on one server connection, the next
            # transaction may run on another) and no startup `options` (PgBouncer refuses them).
            kwargs["prepare_threshold"] = None
        else:
            kwargs["options"] = f"-c statement_timeout={int(statement_timeout_ms)}"
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            open=False,
            timeout=timeout_s,
            reconnect_timeout=POOL_RECONNECT_TIMEOUT_S,
            kwargs=kwargs,
            name="campaignq",
        )
        await pool.open(wait=True, timeout=timeout_s)
        return cls(
            pool=pool, transaction_pooled=transaction_pooled, statement_timeout_ms=statement_timeout_ms
        )

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection; behind a transaction pooler, inside a transaction that carries
        the statement timeout as `SET LOCAL` (two extra round trips: BEGIN and the setting)."""
        async with self.pool.connection() as conn:
            if not self.transaction_pooled:
                yield conn
                return
            async with conn.transaction():
                await conn.execute(
                    "SELECT set_config('statement_timeout', %s, true)", (str(int(self.statement_timeout_ms)),)
                )
                yield conn

    async def close(self) -> None:
        await self.pool.close()

    async def _scalar(self, name: str, params: dict[str, Any]) -> Any:
        self.statements[name] += 1
        async with self.connection() as conn:
            cur = await conn.execute(query(name), params)
            row = await cur.fetchone()
        return row[0] if row else None

    async def read(self, *, qty: int, vt_s: int) -> list[QueueMessage]:
        self.statements["read_messages"] += 1
        async with self.connection() as conn:
            cur = await conn.execute(query("read_messages"), {"qty": qty, "vt_s": vt_s})
            rows = await cur.fetchall()
        return [
            QueueMessage(msg_id=r[0], read_ct=r[1], enqueued_at=r[2], vt=r[3], message=r[4]) for r in rows
        ]

    async def claim_batch(
        self,
        leases: Sequence[tuple[QueueMessage, QueuePayload]],
        *,
        cached_config_ids: Sequence[uuid.UUID],
    ) -> list[ClaimedRow]:
        """Claim the batch's rows and read their context in one round trip (typed rows)."""
        self.statements["claim_batch"] += 1
        params = {
            "msg_ids": [m.msg_id for m, _ in leases],
            "read_cts": [m.read_ct for m, _ in leases],
            "message_ids": [p.campaign_message_id for _, p in leases],
            "run_ids": [p.run_id for _, p in leases],
            "lead_ids": [p.lead_id for _, p in leases],
            "cached_config_ids": list(cached_config_ids),
        }
        async with self.connection() as conn:
            async with conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(query("claim_batch"), params)
                rows: list[dict[str, Any]] = await cur.fetchall()
        return [ClaimedRow.from_row(row) for row in rows]

    async def sample_queues(self) -> list[tuple[str, int, int, int, float]]:
        """(queue, depth, visible, in flight, oldest age in s) of both queues, for the gauges."""
        async with self.connection() as conn:
            cur = await conn.execute(query("sample_queues"))
            return [
                (str(q), int(depth), int(visible), int(in_flight), float(age))
                for q, depth, visible, in_flight, age in await cur.fetchall()
            ]

    async def sample_ai_costs(self) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """(per active run, per workspace today) cost rows for the gauges (issue 14)."""
        async with self.connection() as conn:
            runs = await (await conn.execute(query("sample_run_ai_costs"))).fetchall()
            workspaces = await (await conn.execute(query("sample_workspace_ai_costs"))).fetchall()
        return runs, workspaces

    async def extend_leases(self, leases: Sequence[tuple[int, int]], *, vt_s: int) -> set[int]:
        if not leases:
            return set()
        self.statements["extend_leases"] += 1
        params = {"msg_ids": [m for m, _ in leases], "read_cts": [r for _, r in leases], "vt_s": vt_s}
        async with self.connection() as conn:
            cur = await conn.execute(query("extend_leases"), params)
            return {int(r[0]) for r in await cur.fetchall()}

    async def store_generation(
        self,
        msg: QueueMessage,
        message_id: uuid.UUID,
        *,
        text: str,
        parts: list[str],
        prompt_tokens: int,
        completion_tokens: int,
        cost_usd: float | None,
        ai_ms: int,
        split_ms: int | None,
        cached_tokens: int = 0,
        cache_write_tokens: int = 0,
        ai_calls: int | None = None,
        mode: str | None = None,
    ) -> bool:
        return bool(
            await self._scalar(
                "store_generation",
                {
                    "cached_tokens": cached_tokens,
                    "cache_write_tokens": cache_write_tokens,
                    "ai_calls": ai_calls,
                    "mode": mode,
                    "msg_id": msg.msg_id,
                    "read_ct": msg.read_ct,
                    "message_id": message_id,
                    "text": text,
                    "parts": Jsonb(parts),
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "cost_usd": cost_usd,
                    "ai_ms": ai_ms,
                    "split_ms": split_ms,
                },
            )
        )

    async def record_part_uncertain(self, message_id: uuid.UUID, part: int, *, since: datetime) -> None:
        """Part `part` (0-based) may have been delivered by a send that began at `since`."""
        await self._scalar("record_part_uncertain", {"message_id": message_id, "part": part, "since": since})

    async def record_part_sent(self, message_id: uuid.UUID, parts_sent: int) -> None:
        await self._scalar("record_part_sent", {"message_id": message_id, "parts_sent": parts_sent})

    async def complete_sent(self, msg: QueueMessage, message_id: uuid.UUID, *, send_ms: int) -> bool:
        return bool(
            await self._scalar(
                "complete_sent",
                {"msg_id": msg.msg_id, "read_ct": msg.read_ct, "message_id": message_id, "send_ms": send_ms},
            )
        )

    async def retry_later(
        self,
        msg: QueueMessage,
        message_id: uuid.UUID | None,
        *,
        delay_s: float,
        burns_attempt: bool,
        error_class: str,
        error: str,
        stage: str,
    ) -> bool:
        return bool(
            await self._scalar(
                "retry_later",
                {
                    "msg_id": msg.msg_id,
                    "read_ct": msg.read_ct,
                    "message_id": message_id,
                    "delay_s": delay_s,
                    "burns_attempt": burns_attempt,
                    "error_class": error_class,
                    "error": error,
                    "stage": stage,
                },
            )
        )

    async def dead_letter(
        self,
        msg: QueueMessage,
        message_id: uuid.UUID | None,
        *,
        reason: str,
        error_class: str,
        error: str,
        stage: str,
        burns_attempt: bool,
    ) -> int | None:
        value = await self._scalar(
            "dead_letter",
            {
                "msg_id": msg.msg_id,
                "read_ct": msg.read_ct,
                "message_id": message_id,
                "reason": reason,
                "error_class": error_class,
                "error": error,
                "stage": stage,
                "burns_attempt": burns_attempt,
            },
        )
        return int(value) if value is not None else None

    async def release_to_pending(self, msg: QueueMessage, message_id: uuid.UUID) -> bool:
        params = {"msg_id": msg.msg_id, "read_ct": msg.read_ct, "message_id": message_id}
        return bool(await self._scalar("release_to_pending", params))

    async def skip(self, msg: QueueMessage, message_id: uuid.UUID, *, error_class: str, error: str) -> bool:
        params = {
            "msg_id": msg.msg_id,
            "read_ct": msg.read_ct,
            "message_id": message_id,
            "error_class": error_class,
            "error": error,
        }
        return bool(await self._scalar("skip", params))

    async def archive_leased(self, msg: QueueMessage) -> bool:
        return bool(await self._scalar("archive_leased", {"msg_id": msg.msg_id, "read_ct": msg.read_ct}))

    async def release_now(self, msg: QueueMessage, message_id: uuid.UUID | None) -> bool:
        params = {"msg_id": msg.msg_id, "read_ct": msg.read_ct, "message_id": message_id}
        return bool(await self._scalar("release_now", params))

    # --- sender safety (issue 13) ---------------------------------------------------------

    async def book_send_slot(
        self,
        *,
        inbox_id: uuid.UUID,
        message_id: uuid.UUID,
        span_s: float,
        daily_cap: int | None,
        first_bubble: bool,
        bubbles: int,
    ) -> tuple[bool, float | None]:
        """(booked, seconds until the slot); booked is False when today's cap is reached."""
        self.statements["book_send_slot"] += 1
        params = {
            "inbox_id": inbox_id,
            "message_id": message_id,
            "span_s": span_s,
            "daily_cap": daily_cap,
            "first_bubble": first_bubble,
            "bubbles": bubbles,
        }
        async with self.connection() as conn:
            cur = await conn.execute(query("book_send_slot"), params)
            row = await cur.fetchone()
        if row is None or not row[0]:
            return False, None
        return True, float(row[1])

    async def hold_back(
        self, msg: QueueMessage, message_id: uuid.UUID, *, delay_s: float, reason: str, detail: str
    ) -> bool:
        params = {
            "msg_id": msg.msg_id,
            "read_ct": msg.read_ct,
            "message_id": message_id,
            "delay_s": delay_s,
            "reason": reason,
            "detail": detail,
        }
        return bool(await self._scalar("hold_back", params))

    async def report_inbox_trouble(
        self,
        *,
        inbox_id: uuid.UUID,
        kind: str,
        detail: str,
        retry_after_s: float | None,
        threshold: int,
        window_s: float,
    ) -> str | None:
        """The pause reason when this report paused the inbox, else None."""
        params = {
            "inbox_id": inbox_id,
            "kind": kind,
            "detail": detail,
            "retry_after_s": retry_after_s,
            "threshold": threshold,
            "window_s": window_s,
        }
        value = await self._scalar("report_inbox_trouble", params)
        return str(value) if value is not None else None


async def listen_connection(url: str) -> psycopg.AsyncConnection[Any]:
    """A dedicated connection LISTENing for new-message notifications (the pool's are shared).

    Never behind a transaction pooler: the LISTEN would stay on a server connection other
    clients then use, and this client would hear nothing (the worker polls instead)."""
    conn = await psycopg.AsyncConnection.connect(url, autocommit=True, connect_timeout=10)
    try:
        await conn.execute(psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(NOTIFY_CHANNEL)))
    except BaseException:  # failed, or cancelled by a stopping worker: do not leak the socket
        await conn.close()
        raise
    return conn
