"""The vocabulary (consumer/vocabulary.py) and the strings SQL, the docs and the errors use agree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from consumer import errors
from consumer.core import policy
from consumer.runtime.ai import StructuredOutputUnsupportedError
from consumer.vocabulary import DeadLetterReason, ErrorClass, MessageStatus, RunStatus

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = (ROOT / "db" / "migrations" / "0001_schema.sql").read_text(encoding="utf-8")


def _check_values(column_line_pattern: str) -> set[str]:
    match = re.search(column_line_pattern + r"[^\n]*\n?[^\n]*CHECK \(status IN \(([^)]*)\)\)", SCHEMA)
    assert match is not None, column_line_pattern
    return set(re.findall(r"'([a-z_]+)'", match.group(1)))


@pytest.mark.parametrize(
    ("table", "enum"),
    [("campaign_runs", RunStatus), ("campaign_messages", MessageStatus)],
)
def test_status_checks_match_the_enums(table: str, enum: type[MessageStatus] | type[RunStatus]) -> None:
    block = SCHEMA[SCHEMA.index(f"CREATE TABLE {table}") :]
    match = re.search(r"CHECK \(status IN \(([^)]*)\)\)", block)
    assert match is not None
    assert set(re.findall(r"'([a-z_]+)'", match.group(1))) == {member.value for member in enum}


def test_dead_letter_reasons_are_the_vocabulary() -> None:
    assert policy.DEAD_LETTER_REASONS == {reason.value for reason in DeadLetterReason}
    assert "unknown_message" in policy.DEAD_LETTER_REASONS  # triage produces it
    assert "run_gone" not in policy.DEAD_LETTER_REASONS  # nothing produces it


def test_operations_guide_lists_every_reason() -> None:
    guide = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    listed = re.search(r"Reasons: ((?:`[a-z_]+`,?\s*)+)\.", guide)
    assert listed is not None
    assert set(re.findall(r"`([a-z_]+)`", listed.group(1))) == {r.value for r in DeadLetterReason}


def _subclasses(cls: type[errors.CampaignqError]) -> list[type[errors.CampaignqError]]:
    found: list[type[errors.CampaignqError]] = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


def test_every_error_class_is_in_the_vocabulary() -> None:
    classes: list[type[errors.CampaignqError]] = [errors.CampaignqError, *_subclasses(errors.CampaignqError)]
    assert StructuredOutputUnsupportedError in classes
    assert all(isinstance(cls.error_class, ErrorClass) for cls in classes), [
        cls for cls in classes if not isinstance(cls.error_class, ErrorClass)
    ]


def test_the_sql_dead_letter_function_takes_the_reason_as_given() -> None:
    """The reason is written by Python (no SQL literal to keep in step): one parameter."""
    outcomes = (ROOT / "db" / "migrations" / "0004_consumer_outcomes.sql").read_text(encoding="utf-8")
    assert "'reason', p_reason" in outcomes
    for reason in DeadLetterReason:
        assert f"'{reason.value}'" not in outcomes
