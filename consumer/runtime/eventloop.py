"""The event loop a long-running command runs on: uvloop where it is installed (issue 15, P3).

uvloop (libuv, in C) runs the same asyncio programs with a cheaper loop: selectors,
handles and transports were ~29 % of a busy consumer's samples on asyncio's own loop.
psycopg's async connections (LISTEN included), aiohttp and ``loop.add_signal_handler``
all work on it unchanged. Without uvloop (not installed, or a platform it does not
support) the standard loop is used, with the same behaviour, only more CPU per message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

from ..errors import ConfigurationError

T = TypeVar("T")
EventLoopKind = Literal["auto", "uvloop", "asyncio"]


def loop_factory(kind: EventLoopKind = "auto") -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory, or None for asyncio's default loop.

    ``auto`` falls back silently when uvloop cannot be imported; ``uvloop`` insists."""
    if kind == "asyncio":
        return None
    try:
        import uvloop
    except ImportError as exc:
        if kind == "uvloop":
            raise ConfigurationError("CAMPAIGNQ_EVENT_LOOP=uvloop but uvloop is not installed") from exc
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], *, kind: EventLoopKind = "auto") -> T:
    """`asyncio.run(main)` on the chosen loop (``asyncio.Runner`` takes a factory from 3.11)."""
    try:
        factory = loop_factory(kind)
    except ConfigurationError:
        main.close()  # never awaited: close it, or Python warns about it at exit
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
