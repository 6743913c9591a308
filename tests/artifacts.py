"""Where the suite writes what it measures or shows: never into the checkout's tracked files.

A test run must leave `git status` clean, so summaries and screenshots land in an ignored
folder (``build/test-artifacts/``, or ``CAMPAIGNQ_TEST_ARTIFACTS``). Publishing them into
``bench/out/`` and ``docs/`` is a deliberate step: ``python -m bench.publish``.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS_ENV = "CAMPAIGNQ_TEST_ARTIFACTS"


def artifacts_dir() -> Path:
    folder = Path(os.environ.get(ARTIFACTS_ENV) or ROOT / "build" / "test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def artifact(name: str) -> Path:
    """The path a test writes its file `name` to (the folder exists)."""
    return artifacts_dir() / name
