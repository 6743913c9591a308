"""The per-lead user message sent to the LLM (the campaign's system prompt goes beside it).

Lead data is untrusted and unbounded (custom fields are free-form jsonb, possibly
megabytes), while the prompt is paid per token and must be reproducible. So every value
is flattened to one line, cut to a budget with a visible "(truncated)", and fields come
in sorted key order; jsonb does not keep insertion order anyway.

Phone numbers stay out: the lead's phone is never a parameter here, and custom fields
whose key names a phone are skipped, since the LLM provider has no need for them.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

DEFAULT_MAX_FIELD_CHARS = 500
DEFAULT_MAX_TOTAL_CHARS = 4000
MAX_KEY_CHARS = 100
TRUNCATED_MARK = "(truncated)"
UNKNOWN_NAME = "(unknown)"

# Room, beyond one field, for the labels and the omitted-fields footer, so the total
# budget always holds the name line and the footer.
_MIN_HEADROOM_CHARS = 200
# A value is scanned this far (times the field budget) before whitespace is collapsed,
# so a 10 MB string costs no more than a short one.
_SCAN_FACTOR = 4
# Substrings of a (case-folded) key that mark a phone number: en, pt, es.
_PHONE_KEY_HINTS = ("phone", "fone", "celular", "whatsapp", "mobile", "móvil")


def build_user_prompt(
    *,
    lead_name: str | None,
    custom_fields: Mapping[str, Any] | None,
    max_field_chars: int = DEFAULT_MAX_FIELD_CHARS,
    max_total_chars: int = DEFAULT_MAX_TOTAL_CHARS,
) -> str:
    """``Lead name: …`` then ``Lead details:`` and one ``- key: value`` line per field.

    The result is never longer than `max_total_chars`; fields that do not fit are counted
    in a last ``(truncated: N more fields omitted)`` line, so the model knows data is missing.
    """
    if max_field_chars < 1 or max_total_chars < max_field_chars + _MIN_HEADROOM_CHARS:
        raise ValueError(
            f"need max_field_chars >= 1 and max_total_chars >= max_field_chars + {_MIN_HEADROOM_CHARS}, "
            f"got {max_field_chars} and {max_total_chars}"
        )
    name = _one_line(lead_name, max_field_chars) if lead_name is not None else ""
    lines = [f"Lead name: {name or UNKNOWN_NAME}"]
    fields = [
        (key, value)
        for key, value in sorted((custom_fields or {}).items(), key=lambda item: str(item[0]))
        if not _is_blank(value) and not _names_a_phone(str(key))
    ]
    if not fields:
        lines.append("Lead details: (none)")
        return "\n".join(lines)
    lines.append("Lead details:")
    used = sum(len(line) + 1 for line in lines) - 1
    footer_room = 1 + len(_omitted(len(fields)))
    for index, (key, value) in enumerate(fields):
        line = f"- {_key_label(str(key))}: {_value_text(value, max_field_chars)}"
        room_after = footer_room if index < len(fields) - 1 else 0
        if used + 1 + len(line) + room_after > max_total_chars:
            lines.append(_omitted(len(fields) - index))
            break
        lines.append(line)
        used += 1 + len(line)
    return "\n".join(lines)


def _omitted(count: int) -> str:
    return f"(truncated: {count} more field{'s' if count != 1 else ''} omitted)"


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


# Keys repeat from lead to lead (a campaign's leads share their field names), values do not:
# what depends on the key alone is memoised (issue 15), bounded since keys are lead data.
@functools.lru_cache(maxsize=1024)
def _key_label(key: str) -> str:
    return _one_line(key, MAX_KEY_CHARS) or "(unnamed)"


@functools.lru_cache(maxsize=1024)
def _names_a_phone(key: str) -> bool:
    folded = key.casefold()
    return any(hint in folded for hint in _PHONE_KEY_HINTS)


def _value_text(value: Any, max_chars: int) -> str:
    """Strings as they are; anything else (numbers, booleans, nested objects) as compact JSON."""
    if isinstance(value, str):
        return _one_line(value, max_chars)
    try:
        text = json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str)
    except (TypeError, ValueError, RecursionError):
        # Unsortable keys, circular or absurdly deep data: say so rather than fail the message.
        return "(unreadable value)"
    return _one_line(text, max_chars)


def _one_line(text: str, max_chars: int) -> str:
    """Whitespace (newlines included) collapsed, so a value cannot forge extra prompt lines."""
    scanned = text[: max_chars * _SCAN_FACTOR]
    collapsed = " ".join(scanned.split())
    if len(collapsed) <= max_chars and len(scanned) == len(text):
        return collapsed
    return f"{collapsed[:max_chars].rstrip()} {TRUNCATED_MARK}"
