"""Argument types shared by the operator commands (replay, stats, prune).

argparse names the type function in its error ("invalid parse_duration_s value"); raising
ArgumentTypeError instead prints the reason and the accepted forms.
"""

from __future__ import annotations

import argparse

from ..durations import parse_duration_s


def duration_s(text: str) -> float:
    try:
        return parse_duration_s(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value
