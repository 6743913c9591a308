"""campaignq benchmarks: ``python -m bench [name ...] [--quick]``.

A benchmark is a module with ``run(quick: bool) -> dict`` (and optionally
``plot(result, path)``); register it by adding one line to ``BENCHMARKS``. Numbers are
printed and written to ``bench/out/``; nothing here ever asserts on time (see README.md).
"""

from __future__ import annotations

import importlib
from types import ModuleType

# name -> module path. Modules are imported only when their benchmark is run, so one
# benchmark's heavy imports never slow another down.
BENCHMARKS: dict[str, str] = {
    "producer": "bench.producer",
    "consumer": "bench.consumer",
    "cost": "bench.cost",
    "scaling": "bench.scaling",
    "endtoend": "bench.endtoend",
    "llmcost": "bench.llmcost",
    "pacing": "bench.pacing",
    "fairness": "bench.fairness",
    "budget": "bench.budget",
    "grouped": "bench.grouped",
    "peer": "bench.peer",
    "scale": "bench.scale",
}


def load(name: str) -> ModuleType:
    """The module of a registered benchmark; a KeyError names the known ones."""
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(sorted(BENCHMARKS))}")
    return importlib.import_module(BENCHMARKS[name])
