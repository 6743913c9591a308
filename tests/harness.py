"""Run a real consumer (in-process or as a `campaignq consume` subprocess) against the simulator."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp

from consumer.devtools.processes import simulator_env
from consumer.devtools.simulator import Simulator
from consumer.runtime.ai import AIClient
from consumer.runtime.db import Database
from consumer.runtime.whatsapp import WhatsAppClient
from consumer.runtime.worker import Worker
from consumer.settings import Settings
from tests import pg

AI_KEY = "sk-test-0123456789abcdef"
WHATSAPP_KEY = "wa-test-key-0123456789"

FAST_TEST_SETTINGS: dict[str, Any] = {
    "poll_interval_s": 0.1,
    "backoff_base_s": 0.2,
    "backoff_max_s": 2.0,
    "inbox_state_ttl_s": 0.2,
    "typing_delay_cap_s": 0.0,
    "drain_timeout_s": 10.0,
    "visibility_timeout_s": 30,
}


def consumer_settings(database_url: str, sim: Simulator, **overrides: Any) -> Settings:
    """A consumer's settings; through the test PgBouncer (tests/pg.py) when `.ci/run` runs one."""
    values: dict[str, Any] = {
        "database_url": pg.through_pooler(database_url),
        **({"db_pooler": "transaction"} if pg.pgbouncer_port() else {}),
        "ai_base_url": sim.ai_base_url,
        "whatsapp_base_url": sim.whatsapp_base_url,
        "ai_api_key": AI_KEY,
        "whatsapp_api_key": WHATSAPP_KEY,
        **FAST_TEST_SETTINGS,
        **overrides,
    }
    return Settings(**values)


def subprocess_env(database_url: str, sim: Simulator, **overrides: str) -> dict[str, str]:
    env = simulator_env(
        sim.base_url,
        database_url=pg.through_pooler(database_url),
        ai_key=AI_KEY,
        whatsapp_key=WHATSAPP_KEY,
        settings=FAST_TEST_SETTINGS,
    )
    if pg.pgbouncer_port():
        env["CAMPAIGNQ_DB_POOLER"] = "transaction"
    env.update(overrides)
    return env


@dataclass
class RunningWorker:
    worker: Worker
    db: Database
    task: asyncio.Task[int]

    async def stop(self) -> int:
        self.worker.stop()
        return await asyncio.wait_for(self.task, timeout=60)


@asynccontextmanager
async def running_worker(
    settings: Settings, *, expect_exit_code: int | None = None, db_class: type[Database] = Database
) -> AsyncIterator[RunningWorker]:
    """`db_class`: a `Database` subclass that injects a fault around one real call (a delay)."""
    assert settings.database_url
    db = await db_class.open(
        settings.database_url,
        max_size=settings.db_pool_max_size,
        statement_timeout_ms=settings.db_statement_timeout_ms,
        transaction_pooled=settings.transaction_pooled(),
        outcome_batch_window_s=settings.outcome_batch_window_ms / 1000,
        outcome_batch_max=settings.outcome_batch_max,
    )
    try:
        async with aiohttp.ClientSession() as session:
            worker = Worker(
                settings=settings,
                db=db,
                ai=AIClient.from_settings(settings, session),
                whatsapp=WhatsAppClient.from_settings(settings, session),
                database_url=settings.database_url,
            )
            running = RunningWorker(worker, db, asyncio.create_task(worker.run()))
            try:
                yield running
            finally:
                if not running.task.done():
                    worker.stop()
                exit_code = await asyncio.wait_for(running.task, timeout=60)
            if expect_exit_code is not None:
                assert exit_code == expect_exit_code
    finally:
        await db.close()


async def wait_until(
    predicate: Callable[[], bool], *, timeout_s: float = 30, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)
