"""Parsing JSON that comes from outside: a queue row, a webhook body, a provider's answer.

One hostile document must never stop a process. Python's ``json`` raises ``RecursionError``
on a few thousand nested arrays (a 6 KB queue payload stopped every consumer), orjson parses
deeper but crashes the interpreter at about a million levels, and both accept documents far
larger than anything we expect. So every outside JSON goes through :func:`loads`: a size cap
and a nesting cap checked *before* parsing (an iterative scan, no recursion), then orjson,
which already refuses NaN, Infinity, numbers that overflow a double and lone surrogates. Every
refusal is one :class:`UnsafeJSON` (a ``ValueError``) with a sentence an operator can read.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

# Deeper than any payload, event or answer we read (Evolution's webhooks nest about 6 levels).
DEFAULT_MAX_DEPTH = 64
# The largest outside document we parse by default: a provider answer or webhook body.
DEFAULT_MAX_BYTES = 4 * 1024 * 1024

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_A_BRACKET = bytes(c for c in range(256) if c not in b"[]{}")


class UnsafeJSON(ValueError):
    """The document is not JSON we accept: too large, nested too deep, or not valid JSON."""


def nesting_depth(document: bytes) -> int:
    """The deepest nesting of arrays and objects in `document`, brackets inside strings aside.

    Counted without recursion and without parsing, so it is safe on any input. A document with
    fewer brackets than the limit cannot exceed it: callers check that first (the usual case).
    """
    brackets = _STRING.sub(b"", document).translate(None, _NOT_A_BRACKET)
    depth = deepest = 0
    for byte in brackets:
        if byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def loads(
    document: bytes | str,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Any:
    """`document` parsed, or :class:`UnsafeJSON` saying why not."""
    raw = document.encode("utf-8", "surrogatepass") if isinstance(document, str) else document
    if len(raw) > max_bytes:
        raise UnsafeJSON(f"JSON document of {len(raw):,} bytes is larger than the {max_bytes:,} accepted")
    if raw.count(b"[") + raw.count(b"{") > max_depth and nesting_depth(raw) > max_depth:
        raise UnsafeJSON(f"JSON document nests deeper than {max_depth} levels")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise UnsafeJSON(f"not valid JSON: {exc}") from None


def loads_object(
    document: bytes | str,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> dict[str, Any]:
    """Like :func:`loads`, for documents that must be a JSON object."""
    value = loads(document, max_depth=max_depth, max_bytes=max_bytes)
    if not isinstance(value, dict):
        raise UnsafeJSON(f"expected a JSON object, got {type(value).__name__}")
    return value
