"""Prometheus metrics of a real consumer, scraped over HTTP: values move as messages are processed."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from psycopg.types.json import Jsonb

from consumer.devtools.seeding import Seeder
from consumer.devtools.simulator import Faults, Simulator
from consumer.runtime.observability import serve_metrics
from tests.cli import spawn_cli
from tests.harness import consumer_settings, running_worker, subprocess_env, wait_until
from tests.integration.test_consumer import produce, terminal


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(faults=Faults(seed=13)) as simulator:
        yield simulator


def value(text: str, name: str, **labels: str) -> float | None:
    """The sample `name{labels}` in a Prometheus text exposition, None when absent."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


async def scrape(port: int) -> str:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            return await response.text()


async def scrape_until(port: int, name: str, **labels: str) -> str:
    """Scrape until the sampler has filled `name{labels}` in (its first sample is asynchronous)."""
    for _ in range(100):
        text = await scrape(port)
        if value(text, name, **labels) is not None:
            return text
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name} never appeared")


def seed_queue_shapes(db: psycopg.Connection[Any]) -> None:
    """A delayed message the consumer will not see for an hour, and one dead letter."""
    db.execute("SELECT pgmq.send('campaign_messages', '{\"v\": 1}'::jsonb, 3600)")
    db.execute("SELECT pgmq.send('campaign_messages_dlq', %s)", (Jsonb({"reason": "permanent"}),))


async def test_scraped_values_move_after_processing(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str
) -> None:
    seed_queue_shapes(db)
    settings = consumer_settings(database_url, sim)
    async with running_worker(settings) as running:
        worker = running.worker
        async with serve_metrics(
            port=0,
            host="127.0.0.1",
            db=running.db,
            metrics=worker.metrics,
            ai=worker.ai,
            whatsapp=worker.whatsapp,
            sample_interval_s=0.1,
        ) as server:
            assert server is not None
            before = await scrape_until(server.port, "campaignq_queue_depth", queue="campaign_messages")
            assert value(before, "campaignq_outcomes_total", outcome="sent") is None
            assert value(before, "campaignq_queue_depth", queue="campaign_messages") == 1
            assert value(before, "campaignq_queue_visible", queue="campaign_messages") == 0
            assert value(before, "campaignq_queue_depth", queue="campaign_messages_dlq") == 1

            campaign = seed.campaign(5, split=True)
            produce(db)
            sim.fail_next_ai("429", retry_after_s=0.3)
            await wait_until(lambda: terminal(seed, campaign), what="all sent")
            await asyncio.sleep(0.3)  # at least one more sample after the queue drained
            after = await scrape(server.port)

    assert value(after, "campaignq_outcomes_total", outcome="sent", error_class="none") == 5
    assert value(after, "campaignq_outcomes_total", outcome="deferred", error_class="rate_limited") == 1
    assert (value(after, "campaignq_rate_limit_waits_total") or 0) >= 1
    assert value(after, "campaignq_stage_seconds_count", stage="generate") == 5  # the 429 had no answer
    assert value(after, "campaignq_stage_seconds_count", stage="send") is not None
    assert (value(after, "campaignq_batch_fill_ratio_count") or 0) >= 1
    assert value(after, "campaignq_in_flight") == 0
    assert value(after, "campaignq_queue_depth", queue="campaign_messages") == 1  # the delayed one
    assert value(after, "campaignq_queue_oldest_age_seconds", queue="campaign_messages_dlq")
    assert value(after, "campaignq_circuit_open", circuit="ai") == 0
    assert value(after, "campaignq_circuit_open", circuit="inbox:inst-1") == 0
    assert (value(after, "campaignq_ai_tokens_total", kind="prompt") or 0) > 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_consume_metrics_port_serves_the_process_metrics(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str
) -> None:
    seed_queue_shapes(db)
    campaign = seed.campaign(3)
    produce(db)
    port = free_port()
    process = spawn_cli("consume", "--metrics-port", str(port), env=subprocess_env(database_url, sim))
    try:
        await wait_until(lambda: terminal(seed, campaign), timeout_s=30, what="all sent")
        text = ""
        for _ in range(100):
            try:
                text = await scrape(port)
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)
                continue
            if value(text, "campaignq_outcomes_total", outcome="sent", error_class="none") == 3:
                break
            await asyncio.sleep(0.1)
    finally:
        process.terminate()
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert value(text, "campaignq_outcomes_total", outcome="sent", error_class="none") == 3
    assert value(text, "campaignq_queue_depth", queue="campaign_messages_dlq") == 1  # sampled at start
    assert value(text, "campaignq_circuit_open", circuit="ai") == 0
    assert f"serving Prometheus metrics on http://0.0.0.0:{port}/metrics" in err
