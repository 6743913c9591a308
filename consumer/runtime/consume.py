"""Assembles a consumer process: pool, HTTP session, provider clients, worker, metrics, signals."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import aiohttp
from loguru import logger
from psycopg_pool import PoolTimeout

from ..errors import DatabaseUnavailableError
from ..settings import Settings
from .ai import AIClient
from .budget import SharedBudget
from .db import Database
from .metrics import ConsumerMetrics
from .observability import DEFAULT_SAMPLE_INTERVAL_S, serve_metrics
from .whatsapp import WhatsAppClient
from .worker import Worker


async def run_consumer(
    settings: Settings,
    database_url: str,
    *,
    metrics: ConsumerMetrics | None = None,
    metrics_sample_interval_s: float = DEFAULT_SAMPLE_INTERVAL_S,
) -> int:
    metrics = metrics or ConsumerMetrics()
    try:
        db = await Database.open(
            database_url,
            max_size=settings.db_pool_max_size,
            statement_timeout_ms=settings.db_statement_timeout_ms,
            transaction_pooled=settings.transaction_pooled(database_url),
            outcome_batch_window_s=settings.outcome_batch_window_ms / 1000,
            outcome_batch_max=settings.outcome_batch_max,
        )
    except PoolTimeout as exc:
        raise DatabaseUnavailableError("cannot connect to the database (pool did not open in time)") from exc
    connector = aiohttp.TCPConnector(limit=settings.concurrency * 2 + 8, ttl_dns_cache=300)
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            budget = SharedBudget(
                pool=db.pool,
                cap_rpm=settings.ai_requests_per_minute,
                refresh_s=settings.ai_budget_refresh_s,
                lease_s=settings.ai_budget_lease_s,
                metrics=metrics,
            )
            budget_task = asyncio.create_task(budget.run(), name="campaignq-ai-budget")
            ai = AIClient.from_settings(settings, session, budget=budget)
            whatsapp = WhatsAppClient.from_settings(settings, session)
            worker = Worker(
                settings=settings,
                db=db,
                ai=ai,
                whatsapp=whatsapp,
                database_url=database_url,
                metrics=metrics,
            )
            async with serve_metrics(
                port=settings.metrics_port,
                db=db,
                metrics=metrics,
                ai=ai,
                whatsapp=whatsapp,
                sample_interval_s=metrics_sample_interval_s,
            ):
                loop = asyncio.get_running_loop()
                for signum in (signal.SIGTERM, signal.SIGINT):
                    loop.add_signal_handler(signum, _stopper(worker, signum))
                try:
                    return await worker.run()
                finally:
                    for signum in (signal.SIGTERM, signal.SIGINT):
                        loop.remove_signal_handler(signum)
                    budget_task.cancel()
                    await asyncio.gather(budget_task, return_exceptions=True)
                    await budget.release()
    finally:
        await db.close()


def _stopper(worker: Worker, signum: int) -> Callable[[], None]:
    def stop() -> None:
        logger.info("received {}, draining", signal.Signals(signum).name)
        worker.stop()

    return stop
