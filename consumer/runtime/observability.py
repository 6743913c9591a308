"""What `campaignq consume --metrics-port N` adds: a /metrics endpoint and a gauge sampler.

The endpoint runs on the consumer's own event loop (aiohttp) and serves the process's own
registry, so tests can run several consumers in one interpreter and a scrape never touches
the database. Queue depth and age come from `QueueSampler`: one query every few seconds for
both queues (PGMQ's metrics are a full count, so never per message), plus the circuit
breakers' states, which live in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Protocol

from aiohttp import web
from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from ..errors import ConfigurationError, one_line
from .db import DATABASE_ERRORS, Database
from .metrics import ConsumerMetrics

DEFAULT_SAMPLE_INTERVAL_S = 5.0
# The LLM cost gauges aggregate the active runs' rows: every 6th sample (30 s) is plenty.
AI_COST_SAMPLE_EVERY = 6
# Prometheus scrapes from another host or container: listen on every interface by default.
DEFAULT_METRICS_HOST = "0.0.0.0"  # noqa: S104 (metrics carry no secrets; deploy behind the network)
# closed → 0, half-open (one trial call allowed) → 0.5, open → 1, as campaignq_circuit_open says.
CIRCUIT_VALUES = {"closed": 0.0, "half_open": 0.5, "open": 1.0}


class _HasBreaker(Protocol):
    @property
    def breaker_state(self) -> str: ...


class _HasBreakers(Protocol):
    def breaker_states(self) -> dict[str, str]: ...


class MetricsServer:
    """GET /metrics (Prometheus text format) and GET /healthz on the running event loop."""

    def __init__(self, *, registry: CollectorRegistry, port: int, host: str = DEFAULT_METRICS_HOST) -> None:
        self.registry = registry
        self.host = host
        self.requested_port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.requested_port).start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigurationError(
                f"cannot serve metrics on {self.host}:{self.requested_port}: {exc.strerror or exc}"
            ) from exc
        self._runner = runner
        logger.info("serving Prometheus metrics on http://{}:{}/metrics", self.host, self.port)

    @property
    def port(self) -> int:
        """The bound port (the requested one, or the one the OS picked for port 0)."""
        if self._runner is None:
            return self.requested_port
        for address in self._runner.addresses:
            if isinstance(address, tuple) and len(address) >= 2:
                return int(address[1])
        return self.requested_port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok\n")


class QueueSampler:
    """Every `interval_s`: queue depth / visible / in flight / oldest age, and circuit states.

    A failed sample keeps the previous values and counts in campaignq_metrics_samples_failed:
    a database blip must not stop the consumer nor make the gauges lie with zeros.
    """

    def __init__(
        self,
        *,
        db: Database,
        metrics: ConsumerMetrics,
        ai: _HasBreaker | None = None,
        whatsapp: _HasBreakers | None = None,
        interval_s: float = DEFAULT_SAMPLE_INTERVAL_S,
    ) -> None:
        self.db = db
        self.metrics = metrics
        self.ai = ai
        self.whatsapp = whatsapp
        self.interval_s = interval_s
        self.samples = 0

    async def run(self) -> None:
        while True:
            try:
                await self.sample_once()
            except Exception:  # a bug here must cost the gauges, never the consumer
                logger.opt(exception=True).warning("queue metrics sampler failed; retrying")
            await asyncio.sleep(self.interval_s)

    async def sample_once(self) -> bool:
        self.sample_circuits()
        try:
            await self.sample_queues()
            if self.samples % AI_COST_SAMPLE_EVERY == 0:
                await self.sample_ai_costs()
        except DATABASE_ERRORS as exc:
            self.metrics.samples_failed.inc()
            logger.debug("queue metrics sample failed: {}", one_line(exc))
            return False
        self.samples += 1
        return True

    async def sample_queues(self) -> None:
        for queue_name, depth, visible, in_flight, oldest_age_s in await self.db.sample_queues():
            self.metrics.queue_depth.labels(queue=queue_name).set(depth)
            self.metrics.queue_visible.labels(queue=queue_name).set(visible)
            self.metrics.queue_in_flight.labels(queue=queue_name).set(in_flight)
            self.metrics.queue_oldest_age_seconds.labels(queue=queue_name).set(oldest_age_s)

    async def sample_ai_costs(self) -> None:
        """Per active run and per workspace today: cached-token share, cost per 1,000 messages
        and the budget pause (issue 14). Labels only for runs still running or paused, and the
        gauges are cleared first, so finished runs do not linger as series."""
        runs, workspaces = await self.db.sample_ai_costs()
        m = self.metrics
        for gauge in (m.run_cached_token_share, m.run_cost_per_1000_usd, m.run_budget_exhausted):
            gauge.clear()
        for run_id, share, per_1000, exhausted in runs:
            labels = {"run_id": str(run_id)}
            if share is not None:
                m.run_cached_token_share.labels(**labels).set(float(share))
            if per_1000 is not None:
                m.run_cost_per_1000_usd.labels(**labels).set(float(per_1000))
            m.run_budget_exhausted.labels(**labels).set(1.0 if exhausted else 0.0)
        m.workspace_cached_token_share.clear()
        m.workspace_cost_per_1000_usd.clear()
        for workspace_id, share, per_1000 in workspaces:
            if share is not None:
                m.workspace_cached_token_share.labels(workspace_id=str(workspace_id)).set(float(share))
            if per_1000 is not None:
                m.workspace_cost_per_1000_usd.labels(workspace_id=str(workspace_id)).set(float(per_1000))

    def sample_circuits(self) -> None:
        if self.ai is not None:
            self.metrics.circuit_open.labels(circuit="ai").set(CIRCUIT_VALUES.get(self.ai.breaker_state, 0.0))
        if self.whatsapp is not None:
            for instance, state in self.whatsapp.breaker_states().items():
                self.metrics.circuit_open.labels(circuit=f"inbox:{instance}").set(
                    CIRCUIT_VALUES.get(state, 0.0)
                )


@contextlib.asynccontextmanager
async def serve_metrics(
    *,
    port: int | None,
    db: Database,
    metrics: ConsumerMetrics,
    ai: _HasBreaker | None = None,
    whatsapp: _HasBreakers | None = None,
    host: str = DEFAULT_METRICS_HOST,
    sample_interval_s: float = DEFAULT_SAMPLE_INTERVAL_S,
) -> AsyncIterator[MetricsServer | None]:
    """Endpoint + sampler for the duration of the block; nothing at all when `port` is None."""
    if port is None:
        yield None
        return
    server = MetricsServer(registry=metrics.registry, port=port, host=host)
    await server.start()
    sampler = QueueSampler(db=db, metrics=metrics, ai=ai, whatsapp=whatsapp, interval_s=sample_interval_s)
    task = asyncio.create_task(sampler.run(), name="campaignq-metrics-sampler")
    try:
        yield server
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await server.stop()
