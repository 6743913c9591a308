"""Browser tests drive Debian's Chromium: `playwright install` cannot download browsers here."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("CAMPAIGNQ_TEST_CHROMIUM", "/usr/lib/chromium/chromium"))


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    if not CHROMIUM.exists():
        reason = f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CAMPAIGNQ_TEST_CHROMIUM)"
        if os.environ.get("CI"):  # CI installs it (.ci/run): a missing browser there is a failure
            pytest.fail(reason)
        pytest.skip(reason)
    return {**browser_type_launch_args, "executable_path": str(CHROMIUM)}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args: dict[str, Any]) -> dict[str, Any]:
    """A desktop-sized window: the screenshots in docs/ come from these tests."""
    return {**browser_context_args, "viewport": {"width": 1440, "height": 900}}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Browser tests run last in the session.

    Playwright's sync API (pytest-playwright's `page`) starts its session-scoped driver on an
    event loop that stays current in the main thread until the session ends; every asyncio
    test collected after it would fail with "cannot be called from a running event loop".
    """
    browser = [item for item in items if "page" in getattr(item, "fixturenames", ())]
    if browser:
        chosen = {id(item) for item in browser}
        items[:] = [item for item in items if id(item) not in chosen] + browser
