"""Logs of a real consumer run: JSON lines parse, outcome lines carry their fields, nothing leaks.

Keys are registered exactly as `campaignq consume` does (commands/_common.settings_from).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest

from consumer.devtools.seeding import Seeder
from consumer.devtools.simulator import Faults, Simulator
from consumer.logs import configure_logging, register_secret
from tests.harness import AI_KEY, WHATSAPP_KEY, consumer_settings, running_worker, wait_until
from tests.integration.test_consumer import produce, terminal

PHONES = ["+55 (11) 98888-7777", "+5511977776666", "5521966665555", "+55 31 95555-4444"]
OUTCOME_FIELDS = {
    "outcome",
    "message_id",
    "run_id",
    "attempt",
    "error_class",
    "stage",
    "ai_ms",
    "split_ms",
    "send_ms",
}


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(
        faults=Faults(seed=17), ai_api_key=AI_KEY, whatsapp_api_key=WHATSAPP_KEY
    ) as simulator:
        yield simulator


@pytest.fixture(autouse=True)
def _keys_registered_and_logging_restored() -> Iterator[None]:
    register_secret(AI_KEY)
    register_secret(WHATSAPP_KEY)
    yield
    configure_logging()


def assert_nothing_leaks(text: str) -> None:
    assert AI_KEY not in text and WHATSAPP_KEY not in text
    for phone in PHONES:
        digits = re.sub(r"\D", "", phone)
        assert phone not in text and digits not in text and digits[2:] not in text


async def test_json_logs_of_a_real_run(
    db: psycopg.Connection[Any],
    seed: Seeder,
    sim: Simulator,
    database_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(json_lines=True)
    campaign = seed.campaign(len(PHONES), split=True, phones=PHONES)
    produce(db)
    sim.fail_next_ai("500")  # one retry line
    sim.fail_next_send("400")  # a number not on WhatsApp: one dead-letter line

    async with running_worker(consumer_settings(database_url, sim)):
        await wait_until(lambda: terminal(seed, campaign), what="all settled")

    # A fatal provider error (bad key) stops the consumer with a CRITICAL line.
    fatal = seed.campaign(1)
    produce(db)
    sim.fail_next_ai("401")
    async with running_worker(consumer_settings(database_url, sim)) as running:
        assert await running.task == 3
    assert seed.statuses(fatal.run_id) == {"queued": 1}

    err = capsys.readouterr().err
    lines = [json.loads(line) for line in err.splitlines()]
    outcomes = [line for line in lines if "outcome" in line]
    assert {line["outcome"] for line in outcomes} >= {"sent", "retry", "dead_letter"}
    for line in outcomes:
        assert OUTCOME_FIELDS <= set(line), line
        assert line["message_id"] and line["run_id"] and line["attempt"] >= 1
    sent = next(line for line in outcomes if line["outcome"] == "sent")
    assert sent["ai_ms"] is not None and sent["send_ms"] is not None and sent["error_class"] is None
    dead = next(line for line in outcomes if line["outcome"] == "dead_letter")
    assert dead["level"] == "WARNING" and dead["error_class"] and dead["stage"] == "send"
    assert any(line["level"] == "CRITICAL" and "fatal provider error" in line["message"] for line in lines)
    assert_nothing_leaks(err)


async def test_readable_logs_of_a_real_run(
    db: psycopg.Connection[Any],
    seed: Seeder,
    sim: Simulator,
    database_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging()
    campaign = seed.campaign(2, phones=PHONES[:2])
    produce(db)

    async with running_worker(consumer_settings(database_url, sim)):
        await wait_until(lambda: terminal(seed, campaign), what="all sent")

    err = capsys.readouterr().err
    sent = [line for line in err.splitlines() if "outcome=sent" in line]
    assert len(sent) == 2
    for line in sent:
        for field in (
            "message_id=",
            "run_id=",
            "attempt=1",
            "error_class=-",
            "stage=send",
            "ai_ms=",
            "send_ms=",
        ):
            assert field in line, line
    assert_nothing_leaks(err)
