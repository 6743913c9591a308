"""The consumer's event loop: uvloop where importable, asyncio's own otherwise (issue 15, P3)."""

from __future__ import annotations

import asyncio
import sys

import pytest

from consumer.errors import ConfigurationError
from consumer.runtime import eventloop


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_auto_runs_on_uvloop_when_installed() -> None:
    pytest.importorskip("uvloop")
    assert eventloop.run(_loop_module()).startswith("uvloop")


def test_asyncio_runs_on_the_standard_loop() -> None:
    assert eventloop.loop_factory("asyncio") is None
    assert eventloop.run(_loop_module(), kind="asyncio").startswith("asyncio")


def test_without_uvloop_auto_falls_back_and_uvloop_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` raises ImportError
    assert eventloop.loop_factory("auto") is None
    assert eventloop.run(_loop_module()).startswith("asyncio")
    with pytest.raises(ConfigurationError, match="uvloop is not installed"):
        eventloop.run(_loop_module(), kind="uvloop")
