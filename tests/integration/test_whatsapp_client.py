"""WhatsAppClient against the simulator over real loopback HTTP: whose fault each failure is."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr

from consumer.devtools.simulator import Faults, SendFaultKind, Simulator
from consumer.errors import (
    FatalError,
    InboxUnavailableError,
    InvalidConfigError,
    InvalidLeadError,
    ProviderRejectedError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    RateLimitedError,
    ReconcileUnavailableError,
    SendOutcomeUnknownError,
)
from consumer.runtime.whatsapp import WhatsAppClient, typing_delay_ms
from consumer.settings import Settings

API_KEY = "evo-test-secret-key"
INBOX = "inbox-1"
DEAD = "inbox-dead"
NUMBER = "5511987654321"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    faults = Faults(
        hang_s=5.0, dead_socket_instances=frozenset({DEAD}), disconnected_instances=frozenset({"inbox-off"})
    )
    async with Simulator(faults=faults, whatsapp_api_key=API_KEY) as simulator:
        yield simulator


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


MakeClient = Callable[..., WhatsAppClient]


@pytest.fixture
def make_client(sim: Simulator, session: aiohttp.ClientSession) -> MakeClient:
    def make(**overrides: Any) -> WhatsAppClient:
        options: dict[str, Any] = {
            "session": session,
            "base_url": sim.whatsapp_base_url,
            "api_key": API_KEY,
            "send_timeout_s": 2.0,
            "state_ttl_s": 10.0,
            "breaker_failures": 2,
            "breaker_cooldown_s": 15.0,
        }
        options.update(overrides)
        return WhatsAppClient(**options)

    return make


async def send(
    client: WhatsAppClient, *, instance: str = INBOX, text: str = "Hello!", delay_ms: int = 0
) -> Any:
    return await client.send_text(instance=instance, number=NUMBER, text=text, delay_ms=delay_ms)


# --- connection state -------------------------------------------------------------------------


async def test_connected_state_is_cached_for_the_ttl(make_client: MakeClient, sim: Simulator) -> None:
    clock = FakeClock()
    client = make_client(clock=clock, state_ttl_s=10.0)
    for _ in range(5):
        await client.ensure_connected(INBOX)
    assert sim.state_request_count(INBOX) == 1

    clock.now += 10
    await client.ensure_connected(INBOX)
    assert sim.state_request_count(INBOX) == 2


async def test_a_batch_asking_at_once_makes_one_state_request(
    make_client: MakeClient, sim: Simulator
) -> None:
    sim.set_faults(state_latency_s=0.05)
    client = make_client()
    await asyncio.gather(*(client.ensure_connected(INBOX) for _ in range(20)))
    assert sim.state_request_count(INBOX) == 1


async def test_a_zero_ttl_asks_every_time(make_client: MakeClient, sim: Simulator) -> None:
    client = make_client(state_ttl_s=0.0)
    for _ in range(3):
        await client.ensure_connected(INBOX)
    assert sim.state_request_count(INBOX) == 3


async def test_invalidate_forces_a_fresh_state_request(make_client: MakeClient, sim: Simulator) -> None:
    client = make_client()
    await client.ensure_connected(INBOX)
    client.invalidate(INBOX)
    await client.ensure_connected(INBOX)
    assert sim.state_request_count(INBOX) == 2


@pytest.mark.parametrize("state", ["close", "connecting"])
async def test_an_instance_that_is_not_open_is_unavailable(
    make_client: MakeClient, sim: Simulator, state: Any
) -> None:
    sim.fail_next_state(state)
    with pytest.raises(InboxUnavailableError, match=state):
        await make_client().ensure_connected(INBOX)


async def test_a_disconnected_instance_is_unavailable_and_remembered(
    make_client: MakeClient, sim: Simulator
) -> None:
    client = make_client()
    for _ in range(3):
        with pytest.raises(InboxUnavailableError, match="close"):
            await client.ensure_connected("inbox-off")
    assert sim.state_request_count("inbox-off") == 1


async def test_an_unknown_instance_is_a_config_error(make_client: MakeClient) -> None:
    with pytest.raises(InvalidConfigError, match="unknown-inbox"):
        await make_client().ensure_connected("unknown-inbox")


async def test_a_wrong_key_on_the_state_endpoint_is_fatal(make_client: MakeClient) -> None:
    with pytest.raises(FatalError) as raised:
        await make_client(api_key="wrong-key").ensure_connected(INBOX)
    assert "wrong-key" not in str(raised.value)


async def test_a_failing_state_endpoint_makes_the_inbox_unavailable_for_the_ttl(
    make_client: MakeClient, sim: Simulator
) -> None:
    sim.fail_next_state("500")
    client = make_client()
    for _ in range(2):
        with pytest.raises(InboxUnavailableError, match="500"):
            await client.ensure_connected(INBOX)
    assert sim.state_request_count(INBOX) == 1


async def test_a_hanging_state_endpoint_times_out_as_unavailable(
    make_client: MakeClient, sim: Simulator
) -> None:
    sim.fail_next_state("hang")
    with pytest.raises(InboxUnavailableError, match="timed out"):
        await make_client(send_timeout_s=0.2).ensure_connected(INBOX)


# --- sending ------------------------------------------------------------------------------------


async def test_a_send_returns_the_gateway_receipt_and_is_recorded(
    make_client: MakeClient, sim: Simulator
) -> None:
    receipt = await send(make_client(), text="Oi Ana!")

    [sent] = sim.sends
    assert receipt.message_id == sent.message_id
    assert receipt.status == "PENDING"
    assert (sent.instance, sent.number, sent.text, sent.delay_ms) == (INBOX, NUMBER, "Oi Ana!", 0)


async def test_the_send_timeout_covers_the_typing_delay(make_client: MakeClient, sim: Simulator) -> None:
    # The gateway holds the call for the typing delay, 2.5 times the send timeout: it only
    # succeeds because the client's timeout is the send timeout *plus* the delay, which
    # leaves the send timeout itself (1 s) as slack for a loaded machine.
    timeout_s, delay_ms = 1.0, 2500
    client = make_client(send_timeout_s=timeout_s)
    await send(client, delay_ms=delay_ms)
    assert delay_ms / 1000 > timeout_s
    assert sim.sends[0].delay_ms == delay_ms


async def test_from_settings_uses_the_configured_url_and_key(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    settings = Settings(whatsapp_base_url=sim.whatsapp_base_url, whatsapp_api_key=SecretStr(API_KEY))
    client = WhatsAppClient.from_settings(settings, session)
    await client.ensure_connected(INBOX)
    await send(client)
    assert len(sim.sends) == 1


async def test_a_number_not_on_whatsapp_is_the_leads_fault_and_is_masked(
    make_client: MakeClient, sim: Simulator
) -> None:
    sim.set_faults(reject_phones={NUMBER})
    with pytest.raises(InvalidLeadError) as raised:
        await send(make_client())
    assert NUMBER not in str(raised.value)
    assert "4321" in str(raised.value)
    assert sim.sends == []


@pytest.mark.parametrize("kind", ["400", "422"])
async def test_other_bad_requests_are_rejections(
    make_client: MakeClient, sim: Simulator, kind: SendFaultKind
) -> None:
    sim.fail_next_send(kind)
    with pytest.raises(ProviderRejectedError, match=kind):
        await send(make_client())


@pytest.mark.parametrize("kind", ["401", "403"])
async def test_auth_errors_are_fatal(make_client: MakeClient, sim: Simulator, kind: SendFaultKind) -> None:
    sim.fail_next_send(kind)
    with pytest.raises(FatalError) as raised:
        await send(make_client())
    assert API_KEY not in str(raised.value)


async def test_a_wrong_key_is_fatal(make_client: MakeClient) -> None:
    with pytest.raises(FatalError, match="401"):
        await send(make_client(api_key="wrong-key"))


async def test_an_unknown_instance_on_send_is_a_config_error(make_client: MakeClient) -> None:
    with pytest.raises(InvalidConfigError):
        await send(make_client(), instance="unknown-x")


async def test_429_is_a_rate_limit_with_its_retry_after(make_client: MakeClient, sim: Simulator) -> None:
    sim.fail_next_send("429", retry_after_s=6)
    with pytest.raises(RateLimitedError) as raised:
        await send(make_client())
    assert raised.value.retry_after_s == 6


@pytest.mark.parametrize("kind", ["500", "502_html"])
async def test_gateway_errors_are_temporary_and_do_not_blame_the_inbox(
    make_client: MakeClient, sim: Simulator, kind: SendFaultKind
) -> None:
    client = make_client(breaker_failures=1)
    sim.fail_next_send(kind)
    with pytest.raises(ProviderUnavailableError, match=kind[:3]):
        await send(client)
    assert client.breaker_states() == {INBOX: "closed"}


async def test_a_hanging_send_times_out(make_client: MakeClient, sim: Simulator) -> None:
    sim.fail_next_send("hang")
    with pytest.raises(ProviderTimeoutError):
        await send(make_client(send_timeout_s=0.2))
    assert sim.sends == []


async def test_a_timeout_after_the_gateway_accepted_is_still_a_timeout(
    make_client: MakeClient, sim: Simulator
) -> None:
    # The ambiguous case the worker must account for: we cannot tell it was sent.
    sim.fail_next_send("hang_after_accept")
    with pytest.raises(ProviderTimeoutError):
        await send(make_client(send_timeout_s=0.2))
    assert len(sim.sends) == 1


async def test_an_unreachable_gateway_is_unavailable(session: aiohttp.ClientSession) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = WhatsAppClient(session=session, base_url=f"http://127.0.0.1:{port}", api_key=API_KEY)
    with pytest.raises(ProviderUnavailableError, match="unreachable"):
        await send(client)


# --- dead sockets and the per-instance breaker ------------------------------------------------------


async def test_a_dead_socket_is_the_inbox_fault_and_opens_only_that_inbox_breaker(
    make_client: MakeClient, sim: Simulator
) -> None:
    clock = FakeClock()
    client = make_client(clock=clock, breaker_failures=2, breaker_cooldown_s=15.0)
    await client.ensure_connected(DEAD)  # the gateway says "open"…
    with pytest.raises(InboxUnavailableError, match="Connection Closed"):
        await send(client, instance=DEAD)  # …but the socket is gone
    await client.ensure_connected(DEAD)  # the failure dropped the cached state: asked again
    assert sim.state_request_count(DEAD) == 2
    with pytest.raises(InboxUnavailableError, match="Connection Closed"):
        await send(client, instance=DEAD)
    await send(client, instance=INBOX)

    assert client.breaker_states() == {DEAD: "open", INBOX: "closed"}
    sends_before = sim.stats()["send"]["requests"]
    with pytest.raises(InboxUnavailableError) as from_send:
        await send(client, instance=DEAD)
    with pytest.raises(InboxUnavailableError) as from_state:
        await client.ensure_connected(DEAD)
    assert from_send.value.retry_after_s == pytest.approx(15.0)
    assert from_state.value.retry_after_s == pytest.approx(15.0)
    assert sim.stats()["send"]["requests"] == sends_before


async def test_after_the_cooldown_one_good_send_closes_the_inbox_breaker(
    make_client: MakeClient, sim: Simulator
) -> None:
    clock = FakeClock()
    client = make_client(clock=clock, breaker_failures=1, breaker_cooldown_s=15.0)
    with pytest.raises(InboxUnavailableError):
        await send(client, instance=DEAD)
    sim.set_faults(dead_socket_instances=set())  # the operator reconnected it
    clock.now += 15
    assert client.breaker_states() == {DEAD: "half_open"}

    await send(client, instance=DEAD)

    assert client.breaker_states() == {DEAD: "closed"}


async def test_a_rejected_trial_send_does_not_wedge_the_breaker_half_open(
    make_client: MakeClient, sim: Simulator
) -> None:
    clock = FakeClock()
    client = make_client(clock=clock, breaker_failures=1, breaker_cooldown_s=15.0)
    with pytest.raises(InboxUnavailableError):
        await send(client, instance=DEAD)
    sim.set_faults(dead_socket_instances=set(), reject_phones={NUMBER})
    clock.now += 15
    with pytest.raises(InvalidLeadError):
        await send(client, instance=DEAD)
    sim.set_faults(reject_phones=set())
    await send(client, instance=DEAD)  # the next caller may be the trial at once
    assert client.breaker_states() == {DEAD: "closed"}


# --- typing delay (pure) ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected_ms"),
    [
        ("", 0),
        ("   ", 0),
        ("one", 150),  # 1 word / 400 wpm = 0.15 s
        ("one two three four five six seven eight nine ten", 1500),
        (" ".join(["word"] * 20), 3000),  # exactly the cap
        (" ".join(["word"] * 500), 3000),  # capped
    ],
)
def test_typing_delay_is_words_over_wpm_capped(text: str, expected_ms: int) -> None:
    assert typing_delay_ms(text, words_per_minute=400, cap_s=3.0) == expected_ms


def test_typing_delay_follows_the_configured_speed_and_cap() -> None:
    text = " ".join(["word"] * 10)
    assert typing_delay_ms(text, words_per_minute=200, cap_s=10.0) == 3000
    assert typing_delay_ms(text, words_per_minute=200, cap_s=0.0) == 0


# --- reconciling uncertain sends (findMessages) ------------------------------------------------


async def test_a_timeout_after_acceptance_is_an_uncertain_send(
    make_client: MakeClient, sim: Simulator
) -> None:
    sim.fail_next_send("hang_after_accept")
    with pytest.raises(SendOutcomeUnknownError):
        await send(make_client(send_timeout_s=0.2))


async def test_find_sent_finds_our_copy_and_nothing_else(make_client: MakeClient, sim: Simulator) -> None:
    client = make_client()
    before = time.time()
    await send(client, text="Oi Ana! First bubble.")
    await client.send_text(instance=INBOX, number="5511900000000", text="Other lead", delay_ms=0)

    assert await client.find_sent(
        instance=INBOX, number=NUMBER, text="Oi Ana! First bubble.", since_epoch_s=before
    )
    assert not await client.find_sent(instance=INBOX, number=NUMBER, text="Other lead", since_epoch_s=before)
    assert not await client.find_sent(
        instance="inbox-2", number=NUMBER, text="Oi Ana! First bubble.", since_epoch_s=before
    )
    # sent long before the attempt began (beyond the clock-skew allowance): not this attempt's copy
    assert not await client.find_sent(
        instance=INBOX, number=NUMBER, text="Oi Ana! First bubble.", since_epoch_s=before + 3600
    )


async def test_find_sent_reads_further_pages(make_client: MakeClient, sim: Simulator) -> None:
    client = make_client()
    before = time.time()
    await send(client, text="the oldest bubble")
    for n in range(60):  # more than one page (50) of newer messages in the same chat
        await send(client, text=f"newer bubble {n}")
    assert await client.find_sent(
        instance=INBOX, number=NUMBER, text="the oldest bubble", since_epoch_s=before
    )
    assert sim.stats()["find"]["requests"] == 2


async def test_a_gateway_that_cannot_list_messages_is_unavailable_not_absent(
    make_client: MakeClient, sim: Simulator
) -> None:
    client = make_client(reconcile_timeout_s=0.2)
    sim.set_faults(hang_s=2.0)
    for kind in ("500", "hang", "bad_json"):
        sim.fail_next_find(kind)
        with pytest.raises(ReconcileUnavailableError):
            await client.find_sent(instance=INBOX, number=NUMBER, text="x", since_epoch_s=0)
