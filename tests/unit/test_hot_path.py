"""Issue 15's shortcuts on the per-message path give the answers of the long way round.

Each shortcut skips work when it provably cannot change the result; these tests pin the
"provably" part: a pre-check that is a superset of the patterns it guards, bound metric
children that count under the same labels as `labels()`, memoised prompt pieces that
change when their inputs change.
"""

from __future__ import annotations

import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from consumer import logs
from consumer.core.llmcost import cache_key, prompt_layout
from consumer.core.split import plan_parts
from consumer.runtime.generation import record_generation_metrics
from consumer.runtime.metrics import ConsumerMetrics

# Pieces of what the patterns look for (keywords in any case, digit runs, separators) and of
# what they do not, so that generated texts often hold near-misses as well as real matches.
_PIECES = st.sampled_from(
    [
        "Bearer ",
        "bearer",
        "APIKEY",
        "apikey: ",
        "api_key=",
        'Api-Key"',
        "token=",
        "TOKEN",
        "secret:",
        "password = '",
        "authorization: ",
        "sk-",
        "sk-abcdefghijklmnop",
        "+",
        "55",
        "(11)",
        "98765",
        "-",
        ".",
        " ",
        "\n",
        "4321",
        "0",
        "x",
        "key",
        "word",
        "2024-05-01",
        "abc123",
    ]
)


@settings(max_examples=1000, deadline=None)
@given(st.lists(_PIECES, max_size=12).map("".join))
def test_the_suspect_precheck_finds_whatever_a_redaction_pattern_would_change(text: str) -> None:
    if any(pattern.search(text) for pattern in (logs._BEARER, logs._KEY_SHAPE, logs._PHONE)):
        assert logs._SUSPECT.search(text)


def test_generation_counters_count_under_the_workspace_text() -> None:
    metrics = ConsumerMetrics()
    workspace = uuid.uuid4()
    for workspace_id in (workspace, str(workspace)):  # the UUID and its text: one label
        record_generation_metrics(
            metrics,
            workspace_id=workspace_id,
            mode="structured",
            prompt_tokens=10,
            completion_tokens=5,
            cached_tokens=4,
            cache_write_tokens=1,
            cost_usd=0.5,
        )
    metrics.ai_call("structured").inc()
    metrics.ai_call("batch").inc()  # a kind not bound in advance
    value = metrics.registry.get_sample_value
    label = {"workspace_id": str(workspace)}
    assert value("campaignq_ai_generated_messages_total", {**label, "mode": "structured"}) == 2
    assert value("campaignq_ai_workspace_prompt_tokens_total", label) == 20
    assert value("campaignq_ai_workspace_cached_tokens_total", label) == 8
    assert value("campaignq_ai_workspace_cost_usd_total", label) == 1.0
    assert value("campaignq_ai_tokens_total", {"kind": "cache_write"}) == 2
    assert value("campaignq_ai_calls_total", {"kind": "structured"}) == 1
    assert value("campaignq_ai_calls_total", {"kind": "batch"}) == 1


def test_memoised_prompt_pieces_follow_their_inputs() -> None:
    one = prompt_layout(
        system_prompt=" Be kind. ", lead_prompt="a", structured=True, max_parts=3, max_chars=500
    )
    two = prompt_layout(
        system_prompt=" Be kind. ", lead_prompt="b", structured=True, max_parts=2, max_chars=500
    )
    assert one.shared.startswith("Be kind.\n\n") and one.shared != two.shared
    assert cache_key(config_id="c", model="m", shared_prefix=one.shared) != cache_key(
        config_id="c", model="m", shared_prefix=two.shared
    )


def test_llm_parts_that_lost_a_word_are_still_refused() -> None:
    text = "Olá Maria!\n\nTemos aulas de yoga."
    assert plan_parts(
        text, split_enabled=True, llm_parts=["Olá Maria!", "Temos aulas de yoga."], max_parts=3, max_chars=500
    ) == ["Olá Maria!", "Temos aulas de yoga."]
    assert plan_parts(
        text, split_enabled=True, llm_parts=["Olá Maria!", "Temos aulas."], max_parts=3, max_chars=500
    ) == ["Olá Maria!", "Temos aulas de yoga."]  # the deterministic splitter, not the LLM's cut
