"""Where a consumer's CPU goes: py-spy on a live `campaignq consume`, summarised by component.

A flame graph answers "where does the time go?" for a person with an afternoon; a
benchmark report needs three lines. So the raw stacks (``py-spy record -f raw``: one
``frame;frame;… count`` line per distinct stack, idle samples excluded) are folded twice:

* **self** — the innermost frame's library: who is actually burning the cycles
  (psycopg, aiohttp, the event loop, loguru, json, our code…);
* **inclusive** — which of our operations the sample sits under (a database call, an AI
  request, a WhatsApp send, a log line…), so a proposal can name the call to change.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# (category, substring of the innermost "function (file:line)") — the first match wins.
SELF_CATEGORIES: list[tuple[str, str]] = [
    ("logging (loguru + our redaction)", "loguru"),
    ("logging (loguru + our redaction)", "consumer/logs.py"),
    ("psycopg_pool", "psycopg_pool"),
    ("psycopg", "psycopg"),
    ("aiohttp / yarl / multidict", "aiohttp"),
    ("aiohttp / yarl / multidict", "yarl"),
    ("aiohttp / yarl / multidict", "multidict"),
    ("aiolimiter", "aiolimiter"),
    ("prometheus_client", "prometheus_client"),
    ("pydantic", "pydantic"),
    ("json", "json/"),
    ("regex (re)", "/re/"),
    ("asyncio event loop", "asyncio/"),
    ("asyncio event loop", "selectors.py"),
    ("campaignq code", "consumer/"),
]
# (operation, substring of any frame on the stack) — the first operation in this list that
# appears anywhere on the stack wins, so a log line inside a send counts as logging.
INCLUSIVE_OPERATIONS: list[tuple[str, str]] = [
    ("log lines", "consumer/logs.py"),
    ("log lines", "loguru/"),
    ("metrics (prometheus_client)", "prometheus_client"),
    ("read + claim batch", "_read_loop (consumer/runtime/worker.py"),
    ("read + claim batch", "_start (consumer/runtime/worker.py"),
    ("heartbeat / listener", "_heartbeat (consumer/runtime/worker.py"),
    ("heartbeat / listener", "_listen (consumer/runtime/worker.py"),
    ("AI request (generate / split)", "(consumer/runtime/ai.py"),
    ("WhatsApp send / state", "(consumer/runtime/whatsapp.py"),
    ("outcome + progress SQL (store, record part, complete)", "(consumer/runtime/db.py"),
    ("split / validation / prompt", "(consumer/core/split.py"),
    ("split / validation / prompt", "(consumer/core/validation.py"),
    ("split / validation / prompt", "(consumer/core/prompt.py"),
    ("pipeline glue", "(consumer/runtime/pipeline.py"),
    ("aiohttp I/O callbacks (parsing responses)", "aiohttp/"),
    ("event loop (callbacks, selectors, task switching)", "asyncio/"),
]


@dataclass
class Profile:
    samples: int = 0
    self_time: Counter[str] = field(default_factory=Counter)
    inclusive: Counter[str] = field(default_factory=Counter)
    top_frames: Counter[str] = field(default_factory=Counter)

    def shares(self, counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, n / self.samples) for name, n in counter.most_common()] if self.samples else []


def available() -> bool:
    return shutil.which("py-spy") is not None


def record(pid: int, out: Path, *, duration_s: float, rate_hz: int = 250) -> Path | None:
    """Sample `pid` for `duration_s`; None when py-spy is missing or not allowed to attach."""
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        return None
    result = subprocess.run(
        [
            py_spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, round(duration_s))),
            "--rate",
            str(rate_hz),
            "--nonblocking",
            "-f",
            "raw",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=duration_s + 60,
    )
    return out if result.returncode == 0 and out.exists() else None


def summarise(raw: Path) -> Profile:
    profile = Profile()
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        profile.samples += count
        profile.self_time[_self_category(frames[-1])] += count
        profile.inclusive[_operation(frames)] += count
        profile.top_frames[frames[-1]] += count
    return profile


def _self_category(frame: str) -> str:
    for name, needle in SELF_CATEGORIES:
        if needle in frame:
            return name
    return "other (interpreter, stdlib)"


def _operation(frames: list[str]) -> str:
    for name, needle in INCLUSIVE_OPERATIONS:
        if any(needle in frame for frame in frames):
            return name
    return "other"
