"""Issue 14 end to end: one call per split message, the fallback, cache figures, spend caps and
batch pre-generation — real PostgreSQL + PGMQ, the simulator over loopback HTTP, no mocks."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import aiohttp
import psycopg
import pytest
from psycopg.rows import dict_row

from consumer.devtools.seeding import Campaign, Seeder
from consumer.devtools.simulator import NO_STRUCTURED_OUTPUT_MARK, Faults, Simulator
from consumer.runtime.ai import AIClient
from consumer.runtime.db import Database
from consumer.runtime.pregenerate import BatchClient, Pregenerator, TickReport
from consumer.settings import Settings
from tests.harness import consumer_settings, running_worker, wait_until

LONG_PROMPT = "You are Ana from Acme Fitness. Be warm, concrete and brief. " * 140  # ~2,000 tokens


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(faults=Faults(seed=14)) as simulator:
        yield simulator


def produce(db: psycopg.Connection[Any]) -> int:
    row = db.execute("SELECT enqueue_due_campaign_messages(10000)").fetchone()
    assert row is not None
    return int(row[0])


def terminal(seed: Seeder, campaign: Campaign) -> bool:
    statuses = seed.statuses(campaign.run_id)
    return sum(statuses.get(s, 0) for s in ("sent", "failed", "skipped")) == len(campaign.message_ids)


def rows(db: psycopg.Connection[Any], campaign: Campaign) -> list[dict[str, Any]]:
    cur = db.cursor(row_factory=dict_row)
    return cur.execute(
        "SELECT * FROM campaign_messages WHERE run_id = %s ORDER BY scheduled_at, id", (campaign.run_id,)
    ).fetchall()


def run_costs(db: psycopg.Connection[Any], campaign: Campaign) -> dict[str, Any]:
    cur = db.cursor(row_factory=dict_row)
    row = cur.execute("SELECT * FROM campaignq_run_ai_costs WHERE run_id = %s", (campaign.run_id,)).fetchone()
    assert row is not None
    return row


def dead_letters(db: psycopg.Connection[Any]) -> int:
    row = db.execute("SELECT count(*) FROM pgmq.q_campaign_messages_dlq").fetchone()
    assert row is not None
    return int(row[0])


# --- one call per message ------------------------------------------------------------------------


async def test_split_messages_take_one_structured_call_laid_out_for_the_cache(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str
) -> None:
    campaign = seed.campaign(4, split=True, max_parts=3)
    produce(db)
    async with running_worker(consumer_settings(database_url, sim)):
        await wait_until(lambda: terminal(seed, campaign), what="all sent")

    assert seed.statuses(campaign.run_id) == {"sent": 4}
    requests = sim.ai_requests
    assert [r.kind for r in requests] == ["structured"] * 4  # one call per message, no split call
    bodies = [r.body for r in requests]
    assert all(b["response_format"]["json_schema"]["strict"] is True for b in bodies)
    assert all(b["provider"] == {"require_parameters": True} for b in bodies)
    assert len({b["messages"][0]["content"] for b in bodies}) == 1  # shared prefix byte-identical
    assert len({(b["session_id"], b["prompt_cache_key"]) for b in bodies}) == 1  # one key per campaign
    assert sorted(b["messages"][-1]["content"].splitlines()[0] for b in bodies) == [
        f"Lead name: Lead {i}" for i in range(1, 5)
    ]
    for row in rows(db, campaign):
        assert row["generation_mode"] == "structured" and row["ai_calls"] == 1
        assert 1 <= len(row["parts"]) <= 3 and row["parts_sent"] == len(row["parts"])
        assert [s.text for s in sim.sends if s.text in row["parts"]] == row["parts"]
    assert run_costs(db, campaign)["ai_calls_per_message"] == Decimal("1.000")
    assert sim.duplicate_sends() == []


async def test_unsplit_configs_stay_one_plain_call(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str
) -> None:
    campaign = seed.campaign(2)
    produce(db)
    async with running_worker(consumer_settings(database_url, sim)):
        await wait_until(lambda: terminal(seed, campaign), what="all sent")
    assert [r.kind for r in sim.ai_requests] == ["generate", "generate"]
    assert all("response_format" not in r.body and "provider" not in r.body for r in sim.ai_requests)
    assert {row["generation_mode"] for row in rows(db, campaign)} == {"plain"}


async def test_a_model_that_refuses_schemas_falls_back_once_per_process(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str
) -> None:
    campaign = seed.campaign(4, split=True, model=f"sim/{NO_STRUCTURED_OUTPUT_MARK}")
    produce(db)
    async with running_worker(consumer_settings(database_url, sim, concurrency=1)) as running:
        await wait_until(lambda: terminal(seed, campaign), what="all sent")
        fallbacks = running.worker.metrics.structured_output_fallbacks.labels(
            model=f"sim/{NO_STRUCTURED_OUTPUT_MARK}"
        )._value.get()

    assert seed.statuses(campaign.run_id) == {"sent": 4}
    kinds = [(r.kind, r.outcome) for r in sim.ai_requests]
    assert kinds[0] == ("structured", "refused_schema")  # 404 under require_parameters
    assert kinds[1:] == [("generate", "ok")] * 4  # remembered: never asked again, no split call
    assert fallbacks == 1
    generated = rows(db, campaign)
    assert {row["generation_mode"] for row in generated} == {"generate_split"}
    assert sum(row["ai_calls"] for row in generated) == 5  # the refused request is counted once
    assert dead_letters(db) == 0


async def test_invalid_parts_go_through_the_deterministic_splitter_and_broken_json_is_retried(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str
) -> None:
    campaign = seed.campaign(2, split=True, max_parts=2)
    produce(db)
    sim.fail_next_ai("too_many_parts", only="structured")
    sim.fail_next_ai("bad_json", only="structured")
    async with running_worker(consumer_settings(database_url, sim, concurrency=1, backoff_base_s=0.05)):
        await wait_until(lambda: terminal(seed, campaign), what="all sent")

    assert seed.statuses(campaign.run_id) == {"sent": 2}
    outcomes = [r.outcome for r in sim.ai_requests]
    assert outcomes.count("too_many_parts") == 1 and outcomes.count("bad_json") == 1
    generated = rows(db, campaign)
    assert all(1 <= len(row["parts"]) <= 2 for row in generated)
    assert sorted(row["retry_count"] for row in generated) == [0, 1]  # broken JSON: one retry
    assert sim.duplicate_sends() == []


# --- cache figures ---------------------------------------------------------------------------------


async def test_cached_and_written_tokens_and_cost_are_stored_per_message(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str
) -> None:
    campaign = seed.campaign(6, split=True, prompt=LONG_PROMPT)
    produce(db)
    async with running_worker(consumer_settings(database_url, sim, concurrency=1, batch_size=1)):
        await wait_until(lambda: terminal(seed, campaign), what="all sent")

    generated = sorted(rows(db, campaign), key=lambda row: row["generated_at"])
    first, later = generated[0], generated[1:]
    assert first["ai_cached_tokens"] == 0 and first["ai_cache_write_tokens"] > 1024
    assert all(row["ai_cached_tokens"] >= 1024 and row["ai_cache_write_tokens"] == 0 for row in later)
    assert all(row["ai_cost_usd"] is not None and row["ai_cost_usd"] < first["ai_cost_usd"] for row in later)
    costs = run_costs(db, campaign)
    assert costs["cached_token_share"] > Decimal("0.7")
    assert costs["cost_per_1000_messages_usd"] > 0
    cur = db.cursor(row_factory=dict_row)
    workspace = cur.execute(
        "SELECT * FROM campaignq_workspace_ai_costs WHERE workspace_id = %s", (campaign.workspace_id,)
    ).fetchone()
    assert workspace is not None and workspace["generated"] == 6 and workspace["cached_token_share"] > 0.7


# --- spend caps --------------------------------------------------------------------------------------


async def test_a_run_cap_pauses_the_run_without_dead_letters_and_raising_it_resumes(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str
) -> None:
    campaign = seed.campaign(8)
    db.execute("UPDATE campaign_runs SET ai_cost_cap_usd = 0.0002 WHERE id = %s", (campaign.run_id,))
    produce(db)
    settings = consumer_settings(database_url, sim, concurrency=1, batch_size=1)
    async with running_worker(settings):
        await wait_until(
            lambda: (
                run_costs(db, campaign)["budget_exhausted"]
                and seed.statuses(campaign.run_id).get("queued", 0) == 0
            ),
            what="run paused for budget and its queue released",
        )
    costs = run_costs(db, campaign)
    assert (costs["run_status"], costs["pause_reason"]) == ("paused", "budget_exhausted")
    statuses = seed.statuses(campaign.run_id)
    assert 1 <= statuses.get("sent", 0) < 8 and statuses.get("pending", 0) == 8 - statuses["sent"]
    assert dead_letters(db) == 0 and costs["cost_usd"] >= Decimal("0.0002")
    stats_row = db.execute(
        "SELECT run_status FROM campaignq_run_progress WHERE run_id = %s", (campaign.run_id,)
    )
    assert stats_row.fetchone() == ("paused",)

    db.execute("UPDATE campaign_runs SET ai_cost_cap_usd = 1 WHERE id = %s", (campaign.run_id,))
    assert run_costs(db, campaign)["run_status"] == "running"  # raising the cap resumed it
    produce(db)
    async with running_worker(settings):
        await wait_until(lambda: terminal(seed, campaign), what="the rest sent")
    assert seed.statuses(campaign.run_id) == {"sent": 8}
    assert run_costs(db, campaign)["pause_reason"] is None and dead_letters(db) == 0
    totals = db.execute(
        "SELECT r.ai_cost_spent_usd, (SELECT sum(ai_cost_usd) FROM campaign_messages WHERE run_id = r.id), "
        "(SELECT cost_usd FROM workspace_ai_spend WHERE workspace_id = %s) "
        "FROM campaign_runs r WHERE r.id = %s",
        (campaign.workspace_id, campaign.run_id),
    ).fetchone()
    assert totals is not None and totals[0] == totals[1]  # the capped run's running total matches its rows
    assert totals[2] is None  # an uncapped workspace keeps no running total


def test_a_cap_lowered_below_the_spend_pauses_at_once(db: psycopg.Connection[Any], seed: Seeder) -> None:
    campaign = seed.campaign(1)
    other = seed.campaign(1, workspace_id=uuid.uuid4())
    db.execute("UPDATE campaign_messages SET ai_cost_usd = 2 WHERE run_id = %s", (campaign.run_id,))
    db.execute("UPDATE campaign_runs SET ai_cost_cap_usd = 1 WHERE id = %s", (campaign.run_id,))
    assert run_costs(db, campaign)["budget_exhausted"] is True
    db.execute(  # today's spend of the other workspace, as the consumer would have stored it
        "UPDATE campaign_messages SET ai_cost_usd = 3, generated_at = now() WHERE run_id = %s",
        (other.run_id,),
    )
    db.execute("INSERT INTO workspace_budgets VALUES (%s, 2.5)", (other.workspace_id,))
    assert run_costs(db, other)["budget_exhausted"] is True
    db.execute(
        "UPDATE workspace_budgets SET daily_ai_cost_cap_usd = 10 WHERE workspace_id = %s",
        (other.workspace_id,),
    )
    assert run_costs(db, other)["run_status"] == "running"


def test_an_operator_pause_is_never_resumed_by_the_budget_logic(
    db: psycopg.Connection[Any], seed: Seeder
) -> None:
    campaign = seed.campaign(1, run_status="paused")
    db.execute("UPDATE campaign_runs SET ai_cost_cap_usd = 5 WHERE id = %s", (campaign.run_id,))
    db.execute("UPDATE campaign_runs SET ai_cost_cap_usd = NULL WHERE id = %s", (campaign.run_id,))
    resumed = db.execute("SELECT campaignq_resume_within_budget()").fetchone()
    assert resumed == (0,)
    assert run_costs(db, campaign)["run_status"] == "paused"


async def test_a_workspace_daily_cap_pauses_its_runs_and_raising_it_resumes(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str
) -> None:
    campaign = seed.campaign(6)
    db.execute(
        "INSERT INTO workspace_budgets (workspace_id, daily_ai_cost_cap_usd) VALUES (%s, 0.0001)",
        (campaign.workspace_id,),
    )
    produce(db)
    settings = consumer_settings(database_url, sim, concurrency=1, batch_size=1)
    async with running_worker(settings):
        await wait_until(lambda: run_costs(db, campaign)["budget_exhausted"], what="paused for budget")
    assert dead_letters(db) == 0
    db.execute(
        "UPDATE workspace_budgets SET daily_ai_cost_cap_usd = NULL WHERE workspace_id = %s",
        (campaign.workspace_id,),
    )
    assert run_costs(db, campaign)["run_status"] == "running"
    produce(db)
    async with running_worker(settings):
        await wait_until(lambda: terminal(seed, campaign), what="the rest sent")
    assert seed.statuses(campaign.run_id) == {"sent": 6}


# --- batch pre-generation ---------------------------------------------------------------------------


@pytest.fixture
async def pregen(sim: Simulator, database_url: str) -> AsyncIterator[Pregenerator]:
    settings = consumer_settings(database_url, sim, pregen_min_ahead_s=3600, pregen_horizon_s=86_400)
    db = await Database.open(database_url, max_size=2)
    try:
        async with aiohttp.ClientSession() as session:
            yield Pregenerator(
                db=db,
                ai=AIClient.from_settings(settings, session),
                batches=BatchClient(
                    session=session, base_url=settings.ai_base_url, api_key=settings.ai_key()
                ),
                settings=settings,
            )
    finally:
        await db.close()


def ahead(seed: Seeder, n: int, **kwargs: Any) -> Campaign:
    return seed.campaign(n, scheduled_offset=timedelta(hours=3), **kwargs)


def come_due(db: psycopg.Connection[Any], campaign: Campaign) -> None:
    db.execute(
        "UPDATE campaign_messages SET scheduled_at = now() - interval '1 second' WHERE run_id = %s",
        (campaign.run_id,),
    )


async def send_due(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str, campaign: Campaign
) -> None:
    come_due(db, campaign)
    produce(db)
    async with running_worker(consumer_settings(database_url, sim)):
        await wait_until(lambda: terminal(seed, campaign), what="all sent")


async def test_batch_results_are_stored_ahead_and_the_consumer_only_sends(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str, pregen: Pregenerator
) -> None:
    campaign = ahead(seed, 5, split=True)
    soon = seed.campaign(1, scheduled_offset=timedelta(minutes=10))  # too soon for a batch
    first = await pregen.tick()
    assert (first.submitted_batches, first.submitted_requests) == (1, 5)
    assert (await pregen.tick()).stored == 5
    assert (await pregen.tick()).submitted_requests == 0  # nothing is submitted twice

    stored = rows(db, campaign)
    assert all(
        row["generation_mode"] == "batch" and row["parts"] and row["status"] == "pending" for row in stored
    )
    assert all(row["ai_cost_usd"] is not None for row in stored)
    assert rows(db, soon)[0]["ai_batch_id"] is None
    sync_requests = sim.ai_request_count
    await send_due(db, seed, sim, database_url, campaign)
    assert sim.ai_request_count == sync_requests  # at due time: no AI call at all
    assert seed.statuses(campaign.run_id) == {"sent": 5}
    assert sim.duplicate_sends() == []
    assert run_costs(db, campaign)["batch_generated"] == 5


@pytest.mark.parametrize("fate", ["failed", "expired"])
async def test_failed_or_expired_batches_fall_back_to_the_sync_path_at_due_time(
    db: psycopg.Connection[Any],
    seed: Seeder,
    sim: Simulator,
    database_url: str,
    pregen: Pregenerator,
    fate: str,
) -> None:
    campaign = ahead(seed, 3, split=True)
    sim.fail_next_batch(fate)  # type: ignore[arg-type]
    assert (await pregen.tick()).submitted_requests == 3
    report = await pregen.tick()
    assert report.finished_batches == {fate: 1} and report.stored == 0
    assert (await pregen.tick()).submitted_requests == 0  # the rows are not resubmitted
    await send_due(db, seed, sim, database_url, campaign)
    assert {row["generation_mode"] for row in rows(db, campaign)} == {"structured"}
    assert seed.statuses(campaign.run_id) == {"sent": 3} and sim.duplicate_sends() == []


async def test_failed_items_are_generated_at_due_time_and_the_others_are_not(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str, pregen: Pregenerator
) -> None:
    campaign = ahead(seed, 4)
    sim.fail_next_batch("item_errors")
    await pregen.tick()
    report = await pregen.tick()
    assert (report.stored, report.failed_items) == (2, 2)
    before = sim.ai_request_count
    await send_due(db, seed, sim, database_url, campaign)
    assert sim.ai_request_count - before == 2
    assert sorted(row["generation_mode"] for row in rows(db, campaign)) == [
        "batch",
        "batch",
        "plain",
        "plain",
    ]


async def test_the_finished_items_of_an_expired_openai_batch_are_kept_not_paid_again(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str, pregen: Pregenerator
) -> None:
    campaign = ahead(seed, 4)
    sim.fail_next_batch("expired_partial")  # OpenAI: an expired batch's output file has what finished
    await pregen.tick()
    report = await pregen.tick()
    assert report.finished_batches == {"expired": 1} and report.stored == 2
    before = sim.ai_request_count
    await send_due(db, seed, sim, database_url, campaign)
    assert sim.ai_request_count - before == 2  # only the unfinished half is generated at due time
    assert sorted(str(row["generation_mode"]) for row in rows(db, campaign)) == [
        "batch",
        "batch",
        "plain",
        "plain",
    ]


async def test_a_late_batch_is_overtaken_by_the_sync_path_and_its_results_discarded(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str, pregen: Pregenerator
) -> None:
    campaign = ahead(seed, 3)
    sim.fail_next_batch("late")
    await pregen.tick()
    report = await pregen.tick()
    assert report.finished_batches == {} and report.stored == 0  # still in progress
    await send_due(db, seed, sim, database_url, campaign)
    sent_texts = {row["id"]: row["generated_message"] for row in rows(db, campaign)}

    sim.batches.release_late()
    report = await pregen.tick()
    assert (report.stored, report.discarded) == (0, 3)
    assert {row["id"]: row["generated_message"] for row in rows(db, campaign)} == sent_texts
    assert {row["generation_mode"] for row in rows(db, campaign)} == {"plain"}
    assert len(sim.sends) == 3 and sim.duplicate_sends() == []


async def test_batch_api_outages_release_the_rows_for_a_later_batch(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, pregen: Pregenerator
) -> None:
    campaign = ahead(seed, 2)
    sim.fail_next_batch("500")
    report = TickReport()
    await pregen.submit(report)
    assert report.submitted_batches == 0
    assert all(row["ai_batch_id"] is None for row in rows(db, campaign))
    assert (await pregen.tick()).submitted_requests == 2


def test_settings_for_pregeneration_have_safe_defaults() -> None:
    settings = Settings(database_url="postgresql://unused")
    assert settings.pregen_min_ahead_s == 7200 and settings.ai_batch_price_factor == 0.5


async def test_pregenerate_once_through_the_cli(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str
) -> None:
    from tests.cli import run_cli
    from tests.harness import AI_KEY

    campaign = ahead(seed, 2, split=True)
    env = {"CAMPAIGNQ_AI_BASE_URL": sim.ai_base_url, "CAMPAIGNQ_AI_API_KEY": AI_KEY}
    # `auto` on an unknown host (the simulator's 127.0.0.1) is off: nothing is submitted
    off = await asyncio.to_thread(run_cli, "pregenerate", "--once", database_url=database_url, env=env)
    assert off.returncode == 0 and "no Batch API" in off.stderr, off.stderr
    assert sim.batches.batches == {}
    first = await asyncio.to_thread(
        run_cli, "pregenerate", "--once", "--batch-api", "openai", database_url=database_url, env=env
    )
    env["CAMPAIGNQ_AI_BATCH_API"] = "openai"
    assert first.returncode == 0, first.stderr
    second = await asyncio.to_thread(run_cli, "pregenerate", "--once", database_url=database_url, env=env)
    assert second.returncode == 0, second.stderr
    assert {row["generation_mode"] for row in rows(db, campaign)} == {"batch"}
    batch = db.execute("SELECT status, requests, stored FROM ai_batches").fetchall()
    assert batch == [("completed", 2, 2)]


async def test_simulator_batch_api_shape_and_scripted_faults_over_http(sim: Simulator) -> None:
    line = {
        "custom_id": "m1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "m", "messages": [{"role": "user", "content": "Lead name: Ana"}], "max_tokens": 64},
    }
    headers = {"Authorization": "Bearer k"}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.post(f"{sim.base_url}/_sim/fail-next/batch", json={"kind": "429"}) as scripted:
            assert scripted.status == 200
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", (json.dumps(line) + "\n").encode(), filename="in.jsonl")
        async with http.post(f"{sim.ai_base_url}/files", data=form) as limited:
            assert limited.status == 429 and "Retry-After" in limited.headers
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", (json.dumps(line) + "\n").encode(), filename="in.jsonl")
        async with http.post(f"{sim.ai_base_url}/files", data=form) as uploaded:
            file_id = (await uploaded.json())["id"]
        body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
        async with http.post(f"{sim.ai_base_url}/batches", json=body) as created:
            batch = await created.json()
        assert batch["status"] == "validating"
        async with http.get(f"{sim.ai_base_url}/batches/{batch['id']}") as polled:
            done = await polled.json()
        assert done["status"] == "completed" and done["request_counts"]["completed"] == 1
        async with http.get(f"{sim.ai_base_url}/files/{done['output_file_id']}/content") as output:
            result = json.loads((await output.read()).decode().splitlines()[0])
    assert result["custom_id"] == "m1" and result["response"]["status_code"] == 200
    usage = result["response"]["body"]["usage"]
    assert usage["cost"] > 0 and "prompt_tokens_details" in usage


async def test_simulator_prompt_cache_is_per_key_and_model_after_first_sight(sim: Simulator) -> None:
    def body(key: str, model: str = "m") -> dict[str, Any]:
        return {
            "model": model,
            "messages": [
                {"role": "system", "content": LONG_PROMPT},
                {"role": "user", "content": "Lead name: X"},
            ],
            "session_id": key,
        }

    cache = sim.prompt_cache
    first_cached, first_written = cache.lookup(body("k1"))
    assert first_cached == 0 and first_written >= 1024
    assert cache.lookup(body("k1")) == (first_written, 0)
    assert cache.lookup(body("k1", model="other")) == (0, first_written)
    short = {
        "model": "m",
        "messages": [{"role": "system", "content": "short"}, {"role": "user", "content": "x"}],
    }
    assert cache.lookup(short) == (0, 0)  # under 1,024 tokens nothing is cached


async def test_prometheus_gauges_show_cache_share_cost_per_1000_and_budget_per_run_and_workspace(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str
) -> None:
    from consumer.runtime.metrics import ConsumerMetrics
    from consumer.runtime.observability import QueueSampler

    campaign = seed.campaign(3, split=True, prompt=LONG_PROMPT)
    produce(db)
    async with running_worker(consumer_settings(database_url, sim, concurrency=1)):
        await wait_until(lambda: terminal(seed, campaign), what="all sent")
    db.execute(
        "UPDATE campaign_runs SET status = 'paused', pause_reason = 'budget_exhausted' WHERE id = %s",
        (campaign.run_id,),
    )
    metrics = ConsumerMetrics()
    pool = await Database.open(database_url, max_size=1)
    try:
        assert await QueueSampler(db=pool, metrics=metrics).sample_once()
    finally:
        await pool.close()
    run = str(campaign.run_id)
    workspace = str(campaign.workspace_id)

    def value(name: str, labels: dict[str, str]) -> float:
        sample = metrics.registry.get_sample_value(name, labels)
        assert sample is not None, (name, labels)
        return sample

    assert value("campaignq_run_ai_cached_token_share", {"run_id": run}) > 0.5
    assert value("campaignq_run_ai_cost_per_1000_messages_usd", {"run_id": run}) > 0
    assert value("campaignq_run_budget_exhausted", {"run_id": run}) == 1.0
    assert value("campaignq_workspace_ai_cached_token_share", {"workspace_id": workspace}) > 0.5
    assert value("campaignq_workspace_ai_cost_per_1000_messages_usd", {"workspace_id": workspace}) > 0


async def test_a_batch_left_preparing_is_marked_failed_and_its_rows_go_sync(
    db: psycopg.Connection[Any], seed: Seeder, pregen: Pregenerator
) -> None:
    campaign = ahead(seed, 2)
    row = db.execute(
        "INSERT INTO ai_batches (status, created_at) "
        "VALUES ('preparing', now() - interval '2 hours') RETURNING id"
    ).fetchone()
    assert row is not None
    db.execute("UPDATE campaign_messages SET ai_batch_id = %s WHERE run_id = %s", (row[0], campaign.run_id))
    report = await pregen.tick()
    assert report.submitted_requests == 0  # never resubmitted: a provider batch may exist
    assert db.execute("SELECT status FROM ai_batches WHERE id = %s", (row[0],)).fetchone() == ("failed",)
