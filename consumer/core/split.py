"""Splitting a message into WhatsApp bubbles (audit problem 13: no regex soup, no nested fallbacks).

Two ways in, one way out. The LLM may propose parts (a JSON answer validated by pydantic
against `split_response_schema`); they are used only when they respect the limits *and*
carry the generated text word for word, so what is stored as `generated_message` is what the
lead reads. Otherwise `split_text` splits deterministically. `plan_parts` is the single
place that decides which.

`split_text` contract:
- every part is non-empty and at most `max_chars` long (WhatsApp's hard limit is 4096);
- nothing is lost or reordered: the parts, concatenated, equal the text up to whitespace
  (``"".join("".join(parts).split()) == "".join(text.split())``); when every cut falls on
  whitespace, ``" ".join(parts)`` equals the text with whitespace normalised;
- cuts prefer paragraph breaks, then line or sentence ends, then spaces; a run longer
  than `max_chars` without whitespace (CJK without punctuation, a pasted URL) is cut
  inside, never inside a grapheme we can recognise (emoji sequences, combining marks);
- at most `max_parts` parts: one per paragraph when there are few enough, else adjacent
  pieces share bubbles, balanced in length;
- *unless* the text does not fit `max_parts` bubbles of `max_chars` even when cut
  between any two words. Then `max_parts` is exceeded: bubbles are filled up to
  `max_chars` with whole paragraphs (cut finer only inside a paragraph too long for one
  bubble). Chosen over raising because the text is valid and already paid for, and over
  truncating because a message must arrive whole: `max_chars` is WhatsApp's hard limit,
  `max_parts` a style preference. It takes a text of nearly `max_parts` x `max_chars`
  (12k chars for 3 x 4096), which the config's `max_tokens` (1024 by default) already prevents.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

WHATSAPP_MAX_PART_CHARS = 4096
"""WhatsApp rejects a text body longer than this."""

# Boundary ranks, strongest first: splitting "at level L" cuts at every boundary of rank <= L.
_PARAGRAPH, _SENTENCE, _WORD, _CUT = range(4)
_LEVELS = (_PARAGRAPH, _SENTENCE, _WORD, _CUT)

_NON_SPACE = re.compile(r"\S+")
# A word that ends a sentence: terminal punctuation, then any closing quotes or brackets.
_ENDS_SENTENCE = re.compile(r"[.!?…][\"'”’»)\]]*\Z")  # noqa: RUF001
# CJK text puts no space after its full stops, so a sentence may end inside a "word".
_CJK_SENTENCE_END = re.compile(r"(?<=[。！？])(?=.)")  # noqa: RUF001
# An answer wrapped in a Markdown code fence, as models like to do despite instructions.
_FENCED = re.compile(r"\A```(?:json)?\s*(.*?)\s*```\Z", re.DOTALL | re.IGNORECASE)

_ZWJ = "\u200d"
_GRAPHEME_BACKOFF_CHARS = 32


class SplitAnswer(BaseModel):
    """The splitting LLM's answer; see `split_response_schema`."""

    parts: list[str]


def split_response_schema(max_parts: int, max_chars: int) -> dict[str, Any]:
    """The JSON schema for OpenAI ``response_format.json_schema.schema``.

    The per-part length goes in a description, not ``maxLength``: strict structured
    outputs do not support length keywords on every provider, and `parse_split_answer`
    checks it anyway.
    """
    return {
        "type": "object",
        "properties": {
            "parts": {
                "type": "array",
                "description": (
                    f"The message split into 1 to {max_parts} consecutive chat bubbles, "
                    "in order, with the text unchanged."
                ),
                "items": {"type": "string", "description": f"One bubble, at most {max_chars} characters."},
                "minItems": 1,
                "maxItems": max_parts,
            }
        },
        "required": ["parts"],
        "additionalProperties": False,
    }


def parse_split_answer(content: str | None, *, max_parts: int, max_chars: int) -> list[str] | None:
    """The LLM's parts, trimmed, or None when the answer is unusable (the caller then falls back).

    Blank parts are dropped rather than rejected: they carry no text, so nothing is lost.
    """
    if content is None:
        return None
    stripped = content.strip()
    fenced = _FENCED.match(stripped)
    if fenced is not None:
        stripped = fenced[1]
    try:
        answer = SplitAnswer.model_validate_json(stripped)
    except ValidationError:
        return None
    parts = [part.strip() for part in answer.parts if part.strip()]
    return parts if _within_limits(parts, max_parts=max_parts, max_chars=max_chars) else None


def plan_parts(
    text: str, *, split_enabled: bool, llm_parts: list[str] | None, max_parts: int, max_chars: int
) -> list[str]:
    """The parts that will be sent, in order: the one decision, stored before the first send."""
    _check_limits(max_parts, max_chars)
    if not text.strip():
        raise ValueError("nothing to send: validate the text before planning its parts")
    if not split_enabled:
        if len(text) <= max_chars:
            return [text]
        return split_text(text, max_parts=1, max_chars=max_chars)
    if llm_parts is not None:
        parts = [part.strip() for part in llm_parts if part.strip()]
        if _within_limits(parts, max_parts=max_parts, max_chars=max_chars) and _same_text(parts, text):
            return parts
    return split_text(text, max_parts=max_parts, max_chars=max_chars)


def split_text(text: str, *, max_parts: int, max_chars: int) -> list[str]:
    """Deterministic split; see the module docstring for the contract. Blank text gives ``[]``."""
    _check_limits(max_parts, max_chars)
    atoms = _atoms(text.replace("\r\n", "\n").replace("\r", "\n"), max_chars)
    if not atoms:
        return []
    spans = _plan(atoms, max_parts, max_chars)
    if spans is None:
        # Too long for max_parts bubbles at any level. The count is lost anyway, so keep
        # the cuts clean: full bubbles of whole paragraphs (finer only inside a paragraph
        # longer than max_chars).
        spans = _pack(atoms, _units(atoms, 0, len(atoms), _PARAGRAPH, max_chars), max_chars)
    return [_render(atoms, start, end) for start, end in spans]


# --- internals --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Atom:
    """The smallest piece of text a bubble boundary may fall around."""

    text: str
    rank: int  # strength of the boundary before this atom
    sep: str  # what joins it to the previous atom inside one bubble

    def __len__(self) -> int:
        return len(self.text)


_Span = tuple[int, int]  # [start, end) indices into the atom list


def _check_limits(max_parts: int, max_chars: int) -> None:
    if max_parts < 1 or max_chars < 1:
        raise ValueError(f"max_parts and max_chars must be >= 1, got {max_parts} and {max_chars}")


def _within_limits(parts: Sequence[str], *, max_parts: int, max_chars: int) -> bool:
    return 1 <= len(parts) <= max_parts and all(0 < len(part) <= max_chars for part in parts)


def _same_text(parts: Sequence[str], text: str) -> bool:
    """Whitespace may move (where the bubbles break), words may not."""
    if "\n\n".join(parts) == text:
        return True  # the usual case, cheaply: the text is the bubbles as stored (issue 15)
    return "".join("".join(parts).split()) == "".join(text.split())


def _atoms(text: str, max_chars: int) -> list[_Atom]:
    atoms: list[_Atom] = []
    previous_end = 0
    for match in _NON_SPACE.finditer(text):
        gap = text[previous_end : match.start()]
        previous_end = match.end()
        rank, sep = _boundary(gap, atoms[-1].text) if atoms else (_PARAGRAPH, "")
        for index, sentence in enumerate(_CJK_SENTENCE_END.split(match[0])):
            if index > 0:
                rank, sep = _SENTENCE, ""
            for chunk in _hard_cut(sentence, max_chars):
                atoms.append(_Atom(chunk, rank, sep))
                rank, sep = _CUT, ""
    return atoms


def _boundary(gap: str, previous: str) -> tuple[int, str]:
    newlines = gap.count("\n")
    if newlines >= 2:
        return _PARAGRAPH, "\n\n"
    if newlines == 1:
        return _SENTENCE, "\n"
    if _ENDS_SENTENCE.search(previous):
        return _SENTENCE, " "
    return _WORD, " "


def _hard_cut(word: str, max_chars: int) -> list[str]:
    """Equal chunks of at most max_chars, each cut moved back out of a grapheme when it can be."""
    if len(word) <= max_chars:
        return [word]
    count = -(-len(word) // max_chars)
    size = -(-len(word) // count)
    chunks: list[str] = []
    start = 0
    while start < len(word):
        end = min(start + size, len(word))
        if end < len(word):
            end = _grapheme_safe_cut(word, start, end)
        chunks.append(word[start:end])
        start = end
    return chunks


def _grapheme_safe_cut(word: str, start: int, end: int) -> int:
    for cut in range(end, max(start, end - _GRAPHEME_BACKOFF_CHARS), -1):
        if not _joined(word, cut):
            return cut
    return end  # a "grapheme" this long is not text; cut where the limit says


def _joined(word: str, cut: int) -> bool:
    """Whether cutting before word[cut] would break what a reader sees as one character."""
    before, after = word[cut - 1], word[cut]
    if before == _ZWJ or after == _ZWJ or unicodedata.category(after) in ("Mn", "Mc", "Me"):
        return True  # emoji ZWJ sequences, variation selectors, combining accents
    if "\U0001f3fb" <= after <= "\U0001f3ff" or "\U000e0020" <= after <= "\U000e007f":
        return True  # skin-tone modifiers, flag tag sequences
    if _is_regional_indicator(before) and _is_regional_indicator(after):
        run = 0
        while cut - run > 0 and _is_regional_indicator(word[cut - run - 1]):
            run += 1
        return run % 2 == 1  # flags are pairs: an odd run means we are inside one
    return False


def _is_regional_indicator(char: str) -> bool:
    return "\U0001f1e6" <= char <= "\U0001f1ff"


def _span_len(atoms: Sequence[_Atom], start: int, end: int) -> int:
    return len(atoms[start]) + sum(len(atom.sep) + len(atom) for atom in atoms[start + 1 : end])


def _render(atoms: Sequence[_Atom], start: int, end: int) -> str:
    return atoms[start].text + "".join(atom.sep + atom.text for atom in atoms[start + 1 : end])


def _units(atoms: Sequence[_Atom], start: int, end: int, level: int, max_chars: int) -> list[_Span]:
    """atoms[start:end] cut at every boundary of rank <= level; a piece still longer than
    max_chars is cut again one level finer (atoms never exceed max_chars, so this ends)."""
    cuts = [index for index in range(start + 1, end) if atoms[index].rank <= level]
    units: list[_Span] = []
    for unit_start, unit_end in zip([start, *cuts], [*cuts, end], strict=True):
        if level < _CUT and _span_len(atoms, unit_start, unit_end) > max_chars:
            units.extend(_units(atoms, unit_start, unit_end, level + 1, max_chars))
        else:
            units.append((unit_start, unit_end))
    return units


def _plan(atoms: Sequence[_Atom], max_parts: int, max_chars: int) -> list[_Span] | None:
    """The coarsest level whose pieces fit in max_parts bubbles; None when none does.

    At the coarsest level that has few enough pieces, each piece is a bubble (one
    paragraph, one bubble). With too many pieces, adjacent ones share bubbles, balanced.
    """
    for level in _LEVELS:
        units = _units(atoms, 0, len(atoms), level, max_chars)
        if len(units) <= max_parts:
            return units
        spans = _pack_balanced(atoms, units, max_parts, max_chars)
        if spans is not None:
            return spans
    return None


def _pack_balanced(
    atoms: Sequence[_Atom], units: Sequence[_Span], max_parts: int, max_chars: int
) -> list[_Span] | None:
    """Adjacent units grouped into at most max_parts bubbles with the smallest longest bubble.

    Greedy packing under a capacity is optimal for "fits in k bubbles", and the count it
    needs only falls as the capacity grows, so a binary search on the capacity finds the
    most even split.
    """
    if len(_pack(atoms, units, max_chars)) > max_parts:
        return None
    low = max(_span_len(atoms, start, end) for start, end in units)
    high = max_chars
    while low < high:
        middle = (low + high) // 2
        if len(_pack(atoms, units, middle)) <= max_parts:
            high = middle
        else:
            low = middle + 1
    return _pack(atoms, units, high)


def _pack(atoms: Sequence[_Atom], units: Sequence[_Span], capacity: int) -> list[_Span]:
    """Greedy: fill each bubble with whole units up to capacity (every unit fits on its own)."""
    spans: list[_Span] = []
    start, end = units[0]
    length = _span_len(atoms, start, end)
    for unit_start, unit_end in units[1:]:
        extended = length + len(atoms[unit_start].sep) + _span_len(atoms, unit_start, unit_end)
        if extended <= capacity:
            length, end = extended, unit_end
        else:
            spans.append((start, end))
            start, end = unit_start, unit_end
            length = _span_len(atoms, start, end)
    spans.append((start, end))
    return spans
