"""The simulator's canned texts: a personalised message for a prompt, split answers, request kinds.

Deterministic for a seed; good enough to look like a model's answer in the demo, and shaped
like one for the clients (a lead's name in the greeting, paragraphs to split).
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from typing import Any, Literal

AIRequestKind = Literal["generate", "split", "structured"]


def _message_texts(body: Mapping[str, Any]) -> list[str]:
    texts = []
    for message in body.get("messages", []):
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):  # content parts (a cache_control breakpoint, issue 21)
            texts.append("".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping)))
    return texts


_NAME = re.compile(
    r"""(?i)\b(?:lead[_ ]?)?(?:first[_ ]?)?(?:name|nome)\b["']?\s*[:=]\s*["']?([^\W\d_][\w'-]*)"""
)


def _lead_name(prompt: str) -> str | None:
    match = _NAME.search(prompt)
    return match.group(1).capitalize() if match else None


_GREETINGS = ("Hi {name}!", "Hello {name},", "Hey {name}!", "Good morning, {name}!")
_FIRST_PARAGRAPH = (
    "I noticed you were looking at our plans last week and wanted to reach out personally.",
    "Thanks for stopping by our store recently, it was great to have you with us.",
    "I hope your week is going well and that the new season started on the right foot.",
    "We just opened a few spots in our next onboarding group and I thought of you right away.",
)
_SECOND_PARAGRAPH = (
    "This month we are offering a free consultation where we look at your goals together "
    "and suggest the simplest next step. It takes about twenty minutes and there is no commitment.",
    "Many customers like you told us the hardest part is getting started, so we prepared a short "
    "guide and a discount for your first order. Everything is ready whenever you are.",
    "Our team put together a few options that fit what you told us, from a light plan to the "
    "complete package. I can send the details or we can talk for a few minutes, as you prefer.",
)
_SIGN_OFFS = (
    "Would tomorrow afternoon work for a quick chat?",
    "Shall I send you the details here?",
    "Just reply to this message and I will take care of the rest.",
)


def _personalised_message(rng: random.Random, name: str | None) -> str:
    """Two paragraphs, 250-500 characters: the shape a real campaign message has."""
    greeting = rng.choice(_GREETINGS).format(name=name or "there")
    first = f"{greeting} {rng.choice(_FIRST_PARAGRAPH)}"
    second = f"{rng.choice(_SECOND_PARAGRAPH)} {rng.choice(_SIGN_OFFS)}"
    return f"{first}\n\n{second}"


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _split_parts(body: Mapping[str, Any]) -> list[str]:
    """Paragraphs first; one long paragraph is cut between sentences; never more than maxItems."""
    texts = [
        message.get("content", "")
        for message in body.get("messages", [])
        if isinstance(message, Mapping) and message.get("role") == "user"
    ]
    text = str(texts[-1]).strip() if texts else ""
    max_parts = _max_items(body)
    parts = [part.strip() for part in re.split(r"\n\s*\n", text) if part.strip()]
    if len(parts) == 1 and max_parts >= 2 and len(text) > 160:
        sentences = _SENTENCE_END.split(text)
        if len(sentences) > 1:
            middle = len(sentences) // 2
            parts = [" ".join(sentences[:middle]), " ".join(sentences[middle:])]
    if len(parts) > max_parts:
        parts = [*parts[: max_parts - 1], "\n\n".join(parts[max_parts - 1 :])]
    return parts or [text]


def _max_items(body: Mapping[str, Any]) -> int:
    try:
        value = body["response_format"]["json_schema"]["schema"]["properties"]["parts"]["maxItems"]
    except (KeyError, TypeError):
        return 3
    return value if isinstance(value, int) and value >= 1 else 3


# --- issue 14: request kinds, the prompt-cache model, the batch API -----------------------------

_PARTS_SCHEMA_NAME = "whatsapp_message_parts"  # consumer.core.llmcost.PARTS_SCHEMA_NAME


def _request_kind(body: Mapping[str, Any]) -> AIRequestKind:
    """generate (no schema), structured (the one-call parts schema) or split (the split call)."""
    response_format = body.get("response_format")
    if not response_format:
        return "generate"
    schema = response_format.get("json_schema") if isinstance(response_format, Mapping) else None
    name = schema.get("name") if isinstance(schema, Mapping) else None
    return "structured" if name == _PARTS_SCHEMA_NAME else "split"


def _last_user_text(body: Mapping[str, Any]) -> str:
    texts = [
        str(message.get("content", ""))
        for message in body.get("messages", [])
        if isinstance(message, Mapping) and message.get("role") == "user"
    ]
    return texts[-1] if texts else ""


def _paragraph_parts(text: str, max_parts: int) -> list[str]:
    parts = [part.strip() for part in re.split(r"\n\s*\n", text) if part.strip()]
    if len(parts) > max_parts:
        parts = [*parts[: max_parts - 1], "\n\n".join(parts[max_parts - 1 :])]
    return parts or [text]
