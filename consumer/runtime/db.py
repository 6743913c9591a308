"""The consumer's only door to PostgreSQL: every statement comes from ``db/queries.sql``.

Each outcome is one call to a SQL function from ``db/migrations/0004_consumer_outcomes.sql``
(one round trip, one transaction, guarded by the (msg_id, read_ct) lease). The three writes
of the hot success path — generation stored, parts acknowledged, success — go through an
`OutcomeBatcher` each: calls made within a few ms share one statement (the set-based
functions of ``0013_batched_outcomes.sql``), and each caller still gets its own answer.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

import psycopg
from loguru import logger
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg.types.string import TextLoader
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from ..core.models import ClaimedRow, QueueMessage, QueuePayload
from ..errors import DatabaseUnavailableError, one_line
from ..sql import query

T = TypeVar("T")
I = TypeVar("I")  # noqa: E741 (an item of a batch)
R = TypeVar("R")

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
# Outcome batching (OutcomeBatcher): how long a write waits for company, and the most per
# statement. Settings `outcome_batch_window_ms` / `outcome_batch_max` override them.
OUTCOME_BATCH_WINDOW_S = 0.003
OUTCOME_BATCH_MAX = 64
# Group commit (OutcomeBatcher._window_ended): a batch whose window ended while the previous
# statement is still under way waits for it, up to this many windows (at least the minimum).
OUTCOME_BATCH_STALL_WINDOWS = 10
OUTCOME_BATCH_STALL_MIN_S = 0.05
WRITES_IN_FLIGHT: contextvars.ContextVar[list[asyncio.Future[Any]]] = contextvars.ContextVar(
    "campaignq_writes_in_flight"
)
"""The writes of the message handled in this task that may still be running elsewhere (a
shielded write's task, an `OutcomeBatcher` statement): a task that is cancelled waits for
them before it releases the message, so a released message can never be written by its old
holder (issue 9, the drain race). Set by the pipeline per message; None elsewhere."""
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


@dataclass(frozen=True)
class _Completion:
    msg_id: int
    read_ct: int
    message_id: uuid.UUID
    send_ms: int


class OutcomeBatcher(Generic[I, R]):
    """Collects calls for up to `window_s` (or until `max_items` are waiting; or, when one of
    its statements is under way as the window ends, until that statement ends) and sends them
    to the database as one statement (`flush`), resolving each caller with its own result.

    - `flush(items)` returns one result per item, in order; each element is lease-checked on
      its own in SQL, so a lost lease answers False for that element only.
    - The statement runs in a task of the batcher, not of a caller: a caller cancelled while
      it waits does not cancel the write of the others (nor its own; it only stops waiting).
    - Errors: when the statement fails with a transient error (connection lost, timeout, pool
      exhausted: `TRANSIENT_DB_ERRORS`), every caller of that flush gets that exception, so
      each one's `persist(...)` retry sends its item again (in a later batch). Any other error
      (a refused statement: a bug or bad data in one element) is not allowed to fail the
      others: the batch is replayed one item at a time through `single`, so each caller gets
      its own result or its own exception.
    """

    def __init__(
        self,
        *,
        name: str,
        flush: Callable[[list[I]], Awaitable[list[R]]],
        single: Callable[[I], Awaitable[R]],
        window_s: float,
        max_items: int,
    ) -> None:
        self.name = name
        self._flush = flush
        self._single = single
        self.window_s = window_s
        self.max_items = max(1, max_items)
        self._pending: list[tuple[I, asyncio.Future[R]]] = []
        self._pending_done: asyncio.Future[None] | None = None
        """Resolved when the statement of the batch being collected has finished, whatever it did."""
        self._timer: asyncio.TimerHandle | None = None
        self._flushing: set[asyncio.Task[None]] = set()
        self._due = False
        """The window of the batch being collected ended while a statement was under way."""
        self.flushes = 0
        """Statements sent (batches), for tests and the curious."""

    async def submit(self, item: I) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        if self._pending_done is None:
            self._pending_done = loop.create_future()
        writes = WRITES_IN_FLIGHT.get(None)
        if writes is not None:
            # A caller cancelled while it waits stops waiting, but its item is still written
            # (by our task): its message's handler must wait for that before releasing it.
            writes.append(self._pending_done)
        self._pending.append((item, future))
        if len(self._pending) >= self.max_items:
            self._start_flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.window_s, self._window_ended)
        return await future

    def _window_ended(self) -> None:
        """Group commit: while one of our statements is under way, the batch being collected
        keeps collecting and is sent the moment that statement ends (`_flushed`), so under
        load a batch grows with the load instead of staying one window's worth; when idle, it
        is sent now. A full batch never waits (`submit`)."""
        self._timer = None
        if self._flushing:
            self._due = True
            # ... but not behind a statement that is stuck (a lock, an outage): after a while
            # this batch goes on its own, as it did before group commit.
            stall_s = max(OUTCOME_BATCH_STALL_WINDOWS * self.window_s, OUTCOME_BATCH_STALL_MIN_S)
            self._timer = asyncio.get_running_loop().call_later(stall_s, self._start_flush)
        else:
            self._start_flush()

    def _flushed(self, task: asyncio.Task[None]) -> None:
        self._flushing.discard(task)
        if self._due and not self._flushing:
            self._start_flush()

    def _start_flush(self) -> None:
        self._due = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        done, self._pending_done = self._pending_done, None
        if not batch or done is None:
            return
        task = asyncio.get_running_loop().create_task(
            self._run(batch, done), name=f"campaignq-batch-{self.name}"
        )
        self._flushing.add(task)
        task.add_done_callback(self._flushed)

    async def _run(self, batch: list[tuple[I, asyncio.Future[R]]], done: asyncio.Future[None]) -> None:
        try:
            await self._send(batch)
        finally:
            if not done.done():
                done.set_result(None)

    async def _send(self, batch: list[tuple[I, asyncio.Future[R]]]) -> None:
        self.flushes += 1
        try:
            results = await self._flush([item for item, _ in batch])
            if len(results) != len(batch):  # a broken flush function: resolve nobody wrongly
                raise RuntimeError(f"batched {self.name}: {len(results)} results for {len(batch)} items")
        except TRANSIENT_DB_ERRORS as exc:
            _fail_all(batch, exc)
        except Exception as exc:  # refused: isolate the element at fault, one by one
            if len(batch) == 1:
                _fail_all(batch, exc)
                return
            logger.warning("batched {} of {} refused ({}); one by one", self.name, len(batch), one_line(exc))
            await asyncio.gather(*(self._run_single(item, future) for item, future in batch))
        except BaseException:  # cancelled (the loop is closing): nobody waits forever
            for _, future in batch:
                future.cancel()
            raise
        else:
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def _run_single(self, item: I, future: asyncio.Future[R]) -> None:
        try:
            result = await self._single(item)
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(result)

    async def close(self) -> None:
        """Send what is waiting now and wait for every statement under way."""
        self._start_flush()
        while self._flushing:
            await asyncio.gather(*list(self._flushing), return_exceptions=True)


def _array(values: Iterable[int | uuid.UUID | str | None]) -> str:
    """A PostgreSQL array literal of numbers or uuids (never quoted; NULL for None), sent as one
    text parameter and cast in SQL: psycopg dumps a list element by element, which cost more
    client CPU than the rest of a batched statement (issue 15). Only for values whose text
    needs no quoting; text goes as a JSON array (`_json_array`)."""
    return "{" + ",".join(["NULL" if v is None else str(v) for v in values]) + "}"


def _json_array(values: Iterable[Any]) -> str:
    """A JSON array as one text parameter (json.dumps is C), unpacked in SQL in order."""
    return json.dumps(list(values), separators=(",", ":"), ensure_ascii=False)


def _json_as_text(cur: psycopg.AsyncCursor[Any]) -> None:
    """This cursor hands json/jsonb columns over as text, parsed later one value at a time
    under the guard (`parse_payload`, `ClaimedRow.from_row`). psycopg's own loader parses
    them inside `fetchall` with the recursive stdlib parser: one payload nested 3,000 deep
    raised RecursionError there and stopped the consumer on every start (issue 22)."""
    for name in ("json", "jsonb"):
        cur.adapters.register_loader(name, TextLoader)


def _fail_all(batch: Sequence[tuple[Any, asyncio.Future[Any]]], exc: BaseException) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(exc)


class Database:
    def __init__(
        self,
        *,
        pool: AsyncConnectionPool[Any],
        transaction_pooled: bool = False,
        statement_timeout_ms: int = 0,
        outcome_batch_window_s: float = OUTCOME_BATCH_WINDOW_S,
        outcome_batch_max: int = OUTCOME_BATCH_MAX,
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
        # The hot path's three writes, batched (0 s window: the single-message functions).
        # Batched statements count in `statements` under the outcome's name, once per statement.
        self.batching = outcome_batch_window_s > 0
        self.completions: OutcomeBatcher[_Completion, bool] = OutcomeBatcher(
            name="complete_sent",
            flush=self._complete_sent_many,
            single=self._complete_sent_one,
            window_s=outcome_batch_window_s,
            max_items=outcome_batch_max,
        )
        self.acknowledgements: OutcomeBatcher[tuple[uuid.UUID, int], bool] = OutcomeBatcher(
            name="record_part_sent",
            flush=self._record_parts_sent_many,
            single=self._record_part_sent_one,
            window_s=outcome_batch_window_s,
            max_items=outcome_batch_max,
        )
        self.generations: OutcomeBatcher[dict[str, Any], bool] = OutcomeBatcher(
            name="store_generation",
            flush=self._store_generations_many,
            single=self._store_generation_one,
            window_s=outcome_batch_window_s,
            max_items=outcome_batch_max,
        )

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        max_size: int = 8,
        statement_timeout_ms: int = 15_000,
        timeout_s: float = 10.0,
        transaction_pooled: bool = False,
        outcome_batch_window_s: float = OUTCOME_BATCH_WINDOW_S,
        outcome_batch_max: int = OUTCOME_BATCH_MAX,
    ) -> Database:
        kwargs: dict[str, Any] = {"autocommit": True, "connect_timeout": 10}
        if not transaction_pooled and await refuses_startup_options(url, statement_timeout_ms):
            logger.warning(
                "the database refused the startup parameter `options`: this is a transaction-mode "
                "pooler (PgBouncer, Supavisor); running in pooled mode. "
                "Set CAMPAIGNQ_DB_POOLER=transaction to say so and skip this probe"
            )
            transaction_pooled = True
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
            pool=pool,
            transaction_pooled=transaction_pooled,
            statement_timeout_ms=statement_timeout_ms,
            outcome_batch_window_s=outcome_batch_window_s,
            outcome_batch_max=outcome_batch_max,
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
        for batcher in (self.generations, self.acknowledgements, self.completions):
            await batcher.close()
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
            async with conn.cursor() as cur:
                _json_as_text(cur)
                await cur.execute(query("read_messages"), {"qty": qty, "vt_s": vt_s})
                rows = await cur.fetchall()
        return [
            QueueMessage(msg_id=r[0], read_ct=r[1], enqueued_at=r[2], vt=r[3], message=r[4]) for r in rows
        ]

    async def read_and_claim(
        self, *, qty: int, vt_s: int, cached_config_ids: Sequence[uuid.UUID]
    ) -> list[tuple[QueueMessage, ClaimedRow | None]]:
        """Read up to `qty` messages and claim their rows with their context, in one statement
        (0014's `campaignq_read_and_claim`). Each message comes with its claimed row, or None
        when the database did not trust its payload: the caller parses it, and claims a valid
        one with `claim_batch`. All or nothing: on an error nothing was read. Payloads and
        JSON columns arrive as text (`_json_as_text`): no value can fail the whole batch."""
        self.statements["read_and_claim"] += 1
        params = {"qty": qty, "vt_s": vt_s, "cached_config_ids": _array(cached_config_ids)}
        async with self.connection() as conn:
            async with conn.cursor(row_factory=dict_row) as cur:
                _json_as_text(cur)
                await cur.execute(query("read_and_claim"), params)
                rows: list[dict[str, Any]] = await cur.fetchall()
        if rows:
            self.statements["claim_batch"] += 1  # the batch's one context query
        return [
            (
                QueueMessage(
                    msg_id=row["msg_id"],
                    read_ct=row["read_ct"],
                    enqueued_at=row["enqueued_at"],
                    vt=row["vt"],
                    message=row["message"],
                ),
                ClaimedRow.from_row(row) if row["payload_ok"] else None,
            )
            for row in rows
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
                _json_as_text(cur)
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
        """Store the text and parts before any send; False when the lease is gone or another
        holder already stored one. Batched (its own answer all the same)."""
        params = {
            "cached_tokens": cached_tokens,
            "cache_write_tokens": cache_write_tokens,
            "ai_calls": ai_calls,
            "mode": mode,
            "msg_id": msg.msg_id,
            "read_ct": msg.read_ct,
            "message_id": message_id,
            "text": text,
            "parts": parts,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "cost_usd": cost_usd,
            "ai_ms": ai_ms,
            "split_ms": split_ms,
        }
        if not self.batching:
            return await self._store_generation_one(params)
        return await self.generations.submit(params)

    async def _store_generation_one(self, params: dict[str, Any]) -> bool:
        return bool(await self._scalar("store_generation", {**params, "parts": Jsonb(params["parts"])}))

    async def _store_generations_many(self, items: list[dict[str, Any]]) -> list[bool]:
        self.statements["store_generation"] += 1
        params = {
            "msg_ids": _array(i["msg_id"] for i in items),
            "read_cts": _array(i["read_ct"] for i in items),
            "message_ids": _array(i["message_id"] for i in items),
            "texts": _json_array(i["text"] for i in items),
            "parts": _json_array(i["parts"] for i in items),
            "prompt_tokens": _array(i["prompt_tokens"] for i in items),
            "completion_tokens": _array(i["completion_tokens"] for i in items),
            "cost_usd": _array(None if i["cost_usd"] is None else repr(float(i["cost_usd"])) for i in items),
            "ai_ms": _array(i["ai_ms"] for i in items),
            "split_ms": _array(i["split_ms"] for i in items),
            "cached_tokens": _array(i["cached_tokens"] for i in items),
            "cache_write_tokens": _array(i["cache_write_tokens"] for i in items),
            "ai_calls": _array(i["ai_calls"] for i in items),
            "modes": _json_array(i["mode"] for i in items),
        }
        return await self._many("store_generations_many", params, len(items))

    async def _many(self, name: str, params: dict[str, Any], n: int) -> list[bool]:
        """Run a set-based outcome returning (ord, msg_id, ok) per element, in input order."""
        async with self.connection() as conn:
            cur = await conn.execute(query(name), params)
            rows = await cur.fetchall()
        answers = [False] * n
        for ord_, _msg_id, ok in rows:
            answers[int(ord_) - 1] = bool(ok)
        return answers

    async def record_part_uncertain(self, message_id: uuid.UUID, part: int, *, since: datetime) -> None:
        """Part `part` (0-based) may have been delivered by a send that began at `since`."""
        await self._scalar("record_part_uncertain", {"message_id": message_id, "part": part, "since": since})

    async def record_whatsapp_jid(self, message_id: uuid.UUID, jid: str) -> None:
        """The chat the gateway answered for a part of this message (0017; unguarded fact)."""
        await self._scalar("record_whatsapp_jid", {"message_id": message_id, "jid": jid})

    async def message_whatsapp_jid(self, message_id: uuid.UUID) -> str | None:
        """The chat recorded by `record_whatsapp_jid`; None when none was."""
        found = await self._scalar("message_whatsapp_jid", {"message_id": message_id})
        return found if isinstance(found, str) and found else None

    async def record_part_sent(self, message_id: uuid.UUID, parts_sent: int) -> bool:
        """The gateway acknowledged `parts_sent` parts (monotonic, unguarded). Batched.

        Answers whether the message's lead has opted out since it was read (issue 20): the
        check rides on this write, which the pipeline makes before every part but the first,
        so an opt-out stops a message in flight before its next part at no extra round trip."""
        if not self.batching:
            return await self._record_part_sent_one((message_id, parts_sent))
        return await self.acknowledgements.submit((message_id, parts_sent))

    async def _record_part_sent_one(self, item: tuple[uuid.UUID, int]) -> bool:
        return bool(await self._scalar("record_part_sent", {"message_id": item[0], "parts_sent": item[1]}))

    async def _record_parts_sent_many(self, items: list[tuple[uuid.UUID, int]]) -> list[bool]:
        self.statements["record_part_sent"] += 1
        params = {"message_ids": _array(m for m, _ in items), "parts_sent": _array(n for _, n in items)}
        async with self.connection() as conn:
            cur = await conn.execute(query("record_parts_sent_many"), params)
            rows = await cur.fetchall()
        answers = [False] * len(items)
        for ord_, opted_out in rows:
            answers[int(ord_) - 1] = bool(opted_out)
        return answers

    async def complete_sent(self, msg: QueueMessage, message_id: uuid.UUID, *, send_ms: int) -> bool:
        """Success: archive (lease-checked), row sent, run counted and finalised. False when
        the lease was lost. Batched: the run's row is updated once per batch, not per message."""
        item = _Completion(msg.msg_id, msg.read_ct, message_id, send_ms)
        if not self.batching:
            return await self._complete_sent_one(item)
        return await self.completions.submit(item)

    async def _complete_sent_one(self, item: _Completion) -> bool:
        params = {
            "msg_id": item.msg_id,
            "read_ct": item.read_ct,
            "message_id": item.message_id,
            "send_ms": item.send_ms,
        }
        return bool(await self._scalar("complete_sent", params))

    async def _complete_sent_many(self, items: list[_Completion]) -> list[bool]:
        self.statements["complete_sent"] += 1
        params = {
            "msg_ids": _array(i.msg_id for i in items),
            "read_cts": _array(i.read_ct for i in items),
            "message_ids": _array(i.message_id for i in items),
            "send_ms": _array(i.send_ms for i in items),
        }
        return await self._many("complete_sent_many", params, len(items))

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


async def refuses_startup_options(url: str, statement_timeout_ms: int) -> bool:
    """Whether `url` answers a connection carrying startup ``options`` with PgBouncer's
    "unsupported startup parameter": a transaction pooler on a port other than 6543.

    Why probe: ``CAMPAIGNQ_DB_POOLER=auto`` recognises only Supabase's port; PgBouncer's own
    default is 6432. Without this one connection a consumer there retried its pool until
    "pool did not open in time". Any other failure stops here with the driver's reason on
    one line (the database is down, a wrong password…); a direct connection pays one connect
    at start-up.
    """
    options = f"-c statement_timeout={int(statement_timeout_ms)}"
    try:
        conn = await psycopg.AsyncConnection.connect(
            url, autocommit=True, connect_timeout=10, options=options
        )
    except psycopg.OperationalError as exc:
        if "unsupported startup parameter" in str(exc):
            return True
        raise DatabaseUnavailableError(f"cannot connect to the database: {one_line(exc)}") from exc
    await conn.close()
    return False


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
