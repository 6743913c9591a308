"""Human durations on the command line: ``500ms``, ``5s``, ``2m``, ``1h``, ``1d`` or plain seconds."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(?P<value>\d+(?:\.\d+)?)\s*(?P<unit>ms|s|m|h|d)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration_s(text: str) -> float:
    """Seconds in ``text``; raises ValueError with the accepted forms when it is not one."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"not a duration: {text!r} (use e.g. 500ms, 5s, 2m, 1h, 1d)")
    return float(match["value"]) * _UNIT_S[match["unit"]]
