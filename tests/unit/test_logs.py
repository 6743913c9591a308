"""Log redaction and the two log formats, without a database."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from loguru import logger

from consumer.logs import configure_logging, mask_phone, redact, register_secret

PHONE_DIGITS = "5511987654321"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    configure_logging()


@pytest.mark.parametrize(
    ("text", "leaked"),
    [
        ("Authorization: Bearer sk-or-v1-0123456789abcdef0123456789abcdef", "0123456789abcdef0123"),
        ('{"apikey": "wa-super-secret-value-42"}', "super-secret-value"),
        ("api_key=abcd1234efgh5678ijkl", "1234efgh5678"),
        ('{"access_token": "tok_abcdefgh12345678"}', "abcdefgh12345678"),
        ("Authorization: Bearer opaque-token-value-123", "token-value-123"),
        ("key in a sentence: sk-or-v1-ffffeeeeddddccccbbbb", "ffffeeeeddddcccc"),
        ("sending to +55 (11) 98765-4321 now", "98765-4321"),
        (f"sending to {PHONE_DIGITS}@s.whatsapp.net", PHONE_DIGITS),
        (f'{{"number": "{PHONE_DIGITS}", "text": "hi"}}', PHONE_DIGITS),
    ],
)
def test_redact_masks_keys_and_phones(text: str, leaked: str) -> None:
    assert leaked not in redact(text)


@pytest.mark.parametrize(
    "text",
    [
        "message 3f2a9c4e-1b2d-4e5f-8a9b-0c1d2e3f4a5b sent",
        "at 2026-11-25 12:05:11.090 in 1234 ms",
        "msg_id=1234567 attempt 3 of 3",
        "this model's maximum token limit is 8192 tokens",
    ],
)
def test_redact_leaves_ids_dates_and_counts_alone(text: str) -> None:
    assert redact(text) == text


def test_registered_secrets_are_masked_wherever_they_appear() -> None:
    register_secret("wa-unit-test-key-0123456789")
    assert redact("header apikey=wa-unit-test-key-0123456789 and again wa-unit-test-key-0123456789") == (
        "header apikey=wa-*** and again wa-***"
    )
    assert mask_phone("+55 11 98765-4321") == "***4321"


def _log_everything() -> None:
    try:
        raise ValueError(f"gateway refused {PHONE_DIGITS} with key sk-or-v1-0123456789abcdef0123")
    except ValueError:
        logger.bind(phone="+" + PHONE_DIGITS, msg_id=98765432101).opt(exception=True).error(
            "send failed for {} (Authorization: Bearer sk-or-v1-0123456789abcdef0123)", PHONE_DIGITS
        )
    logger.bind(
        outcome="sent",
        message_id="3f2a9c4e-1b2d-4e5f-8a9b-0c1d2e3f4a5b",
        attempt=1,
        error_class=None,
        ai_ms=120,
    ).info("sent 3f2a9c4e-1b2d-4e5f-8a9b-0c1d2e3f4a5b: 1 part(s)")


def test_json_lines_parse_and_carry_bound_fields_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(json_lines=True)

    _log_everything()

    err = capsys.readouterr().err
    lines = [json.loads(line) for line in err.splitlines()]
    assert [line["level"] for line in lines] == ["ERROR", "INFO"]
    failed, sent = lines
    assert failed["phone"] == "***4321" and failed["msg_id"] == 98765432101  # ids are not phones
    assert "Traceback" in failed["exception"] and "ValueError" in failed["exception"]
    assert (sent["outcome"], sent["attempt"], sent["error_class"], sent["ai_ms"]) == ("sent", 1, None, 120)
    assert PHONE_DIGITS not in err and "0123456789abcdef0123" not in err


def test_readable_lines_show_bound_fields_and_redact_tracebacks(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging()

    _log_everything()

    err = capsys.readouterr().err
    assert "ERROR    send failed for ***4321" in err
    assert "Traceback" in err and "ValueError: gateway refused ***4321" in err
    sent_line = next(line for line in err.splitlines() if "INFO" in line)
    assert "outcome=sent" in sent_line and "attempt=1" in sent_line and "error_class=-" in sent_line
    assert "ai_ms=120" in sent_line
    assert PHONE_DIGITS not in err and "0123456789abcdef0123" not in err


@pytest.mark.parametrize(
    "text",
    [
        "3f2a9c4e-1b2d-4e5f-8a9b-0c1d2e3f4a5b",
        "12345678-1234-1234-1234-123456789012",  # all digits: still not a phone
        "sent",
        "generate_split",
        "deferred_too_long",
    ],
)
def test_uuids_and_words_pass_unchanged(text: str) -> None:
    assert redact(text) == text


def test_a_registered_secret_is_masked_even_in_a_uuid_or_a_word() -> None:
    # The fast path skips the patterns, never the registered secrets (an Evolution key is often
    # a uuid; a short one can be a plain word).
    register_secret("0c9b1d2e-7f3a-4b5c-9d8e-112233445566")
    register_secret("hunter_two")
    assert redact("0c9b1d2e-7f3a-4b5c-9d8e-112233445566") == "0c9***"
    assert redact("hunter_two") == "hun***"


def test_non_string_extras_are_kept_and_sensitive_keys_masked_whatever_the_type(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import uuid

    configure_logging(json_lines=True)
    message_id = uuid.UUID("3f2a9c4e-1b2d-4e5f-8a9b-0c1d2e3f4a5b")
    logger.bind(message_id=message_id, msg_id=98765432101, number=int(PHONE_DIGITS), ai_ms=1.5).info("x")
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["message_id"] == str(message_id)
    assert line["msg_id"] == 98765432101
    assert line["ai_ms"] == 1.5
    assert PHONE_DIGITS not in json.dumps(line)
    assert line["number"] == "***4321"
