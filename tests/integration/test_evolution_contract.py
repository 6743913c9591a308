"""Evolution API 2.3 as it really answers (issue 21, points 1-3), against a real PostgreSQL
with PGMQ and the simulator over loopback HTTP: a dead socket is a 400, Cloud-API errors
come back as 201, and Evolution stores messages under its own jid for the number."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from psycopg.types.json import Jsonb

from consumer.core.jid import create_jid
from consumer.devtools.seeding import Campaign, Seeder
from consumer.devtools.simulator import Faults, Simulator
from consumer.runtime.whatsapp import WhatsAppClient
from tests.harness import WHATSAPP_KEY, consumer_settings, running_worker, wait_until
from tests.integration.test_consumer import dead_letters, message_row, produce, terminal

CONTRACT = Path(__file__).resolve().parents[1] / "contract" / "evolution"
PARTS = [
    "Oi Ana! Primeira parte, a saudação.",
    "Segunda parte: a oferta em si, com palavras suficientes para ler.",
    "Terceira parte: posso mandar os detalhes?",
]


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(faults=Faults(seed=21)) as simulator:
        yield simulator


def br_phones(n: int) -> list[str]:
    """Belo Horizonte mobiles (DDD 31, subscriber 8…): Evolution drops their 9th digit."""
    return [f"+55 31 98{index:03d}-{index:04d}" for index in range(n)]


def generated(db: psycopg.Connection[Any], seed: Seeder, n: int, **kwargs: Any) -> Campaign:
    """Rows whose parts were generated and stored by an earlier attempt: the worker only sends."""
    campaign = seed.campaign(n, **kwargs)
    db.execute(
        "UPDATE campaign_messages SET generated_message = %s, parts = %s WHERE run_id = %s",
        ("\n\n".join(PARTS), Jsonb(PARTS), campaign.run_id),
    )
    return campaign


def statuses(db: psycopg.Connection[Any], campaign: Campaign) -> dict[str, int]:
    rows = db.execute(
        "SELECT status, count(*) FROM campaign_messages WHERE run_id = %s GROUP BY status", (campaign.run_id,)
    ).fetchall()
    return {str(status): int(count) for status, count in rows}


async def test_an_inbox_whose_socket_drops_for_8_s_loses_no_message(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str
) -> None:
    """Point 1: `400 Error: Connection Closed` is the inbox's trouble, deferred without an attempt."""
    campaign = generated(db, seed, 6, instance="inst-dead")
    produce(db)
    sim.set_faults(dead_socket_instances={"inst-dead"})
    settings = consumer_settings(database_url, sim, inbox_breaker_cooldown_s=1.0, inbox_breaker_failures=2)
    async with running_worker(settings):
        await asyncio.sleep(8.0)
        assert sim.send_outcomes("inst-dead").get("connection_closed", 0) >= 1
        sim.set_faults(dead_socket_instances=set())  # the socket is back
        await wait_until(lambda: terminal(seed, campaign), timeout_s=40, what="every message sent")

    assert statuses(db, campaign) == {"sent": 6}
    assert dead_letters(db) == []
    assert all(message_row(db, m)["retry_count"] == 0 for m in campaign.message_ids)
    assert sim.duplicate_sends() == []
    assert sim.invalid_send_requests == []


async def test_graph_errors_answered_as_201_are_never_counted_sent(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str
) -> None:
    """Point 2: 131026 fails the lead, 131047 needs a template, 130429 paces and is sent later."""
    campaign = seed.campaign(3, phones=["+55 11 90000-0001", "+55 11 90000-0002", "+55 11 90000-0003"])
    produce(db)
    sim.fail_next_send("cloud_graph_error_201", number="5511900000001", graph_code=131026)
    sim.fail_next_send("cloud_graph_error_201", number="5511900000002", graph_code=131047)
    sim.fail_next_send("cloud_graph_error_201", number="5511900000003", graph_code=130429)
    async with running_worker(consumer_settings(database_url, sim)):
        await wait_until(lambda: terminal(seed, campaign), timeout_s=30, what="every message decided")

    rows = {
        str(phone): (status, error_class, retry_count)
        for phone, status, error_class, retry_count in db.execute(
            "SELECT l.phone, m.status, m.error_class, m.retry_count FROM campaign_messages m "
            "JOIN leads l ON l.id = m.lead_id WHERE m.run_id = %s",
            (campaign.run_id,),
        ).fetchall()
    }
    assert rows["+55 11 90000-0001"][:2] == ("failed", "invalid_lead")
    assert rows["+55 11 90000-0002"][:2] == ("failed", "needs_template")
    assert rows["+55 11 90000-0003"] == ("sent", None, 0)  # paced, not an attempt
    assert [s.number for s in sim.sends] == ["5511900000003"]
    assert sim.invalid_send_requests == []


async def test_split_messages_to_rewritten_brazilian_numbers_are_never_duplicated(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str
) -> None:
    """Point 3: the gateway files each send under createJid's form (553180…, no 9th digit) and
    15 % of sends are accepted and then hang; reconciliation must look there, not resend."""
    campaign = generated(db, seed, 40, phones=br_phones(40))
    produce(db)
    sim.set_faults(br_jid_rewrite=True, send_hang_after_accept_p=0.15, hang_s=3.0, seed=21)
    settings = consumer_settings(database_url, sim, send_timeout_s=0.5, concurrency=16)
    async with running_worker(settings) as running:
        await wait_until(lambda: terminal(seed, campaign), timeout_s=90, what="every message sent")
        metrics = running.worker.metrics

    assert statuses(db, campaign) == {"sent": 40}
    assert len(sim.sends) == 40 * len(PARTS)
    assert sim.duplicate_sends() == []
    assert metrics.uncertain_sends._value.get() > 0
    assert metrics.reconciliations.labels(result="found")._value.get() > 0
    jids = {
        r[0]
        for r in db.execute(
            "SELECT whatsapp_jid FROM campaign_messages WHERE run_id = %s", (campaign.run_id,)
        ).fetchall()
    }
    # The chat is a hint recorded after an acknowledged part that has parts after it: a message
    # whose first two parts both hung (and were found by reconciliation) records none.
    recorded = jids - {None}
    assert recorded <= {create_jid(phone) for phone in br_phones(40)}
    assert len(recorded) >= 20, recorded
    assert sim.invalid_send_requests == []


async def test_a_lid_chat_is_reconciled_where_the_gateway_filed_it(
    db: psycopg.Connection[Any], seed: Seeder, sim: Simulator, database_url: str
) -> None:
    """A LID chat cannot be derived from the number: only the stored `key.remoteJid` finds it."""
    campaign = generated(db, seed, 1, phones=["+55 31 98000-0006"])
    produce(db)
    sim.set_faults(lid_sender=True, hang_s=3.0)
    sim.fail_next_send("hang_after_accept", text_contains="Segunda")
    async with running_worker(consumer_settings(database_url, sim, send_timeout_s=0.5)):
        await wait_until(lambda: terminal(seed, campaign), timeout_s=30, what="message sent")

    row = message_row(db, campaign.message_ids[0])
    assert (row["status"], row["parts_sent"]) == ("sent", 3)
    assert row["whatsapp_jid"].endswith("@lid")
    assert [s.text for s in sim.sends] == PARTS
    assert sim.duplicate_sends() == []


async def test_the_simulator_refuses_a_body_that_breaks_evolutions_schema_as_evolution_does(
    sim: Simulator,
) -> None:
    """Every sendText the client sends is checked against the contract schema (the simulator
    records violations); an invalid body gets Evolution's 400, which is the message's fault."""
    contract = json.loads((CONTRACT / "sendtext.schema.json").read_text(encoding="utf-8"))
    async with aiohttp.ClientSession() as session:
        url = f"{sim.whatsapp_base_url}/message/sendText/inst-1"
        bad = {"number": "5531980000006", "text": "Oi", "delay": 1.5}
        async with session.post(url, json=bad, headers={"apikey": WHATSAPP_KEY}) as response:
            assert response.status == 400
            body = await response.json()
        assert body == {
            "status": 400,
            "error": "Bad Request",
            "response": {"message": ["Enter a value in milliseconds"]},
        }
        assert body.keys() == contract["invalid_answer_example"]["body"].keys()
        assert sim.invalid_send_requests == [bad]

        client = WhatsAppClient(session=session, base_url=sim.whatsapp_base_url, api_key=WHATSAPP_KEY)
        receipt = await client.send_text(instance="inst-1", number="5531980000006", text="Oi", delay_ms=1200)
        assert receipt.message_id and receipt.remote_jid == "5531980000006@s.whatsapp.net"
        sim.set_faults(br_jid_rewrite=True)
        receipt = await client.send_text(instance="inst-1", number="5531980000007", text="Oi")
        assert receipt.remote_jid == "553180000007@s.whatsapp.net"
        assert sim.invalid_send_requests == [bad]


@pytest.mark.parametrize(
    ("fault", "contract_answer"),
    [
        (None, "accepted"),
        ("dead_socket_400", "dead_socket_400"),
        ("connection_closed", "dead_socket_400"),
        ("not_on_whatsapp", "not_on_whatsapp_400"),
        ("cloud_graph_error_201", "cloud_rate_limit_201"),
    ],
)
async def test_the_simulator_answers_sends_in_the_contracts_shapes(
    sim: Simulator, fault: str | None, contract_answer: str
) -> None:
    """The fake gateway answers only shapes found in tests/contract/evolution/send_answers.json."""
    expected = json.loads((CONTRACT / "send_answers.json").read_text(encoding="utf-8"))["answers"][
        contract_answer
    ]
    if fault is not None:
        sim.fail_next_send(fault)  # type: ignore[arg-type]
    async with aiohttp.ClientSession() as session:
        url = f"{sim.whatsapp_base_url}/message/sendText/inst-1"
        body = {"number": "5531980000006", "text": "Oi"}
        async with session.post(url, json=body, headers={"apikey": WHATSAPP_KEY}) as response:
            answer = await response.json()
            assert response.status == expected["status"]
    assert set(answer) <= set(expected["body"])
    if "key" in answer:
        assert set(answer["key"]) == set(expected["body"]["key"])
    if "response" in answer:
        assert type(answer["response"]["message"]) is type(expected["body"]["response"]["message"])
        assert [type(m) for m in answer["response"]["message"]] == [
            type(m) for m in expected["body"]["response"]["message"]
        ]
    if "error_data" in answer:
        assert set(answer["error_data"]) <= set(expected["body"]["error_data"])
