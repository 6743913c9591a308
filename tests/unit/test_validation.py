from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.core.validation import normalize_phone, validate_generated_text
from consumer.errors import InvalidAIOutputError, InvalidLeadError, PermanentError, TemporaryError

# --- generated text ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Olá Maria, tudo bem?", "Olá Maria, tudo bem?"),
        ("  \n Olá Maria, tudo bem? \n\t", "Olá Maria, tudo bem?"),
        ('"Olá Maria, tudo bem?"', "Olá Maria, tudo bem?"),
        ("“Olá Maria, tudo bem?”", "Olá Maria, tudo bem?"),
        ("«Olá Maria, tudo bem?»", "Olá Maria, tudo bem?"),
        ("'Olá Maria, tudo bem?'", "Olá Maria, tudo bem?"),
        (' " Olá Maria, tudo bem? " ', "Olá Maria, tudo bem?"),
        # quotes inside the text are the text's own: not unwrapped
        ('"Oi", disse ela, "tudo bem?"', '"Oi", disse ela, "tudo bem?"'),
        ("Olá!\n\n\n\nTudo bem?", "Olá!\n\nTudo bem?"),
        ("Olá!\n \n\t\n  \nTudo bem?", "Olá!\n\nTudo bem?"),
        ("Olá!\r\n\r\n\r\nTudo bem?", "Olá!\n\nTudo bem?"),
        ("Olá!\n\nTudo bem?", "Olá!\n\nTudo bem?"),  # one blank line is a paragraph: kept
        ("Linha 1\nLinha 2", "Linha 1\nLinha 2"),
        ("שלום מריה, מה שלומך? 👋", "שלום מריה, מה שלומך? 👋"),
        ("你好，玛丽亚！今天有优惠。", "你好，玛丽亚！今天有优惠。"),  # noqa: RUF001
        # error words later in a real message are content, not an error
        ("Olá! Sem erro aqui. Error: nenhum.", "Olá! Sem erro aqui. Error: nenhum."),
        ('{"message": "Olá Maria, tudo bem?"}', '{"message": "Olá Maria, tudo bem?"}'),
    ],
)
def test_valid_text_is_normalised(raw: str, expected: str) -> None:
    assert validate_generated_text(raw) == expected


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (None, "no content"),
        ("", "empty"),
        ("   \n\t ", "empty"),
        ('""', "empty"),
        ("Oi Maria", "too short: 8 chars"),
        ('"Oi Maria"', "too short"),
        ("<!DOCTYPE html><html><body>502 Bad Gateway</body></html>", "error or a refusal"),
        ("<html><head><title>Error</title></head></html>", "error or a refusal"),
        ('{"error": {"code": 429, "message": "Rate limit exceeded"}}', "error or a refusal"),
        ('{"errors": ["upstream failed"]}', "error or a refusal"),
        ('{"code": 500, "error": "Internal"}', "error or a refusal"),
        ('{ "error": {"message": "truncat', "error or a refusal"),
        ("Error: upstream request timed out", "error or a refusal"),
        ("ERROR : something broke on our side", "error or a refusal"),
        ("Internal Server Error", "error or a refusal"),
        ("500 Internal Server Error", "error or a refusal"),
        ("Rate limit exceeded, please retry later", "error or a refusal"),
        ("I'm sorry, but I can't help with that request.", "error or a refusal"),
        ("I\u2019m sorry, but I cannot assist with that.", "error or a refusal"),
        ("As an AI language model, I cannot write marketing messages.", "error or a refusal"),
        ("Desculpe, mas não posso ajudar com isso.", "error or a refusal"),
        ("Como um modelo de linguagem, não posso enviar isso.", "error or a refusal"),
        ('"Error: upstream request timed out"', "error or a refusal"),  # unwrapped, then caught
    ],
)
def test_invalid_text_raises_a_temporary_error(raw: str | None, match: str) -> None:
    with pytest.raises(InvalidAIOutputError, match=match) as caught:
        validate_generated_text(raw)
    # temporary, so the policy regenerates (and dead-letters after max attempts)
    assert isinstance(caught.value, TemporaryError)


def test_min_chars_counts_after_trim() -> None:
    assert validate_generated_text("  12345  ", min_chars=5) == "12345"
    with pytest.raises(InvalidAIOutputError, match="4 chars"):
        validate_generated_text("  1234  ", min_chars=5)


def test_error_message_preview_is_bounded() -> None:
    with pytest.raises(InvalidAIOutputError) as caught:
        validate_generated_text("<html>" + "x" * 100_000)
    assert len(str(caught.value)) < 200


@settings(max_examples=150, deadline=None)
@given(
    text=st.text(alphabet=st.characters(codec="utf-8"), max_size=80)
    | st.builds(
        "".join,
        st.lists(
            st.sampled_from(["Olá", " ", "\n", "\r\n", '"', "“", "”", "\t", "Error:", "<html", "{", "👋"]),
            max_size=30,
        ),
    ),
    min_chars=st.integers(min_value=1, max_value=20),
)
def test_validated_text_is_trimmed_long_enough_and_taken_from_the_input(text: str, min_chars: int) -> None:
    try:
        result = validate_generated_text(text, min_chars=min_chars)
    except InvalidAIOutputError:
        return
    assert result == result.strip()
    assert len(result) >= min_chars
    assert "\n\n\n" not in result
    # only whitespace and one pair of wrapping quotes may go: the words stay, in order
    assert "".join(result.split()) in "".join(text.split())


# --- phone numbers ----------------------------------------------------------------------


def _fullwidth(ascii_text: str) -> str:
    return "".join(chr(ord(char) + 0xFEE0) if "!" <= char <= "~" else char for char in ascii_text)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+55 (11) 99999-9999", "5511999999999"),
        ("5511999999999", "5511999999999"),
        ("  +55 11 99999 9999  ", "5511999999999"),
        ("+1 415.555.2671", "14155552671"),
        ("+44 20 7946 0958", "442079460958"),
        ("55/11/99999/9999", "5511999999999"),
        ("+55\u00a011\u00a099999-9999", "5511999999999"),  # no-break spaces from a spreadsheet
        (_fullwidth("+55 (11) 99999-9999"), "5511999999999"),  # pasted from a CJK keyboard
        (_fullwidth("5511999999999"), "5511999999999"),
        ("٥٥١١٩٩٩٩٩٩٩٩٩", "5511999999999"),  # Arabic-Indic digits
        ("12345678", "12345678"),  # 8 digits: the shortest accepted
        ("123456789012345", "123456789012345"),  # 15 digits: the E.164 maximum
    ],
)
def test_phone_is_normalised_to_digits(raw: str, expected: str) -> None:
    assert normalize_phone(raw) == expected


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (None, "no phone"),
        ("", "no phone"),
        ("   ", "no phone"),
        ("call me", "letters"),
        ("+55 11 99999-9999 ext 12", "letters"),
        ("5511999999999@s.whatsapp.net", "unexpected character"),
        ("1234567", "7 digits, expected 8..15"),
        ("+55 (11) 99999-99999-99", "16 digits, expected 8..15"),
        ("+", "0 digits"),
        ("55+11999999999", "unexpected character"),
        ("55#11999999999", "unexpected character"),
        ("0055 11 99999-9999", "starts with 0"),
        ("(011) 99999-9999", "starts with 0"),
    ],
)
def test_bad_phone_is_a_permanent_lead_error(raw: str | None, match: str) -> None:
    with pytest.raises(InvalidLeadError, match=match) as caught:
        normalize_phone(raw)
    assert isinstance(caught.value, PermanentError)
    assert "9999" not in str(caught.value)  # the number never reaches logs, rows or the DLQ


@settings(max_examples=100, deadline=None)
@given(
    digits=st.text(alphabet="0123456789", min_size=8, max_size=15).filter(lambda d: d[0] != "0"),
    separators=st.lists(st.sampled_from([" ", "-", ".", "(", ")", "/", "\t"]), max_size=15),
    plus=st.booleans(),
)
def test_formatted_phone_gives_back_its_digits(digits: str, separators: list[str], plus: bool) -> None:
    gaps = [*separators, *[""] * len(digits)]
    formatted = "".join(digit + gap for digit, gap in zip(digits, gaps, strict=False))
    assert normalize_phone(("+" if plus else "") + formatted) == digits


@settings(max_examples=150, deadline=None)
@given(raw=st.text(max_size=30))
def test_any_phone_is_either_ascii_digits_in_range_or_rejected(raw: str) -> None:
    try:
        result = normalize_phone(raw)
    except InvalidLeadError:
        return
    assert result.isascii() and result.isdigit()
    assert 8 <= len(result) <= 15
    assert not result.startswith("0")
