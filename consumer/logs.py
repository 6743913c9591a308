"""Logging setup (loguru): readable lines by default, JSON lines with ``--log-json``.

Every record passes through `redact` so API keys and phone numbers never reach a sink in
full, whoever logged them.
"""

from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING

from loguru import logger

if TYPE_CHECKING:
    from loguru import Record

_PHONE = re.compile(r"(?<![\w-])\+?\d[\d\s().-]{6,}\d(?![\w-])")
# Shapes that look like phone numbers to _PHONE but are not: dates and uuids.
_NOT_A_PHONE = re.compile(r"^(\d{4}-\d{2}-\d{2}|\d{8}-\d{4}-)")
_BEARER = re.compile(
    r"(?i)(bearer\s+|apikey[\"'=:\s]+|api_key[\"'=:\s]+)([A-Za-z0-9._\-]{4})[A-Za-z0-9._\-]+"
)
_secrets: set[str] = set()
_HUMAN_FORMAT = "<green>{time:HH:mm:ss.SSS}</green> <level>{level: <8}</level> {message} <dim>{extra}</dim>"


def register_secret(value: str | None) -> None:
    """Remember a secret so any log line containing it is masked."""
    if value and len(value) >= 4:
        _secrets.add(value)


def mask_phone(phone: str | None) -> str:
    """Keep the last 4 digits only: enough to tell leads apart in a log, useless to a reader."""
    if not phone:
        return "<none>"
    digits = re.sub(r"\D", "", phone)
    return f"***{digits[-4:]}" if len(digits) > 4 else "***"


def redact(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, secret[:3] + "***")
    text = _BEARER.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)
    return _PHONE.sub(_mask_phone_match, text)


def _mask_phone_match(match: re.Match[str]) -> str:
    found = match.group(0)
    digits = sum(ch.isdigit() for ch in found)
    if digits < 8 or _NOT_A_PHONE.match(found):
        return found
    return mask_phone(found)


def _patch(record: Record) -> None:
    record["message"] = redact(record["message"])
    for key, value in list(record["extra"].items()):
        if isinstance(value, str):
            record["extra"][key] = redact(value)


def configure_logging(*, json_lines: bool = False, level: str = "INFO") -> None:
    logger.remove()
    logger.configure(patcher=_patch)
    if json_lines:
        logger.add(sys.stderr, level=level.upper(), serialize=True, backtrace=False, diagnose=False)
    else:
        logger.add(
            sys.stderr,
            level=level.upper(),
            backtrace=False,
            diagnose=False,
            format=_HUMAN_FORMAT,
        )
