"""AIClient against the simulator over real loopback HTTP: every status mapping and guard."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr

from consumer.devtools.simulator import AIFaultKind, Faults, Simulator
from consumer.errors import (
    CircuitOpenError,
    ContentBlockedError,
    FatalError,
    InvalidAIOutputError,
    ProviderOverloadedError,
    ProviderRejectedError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    RateLimitedError,
)
from consumer.runtime.ai import AIClient, Completion, parse_retry_after_s, rate_limiter_for
from consumer.settings import Settings

API_KEY = "sk-test-very-secret-key-123"
MODEL = "openai/gpt-4o-mini"


class FakeClock:
    """Monotonic time that only moves when a test says so (breaker cooldowns without sleeping)."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(faults=Faults(hang_s=5.0, seed=7), ai_api_key=API_KEY) as simulator:
        yield simulator


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


MakeClient = Callable[..., AIClient]


@pytest.fixture
def make_client(sim: Simulator, session: aiohttp.ClientSession) -> MakeClient:
    def make(**overrides: Any) -> AIClient:
        options: dict[str, Any] = {
            "session": session,
            "base_url": sim.ai_base_url,
            "api_key": API_KEY,
            "requests_per_minute": 60_000,
            "timeout_s": 2.0,
            "split_timeout_s": 2.0,
            "breaker_failures": 5,
            "breaker_cooldown_s": 30.0,
        }
        options.update(overrides)
        return AIClient(**options)

    return make


async def generate(client: AIClient, prompt: str = "Lead name: Ana") -> Completion:
    return await client.generate(
        model=MODEL, system_prompt="Write a WhatsApp message.", user_prompt=prompt, max_tokens=321
    )


# --- success -------------------------------------------------------------------------------


async def test_generate_returns_content_usage_cost_and_sends_max_tokens(
    make_client: MakeClient, sim: Simulator
) -> None:
    completion = await generate(make_client(), "Lead name: joana\nInterest: yoga")

    assert "Joana" in completion.content
    assert completion.model == MODEL
    assert completion.usage.prompt_tokens > 0
    assert completion.usage.completion_tokens > 0
    assert (
        completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    assert completion.usage.cost_usd is not None and completion.usage.cost_usd > 0
    assert completion.latency_ms >= 0
    [request] = sim.ai_requests
    assert request.kind == "generate"
    assert request.max_tokens == 321
    assert [m["role"] for m in request.body["messages"]] == ["system", "user"]


async def test_missing_usage_counts_zero_tokens_and_unknown_cost(
    make_client: MakeClient, sim: Simulator
) -> None:
    sim.fail_next_ai("no_usage")
    completion = await generate(make_client())
    assert (completion.usage.prompt_tokens, completion.usage.total_tokens, completion.usage.cost_usd) == (
        0,
        0,
        None,
    )


async def test_split_asks_for_strict_json_parts_and_returns_the_raw_json(
    make_client: MakeClient, sim: Simulator
) -> None:
    text = "Hi Ana! First paragraph here.\n\nSecond paragraph.\n\nThird paragraph."
    completion = await make_client().split(model=MODEL, text=text, max_parts=2, max_chars=500, max_tokens=700)

    assert json.loads(completion.content) == {
        "parts": ["Hi Ana! First paragraph here.", "Second paragraph.\n\nThird paragraph."]
    }
    [request] = sim.ai_requests
    assert request.kind == "split"
    assert request.max_tokens == 700
    response_format = request.body["response_format"]
    assert response_format["type"] == "json_schema"
    assert response_format["json_schema"]["name"] == "whatsapp_parts"
    assert response_format["json_schema"]["strict"] is True
    parts_schema = response_format["json_schema"]["schema"]["properties"]["parts"]
    assert parts_schema["type"] == "array"
    assert parts_schema["items"] == {"type": "string"}
    assert parts_schema["maxItems"] == 2


async def test_from_settings_uses_the_configured_url_and_key(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    settings = Settings(ai_base_url=sim.ai_base_url, ai_api_key=SecretStr(API_KEY))
    client = AIClient.from_settings(settings, session)
    assert (await generate(client)).content


# --- status mapping --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["400", "404", "413", "422"])
async def test_client_errors_are_rejections_carrying_the_provider_message(
    make_client: MakeClient, sim: Simulator, kind: AIFaultKind
) -> None:
    sim.fail_next_ai(kind)
    with pytest.raises(ProviderRejectedError, match=f"Simulated provider error {kind}"):
        await generate(make_client())


@pytest.mark.parametrize("kind", ["401", "402"])
async def test_auth_and_credit_errors_are_fatal_and_never_show_the_key(
    make_client: MakeClient, sim: Simulator, kind: AIFaultKind
) -> None:
    sim.fail_next_ai(kind)
    with pytest.raises(FatalError) as raised:
        await generate(make_client())
    assert kind in str(raised.value)
    assert API_KEY not in str(raised.value)


async def test_a_wrong_key_is_fatal(make_client: MakeClient) -> None:
    with pytest.raises(FatalError, match="401"):
        await generate(make_client(api_key="sk-wrong"))


@pytest.mark.parametrize("kind", ["408", "409", "500", "502", "503"])
async def test_timeouts_conflicts_and_server_errors_are_temporary(
    make_client: MakeClient, sim: Simulator, kind: AIFaultKind
) -> None:
    sim.fail_next_ai(kind)
    with pytest.raises(ProviderUnavailableError, match=kind):
        await generate(make_client())


@pytest.mark.parametrize("form", ["seconds", "ms", "http_date"])
async def test_a_503_retry_after_is_honoured_like_a_429(
    make_client: MakeClient, sim: Simulator, form: Any
) -> None:
    # OpenRouter documents Retry-After on 503 as on 429 (errors-and-debugging.mdx, issue 21)
    sim.fail_next_ai("503", retry_after_s=7, retry_after_form=form)
    client = make_client()
    with pytest.raises(ProviderOverloadedError, match="503") as raised:
        await generate(client)
    assert isinstance(raised.value, RateLimitedError) and raised.value.error_class == "provider_overloaded"
    assert raised.value.retry_after_s is not None and 5 < raised.value.retry_after_s <= 7
    assert 5 < client.cooldown_remaining_s() <= 7
    with pytest.raises(RateLimitedError, match="cooling down"):
        await generate(client)  # no request made while cooling down, exactly as after a 429


async def test_a_503_without_retry_after_stays_a_plain_temporary_error(
    make_client: MakeClient, sim: Simulator
) -> None:
    sim.fail_next_ai("503")
    client = make_client()
    with pytest.raises(ProviderUnavailableError, match="503") as raised:
        await generate(client)
    assert not isinstance(raised.value, RateLimitedError)
    assert client.cooldown_remaining_s() == 0


@pytest.mark.parametrize("kind", ["moderation_403", "guardrail_403"])
async def test_a_moderation_or_guardrail_403_blocks_that_request_only(
    make_client: MakeClient, sim: Simulator, kind: AIFaultKind
) -> None:
    client = make_client()
    for _ in range(5):  # never fatal, however many leads are flagged
        sim.fail_next_ai(kind)
        with pytest.raises(ContentBlockedError) as raised:
            await generate(client)
        assert raised.value.reasons and "reasons:" in str(raised.value)
    assert (await generate(client)).content


async def test_plain_403s_on_different_requests_in_a_row_are_fatal(
    make_client: MakeClient, sim: Simulator
) -> None:
    client = make_client()
    sim.fail_next_ai("403", times=5)
    for lead in ("Ana", "Ana", "Bia"):  # two different requests: the lead's trouble, maybe
        with pytest.raises(ProviderUnavailableError, match="403"):
            await client.generate(model=MODEL, system_prompt="s", user_prompt=lead, max_tokens=64)
    with pytest.raises(FatalError, match="403"):  # a third different request: the key's
        await client.generate(model=MODEL, system_prompt="s", user_prompt="Caio", max_tokens=64)


async def test_a_success_between_plain_403s_resets_the_streak(
    make_client: MakeClient, sim: Simulator
) -> None:
    client = make_client()
    for lead in ("A", "B", "C", "D"):
        sim.fail_next_ai("403")
        with pytest.raises(ProviderUnavailableError):
            await client.generate(model=MODEL, system_prompt="s", user_prompt=lead, max_tokens=64)
        await generate(client)


@pytest.mark.parametrize(
    "kind", ["error_body", "choice_error", "finish_error", "no_choices", "empty", "not_json"]
)
async def test_a_200_that_is_really_a_failure_is_invalid_output(
    make_client: MakeClient, sim: Simulator, kind: AIFaultKind
) -> None:
    sim.fail_next_ai(kind)
    with pytest.raises(InvalidAIOutputError):
        await generate(make_client())


async def test_a_hanging_provider_times_out(make_client: MakeClient, sim: Simulator) -> None:
    sim.fail_next_ai("hang")
    started = time.monotonic()
    with pytest.raises(ProviderTimeoutError, match=r"0\.2s"):
        await generate(make_client(timeout_s=0.2))
    assert time.monotonic() - started < 2.0  # the simulator hangs for 5 s


async def test_split_uses_its_own_timeout(make_client: MakeClient, sim: Simulator) -> None:
    sim.fail_next_ai("hang", only="split")
    client = make_client(timeout_s=5.0, split_timeout_s=0.2)
    with pytest.raises(ProviderTimeoutError, match=r"0\.2s"):
        await client.split(model=MODEL, text="Hello there.", max_parts=2, max_chars=100, max_tokens=100)


async def test_an_unreachable_provider_is_unavailable(session: aiohttp.ClientSession) -> None:
    with socket.socket() as probe:  # a port nobody listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = AIClient(
        session=session, base_url=f"http://127.0.0.1:{port}/v1", api_key=API_KEY, requests_per_minute=60
    )
    with pytest.raises(ProviderUnavailableError, match="unreachable"):
        await generate(client)


# --- rate limits and the shared cooldown --------------------------------------------------------


@pytest.mark.parametrize(
    ("form", "asked_s", "expected_s", "tolerance_s"),
    [
        ("seconds", 7, 7.0, 0.01),
        ("http_date", 9, 9.0, 1.0),
        ("ms", 1.5, 1.5, 0.01),
        ("none", None, 5.0, 0.01),
    ],
)
async def test_429_sets_a_cooldown_from_retry_after_in_every_form(
    make_client: MakeClient,
    sim: Simulator,
    form: Any,
    asked_s: float | None,
    expected_s: float,
    tolerance_s: float,
) -> None:
    sim.fail_next_ai("429", retry_after_s=asked_s, retry_after_form=form)
    client = make_client()
    with pytest.raises(RateLimitedError) as raised:
        await generate(client)
    assert raised.value.retry_after_s == pytest.approx(expected_s, abs=tolerance_s)
    assert client.cooldown_remaining_s() == pytest.approx(expected_s, abs=tolerance_s + 0.2)


async def test_retry_after_is_capped(make_client: MakeClient, sim: Simulator) -> None:
    sim.fail_next_ai("429", retry_after_s=3600)
    with pytest.raises(RateLimitedError) as raised:
        await generate(make_client(max_retry_after_s=60))
    assert raised.value.retry_after_s == 60


async def test_in_flight_budget_402_is_a_rate_limit_not_fatal(
    make_client: MakeClient, sim: Simulator
) -> None:
    sim.fail_next_ai("402_in_flight", retry_after_s=4)
    client = make_client()
    with pytest.raises(RateLimitedError) as raised:
        await generate(client)
    assert raised.value.retry_after_s == 4
    assert client.cooldown_remaining_s() > 3


async def test_during_a_long_cooldown_calls_fail_fast_without_reaching_the_provider(
    make_client: MakeClient, sim: Simulator
) -> None:
    sim.fail_next_ai("429", retry_after_s=10)
    client = make_client()
    with pytest.raises(RateLimitedError):
        await generate(client)

    results = await asyncio.gather(generate(client), generate(client), return_exceptions=True)

    for result in results:
        assert isinstance(result, RateLimitedError)
        assert result.retry_after_s is not None and 9 < result.retry_after_s <= 10
    assert sim.ai_request_count == 1


async def test_a_short_cooldown_is_waited_out_and_no_request_goes_out_meanwhile(
    make_client: MakeClient, sim: Simulator
) -> None:
    sim.fail_next_ai("429", retry_after_s=0.3)
    client = make_client()
    with pytest.raises(RateLimitedError):
        await generate(client)

    first, second = await asyncio.gather(generate(client), generate(client))

    assert first.content and second.content
    rate_limited, *retries = sim.ai_requests
    assert [r.outcome for r in sim.ai_requests] == ["429", "ok", "ok"]
    assert all(r.monotonic_s - rate_limited.monotonic_s >= 0.29 for r in retries)


async def test_rate_limits_and_rejections_do_not_trip_the_breaker(
    make_client: MakeClient, sim: Simulator
) -> None:
    client = make_client(breaker_failures=1)
    sim.fail_next_ai("429", retry_after_s=0)
    with pytest.raises(RateLimitedError):
        await generate(client)
    sim.fail_next_ai("400")
    with pytest.raises(ProviderRejectedError):
        await generate(client)
    sim.fail_next_ai("409")
    with pytest.raises(ProviderUnavailableError):
        await generate(client)
    assert client.breaker_state == "closed"


# --- circuit breaker ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["500", "503", "hang", "empty", "error_body"])
async def test_outages_timeouts_and_invalid_200s_trip_the_breaker(
    make_client: MakeClient, sim: Simulator, kind: AIFaultKind
) -> None:
    client = make_client(breaker_failures=1, timeout_s=0.2)
    sim.fail_next_ai(kind)
    with pytest.raises((ProviderUnavailableError, ProviderTimeoutError, InvalidAIOutputError)):
        await generate(client)
    assert client.breaker_state == "open"


async def test_an_open_breaker_refuses_without_a_request_then_lets_one_trial_close_it(
    make_client: MakeClient, sim: Simulator
) -> None:
    clock = FakeClock()
    client = make_client(breaker_failures=2, breaker_cooldown_s=30.0, clock=clock)
    sim.fail_next_ai("502", times=2)
    for _ in range(2):
        with pytest.raises(ProviderUnavailableError):
            await generate(client)
    assert client.breaker_state == "open"

    clock.now += 10
    with pytest.raises(CircuitOpenError) as raised:
        await generate(client)
    assert raised.value.retry_after_s == pytest.approx(20.0)
    assert sim.ai_request_count == 2

    clock.now += 20
    assert client.breaker_state == "half_open"
    assert (await generate(client)).content
    assert client.breaker_state == "closed"
    assert sim.ai_request_count == 3


async def test_half_open_lets_exactly_one_concurrent_call_through(
    make_client: MakeClient, sim: Simulator
) -> None:
    clock = FakeClock()
    client = make_client(breaker_failures=1, breaker_cooldown_s=30.0, clock=clock)
    sim.fail_next_ai("500")
    with pytest.raises(ProviderUnavailableError):
        await generate(client)
    clock.now += 30
    sim.set_faults(ai_latency_s=0.1)

    results = await asyncio.gather(*(generate(client) for _ in range(3)), return_exceptions=True)

    assert sum(isinstance(result, Completion) for result in results) == 1
    assert sum(isinstance(result, CircuitOpenError) for result in results) == 2
    assert sim.ai_request_count == 2


async def test_a_failed_trial_reopens_the_breaker(make_client: MakeClient, sim: Simulator) -> None:
    clock = FakeClock()
    client = make_client(breaker_failures=1, breaker_cooldown_s=30.0, clock=clock)
    sim.fail_next_ai("500", times=2)
    with pytest.raises(ProviderUnavailableError):
        await generate(client)
    clock.now += 30
    with pytest.raises(ProviderUnavailableError):
        await generate(client)
    assert client.breaker_state == "open"
    with pytest.raises(CircuitOpenError):
        await generate(client)
    assert sim.ai_request_count == 2


# --- the request-rate limiter -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("rpm", "max_rate", "period_s"),
    [(600, 10.0, 1.0), (60, 1.0, 1.0), (90, 1.5, 1.0), (30, 1.0, 2.0), (1, 1.0, 60.0)],
)
def test_the_limiter_bucket_holds_one_second_of_budget_and_at_least_one_request(
    rpm: int, max_rate: float, period_s: float
) -> None:
    limiter = rate_limiter_for(rpm)
    assert (limiter.max_rate, limiter.time_period) == pytest.approx((max_rate, period_s))
    assert limiter.max_rate / limiter.time_period * 60 == pytest.approx(rpm)


async def test_requests_beyond_the_burst_are_spaced_by_the_rate(
    make_client: MakeClient, sim: Simulator
) -> None:
    rpm = 600  # 10 per second: a burst of 10, then one per 100 ms
    client = make_client(requests_per_minute=rpm)
    started = time.monotonic()  # no request can be let through before this
    await asyncio.gather(*(generate(client) for _ in range(12)))
    arrivals = sorted(r.monotonic_s - started for r in sim.ai_requests)
    # The leaky bucket lets request k (1-based) through no earlier than (k - burst) / rate
    # after it started. Lower bounds measured from before the first acquisition: a loaded
    # machine only makes requests later, so this cannot flake; without the limiter the 11th
    # and 12th would arrive with the others.
    per_s = rpm / 60
    burst = rate_limiter_for(rpm).max_rate
    for k, arrived in enumerate(arrivals, start=1):
        assert arrived >= (k - burst) / per_s, (k, arrivals)


# --- Retry-After parsing (pure) ----------------------------------------------------------------

NOW_EPOCH_S = 1_700_000_000.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "12"}, 12.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after-ms": "250", "Retry-After": "9"}, 0.25),
        ({"retry-after-ms": "soon", "Retry-After": "9"}, 9.0),
        ({"Retry-After": format_datetime(datetime.fromtimestamp(NOW_EPOCH_S + 30, UTC), usegmt=True)}, 30.0),
        ({"Retry-After": format_datetime(datetime.fromtimestamp(NOW_EPOCH_S - 30, UTC), usegmt=True)}, 0.0),
        ({"Retry-After": "-3"}, 0.0),
        ({"Retry-After": "tomorrow-ish"}, None),
        ({"Retry-After": "nan"}, None),
        ({}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after_s(headers, now_epoch_s=NOW_EPOCH_S) == expected


def test_parse_retry_after_reads_an_http_date_without_timezone_as_utc() -> None:
    when = datetime.fromtimestamp(NOW_EPOCH_S, UTC) + timedelta(seconds=45)
    header = when.strftime("%a, %d %b %Y %H:%M:%S -0000")
    assert parse_retry_after_s({"Retry-After": header}, now_epoch_s=NOW_EPOCH_S) == pytest.approx(45.0)
