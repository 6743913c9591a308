"""core/evolution: what each Evolution 2.3.6 answer to sendText means (issue 21, points 1-2),
checked on the bodies in tests/contract/evolution/send_answers.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from consumer.core.evolution import SendVerdict, classify_failure, classify_success
from consumer.devtools.simulator.evolution_contract import SENDTEXT_SCHEMA, schema_errors

CONTRACT = Path(__file__).resolve().parents[1] / "contract" / "evolution"
ANSWERS: dict[str, Any] = json.loads((CONTRACT / "send_answers.json").read_text(encoding="utf-8"))["answers"]


def _classify(name: str) -> SendVerdict:
    answer = ANSWERS[name]
    status, body = answer["status"], answer["body"]
    if 200 <= status < 300:
        return classify_success(body).verdict
    response = body.get("response", {}).get("message")
    message = response if isinstance(response, str) else json.dumps(response)
    return classify_failure(status, body, message, html=False).verdict


@pytest.mark.parametrize(
    ("name", "verdict"),
    [
        ("accepted", SendVerdict.ACKNOWLEDGED),
        ("accepted_lid", SendVerdict.ACKNOWLEDGED),
        ("dead_socket_400", SendVerdict.INBOX_DOWN),
        ("timed_out_400", SendVerdict.INBOX_DOWN),
        ("connection_failure_400", SendVerdict.INBOX_DOWN),
        ("not_on_whatsapp_400", SendVerdict.NOT_ON_WHATSAPP),
        ("schema_invalid_400", SendVerdict.REJECTED),
        ("cloud_rate_limit_201", SendVerdict.RATE_LIMITED),
        ("cloud_pair_rate_201", SendVerdict.RATE_LIMITED),
        ("cloud_undeliverable_201", SendVerdict.UNDELIVERABLE),
        ("cloud_needs_template_201", SendVerdict.NEEDS_TEMPLATE),
        ("cloud_token_201", SendVerdict.CREDENTIALS),
    ],
)
def test_every_contract_answer_has_its_verdict(name: str, verdict: SendVerdict) -> None:
    assert _classify(name) is verdict


def test_the_acknowledgement_carries_the_stored_chat() -> None:
    answer = classify_success(ANSWERS["accepted"]["body"])
    assert answer.remote_jid == "553180000006@s.whatsapp.net"
    assert answer.message_id == "3EB0A1B2C3D4E5F60718"


def test_pair_rate_limit_waits_six_seconds() -> None:
    assert classify_success(ANSWERS["cloud_pair_rate_201"]["body"]).retry_after_s == 6.0


@pytest.mark.parametrize(
    ("body", "verdict"),
    [
        ({}, SendVerdict.UNCERTAIN),
        (None, SendVerdict.UNCERTAIN),
        ({"status": "PENDING"}, SendVerdict.UNCERTAIN),
        ({"key": {"remoteJid": "1@s.whatsapp.net"}}, SendVerdict.UNCERTAIN),
        (
            {
                "error": {
                    "message": "(#131051) Unsupported message type",
                    "code": 131051,
                    "type": "OAuthException",
                }
            },
            SendVerdict.REJECTED,
        ),
        (
            {"message": "(#2) Service temporarily unavailable", "code": 2, "type": "OAuthException"},
            SendVerdict.UNAVAILABLE,
        ),
        ({"error": "upstream failed"}, SendVerdict.UNAVAILABLE),
    ],
)
def test_a_2xx_is_an_acknowledgement_only_with_a_key_id(body: Any, verdict: SendVerdict) -> None:
    assert classify_success(body).verdict is verdict


@pytest.mark.parametrize(
    ("status", "messages", "verdict"),
    [
        (500, ["Error: Connection Closed"], SendVerdict.INBOX_DOWN),  # Evolution before 2.3
        (400, ["Error: Stream Errored (restart required)"], SendVerdict.INBOX_DOWN),
        (400, ["TypeError: Cannot read properties of undefined (reading 'id')"], SendVerdict.UNAVAILABLE),
        (400, ["Invalid format"], SendVerdict.REJECTED),
        (400, ['"mentioned" must be an array of numeric strings'], SendVerdict.REJECTED),
        (403, ["This WhatsApp account has been banned"], SendVerdict.BANNED),
        (401, "Unauthorized", SendVerdict.AUTH),
        (404, ['The "x" instance does not exist'], SendVerdict.MISSING_INSTANCE),
        (502, "Bad Gateway", SendVerdict.UNAVAILABLE),
    ],
)
def test_failures(status: int, messages: Any, verdict: SendVerdict) -> None:
    body = {"status": status, "error": "x", "response": {"message": messages}}
    text = messages if isinstance(messages, str) else json.dumps(messages)
    assert classify_failure(status, body, text, html=False).verdict is verdict


def test_the_simulator_checks_sends_with_the_contract_schema() -> None:
    contract = json.loads((CONTRACT / "sendtext.schema.json").read_text(encoding="utf-8"))
    assert contract["schema"] == SENDTEXT_SCHEMA


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        ({"number": "5531980000006", "text": "Oi"}, []),
        ({"number": "5531980000006", "text": "Oi", "delay": 1200}, []),
        ({"number": "5531980000006"}, ['requires property "text"']),
        ({"number": 5531980000006, "text": "Oi"}, ["Invalid format"]),
        ({"number": "1", "text": "Oi", "delay": 1.5}, ["Enter a value in milliseconds"]),
        ({"number": "1", "text": "Oi", "delay": True}, ["Enter a value in milliseconds"]),
        (
            {"number": "1", "text": "Oi", "mentioned": ["x"]},
            ['"mentioned" must be an array of numeric strings'],
        ),
    ],
)
def test_schema_errors(body: dict[str, Any], errors: list[str]) -> None:
    found = schema_errors(body, SENDTEXT_SCHEMA)
    assert len(found) == len(errors)
    for message, expected in zip(found, errors, strict=True):
        assert expected in message
