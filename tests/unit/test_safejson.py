"""The guard every outside JSON goes through: hostile documents are refused with a sentence,
never with a RecursionError or a crash of the interpreter."""

from __future__ import annotations

import pytest

from consumer.safejson import UnsafeJSON, loads, loads_object, nesting_depth


@pytest.mark.parametrize(
    ("document", "depth"),
    [
        (b"1", 0),
        (b"{}", 1),
        (b'{"a": [1, {"b": []}]}', 4),
        (b'{"a": "[[[[{{{{"}', 1),
        (b'["\\"[[[", []]', 2),
    ],
)
def test_nesting_depth_ignores_brackets_inside_strings(document: bytes, depth: int) -> None:
    assert nesting_depth(document) == depth


@pytest.mark.parametrize("levels", [65, 3_000, 1_000_000])
def test_deep_documents_are_refused_before_parsing(levels: int) -> None:
    with pytest.raises(UnsafeJSON, match="nests deeper than 64 levels"):
        loads(b"[" * levels + b"]" * levels)


def test_many_brackets_side_by_side_are_not_deep() -> None:
    assert loads(b"[" + b"[]," * 500 + b"[]]") == [[]] * 501


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        (b"NaN", "not valid JSON"),
        (b'{"x": Infinity}', "not valid JSON"),
        (b"1e309", "not valid JSON"),
        (b'"\\ud800"', "not valid JSON"),
        (b"\xff", "not valid JSON"),
        (b"", "not valid JSON"),
    ],
)
def test_values_json_does_not_allow_are_refused(document: bytes, reason: str) -> None:
    with pytest.raises(UnsafeJSON, match=reason):
        loads(document)


def test_size_cap() -> None:
    with pytest.raises(UnsafeJSON, match="larger than the 10 accepted"):
        loads(b'"' + b"x" * 20 + b'"', max_bytes=10)


def test_object_expected() -> None:
    assert loads_object('{"v": 1}') == {"v": 1}
    with pytest.raises(UnsafeJSON, match="expected a JSON object, got list"):
        loads_object("[1]")
