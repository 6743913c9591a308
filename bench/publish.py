"""``python -m bench.publish``: copy what the last test run measured and photographed into the
files the README and docs quote.

Why a separate step: a test run never writes tracked files (``git status`` stays clean after
``pytest``), so the chaos summary, the console's replay timing and the console screenshots
land in ``build/test-artifacts/``; publishing them is a choice made on purpose, after a run
on a quiet box, and shows up in the diff like any other change.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ARTIFACTS = ROOT / "build" / "test-artifacts"

# artifact name -> where the docs quote it from
PUBLISHED = {
    "chaos_summary.json": ROOT / "bench" / "out" / "chaos_summary.json",
    "console_replay_10k.json": ROOT / "bench" / "out" / "console_replay_10k.json",
    "load_summary.json": ROOT / "bench" / "out" / "load_summary.json",
    **{
        f"console-{page}.png": ROOT / "docs" / f"console-{page}.png"
        for page in ("overview", "runs", "dead-letters", "inboxes", "workspaces")
    },
}


def publish(artifacts: Path) -> tuple[list[Path], list[str]]:
    """Copy every published artifact found in `artifacts`; (copied targets, missing names)."""
    copied, missing = [], []
    for name, target in PUBLISHED.items():
        source = artifacts / name
        if not source.is_file():
            missing.append(name)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        copied.append(target)
    return copied, missing


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.publish", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--from",
        dest="artifacts",
        type=Path,
        default=DEFAULT_ARTIFACTS,
        help=f"the test run's artifacts folder (default: {DEFAULT_ARTIFACTS.relative_to(ROOT)})",
    )
    args = parser.parse_args(argv)
    copied, missing = publish(args.artifacts)
    for target in copied:
        print(f"published: {target.relative_to(ROOT)}")
    for name in missing:
        print(f"not in {args.artifacts}: {name} (run the test that writes it first)", file=sys.stderr)
    return 0 if copied else 1


if __name__ == "__main__":
    sys.exit(main())
