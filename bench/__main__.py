"""``python -m bench [name ...] [--quick]``: run benchmarks, print and record their numbers."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench import BENCHMARKS, common, load, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "names",
        nargs="*",
        metavar="name",
        help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes: checks the benchmark works, numbers are not meaningful",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"where to write <name>.json and <name>.png (default: {common.OUT_DIR}, "
        "or its quick/ subfolder with --quick, so a smoke run never overwrites real numbers)",
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    out_dir = args.out or (common.OUT_DIR / "quick" if args.quick else common.OUT_DIR)

    for name in args.names or list(BENCHMARKS):
        module = load(name)
        print(f"== {name} ({'quick' if args.quick else 'full'}) ==", flush=True)
        started = time.perf_counter()
        result = module.run(quick=args.quick)
        common.record(
            name,
            result,
            quick=args.quick,
            elapsed_s=time.perf_counter() - started,
            plot=getattr(module, "plot", None),
            out_dir=out_dir,
        )
    ran = set(args.names or BENCHMARKS)
    if not args.quick and args.out is None and ran & set(report.SOURCES):
        try:
            report.main([])  # the README and docs blocks quote these files
        except report.ReportError as exc:
            print(f"docs not rewritten: {exc}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
