from __future__ import annotations

import pytest


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The chaos figures, whatever the capture mode: the issue asks for them on every CI run."""
    from tests.chaos import test_chaos

    if not test_chaos.FIGURES:
        return
    terminalreporter.section("chaos figures")
    for key, value in test_chaos.FIGURES.items():
        if key == "timeline":
            for line in value:
                terminalreporter.write_line(f"  {line}")
        else:
            terminalreporter.write_line(f"{key}: {value}")
