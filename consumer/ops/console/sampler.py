"""One reader per process for every open page.

Each open page subscribes to the sampler's stream (server-sent events); the sampler reads the
database once per interval while anyone is subscribed and hands the same JSON text to every
subscriber, so ten open pages cost the database what one does, and none when nobody looks.
A slow page never holds the others up: its queue keeps only the newest snapshot.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from loguru import logger

from ...errors import one_line

Collect = Callable[[], Awaitable[dict[str, Any]]]


class Sampler:
    def __init__(self, collect: Collect, *, interval_s: float) -> None:
        self._collect = collect
        self._interval_s = interval_s
        self._subscribers: set[asyncio.Queue[str]] = set()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._latest: str | None = None
        self._latest_at = 0.0
        self.samples = 0  # database reads so far: /healthz shows it, tests compare it

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def subscribe(self) -> asyncio.Queue[str]:
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=1)
        if self._latest is not None:
            queue.put_nowait(self._latest)
        self._subscribers.add(queue)
        self._wake.set()
        return queue

    def unsubscribe(self, queue: asyncio.Queue[str]) -> None:
        self._subscribers.discard(queue)

    async def latest(self) -> str:
        """The newest snapshot, read now only when older than one interval (shared with the loop)."""
        if self._latest is None or time.monotonic() - self._latest_at >= self._interval_s:
            await self._sample()
        return self._latest or "{}"

    async def run(self) -> None:
        """Sample every interval while someone listens; sleep on the wake event otherwise."""
        while True:
            if not self._subscribers:
                self._wake.clear()
                await self._wake.wait()
            if time.monotonic() - self._latest_at >= self._interval_s * 0.9:
                await self._sample()
            await asyncio.sleep(self._interval_s)

    async def _sample(self) -> None:
        async with self._lock:
            if self._latest is not None and time.monotonic() - self._latest_at < self._interval_s * 0.5:
                return  # someone sampled while we waited for the lock
            try:
                snapshot = await self._collect()
                snapshot["ok"] = True
            except Exception as exc:  # the page shows it and the next tick retries
                logger.warning("console sampler: {}", exc)
                snapshot = {"ok": False, "error": one_line(exc)[:300]}
            self.samples += 1
            self._latest = json.dumps(snapshot, default=str)
            self._latest_at = time.monotonic()
            for queue in list(self._subscribers):
                if queue.full():
                    queue.get_nowait()
                queue.put_nowait(self._latest)
