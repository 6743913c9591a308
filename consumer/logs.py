"""Logging setup (loguru): readable lines by default, JSON lines with ``--log-json``.

Both sinks render records themselves instead of using loguru's ``serialize=True`` or its
default formatter, for two reasons:

* redaction must cover everything that reaches the terminal, including the text of an
  exception's traceback, which loguru formats after every patcher has run;
* redacting a finished JSON document would mangle it (a float timestamp looks like a phone
  number), so fields are redacted one by one and the JSON is built afterwards.

Every record first passes through `_patch`, so API keys and phone numbers never reach a sink
in full, whoever logged them and under whatever key.
"""

from __future__ import annotations

import json
import re
import sys
import traceback
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from loguru import logger

if TYPE_CHECKING:
    from loguru import Message, Record

_PHONE = re.compile(r"(?<![\w-])\+?\d[\d\s().-]{6,}\d(?![\w-])")
# Shapes that look like phone numbers to _PHONE but are not: dates and uuids.
_NOT_A_PHONE = re.compile(r"^(\d{4}-\d{2}-\d{2}|\d{8}-\d{4}-)")
# A credential after a name that announces it: "Bearer x", "apikey: x", "api_key=x",
# "token=x", "password: x"… (token/secret/password only before = or :, so prose such as
# "max token limit" in a provider's error stays readable).
_BEARER = re.compile(
    r"(?i)(bearer\s+|apikey[\"'=:\s]+|api[_-]key[\"'=:\s]+"
    r"|(?:authorization|token|secret|password)[\"']?\s*[=:]\s*[\"']?(?!bearer\s))"
    r"([A-Za-z0-9._\-]{4})[A-Za-z0-9._\-]+"
)
# Provider key shapes that need no announcement (OpenAI / OpenRouter style ``sk-…``).
_KEY_SHAPE = re.compile(r"(?<![\w-])(sk-)[A-Za-z0-9_\-]{12,}")
# Extra fields whose whole value is sensitive whatever it looks like.
_SENSITIVE_KEYS = frozenset(
    {"phone", "number", "api_key", "apikey", "authorization", "token", "secret", "password", "key"}
)
# JSON keys every line has; an extra field with the same name is renamed, never lost.
_CORE_KEYS = frozenset({"time", "level", "message", "logger", "function", "line", "exception"})
# Texts none of the patterns above can change (issue 15, P7): every pattern needs a digit, a
# separator (space, = : " ' -) or "sk-", so a uuid (hex in fixed groups, no phone shape: see
# _NOT_A_PHONE and the look-arounds of _PHONE) or a bare word (outcome, stage, error class)
# only needs the registered-secrets check. Most extras of a per-message line are such values.
_PATTERN_FREE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[A-Za-z_]+"
)
# Whatever any of _BEARER, _KEY_SHAPE and _PHONE can match contains one of these (issue 15):
# one search that usually finds nothing instead of three substitutions. A superset only, so
# a hit just means "run the real patterns".
_SUSPECT = re.compile(
    r"\d[\d\s().-]{6,}\d|sk-|(?i:bearer|apikey|api[_-]key|authorization|token|secret|password)"
)
# Values that are never scrubbed (nothing secret fits in a number or a UUID object).
_ATOMS = (int, float, uuid.UUID)

_secrets: set[str] = set()
_secrets_longest_first: tuple[str, ...] = ()

_COLORS = {
    "TRACE": "\x1b[2m",
    "DEBUG": "\x1b[36m",
    "INFO": "\x1b[1m",
    "SUCCESS": "\x1b[32m",
    "WARNING": "\x1b[33m",
    "ERROR": "\x1b[31m",
    "CRITICAL": "\x1b[1;41m",
}
_DIM = "\x1b[2m"
_RESET = "\x1b[0m"


def register_secret(value: str | None) -> None:
    """Remember a secret so any log line containing it is masked."""
    global _secrets_longest_first
    if value and len(value) >= 4:
        _secrets.add(value)
        # Longest first, so a secret that contains another one is masked as a whole.
        _secrets_longest_first = tuple(sorted(_secrets, key=len, reverse=True))


def mask_phone(phone: str | None) -> str:
    """Keep the last 4 digits only: enough to tell leads apart in a log, useless to a reader."""
    if not phone:
        return "<none>"
    digits = re.sub(r"\D", "", phone)
    return f"***{digits[-4:]}" if len(digits) > 4 else "***"


def redact(text: str) -> str:
    for secret in _secrets_longest_first:
        if secret in text:
            text = text.replace(secret, secret[:3] + "***")
    if _PATTERN_FREE.fullmatch(text) or not _SUSPECT.search(text):
        return text
    text = _BEARER.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)
    text = _KEY_SHAPE.sub(lambda m: f"{m.group(1)}***", text)
    return _PHONE.sub(_mask_phone_match, text)


def _mask_phone_match(match: re.Match[str]) -> str:
    found = match.group(0)
    digits = sum(ch.isdigit() for ch in found)
    if digits < 8 or _NOT_A_PHONE.match(found):
        return found
    return mask_phone(found)


def _redact_value(key: str, value: Any) -> Any:
    """Strings are scrubbed, containers walked; a value under a sensitive key is masked whole."""
    if value is None:
        return None
    lowered = key.lower()
    if lowered in _SENSITIVE_KEYS:
        return mask_phone(str(value)) if lowered in {"phone", "number"} else "***"
    if isinstance(value, _ATOMS):
        return value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {str(k): _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value("", v) for v in value]
    return value


def _patch(record: Record) -> None:
    record["message"] = redact(record["message"])
    for key, value in list(record["extra"].items()):
        record["extra"][key] = _redact_value(key, value)


def _exception_text(record: Record) -> str | None:
    exception = record["exception"]
    if exception is None or exception.type is None:
        return None
    lines = traceback.format_exception(exception.type, exception.value, exception.traceback)
    return redact("".join(lines).rstrip("\n"))


def _human_value(value: Any) -> str:
    """An extra as text. Strings were already scrubbed by `_patch` (every record passes it
    first) and atoms have nothing to scrub; only other objects' text is redacted here."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    text = str(value)
    return text if isinstance(value, _ATOMS) else redact(text)


def _human_sink(message: Message) -> None:
    """``12:00:01.234 INFO     sent 3f2a…: 1 part(s)  outcome=sent run_id=… attempt=1 …``"""
    record = message.record
    stream = sys.stderr
    color = getattr(stream, "isatty", lambda: False)()
    level = record["level"].name
    extras = "  ".join(f"{key}={_human_value(value)}" for key, value in record["extra"].items())
    time = record["time"]
    when = f"{time.hour:02d}:{time.minute:02d}:{time.second:02d}.{time.microsecond // 1000:03d}"
    level_text = f"{level: <8}"
    if color:
        level_text = f"{_COLORS.get(level, '')}{level_text}{_RESET}"
        extras = f"{_DIM}{extras}{_RESET}" if extras else extras
    line = f"{when} {level_text} {record['message']}"
    if extras:
        line += f"  {extras}"
    trace = _exception_text(record)
    if trace:
        line += "\n" + trace
    stream.write(line + "\n")
    stream.flush()


def _json_default(value: Any) -> str:
    return redact(str(value))


def _json_sink(message: Message) -> None:
    """One JSON object per line; bound fields (outcome, message_id, …) are top-level keys."""
    record = message.record
    payload: dict[str, Any] = {
        "time": record["time"].isoformat(timespec="milliseconds"),
        "level": record["level"].name,
        "message": record["message"],
        "logger": record["name"],
        "function": record["function"],
        "line": record["line"],
    }
    for key, value in record["extra"].items():
        payload[f"extra_{key}" if key in _CORE_KEYS else key] = value
    trace = _exception_text(record)
    if trace:
        payload["exception"] = trace
    stream = sys.stderr
    stream.write(json.dumps(payload, default=_json_default, ensure_ascii=False) + "\n")
    stream.flush()


def configure_logging(*, json_lines: bool = False, level: str = "INFO") -> None:
    """Route every loguru record to stderr, readable or as JSON lines, always redacted.

    The sinks look ``sys.stderr`` up at every write, so a test (or a daemon manager) that
    swaps stderr after configuration still receives every line.
    """
    logger.remove()
    logger.configure(patcher=_patch)
    logger.add(
        _json_sink if json_lines else _human_sink,
        level=level.upper(),
        format="{message}",
        backtrace=False,
        diagnose=False,
        colorize=False,
        catch=True,
    )
