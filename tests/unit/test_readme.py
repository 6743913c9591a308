"""The README's configuration reference names every setting (so it cannot drift)."""

from __future__ import annotations

from pathlib import Path

from consumer.settings import Settings, env_names

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    text = README.read_text(encoding="utf-8")
    names = [name for field in Settings.model_fields for name in env_names(field)]
    missing = [name for name in names if f"`{name}`" not in text]
    assert missing == []


def test_readme_starts_with_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert "pip install -e '.[dev]' && campaignq demo" in text.split("## ")[0]
    assert "\npytest " in text.split("## ")[0]
