"""Evolution 2.3's webhooks as it sends them (issue 21, point 4), on a real PostgreSQL: the
secret in the path (global webhook), with the webhookByEvents suffix, or in a per-instance
webhook's headers (apikey, Bearer, HS256 JWT from `jwt_key`); opt-outs by every number form
and by `remoteJidAlt` for LID senders; a wrong secret changes nothing."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from consumer.devtools.seeding import Seeder
from consumer.devtools.simulator.evolution_contract import inbound_message_event
from consumer.ops.console import auth
from consumer.ops.console.app import ConsoleConfig, create_app
from consumer.ops.console.store import Store
from consumer.ops.console.webhook import jwt_hs256_ok
from consumer.settings import DEFAULT_MODEL_PRICES

SECRET = "evo-hook-secret-0123456789"  # noqa: S105 (test secret)
HOOK = "/webhooks/evolution"
EVENTS: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parents[1] / "contract" / "evolution" / "webhook_events.json").read_text(
        encoding="utf-8"
    )
)["events"]


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[TestClient[Any, Any]]:
    store = Store(database_url, prices=DEFAULT_MODEL_PRICES)
    config = ConsoleConfig(
        tokens=auth.Tokens(admin="admin-0123456789"), webhook_secret=SECRET, sample_interval_s=5
    )
    async with TestClient(TestServer(create_app(store, config))) as test_client:
        yield test_client


def jwt(secret: str, payload: dict[str, Any], alg: str = "HS256") -> str:
    """What Evolution's generateJwtToken sends (jsonwebtoken, HS256)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = b64(json.dumps(payload).encode())
    signature = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"


def opted_out(db: psycopg.Connection[Any]) -> list[str]:
    return sorted(str(r[0]) for r in db.execute("SELECT phone FROM leads WHERE opted_out_at IS NOT NULL"))


def event(name: str, instance: str) -> dict[str, Any]:
    body: dict[str, Any] = copy.deepcopy(EVENTS[name])
    body["instance"] = instance
    return body


async def test_every_way_evolution_can_carry_the_secret_opts_the_right_leads_out(
    client: TestClient[Any, Any], db: psycopg.Connection[Any], seed: Seeder
) -> None:
    phones = [
        "+5531980000006",
        "+5531980000007",
        "+55 11 90000-0003",
        "+55 11 90000-0004",
        "+55 11 90000-0005",
    ]
    seed.campaign(5, instance="inbox-br", phones=phones)
    now = int(time.time())
    token = jwt(SECRET, {"iat": now, "exp": now + 600, "app": "evolution", "action": "webhook"})
    deliveries = [
        # global webhook, secret in the path: 553180000006 is createJid's form of +5531980000006
        (f"{HOOK}/{SECRET}", {}, event("messages_upsert", "inbox-br")),
        # LID sender: the phone is in remoteJidAlt
        (f"{HOOK}/{SECRET}/messages-upsert", {}, event("messages_upsert_lid", "inbox-br")),
        (HOOK, {"apikey": SECRET}, inbound_message_event("inbox-br", "5511900000003", "PARE")),
        (
            HOOK,
            {"Authorization": f"Bearer {SECRET}"},
            inbound_message_event("inbox-br", "5511900000004", "sair"),
        ),
        (
            HOOK,
            {"Authorization": f"Bearer {token}"},
            inbound_message_event("inbox-br", "5511900000005", "stop", lid=True),
        ),
    ]
    for path, headers, body in deliveries:
        response = await client.post(path, json=body, headers=headers)
        assert response.status == 200, (path, await response.text())
        assert (await response.json())["opted_out"] == 1, path
    assert opted_out(db) == sorted(phones)


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        (f"{HOOK}/wrong-secret", {}),
        (f"{HOOK}/wrong-secret/messages-upsert", {}),
        (HOOK, {}),
        (HOOK, {"apikey": "wrong"}),
        (HOOK, {"Authorization": "Bearer wrong"}),
        (HOOK, {"Authorization": f"Bearer {jwt('not-the-secret', {'exp': int(time.time()) + 600})}"}),
        (HOOK, {"Authorization": f"Bearer {jwt(SECRET, {'exp': int(time.time()) - 3600})}"}),  # expired
        (HOOK, {"Authorization": f"Bearer {jwt(SECRET, {}, alg='none')}"}),
    ],
)
async def test_a_wrong_secret_is_a_401_and_changes_nothing(
    client: TestClient[Any, Any],
    db: psycopg.Connection[Any],
    seed: Seeder,
    path: str,
    headers: dict[str, str],
) -> None:
    seed.campaign(1, instance="inbox-br", phones=["+5531980000006"])
    body = event("messages_upsert", "inbox-br")
    body["apikey"] = SECRET  # the body's apikey is the instance's token: never accepted as the secret
    response = await client.post(path, json=body, headers=headers)
    assert response.status == 401
    assert opted_out(db) == []
    assert (await (await client.get("/healthz")).json())["webhooks_refused"] == 1


async def test_events_we_do_not_use_and_non_phone_senders_are_acknowledged(
    client: TestClient[Any, Any], db: psycopg.Connection[Any], seed: Seeder
) -> None:
    campaign = seed.campaign(1, instance="inbox-br", phones=["+5531980000006"])
    for name in ("messages_upsert_status_broadcast", "messages_update"):
        response = await client.post(f"{HOOK}/{SECRET}", json=event(name, "inbox-br"))
        assert response.status == 200
    lid_only = event("messages_upsert_lid", "inbox-br")
    del lid_only["data"]["key"]["remoteJidAlt"]
    assert (await client.post(f"{HOOK}/{SECRET}", json=lid_only)).status == 200
    assert opted_out(db) == []
    response = await client.post(
        f"{HOOK}/{SECRET}/connection-update", json=event("connection_update", "inbox-br")
    )
    assert (await response.json())["inboxes"] == 1
    state = db.execute("SELECT connection_state FROM inboxes WHERE id = %s", (campaign.inbox_id,)).fetchone()
    assert state == ("close",)
    assert (await client.post(f"{HOOK}/{SECRET}", data=b"[" * 5000)).status == 400


async def test_an_older_connection_update_never_overwrites_a_newer_one(
    client: TestClient[Any, Any], db: psycopg.Connection[Any], seed: Seeder
) -> None:
    """Deliveries arrive out of order (Evolution retries, several replicas): the state kept is
    the one the gateway reported last by its own `date_time`, not the one that came last."""
    campaign = seed.campaign(1, instance="inbox-br", phones=["+5531980000006"])

    async def report(state: str, date_time: str | None) -> int:
        body = event("connection_update", "inbox-br")
        body["data"]["state"] = state
        if date_time is None:
            body.pop("date_time", None)
        else:
            body["date_time"] = date_time
        response = await client.post(f"{HOOK}/{SECRET}/connection-update", json=body)
        assert response.status == 200, await response.text()
        return int((await response.json())["inboxes"])

    def state() -> tuple[Any, ...] | None:
        return db.execute(
            "SELECT connection_state, connection_state_at FROM inboxes WHERE id = %s", (campaign.inbox_id,)
        ).fetchone()

    assert await report("open", "2026-12-08T00:02:00.000Z") == 1
    assert await report("close", "2026-12-08T00:01:00.000Z") == 0  # older: ignored
    assert state() is not None and state()[0] == "open"  # type: ignore[index]
    assert await report("connecting", "2026-12-08T00:03:00Z") == 1
    assert await report("open", "not a date") == 1  # no readable time: now, later than all
    assert await report("close", "2099-01-01T00:00:00Z") == 1  # a clock ahead is clamped to now
    assert await report("open", None) == 1  # so the next state is not frozen out
    assert state()[0] == "open"  # type: ignore[index]


def test_jwt_checks() -> None:
    now = time.time()
    assert jwt_hs256_ok(jwt(SECRET, {"exp": now + 10}), SECRET, now_epoch_s=now)
    assert jwt_hs256_ok(jwt(SECRET, {}), SECRET, now_epoch_s=now)  # exp is optional
    assert not jwt_hs256_ok(jwt(SECRET, {"exp": "soon"}), SECRET, now_epoch_s=now)
    assert not jwt_hs256_ok(jwt(SECRET, {"nbf": now + 3600}), SECRET, now_epoch_s=now)
    assert not jwt_hs256_ok("a.b", SECRET, now_epoch_s=now)
    assert not jwt_hs256_ok("a.b.c", SECRET, now_epoch_s=now)
    assert not jwt_hs256_ok("é.é.é", SECRET, now_epoch_s=now)
