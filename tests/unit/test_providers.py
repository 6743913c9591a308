"""Issue 21 (OpenRouter): which batch API a URL gets, what a 403 means, who needs cache_control."""

from __future__ import annotations

from typing import Any

import pytest

from consumer.core.llmcost import cache_rule, model_family, needs_cache_control, prompt_layout
from consumer.core.providers import (
    ForbiddenStreak,
    batch_api_for,
    batch_group_key,
    classify_forbidden,
    openrouter_batches_url,
)


@pytest.mark.parametrize(
    ("setting", "url", "expected"),
    [
        ("auto", "https://openrouter.ai/api/v1", "openrouter"),
        ("auto", "https://OpenRouter.ai/api/v1/", "openrouter"),
        ("auto", "https://eu.openrouter.ai/api/v1", "openrouter"),
        ("auto", "https://api.openai.com/v1", "openai"),
        ("auto", "https://api.groq.com/openai/v1", "openai"),
        ("auto", "http://127.0.0.1:8080/v1", "off"),
        ("auto", "https://llm.internal.example/v1", "off"),
        ("auto", "https://openrouter.ai.evil.example/v1", "off"),
        ("openai", "https://openrouter.ai/api/v1", "openai"),
        ("openrouter", "http://127.0.0.1:8080/v1", "openrouter"),
        ("off", "https://openrouter.ai/api/v1", "off"),
    ],
)
def test_batch_api_for(setting: Any, url: str, expected: str) -> None:
    assert batch_api_for(setting, url) == expected


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("https://openrouter.ai/api/v1", "https://openrouter.ai/api/beta/batches"),
        ("https://openrouter.ai/api/v1/", "https://openrouter.ai/api/beta/batches"),
        ("http://127.0.0.1:9/v1", "http://127.0.0.1:9/beta/batches"),
        ("http://127.0.0.1:9/api", "http://127.0.0.1:9/api/beta/batches"),
    ],
)
def test_openrouter_batches_url(base: str, expected: str) -> None:
    assert openrouter_batches_url(base) == expected


def test_batch_groups_split_by_model_and_schema() -> None:
    plain = {"model": "google/gemini-2.5-flash", "messages": []}
    schema = {**plain, "response_format": {"type": "json_schema", "json_schema": {"name": "a"}}}
    other = {**plain, "response_format": {"type": "json_schema", "json_schema": {"name": "b"}}}
    keys = {batch_group_key(body) for body in (plain, schema, other, {**plain, "model": "x/y"})}
    assert len(keys) == 4
    assert batch_group_key(plain) == batch_group_key(dict(plain))


# The bodies are OpenRouter's own examples (tests/contract/openrouter/errors.json).
MODERATION = {
    "error": {
        "code": 403,
        "message": "Your chosen model requires moderation and your input was flagged",
        "metadata": {
            "reasons": ["harassment"],
            "flagged_input": "…",
            "provider_name": "OpenAI",
            "model_slug": "openai/gpt-4o",
        },
    }
}
GUARDRAIL = {
    "error": {
        "code": 403,
        "message": "Request blocked: prompt injection patterns detected",
        "metadata": {"patterns": ["ignore all previous instructions"]},
    }
}
PERMISSION = {"error": {"code": 403, "message": "Forbidden"}}


@pytest.mark.parametrize(
    ("body", "kind", "reasons"),
    [
        (MODERATION, "content_blocked", ("harassment", "provider: OpenAI")),
        (GUARDRAIL, "content_blocked", ("pattern: ignore all previous instructions",)),
        ({"error": {"code": 403, "message": "Blocked by guardrail grd_1"}}, "content_blocked", ()),
        (PERMISSION, "permission", ()),
        (
            {"error": {"code": 403, "message": "x", "metadata": {"error_type": "permission_denied"}}},
            "permission",
            (),
        ),
        (None, "permission", ()),
        ({"error": "nope"}, "permission", ()),
        ({"error": {"metadata": {"reasons": [{"deep": 1}], "provider_name": 3}}}, "content_blocked", ()),
    ],
)
def test_classify_forbidden(body: Any, kind: str, reasons: tuple[str, ...]) -> None:
    found = classify_forbidden(body)
    assert (found.kind, found.reasons) == (kind, reasons)


def test_forbidden_streak_counts_different_requests_and_resets_on_success() -> None:
    streak = ForbiddenStreak(threshold=3)
    assert not streak.refused("a") and not streak.refused("a") and not streak.refused("b")
    streak.succeeded()
    assert not streak.refused("c") and not streak.refused("d")
    assert streak.refused("e")


@pytest.mark.parametrize(
    ("model", "needs", "rule", "family"),
    [
        ("anthropic/claude-sonnet-4.5", True, "explicit", "anthropic"),
        ("~anthropic/claude-sonnet-latest", True, "explicit", "anthropic"),
        ("google/gemini-2.0-flash-001", True, "explicit", "google-gemini"),
        ("google/gemini-2.5-flash", True, "automatic", "google-gemini"),
        ("qwen/qwen3-max", True, "explicit", "alibaba-explicit"),
        ("qwen/qwen3.5-plus-02-15", False, "automatic", "qwen"),
        ("openai/gpt-4o-mini", False, "automatic", "openai"),
        ("deepseek/deepseek-chat", False, "automatic", "deepseek"),
        ("test/model", False, "automatic", "test"),
        ("gpt-4o-mini", False, "automatic", "other"),
    ],
)
def test_cache_control_table(model: str, needs: bool, rule: str, family: str) -> None:
    assert (needs_cache_control(model), cache_rule(model), model_family(model)) == (needs, rule, family)


def test_the_breakpoint_ends_the_shared_prefix_and_the_lead_stays_after_it() -> None:
    layout = prompt_layout(
        system_prompt="Campaign text",
        lead_prompt="Lead name: Ana",
        structured=False,
        max_parts=1,
        max_chars=9,
    )
    system, user = layout.messages(cache_control=True)
    assert system["content"] == [
        {"type": "text", "text": "Campaign text", "cache_control": {"type": "ephemeral"}}
    ]
    assert user == {"role": "user", "content": "Lead name: Ana"}
    assert layout.messages()[0] == {"role": "system", "content": "Campaign text"}
