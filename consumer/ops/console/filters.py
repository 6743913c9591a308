"""The dead-letter filter of the page and of `POST /api/replay`: the CLI's filters plus the
error class, parsed from a JSON body or a query string into one typed value.

A bad filter is the operator's mistake, not ours: `FilterError` carries a sentence the API
returns with status 400, naming the field and the accepted form.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...durations import parse_duration_s
from ..replay import ReplayFilters

KEYS = ("run", "reason", "error_class", "older_than", "newer_than", "limit")
MAX_DURATION_S = 100 * 365 * 86400.0
"""A century: longer than any letter has waited; a larger age overflowed PostgreSQL's interval."""
MAX_LIMIT = 2**31 - 1
REPLAY_KEYS = (*KEYS, "dry_run")


class FilterError(ValueError):
    """A filter the operator can fix; its text is shown as is."""


@dataclass(frozen=True)
class DeadLetterFilter:
    run_id: uuid.UUID | None = None
    reason: str | None = None
    error_class: str | None = None
    older_than_s: float | None = None
    newer_than_s: float | None = None
    limit: int | None = None

    def replay_filters(self) -> ReplayFilters:
        return ReplayFilters(
            run_id=self.run_id,
            reason=self.reason,
            older_than_s=self.older_than_s,
            newer_than_s=self.newer_than_s,
            limit=self.limit,
        )

    def to_json(self) -> dict[str, Any]:
        """Only the filters that were set: what the audit shows."""
        values = {
            "run": str(self.run_id) if self.run_id else None,
            "reason": self.reason,
            "error_class": self.error_class,
            "older_than_s": self.older_than_s,
            "newer_than_s": self.newer_than_s,
            "limit": self.limit,
        }
        return {key: value for key, value in values.items() if value is not None}


def parse_filter(values: Mapping[str, Any], *, allowed: tuple[str, ...] = KEYS) -> DeadLetterFilter:
    """Empty strings and nulls mean "any"; unknown keys are refused so a typo never widens a replay."""
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise FilterError(f"unknown filter {', '.join(unknown)}; accepted: {', '.join(allowed)}")
    return DeadLetterFilter(
        run_id=_uuid(values.get("run")),
        reason=_text(values.get("reason"), "reason"),
        error_class=_text(values.get("error_class"), "error_class"),
        older_than_s=_duration(values.get("older_than"), "older_than"),
        newer_than_s=_duration(values.get("newer_than"), "newer_than"),
        limit=_limit(values.get("limit")),
    )


def parse_dry_run(value: Any) -> bool:
    if value is None or value is False or value in ("", "0", "false"):
        return False
    if value is True or value in ("1", "true"):
        return True
    raise FilterError(f"dry_run must be true or false, got {value!r}")


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _uuid(value: Any) -> uuid.UUID | None:
    if _blank(value):
        return None
    try:
        return uuid.UUID(str(value).strip())
    except ValueError:
        raise FilterError(f"run must be a run id (a UUID), got {value!r}") from None


def _text(value: Any, name: str) -> str | None:
    if _blank(value):
        return None
    if not isinstance(value, str) or len(value) > 200:
        raise FilterError(f"{name} must be a short text, got {value!r}")
    if "\x00" in value or not _encodable(value):
        raise FilterError(f"{name} must be text without NUL characters or lone surrogates")
    return value.strip()


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _duration(value: Any, name: str) -> float | None:
    if _blank(value):
        return None
    if isinstance(value, bool):
        raise FilterError(f"{name} must be a duration such as 30m or a number of seconds, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        try:
            seconds = parse_duration_s(str(value))
        except ValueError as exc:
            raise FilterError(f"{name}: {exc}") from None
    if seconds < 0:
        raise FilterError(f"{name} must not be negative, got {value!r}")
    if not seconds <= MAX_DURATION_S:  # NaN included
        raise FilterError(f"{name} must be at most a century (36500d), got {value!r}")
    return seconds


def _limit(value: Any) -> int | None:
    if _blank(value):
        return None
    try:
        limit = int(value) if not isinstance(value, bool | float) else -1
    except (TypeError, ValueError):
        limit = -1
    if not 1 <= limit <= MAX_LIMIT:
        raise FilterError(f"limit must be a positive integer (at most {MAX_LIMIT}), got {value!r}")
    return limit
