from __future__ import annotations

import sys
from typing import Any

import pytest


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The chaos (and, when run, load) figures whatever the capture mode: the issue asks for
    them on every CI run."""
    for title, module in (
        ("chaos figures", "tests.chaos.test_chaos"),
        ("load figures", "tests.integration.test_load"),
    ):
        figures: dict[str, Any] = getattr(sys.modules.get(module), "FIGURES", {})
        if not figures:
            continue
        terminalreporter.section(title)
        for key, value in figures.items():
            if isinstance(value, list):
                for line in value:
                    terminalreporter.write_line(f"  {line}")
            else:
                terminalreporter.write_line(f"{key}: {value}")
