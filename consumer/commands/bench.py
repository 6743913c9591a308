"""`campaignq bench`: the benchmarks in bench/ (`python -m bench`), from the same command line."""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from ..errors import ConfigurationError

HELP = "run the benchmarks (bench/, a source checkout): print tables, write bench/out/*.json and *.png"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run (default: all)")
    parser.add_argument(
        "--quick", action="store_true", help="small sizes: proves they run, numbers meaningless"
    )
    parser.add_argument("--out", metavar="DIR", help="where to write the results (default bench/out)")


def run(args: argparse.Namespace) -> int:
    try:
        runner: Any = importlib.import_module("bench.__main__")
    except ModuleNotFoundError as exc:
        if exc.name not in ("bench", "bench.__main__"):
            raise
        raise ConfigurationError(
            "the benchmarks live in the source checkout (bench/): run this from a clone installed "
            "with `pip install -e '.[dev]'`"
        ) from exc
    argv = [*args.names, *(["--quick"] if args.quick else []), *(["--out", args.out] if args.out else [])]
    return int(runner.main(argv))
