"""Checks on what we are about to send: the AI's text and the lead's phone number.

A provider can answer 200 with an error page, an error object or a refusal as "content"
(audit problem 13; FACTS: "a 200 can still be a failure"). Sending that to a lead is
worse than not sending, so such text raises `InvalidAIOutputError` (temporary: the next
attempt regenerates). A phone that can never be messaged raises `InvalidLeadError`
(permanent: retrying cannot fix the data).
"""

from __future__ import annotations

import json
import re
import unicodedata

from ..errors import InvalidAIOutputError, InvalidLeadError

DEFAULT_MIN_MESSAGE_CHARS = 10
"""Audit: a message shorter than this after trim is not a message."""
PHONE_MIN_DIGITS = 8
PHONE_MAX_DIGITS = 15
"""E.164 allows at most 15 digits including the country code."""

_PREVIEW_CHARS = 60

# Error text or refusals that a provider or a model returns as if it were the message.
# Matched at the start of the (trimmed) text only, case-insensitively: these shapes open
# the content when they are the content, while a real message may mention them later.
# Kept deliberately small: a false positive costs a real message an attempt.
_NOT_A_MESSAGE = re.compile(
    r"""\A(?:
        <!doctype\b | <html\b                      # an HTML error page from a proxy
      | error\s*: | (?:\d{3}\ )?internal\ server\ error\b   # a bare error line
      | rate\ limit\ exceeded\b
      | i[\u2019']m\ sorry,?\ but\ i\ (?:can[\u2019']?t|cannot)\b   # refusal boilerplate (en)
      | as\ an\ ai\ language\ model\b
      | desculpe,?\ mas\ n[ãa]o\ posso\b         # the same refusals (pt)
      | como\ um\ modelo\ de\ linguagem\b
    )""",
    re.IGNORECASE | re.VERBOSE,
)
# The opening of a JSON error object, even when truncated and therefore not parseable.
_JSON_ERROR_PREFIX = re.compile(r'\A\{\s*"errors?"\s*:')
# Three or more line breaks (blank lines may hold spaces) become one blank line.
_EXTRA_BLANK_LINES = re.compile(r"\n(?:[^\S\n]*\n){2,}")
# Pairs a model wraps its whole answer in; stripped only when the pair is the outermost
# and the quote does not occur inside (so '"Oi", disse ela, "tudo bem?"' is untouched).
_WRAPPING_QUOTES = (('"', '"'), ("'", "'"), ("“", "”"), ("«", "»"), ("`", "`"))
_OPENING_QUOTES = frozenset(opening for opening, _ in _WRAPPING_QUOTES)
_PHONE_SEPARATORS = frozenset("-.()/")  # plus any whitespace


def validate_generated_text(text: str | None, *, min_chars: int = DEFAULT_MIN_MESSAGE_CHARS) -> str:
    """The text to send, normalised, or `InvalidAIOutputError` when it is not a real message.

    Normalising (trim, unwrap quotes, at most one blank line in a row) happens before the
    checks, so the length checked is the length sent.
    """
    if text is None:
        raise InvalidAIOutputError("AI returned no content")
    cleaned = _normalise(text)
    if not cleaned:
        raise InvalidAIOutputError("AI returned empty content")
    if len(cleaned) < min_chars:
        raise InvalidAIOutputError(f"AI content too short: {len(cleaned)} chars after trim, need {min_chars}")
    if _NOT_A_MESSAGE.match(cleaned) or _is_json_error(cleaned):
        raise InvalidAIOutputError(f"AI content looks like an error or a refusal: {_preview(cleaned)}")
    return cleaned


def normalize_phone(phone: str | None) -> str:
    """Digits only, as the Evolution API wants them (``5511999999999``).

    Accepts the usual human formatting (``+55 (11) 99999-9999``); rejects what no
    formatting explains. The number itself never appears in the error: error messages
    reach the database, the DLQ and the logs.
    """
    if phone is None or not phone.strip():
        raise InvalidLeadError("lead has no phone number")
    candidate = unicodedata.normalize("NFKC", phone).strip()  # fullwidth digits and signs become ASCII
    if candidate.startswith("+"):
        candidate = candidate[1:]
    digits: list[str] = []
    for char in candidate:
        if char.isdecimal():  # also fullwidth and Arabic-Indic digits
            digits.append(str(unicodedata.decimal(char)))
        elif char.isalpha():
            raise InvalidLeadError("phone number contains letters")
        elif not (char.isspace() or char in _PHONE_SEPARATORS):
            raise InvalidLeadError(f"phone number contains an unexpected character {char!r}")
    if not PHONE_MIN_DIGITS <= len(digits) <= PHONE_MAX_DIGITS:
        raise InvalidLeadError(
            f"phone number has {len(digits)} digits, expected {PHONE_MIN_DIGITS}..{PHONE_MAX_DIGITS}"
        )
    if digits[0] == "0":
        # No country code starts with 0: this is a trunk or 00 prefix, and guessing the
        # country would message the wrong person.
        raise InvalidLeadError("phone number starts with 0; store it with its country code")
    return "".join(digits)


def _normalise(text: str) -> str:
    # Each step only when it can change something (issue 15): most answers have no CR, no
    # wrapping quote and no run of blank lines, and every step copies the whole text.
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    cleaned = text.strip()
    if cleaned[:1] not in _OPENING_QUOTES:
        return _EXTRA_BLANK_LINES.sub("\n\n", cleaned) if cleaned.count("\n") > 2 else cleaned
    for opening, closing in _WRAPPING_QUOTES:
        inner = cleaned[len(opening) : -len(closing)]
        if (
            len(cleaned) >= 2
            and cleaned.startswith(opening)
            and cleaned.endswith(closing)
            and opening not in inner
            and closing not in inner
        ):
            cleaned = inner.strip()
            break
    return _EXTRA_BLANK_LINES.sub("\n\n", cleaned)


def _is_json_error(text: str) -> bool:
    if not text.startswith("{"):
        return False
    if _JSON_ERROR_PREFIX.match(text):
        return True
    try:
        parsed = json.loads(text)
    except ValueError:
        return False
    return isinstance(parsed, dict) and ("error" in parsed or "errors" in parsed)


def _preview(text: str) -> str:
    return repr(text[:_PREVIEW_CHARS] + ("…" if len(text) > _PREVIEW_CHARS else ""))
