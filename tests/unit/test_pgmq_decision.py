"""`migrate`'s PGMQ decision table and the pooler setting, as pure functions."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumer.errors import ConfigurationError
from consumer.ops.migrate import PgmqFound, decide_pgmq
from consumer.pooler import uses_transaction_pooler

ALL_THERE: tuple[str, ...] = ()


@pytest.mark.parametrize(
    ("found", "action"),
    [
        (PgmqFound("1.4.4", True, ALL_THERE, "1.4.4"), "use"),
        (PgmqFound("1.5.1", True, ALL_THERE, "1.5.1"), "use"),
        (PgmqFound("1.13.0", True, ALL_THERE, None), "use"),
        (PgmqFound(None, True, ALL_THERE, None), "use"),  # bundled SQL with every function
        (PgmqFound(None, True, ALL_THERE, None, bundled_version="1.13.0"), "use"),
        (PgmqFound(None, False, ALL_THERE, "1.4.4"), "create-extension"),
        (PgmqFound(None, False, ALL_THERE, "1.5.1"), "create-extension"),
        (PgmqFound(None, False, ALL_THERE, "1.3.3"), "bundled-sql"),  # never an old default
        (PgmqFound(None, False, ALL_THERE, None), "bundled-sql"),
    ],
)
def test_supported_or_absent_pgmq_is_used_or_installed(found: PgmqFound, action: str) -> None:
    assert decide_pgmq(found) == action


@pytest.mark.parametrize(
    ("found", "needs"),
    [
        (PgmqFound("1.4.3", True, ALL_THERE, "1.4.3"), "ALTER EXTENSION pgmq UPDATE"),
        (PgmqFound("0.31.0", True, ALL_THERE, None), "ALTER EXTENSION pgmq UPDATE"),
        (PgmqFound("2.0.0", True, ALL_THERE, None), "1.4.4 or newer (1.x)"),
        (PgmqFound("1.5.1", True, ("pgmq.archive(text,bigint)",), None), "lacks pgmq.archive"),
        (PgmqFound(None, True, ("pgmq.read(text,integer,integer)",), "1.5.1"), "lacks pgmq.read"),
        (PgmqFound(None, True, ALL_THERE, None, bundled_version="1.3.0"), "PGMQ 1.3.0 (bundled SQL)"),
    ],
)
def test_unsupported_pgmq_stops_with_one_line_saying_what_is_needed(found: PgmqFound, needs: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        decide_pgmq(found)
    assert needs in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("mode", "url", "pooled"),
    [
        ("auto", "postgresql://u@db.example.supabase.co:5432/postgres", False),
        ("auto", "postgresql://u@aws-0-eu.pooler.supabase.com:6543/postgres", True),
        ("auto", "host=x port=6543 dbname=postgres", True),
        ("auto", "postgresql://u@localhost/postgres", False),
        ("none", "postgresql://u@x:6543/postgres", False),
        ("transaction", "postgresql://u@x:6432/postgres", True),
    ],
)
def test_transaction_pooler_is_the_setting_or_supabase_port_6543(mode: str, url: str, pooled: bool) -> None:
    assert uses_transaction_pooler(mode, url) is pooled  # type: ignore[arg-type]


def test_the_supported_range_and_the_supabase_guide_are_documented() -> None:
    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text(encoding="utf-8")
    guide = (root / "docs" / "supabase.md").read_text(encoding="utf-8")
    assert "docs/supabase.md" in readme
    assert "1.4.4" in readme and "1.4.4" in guide
    assert "ALTER EXTENSION pgmq UPDATE" in guide and "6543" in guide
