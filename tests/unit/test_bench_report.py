"""The per-message cost figures in README.md and docs/benchmarks.md are the ones bench/out holds."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from bench import report


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    return report.load_results()


@pytest.mark.parametrize("document", report.DOCUMENTS, ids=lambda path: path.name)
def test_each_document_quotes_the_committed_result_files(document: Any, results: dict[str, Any]) -> None:
    text = document.read_text(encoding="utf-8")
    assert "per-message-cost" in report.blocks_in(text)
    assert report.render(text, results) == text, "run `python -m bench.report` after a benchmark"


def test_a_block_is_rewritten_from_the_files(results: dict[str, Any]) -> None:
    stale = (
        "before\n<!-- bench:per-message-cost -->\n| 1 ms, typed by hand |\n"
        "<!-- /bench:per-message-cost -->\nafter\n"
    )
    rendered = report.render(stale, results)
    assert "typed by hand" not in rendered
    assert rendered.startswith("before\n<!-- bench:per-message-cost -->\n| measurement |")
    assert rendered.endswith("<!-- /bench:per-message-cost -->\nafter\n")
    cost_now = results["cost"]["aggregate"]["split off"]["now"]["CPU ms/msg"]
    assert f"**{cost_now:.2f} ms**" in rendered


def test_an_unknown_block_is_refused(results: dict[str, Any]) -> None:
    with pytest.raises(report.ReportError, match="unknown bench block 'typo'"):
        report.render("<!-- bench:typo -->\nx\n<!-- /bench:typo -->", results)


def test_a_result_file_without_a_figure_names_the_file_and_the_figure(results: dict[str, Any]) -> None:
    broken = copy.deepcopy(results)
    del broken["peer"]["summary"]
    with pytest.raises(report.ReportError, match=r"peer\.json has no summary"):
        report.headline(broken)
