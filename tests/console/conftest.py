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
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CAMPAIGNQ_TEST_CHROMIUM)")
    return {**browser_type_launch_args, "executable_path": str(CHROMIUM)}
