"""`campaignq demo` prints the console's URL; `--serve` keeps the console open until Ctrl-C."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.cli import campaignq_env


def test_demo_prints_the_console_url_and_serve_keeps_it_open(database_url: str, tmp_path: Path) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "consumer.cli",
            "demo",
            "--leads",
            "20",
            "--ai-latency",
            "50ms",
            "--serve",
            "--data-dir",
            str(tmp_path),
        ],
        env=campaignq_env(database_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "console stays open" in line:
                break
        output = "".join(lines)
        urls = re.findall(r"(http://127\.0\.0\.1:\d+/)", output)
        assert len(urls) == 2 and urls[0] == urls[1], output  # printed at the start and at the end
        assert "log in with admin token" in output
        with urllib.request.urlopen(f"{urls[0]}healthz", timeout=10) as response:  # noqa: S310 (loopback)
            assert json.load(response)["ok"] is True
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
