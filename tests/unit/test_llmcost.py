"""The pure cost rules: prompt layout, cache key, structured-output memory, caps, answer checks."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal

import pytest

from consumer.core.llmcost import (
    PARTS_SCHEMA_NAME,
    StructuredOutputMemory,
    cache_key,
    cached_share,
    cap_reached,
    is_structured_output_rejection,
    parts_response_format,
    prompt_layout,
)
from consumer.core.models import CampaignConfig
from consumer.core.prompt import build_user_prompt
from consumer.errors import InvalidAIOutputError
from consumer.runtime.generation import parts_from_structured
from consumer.settings import Settings

SYSTEM = "You are Ana from Acme. Write warm, short WhatsApp messages. " * 20


def _config(*, split: bool = True, max_parts: int = 3) -> CampaignConfig:
    return CampaignConfig(
        id=uuid.UUID(int=1),
        workspace_id=uuid.UUID(int=2),
        ai_model="openai/gpt-4o-mini",
        system_prompt=SYSTEM,
        split_messages=split,
        max_parts=max_parts,
        max_tokens=512,
        inbox_id=uuid.UUID(int=3),
        instance="inst",
    )


def test_shared_prefix_is_byte_identical_across_leads_and_lead_data_comes_last() -> None:
    layouts = [
        prompt_layout(
            system_prompt=SYSTEM,
            lead_prompt=build_user_prompt(lead_name=name, custom_fields={"city": city}),
            structured=True,
            max_parts=3,
            max_chars=4096,
        )
        for name, city in (("Maria", "Recife"), ("João", "Natal"), ("Wei", "Lisboa"))
    ]
    assert len({layout.shared for layout in layouts}) == 1
    for layout, name in zip(layouts, ("Maria", "João", "Wei"), strict=True):
        messages = layout.messages()
        assert [m["role"] for m in messages] == ["system", "user"]
        assert name not in messages[0]["content"] and name in messages[-1]["content"]
        assert "at most 3" not in messages[-1]["content"]  # format rules are shared, not per lead


def test_unstructured_layout_keeps_the_campaign_prompt_alone_in_the_prefix() -> None:
    layout = prompt_layout(
        system_prompt=SYSTEM, lead_prompt="Lead name: X", structured=False, max_parts=3, max_chars=9
    )
    assert layout.shared == SYSTEM.strip()


def test_cache_key_is_stable_per_campaign_and_changes_with_the_prompt_or_model() -> None:
    key = cache_key(config_id="c1", model="m", shared_prefix="p")
    assert key == cache_key(config_id="c1", model="m", shared_prefix="p")
    assert key.startswith("cq-") and len(key) == 19
    others = {
        cache_key(config_id="c2", model="m", shared_prefix="p"),
        cache_key(config_id="c1", model="m2", shared_prefix="p"),
        cache_key(config_id="c1", model="m", shared_prefix="p2"),
    }
    assert key not in others and len(others) == 3


@pytest.mark.parametrize(
    ("message", "rejects"),
    [
        (
            "Invalid parameter: 'response_format' of type 'json_schema' is not supported with this model.",
            True,
        ),
        ("No endpoints found that can handle the requested parameters.", True),
        ("This model does not support structured outputs", True),
        ("This model's maximum context length is 128000 tokens", False),
        ("openai/gpt-5-nano is not a valid model ID", False),
    ],
)
def test_only_a_refusal_of_the_schema_counts_as_no_structured_output(message: str, rejects: bool) -> None:
    assert is_structured_output_rejection(message) is rejects


def test_memory_remembers_refusals_and_reports_the_first_only() -> None:
    memory = StructuredOutputMemory()
    assert memory.supports("a")
    assert memory.mark_unsupported("a", "400") is True
    assert memory.mark_unsupported("a", "400 again") is False
    assert not memory.supports("a") and memory.supports("b")
    assert memory.refused() == {"a": "400"}


def test_response_format_is_strict_parts_with_max_items() -> None:
    schema = parts_response_format(max_parts=4)["json_schema"]
    assert schema["name"] == PARTS_SCHEMA_NAME and schema["strict"] is True
    assert schema["schema"]["additionalProperties"] is False
    assert schema["schema"]["properties"]["parts"]["maxItems"] == 4


@pytest.mark.parametrize(
    ("spent", "cap", "reached"),
    [("0", None, False), ("0.99", "1", False), ("1", "1", True), ("0", "0", True), ("5", "1", True)],
)
def test_cap_reached_at_or_above(spent: str, cap: str | None, reached: bool) -> None:
    assert cap_reached(spent_usd=Decimal(spent), cap_usd=None if cap is None else Decimal(cap)) is reached


def test_cached_share() -> None:
    assert cached_share(prompt_tokens=0, cached_tokens=0) is None
    assert cached_share(prompt_tokens=200, cached_tokens=150) == 0.75


SETTINGS = Settings(database_url="postgresql://unused")


def test_valid_parts_are_kept_in_order() -> None:
    answer = json.dumps({"parts": ["Hello Maria, good to see you!", "Shall I send the details?"]})
    text, parts = parts_from_structured(answer, config=_config(), settings=SETTINGS)
    assert parts == ["Hello Maria, good to see you!", "Shall I send the details?"]
    assert text == "Hello Maria, good to see you!\n\nShall I send the details?"


def test_too_many_parts_keep_their_text_and_go_through_the_deterministic_splitter() -> None:
    many = [f"Sentence number {i} of the message." for i in range(6)]
    _, parts = parts_from_structured(
        json.dumps({"parts": many}), config=_config(max_parts=2), settings=SETTINGS
    )
    assert 1 <= len(parts) <= 2
    assert "".join("".join(parts).split()) == "".join("".join(many).split())


def test_prose_instead_of_json_is_still_a_message() -> None:
    _, parts = parts_from_structured(
        "Hello Maria! Our offer is ready for you.", config=_config(), settings=SETTINGS
    )
    assert parts == ["Hello Maria! Our offer is ready for you."]


@pytest.mark.parametrize(
    "content",
    [
        'Sure! parts: ["first part", "second',
        json.dumps({"parts": ["hi"]}),  # under the 10-character minimum
        json.dumps({"parts": ["<html><body>502</body></html>"]}),
        json.dumps({"parts": ["I'm sorry, but I can't help with that request."]}),
    ],
)
def test_answers_without_a_usable_message_are_invalid(content: str) -> None:
    with pytest.raises(InvalidAIOutputError):
        parts_from_structured(content, config=_config(), settings=SETTINGS)
