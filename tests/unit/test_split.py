from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.core.split import (
    WHATSAPP_MAX_PART_CHARS,
    SplitAnswer,
    parse_split_answer,
    plan_parts,
    split_response_schema,
    split_text,
)

FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # one emoji, five code points
FLAG_BR = "\U0001f1e7\U0001f1f7"  # one flag, two regional indicators
ACCENTED_E = "e\u0301"  # "é" as e + combining acute


def words(text: str) -> list[str]:
    return text.split()


def no_space(text: str) -> str:
    return "".join(text.split())


# --- the LLM's answer -------------------------------------------------------------------


def test_schema_is_the_openai_response_format_shape() -> None:
    schema = split_response_schema(3, 4096)
    assert schema["type"] == "object"
    assert schema["required"] == ["parts"]
    assert schema["additionalProperties"] is False
    parts = schema["properties"]["parts"]
    assert (parts["type"], parts["items"]["type"], parts["minItems"], parts["maxItems"]) == (
        "array",
        "string",
        1,
        3,
    )
    assert "4096" in parts["items"]["description"]
    json.dumps(schema)  # sent as JSON: must serialise
    assert set(SplitAnswer.model_json_schema()["properties"]) == set(schema["properties"])


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"parts": ["Olá Maria!", "Tudo bem?"]}', ["Olá Maria!", "Tudo bem?"]),
        ('  {"parts": [" Olá Maria! ", "\\nTudo bem?\\n"]}  ', ["Olá Maria!", "Tudo bem?"]),
        ('```json\n{"parts": ["Olá", "Tudo bem?"]}\n```', ["Olá", "Tudo bem?"]),
        ('```JSON\n{"parts": ["Olá"]}```', ["Olá"]),
        ('```\n{"parts": ["Olá"]}\n```', ["Olá"]),
        ('{"parts": ["Olá", "   ", ""]}', ["Olá"]),  # blank parts carry nothing: dropped
        ('{"parts": ["Olá"], "reasoning": "short"}', ["Olá"]),  # extra keys tolerated
        ('{"parts": ["שלום 👋", "你好"]}', ["שלום 👋", "你好"]),
        ('{"parts": ["a", "b", "c"]}', ["a", "b", "c"]),  # exactly max_parts
        ('{"parts": ["' + "x" * 20 + '"]}', ["x" * 20]),  # exactly max_chars
        (None, None),
        ("", None),
        ("not json at all", None),
        ('{"parts": []}', None),
        ('{"parts": ["  ", ""]}', None),
        ('{"parts": ["a", "b", "c", "d"]}', None),  # more than max_parts
        ('{"parts": ["' + "x" * 21 + '"]}', None),  # a part longer than max_chars
        ('{"parts": "Olá, tudo bem?"}', None),
        ('{"parts": [1, 2]}', None),
        ('["Olá", "Tudo bem?"]', None),
        ('{"bubbles": ["Olá"]}', None),
        ('{"parts": ["Olá"', None),  # truncated by max_tokens
        ('Here you go: {"parts": ["Olá"]}', None),
    ],
)
def test_parse_split_answer(content: str | None, expected: list[str] | None) -> None:
    assert parse_split_answer(content, max_parts=3, max_chars=20) == expected


# --- the deterministic split: tables ----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "max_parts", "max_chars", "expected"),
    [
        ("Olá Maria, tudo bem?", 3, 4096, ["Olá Maria, tudo bem?"]),
        # one paragraph, one bubble
        (
            "Olá Maria!\n\nTemos uma oferta.\n\nAbraços",
            3,
            4096,
            ["Olá Maria!", "Temos uma oferta.", "Abraços"],
        ),
        ("Olá Maria!\n\n\n  \nTemos uma oferta.", 3, 4096, ["Olá Maria!", "Temos uma oferta."]),
        # more paragraphs than bubbles: adjacent ones share, balanced
        ("A1 a.\n\nB2 b.\n\nC3 c.\n\nD4 d.", 2, 4096, ["A1 a.\n\nB2 b.", "C3 c.\n\nD4 d."]),
        ("A1 a.\n\nB2 b.\n\nC3 c.\n\nD4 d.", 1, 4096, ["A1 a.\n\nB2 b.\n\nC3 c.\n\nD4 d."]),
        # a paragraph too long for one bubble is cut at sentence ends first
        ("Um dois. Três quatro. Cinco seis.", 3, 20, ["Um dois.", "Três quatro.", "Cinco seis."]),
        ("Um dois. Três quatro. Cinco seis.", 2, 25, ["Um dois. Três quatro.", "Cinco seis."]),
        ('Ela disse "sim." Depois saiu.', 2, 20, ['Ela disse "sim."', "Depois saiu."]),
        # line breaks are boundaries too, and are kept inside a bubble
        ("Linha um\nLinha dois\nLinha três", 2, 20, ["Linha um\nLinha dois", "Linha três"]),
        # then at spaces
        ("aaa bbb ccc ddd", 2, 8, ["aaa bbb", "ccc ddd"]),
        # then inside a run without whitespace, in equal chunks
        ("abcdefghij", 2, 5, ["abcde", "fghij"]),
        ("abcdefghijk", 3, 5, ["abcd", "efgh", "ijk"]),
        # CJK ends sentences without a space
        ("你好。今天有优惠。再见。", 3, 6, ["你好。", "今天有优惠。", "再见。"]),
        ("مرحبا ماريا. لدينا عرض اليوم.", 2, 20, ["مرحبا ماريا.", "لدينا عرض اليوم."]),
        ("", 3, 10, []),
        (" \n\t ", 3, 10, []),
    ],
)
def test_split_text_table(text: str, max_parts: int, max_chars: int, expected: list[str]) -> None:
    assert split_text(text, max_parts=max_parts, max_chars=max_chars) == expected


@pytest.mark.parametrize(
    ("run", "max_chars", "grapheme"),
    [
        (FAMILY * 3, 7, FAMILY),  # a cut at 7 would land inside the second family
        (FLAG_BR * 5, 5, FLAG_BR),  # an odd cut would split a flag in two
        ("\U0001f44d\U0001f3fd" * 5, 3, "\U0001f44d\U0001f3fd"),  # thumbs up + skin tone
        (ACCENTED_E * 6, 5, ACCENTED_E),
    ],
)
def test_hard_cut_never_splits_a_grapheme(run: str, max_chars: int, grapheme: str) -> None:
    parts = split_text(run, max_parts=10, max_chars=max_chars)
    assert "".join(parts) == run
    assert all(len(part) <= max_chars for part in parts)
    assert all(part.replace(grapheme, "") == "" for part in parts)


def test_5000_chars_without_punctuation_fit_whatsapp() -> None:
    text = " ".join(["palavra"] * 625)[:5000]
    parts = split_text(text, max_parts=3, max_chars=WHATSAPP_MAX_PART_CHARS)
    assert len(parts) in (2, 3)
    assert all(len(part) <= WHATSAPP_MAX_PART_CHARS for part in parts)
    assert words(" ".join(parts)) == words(text)


def test_5000_chars_without_any_whitespace_fit_whatsapp() -> None:
    text = "x" * 5000
    parts = split_text(text, max_parts=3, max_chars=WHATSAPP_MAX_PART_CHARS)
    assert parts == ["x" * 2500, "x" * 2500]


def test_more_text_than_max_parts_can_hold_gives_full_bubbles() -> None:
    """The documented overflow: max_chars is never broken, max_parts is."""
    text = " ".join(["abcd"] * 30)  # 149 chars
    parts = split_text(text, max_parts=2, max_chars=24)
    assert parts == [" ".join(["abcd"] * 5)] * 6  # 5 words + 4 spaces = 24 chars: full bubbles
    assert words(" ".join(parts)) == words(text)


def test_overflow_still_prefers_paragraph_breaks() -> None:
    text = "a" * 8 + "\n\n" + "b" * 8 + "\n\n" + "c" * 8
    assert split_text(text, max_parts=1, max_chars=10) == ["a" * 8, "b" * 8, "c" * 8]


@pytest.mark.parametrize(("max_parts", "max_chars"), [(0, 10), (3, 0), (-1, -1)])
def test_split_text_rejects_nonsense_limits(max_parts: int, max_chars: int) -> None:
    with pytest.raises(ValueError, match="must be >= 1"):
        split_text("Olá Maria", max_parts=max_parts, max_chars=max_chars)


# --- the deterministic split: properties ------------------------------------------------

SAMPLE_WORDS = [
    "Olá",
    "Maria",
    "oferta",
    "hoje.",
    "sim!",
    "não?",
    "fim…",
    "שלום",
    "مرحبا",
    "你好。",
    "今天",
    "👋",
    FAMILY,
]
SAMPLE_WORDS += [FLAG_BR, "e" + ACCENTED_E, "x" * 30, "https://example.com/" + "a" * 40]
GAPS = [" ", " ", " ", "  ", "\n", "\n\n", "\n \n\n", "\t", "\u3000", "\u00a0"]


@st.composite
def messages(draw: st.DrawFn) -> str:
    tokens = draw(st.lists(st.sampled_from(SAMPLE_WORDS), max_size=60))
    gaps = draw(st.lists(st.sampled_from(GAPS), min_size=len(tokens), max_size=len(tokens)))
    text = "".join(token + gap for token, gap in zip(tokens, gaps, strict=True))
    return draw(st.sampled_from(["", " ", "\n"])) + text


LIMITS = {
    "max_parts": st.integers(min_value=1, max_value=5),
    "max_chars": st.integers(min_value=1, max_value=120),
}


@settings(max_examples=150, deadline=None)
@given(text=messages() | st.text(max_size=200), **LIMITS)
def test_parts_hold_the_whole_text_within_limits(text: str, max_parts: int, max_chars: int) -> None:
    parts = split_text(text, max_parts=max_parts, max_chars=max_chars)
    assert all(part and len(part) <= max_chars for part in parts)
    assert all(part == part.strip() for part in parts)
    # nothing lost, nothing reordered, nothing added
    assert no_space("".join(parts)) == no_space(text)
    assert (parts == []) == (text.strip() == "")


@settings(max_examples=120, deadline=None)
@given(text=messages(), **LIMITS)
def test_when_every_word_fits_cuts_fall_on_whitespace(text: str, max_parts: int, max_chars: int) -> None:
    if any(len(word) > max_chars or "。" in word[:-1] for word in words(text)):
        return  # cutting inside a word (or after a CJK full stop) is covered above
    parts = split_text(text, max_parts=max_parts, max_chars=max_chars)
    assert words(" ".join(parts)) == words(text)


@settings(max_examples=120, deadline=None)
@given(text=messages(), **LIMITS)
def test_max_parts_is_exceeded_only_when_the_text_cannot_fit(
    text: str, max_parts: int, max_chars: int
) -> None:
    parts = split_text(text, max_parts=max_parts, max_chars=max_chars)
    if len(parts) <= max_parts:
        return
    # Greedy packing closes a bubble only when the next word (<= longest) plus a separator
    # (<= 2 chars) does not fit, so every bubble but the last is longer than this.
    longest = min(max_chars, max(len(word) for word in words(text)))
    total = sum(len(part) for part in parts) + 2 * (len(parts) - 1)
    assert total > max_parts * (max_chars - 2 - longest)


@settings(max_examples=120, deadline=None)
@given(text=messages())
def test_a_text_that_fits_one_bubble_is_not_cut_inside_a_paragraph(text: str) -> None:
    paragraphs = [p for p in text.replace("\n \n", "\n\n").split("\n\n") if p.strip()]
    parts = split_text(text, max_parts=len(paragraphs) or 1, max_chars=WHATSAPP_MAX_PART_CHARS)
    assert len(parts) == len(paragraphs)


# --- plan_parts: the single decision ----------------------------------------------------

TEXT = "Olá Maria!\n\nTemos uma oferta para você hoje.\n\nAbraços, equipe"


@pytest.mark.parametrize(
    ("split_enabled", "llm_parts", "max_parts", "max_chars", "expected"),
    [
        # not split: the text as generated, one part
        (False, None, 3, 4096, [TEXT]),
        (False, ["Olá Maria!", "Temos uma oferta para você hoje.", "Abraços, equipe"], 3, 4096, [TEXT]),
        # not split but longer than a WhatsApp message: as few parts as needed
        (False, None, 3, 40, ["Olá Maria!", "Temos uma oferta para você hoje.", "Abraços, equipe"]),
        # split: the LLM's parts when they respect the limits and carry the same words
        (True, ["Olá Maria!", "Temos uma oferta para você hoje. Abraços, equipe"], 3, 4096, None),
        (True, [" Olá Maria! ", "", "Temos uma oferta para você hoje.\n\nAbraços, equipe"], 3, 4096, None),
        # otherwise the deterministic split
        (True, None, 3, 4096, ["Olá Maria!", "Temos uma oferta para você hoje.", "Abraços, equipe"]),
        (True, [], 3, 4096, ["Olá Maria!", "Temos uma oferta para você hoje.", "Abraços, equipe"]),
        (True, ["Olá Maria!", "Temos uma oferta!", "Abraços, equipe"], 3, 4096, "fallback"),  # text changed
        (True, ["Olá Maria!", "Temos uma oferta para você hoje."], 3, 4096, "fallback"),  # text lost
        (True, ["Olá", "Maria!", "Temos uma oferta para você hoje.", "Abraços, equipe"], 3, 4096, "fallback"),
        (True, ["Olá Maria!", "Temos uma oferta para você hoje. Abraços, equipe"], 3, 40, "fallback"),
        (True, ["Abraços, equipe", "Olá Maria!", "Temos uma oferta para você hoje."], 3, 4096, "fallback"),
    ],
)
def test_plan_parts(
    split_enabled: bool,
    llm_parts: list[str] | None,
    max_parts: int,
    max_chars: int,
    expected: list[str] | str | None,
) -> None:
    parts = plan_parts(
        TEXT, split_enabled=split_enabled, llm_parts=llm_parts, max_parts=max_parts, max_chars=max_chars
    )
    if expected is None:  # the LLM's parts, trimmed, blanks dropped
        assert llm_parts is not None
        assert parts == [part.strip() for part in llm_parts if part.strip()]
    elif expected == "fallback":
        assert parts == split_text(TEXT, max_parts=max_parts, max_chars=max_chars)
        assert parts != llm_parts
    else:
        assert parts == expected


@pytest.mark.parametrize("text", ["", "   ", "\n"])
def test_plan_parts_refuses_to_plan_nothing(text: str) -> None:
    with pytest.raises(ValueError, match="nothing to send"):
        plan_parts(text, split_enabled=True, llm_parts=None, max_parts=3, max_chars=4096)


@st.composite
def llm_answers(draw: st.DrawFn, text: str) -> list[str] | None:
    """None, unrelated words, or the text's own words cut at random places (a faithful answer)."""
    kind = draw(st.sampled_from(["none", "unrelated", "faithful"]))
    if kind == "none":
        return None
    if kind == "unrelated":
        return draw(st.lists(st.sampled_from([*SAMPLE_WORDS, "", " "]), max_size=6))
    tokens = words(text)
    cuts = sorted(draw(st.sets(st.integers(min_value=1, max_value=max(1, len(tokens) - 1)), max_size=5)))
    return [" ".join(tokens[start:end]) for start, end in zip([0, *cuts], [*cuts, len(tokens)], strict=True)]


@settings(max_examples=120, deadline=None)
@given(
    data=st.data(), text=messages().filter(lambda t: t.strip() != ""), split_enabled=st.booleans(), **LIMITS
)
def test_planned_parts_always_carry_the_text_within_max_chars(
    data: st.DataObject, text: str, split_enabled: bool, max_parts: int, max_chars: int
) -> None:
    llm_parts = data.draw(llm_answers(text))
    parts = plan_parts(
        text, split_enabled=split_enabled, llm_parts=llm_parts, max_parts=max_parts, max_chars=max_chars
    )
    assert parts and all(part and len(part) <= max_chars for part in parts)
    assert no_space("".join(parts)) == no_space(text)
    if (
        split_enabled
        and llm_parts is not None
        and parts != split_text(text, max_parts=max_parts, max_chars=max_chars)
    ):
        assert parts == [part.strip() for part in llm_parts if part.strip()]  # else: the LLM's own
