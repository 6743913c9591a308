"""Pure decisions about what an LLM call costs us: prompt layout, structured-output memory, caps.

No I/O here, so every rule that moves the bill has a unit test:

- `prompt_layout` puts the campaign's shared text first and byte-identical for every lead,
  and the lead's data last, because providers cache the longest identical *prefix* (OpenAI
  from 1,024 tokens; OpenRouter keeps a conversation on the provider that holds the cache).
- `cache_key` is a stable per-campaign routing key (OpenRouter `session_id`, OpenAI
  `prompt_cache_key`): it changes when the shared text changes, so an edited prompt does
  not share a key with the old, uncacheable one.
- `StructuredOutputMemory` remembers, for the life of the process, the models whose
  provider refused `response_format: json_schema`, so each of them costs one refused
  request, not one per message.
- `cap_reached` is the spend-cap rule the SQL applies (0010), mirrored for tests and docs.
- `cache_rule` says, per model family (by slug prefix, one table), whether the provider
  caches on its own or only behind an explicit ``cache_control`` breakpoint (issue 21).
"""

from __future__ import annotations

import functools
import hashlib
import re
import threading
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

PARTS_SCHEMA_NAME = "whatsapp_message_parts"
"""`json_schema.name` of the one-call (generate-and-split) request; the split call uses another."""

_CAPABILITY_REJECTION = re.compile(
    r"response[_ ]format|json[_ ]schema|structured[_ ]output|requested parameters|"
    r"not support(ed)? .*(schema|json)",
    re.IGNORECASE,
)


def is_structured_output_rejection(message: str) -> bool:
    """True when a 400/404/422 says the model or every provider refuses the schema itself.

    OpenAI answers 400 "Invalid parameter: 'response_format' of type 'json_schema' is not
    supported with this model"; OpenRouter with ``require_parameters`` answers 404 "No
    endpoints found that can handle the requested parameters". Any other rejection is about
    the request (a too-long prompt, a bad model name) and must not switch the path.
    """
    return bool(_CAPABILITY_REJECTION.search(message))


class StructuredOutputMemory:
    """Models known (this process) to refuse structured output; thread-safe, never forgets."""

    def __init__(self) -> None:
        self._refused: dict[str, str] = {}
        self._lock = threading.Lock()

    def supports(self, model: str) -> bool:
        # No lock (asked once per message): a dict lookup is atomic, and the dict only grows.
        return model not in self._refused

    def mark_unsupported(self, model: str, reason: str) -> bool:
        """Remember the refusal; True only the first time (the caller logs and counts it once)."""
        with self._lock:
            if model in self._refused:
                return False
            self._refused[model] = reason
            return True

    def refused(self) -> dict[str, str]:
        with self._lock:
            return dict(self._refused)


def parts_instructions(*, max_parts: int, max_chars: int) -> str:
    """The format rules of the one-call request: the same for every lead of a campaign."""
    return (
        f"Write the message as 1 to {max_parts} consecutive WhatsApp chat bubbles, each at most "
        f"{max_chars} characters, cut at paragraph or sentence boundaries, in reading order. "
        'Answer only with JSON: {"parts": ["first bubble", "second bubble"]}.'
    )


CacheRule = Literal["explicit", "automatic"]
"""``explicit``: the provider caches only behind a ``cache_control`` breakpoint; ``automatic``:
it caches a long identical prefix on its own (OpenAI, DeepSeek, Grok, Gemini 2.5+ implicit…)."""

CACHE_CONTROL = {"type": "ephemeral"}
"""The breakpoint OpenRouter documents for Anthropic, Gemini and Alibaba (5-minute TTL)."""

# Slug prefixes (OpenRouter model ids) whose prompt cache needs a `cache_control` breakpoint,
# from OpenRouter's prompt-caching page (OpenRouterTeam/docs c26125a, prompt-caching.mdx):
# Anthropic Claude ("cache_control directly on content blocks", also via Bedrock and Vertex);
# Google Gemini ("Gemini caching in OpenRouter requires you to insert cache_control
# breakpoints explicitly"; 2.5+ also caches implicitly, so the breakpoint only adds);
# Alibaba's explicit-cache models (listed by exact slug on that page). First match wins.
CACHE_CONTROL_PREFIXES: tuple[tuple[str, str], ...] = (
    ("anthropic/", "anthropic"),
    ("~anthropic/", "anthropic"),
    ("google/gemini-", "google-gemini"),
    ("qwen/qwen3-max", "alibaba-explicit"),
    ("qwen/qwen-plus", "alibaba-explicit"),
    ("qwen/qwen3.6-plus", "alibaba-explicit"),
    ("qwen/qwen3-coder-plus", "alibaba-explicit"),
    ("qwen/qwen3-coder-flash", "alibaba-explicit"),
)
_IMPLICIT_TOO = ("google/gemini-2.5", "google/gemini-3")
"""Gemini 2.5 and newer also cache without a breakpoint (implicit caching)."""


def model_family(model: str) -> str:
    """The family a slug belongs to for caching and cost reports: the table's, else its vendor."""
    slug = model.lower()
    for prefix, family in CACHE_CONTROL_PREFIXES:
        if slug.startswith(prefix):
            return family
    vendor, _, _ = slug.lstrip("~").partition("/")
    return vendor if "/" in slug else "other"


def needs_cache_control(model: str) -> bool:
    """True for the families whose cache works only (or best) behind a breakpoint; only those
    get one, because a content-parts array is a shape some strict OpenAI-compatible servers
    refuse and others ignore."""
    slug = model.lower()
    return any(slug.startswith(prefix) for prefix, _ in CACHE_CONTROL_PREFIXES)


def cache_rule(model: str) -> CacheRule:
    """How the provider of `model` caches: see `CacheRule` (the simulator follows this)."""
    slug = model.lower()
    if needs_cache_control(slug) and not slug.startswith(_IMPLICIT_TOO):
        return "explicit"
    return "automatic"


@dataclass(frozen=True)
class PromptLayout:
    """Chat messages with a cacheable prefix: [system: shared campaign text], [user: lead data]."""

    shared: str
    lead: str

    def messages(self, *, cache_control: bool = False) -> list[dict[str, Any]]:
        """With `cache_control`, the shared text is one content part carrying the breakpoint
        (``{"type": "text", "text": …, "cache_control": {"type": "ephemeral"}}``), so
        everything up to the end of the campaign's text is the cached prefix and the lead's
        data after it is not."""
        messages: list[dict[str, Any]] = []
        if self.shared:
            if cache_control:
                part = {"type": "text", "text": self.shared, "cache_control": dict(CACHE_CONTROL)}
                messages.append({"role": "system", "content": [part]})
            else:
                messages.append({"role": "system", "content": self.shared})
        messages.append({"role": "user", "content": self.lead})
        return messages


def prompt_layout(
    *, system_prompt: str, lead_prompt: str, structured: bool, max_parts: int, max_chars: int
) -> PromptLayout:
    """The campaign's text (and, for one-call requests, the part rules) first; the lead last.

    Nothing lead-specific may enter `shared`: one changed byte early in the prompt and no
    later token can come from the cache.
    """
    return PromptLayout(
        shared=_shared_text(system_prompt, structured, max_parts, max_chars), lead=lead_prompt
    )


@functools.lru_cache(maxsize=256)
def _shared_text(system_prompt: str, structured: bool, max_parts: int, max_chars: int) -> str:
    """The same for every lead of a campaign, so built once per campaign (issue 15), not per lead."""
    shared = system_prompt.strip()
    if structured:
        shared = f"{shared}\n\n{parts_instructions(max_parts=max_parts, max_chars=max_chars)}".strip()
    return shared


@functools.lru_cache(maxsize=256)
def cache_key(*, config_id: str, model: str, shared_prefix: str) -> str:
    """Stable per campaign, model and shared text; short and free of anything personal.

    Memoised: the same few campaigns ask for it once per message, and hashing the shared
    text (kilobytes) each time showed in the profile (issue 15).
    """
    digest = hashlib.sha256(f"{config_id}\0{model}\0{shared_prefix}".encode()).hexdigest()[:16]
    return f"cq-{digest}"


@functools.lru_cache(maxsize=32)
def parts_response_format(*, max_parts: int, name: str = PARTS_SCHEMA_NAME) -> dict[str, Any]:
    """`response_format` of the one-call request: strict ``{"parts": [string, …]}``.

    The per-part length is in the instructions, not ``maxLength`` (not accepted by every
    strict implementation); `consumer.core.split.parse_split_answer` checks it anyway.
    ``name`` is the schema's name (the two-call split of `AIClient.split` keeps its own).
    Memoised (one per `max_parts` and name, issue 15): the result is shared, so treat it as
    read-only.
    """
    return {
        "type": "json_schema",
        "json_schema": {
            "name": name,
            "strict": True,
            "schema": {
                "type": "object",
                "properties": {
                    "parts": {
                        "type": "array",
                        "items": {"type": "string"},
                        "minItems": 1,
                        "maxItems": max_parts,
                    }
                },
                "required": ["parts"],
                "additionalProperties": False,
            },
        },
    }


def cap_reached(*, spent_usd: Decimal, cap_usd: Decimal | None) -> bool:
    """A cap is reached when spend is at or above it; no cap (None) is never reached.

    A cap of 0 therefore pauses at the first priced message: the run spends at most what
    its in-flight messages were already generating (bounded by the consumer's concurrency).
    """
    return cap_usd is not None and spent_usd >= cap_usd


def cached_share(*, prompt_tokens: int, cached_tokens: int) -> float | None:
    """Share of prompt tokens served from the provider's cache; None before any prompt."""
    if prompt_tokens <= 0:
        return None
    return min(1.0, max(0, cached_tokens) / prompt_tokens)
