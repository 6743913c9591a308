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
    assert "pip install -c constraints.txt -e '.[dev]' && campaignq demo" in text.split("## ")[0]
    assert "\npytest " in text.split("## ")[0]


def test_ci_installs_what_the_readme_installs_from_the_lock() -> None:
    """The lock is what both a reader and CI install; every dependency in it is pinned exactly."""
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert "-c constraints.txt -e '.[dev]'" in ci
    lock = (README.parent / "constraints.txt").read_text(encoding="utf-8").splitlines()
    pins = [line for line in lock if line and not line.startswith("#")]
    assert pins and all("==" in line for line in pins), [line for line in pins if "==" not in line]
    assert any(line.startswith("pytest==") for line in pins)
