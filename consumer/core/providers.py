"""Pure decisions about what the AI provider behind a URL speaks and what its errors mean.

Read against OpenRouter's documentation (``OpenRouterTeam/docs`` at commit
c26125a5fa92cb52ac67f0c75b717229567db716: ``batch-quickstart.mdx``,
``api_reference/errors-and-debugging.mdx``, ``guides/best-practices/prompt-caching.mdx``):

- `batch_api_for` — which Batch API a base URL gets. OpenRouter's is not OpenAI's: no
  files, ``POST {root}/api/beta/batches`` with ``endpoint`` and ``model`` *before*
  ``requests``, results inline once ``completed``. Sending OpenAI's ``/files`` flow to
  OpenRouter gets 404 and every batch is abandoned.
- `openrouter_batches_url` — where that endpoint lives for a chat-completions base URL.
- `classify_forbidden` — a 403 from OpenRouter is a moderation flag or a guardrail block of
  *one request* (the message's fault, not the key's) when its body says so.
- `ForbiddenStreak` — only 403s *without* that metadata, on different messages in a row,
  say the key itself lost permission (then the process stops, as on a 401).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from yarl import URL

BatchApiSetting = Literal["auto", "openrouter", "openai", "off"]
BatchApi = Literal["openrouter", "openai", "off"]
BATCH_API_SETTINGS: tuple[str, ...] = get_args(BatchApiSetting)

OPENROUTER_BATCH_HOSTS = frozenset({"openrouter.ai"})
OPENAI_BATCH_HOSTS = frozenset({"api.openai.com", "api.groq.com"})
"""Hosts known to serve OpenAI's ``/files`` + ``/batches`` flow."""


def batch_api_for(setting: BatchApiSetting, base_url: str) -> BatchApi:
    """The Batch API to use for `base_url` under `setting` (``CAMPAIGNQ_AI_BATCH_API``).

    ``auto``: OpenRouter's on ``openrouter.ai`` (and its subdomains), OpenAI's on the hosts
    known to serve it (`OPENAI_BATCH_HOSTS`), and **off** anywhere else: an unknown
    OpenAI-compatible server (a proxy, vLLM, a simulator) may speak either flow or none, and
    guessing wrong costs one failed submission per tick. Set ``openai`` or ``openrouter``
    explicitly for such a host.
    """
    if setting != "auto":
        return setting
    host = (URL(base_url).host or "").lower().rstrip(".")
    if host in OPENROUTER_BATCH_HOSTS or host.endswith(".openrouter.ai"):
        return "openrouter"
    if host in OPENAI_BATCH_HOSTS:
        return "openai"
    return "off"


def openrouter_batches_url(base_url: str) -> str:
    """``https://openrouter.ai/api/v1`` → ``https://openrouter.ai/api/beta/batches``.

    The batch endpoint is a sibling of the versioned API: a trailing ``/v1`` segment of the
    chat-completions base is replaced by ``/beta``; a base without one gets ``/beta`` added.
    """
    url = URL(base_url.rstrip("/"))
    segments = [segment for segment in url.path.split("/") if segment]
    if segments and segments[-1] == "v1":
        segments = segments[:-1]
    return str(url.with_path("/" + "/".join([*segments, "beta", "batches"])))


def batch_group_key(body: Mapping[str, Any]) -> tuple[str, str]:
    """Requests that may share one batch: the same model and the same ``response_format``.

    OpenRouter and OpenAI both take one model per batch, and on Google models OpenRouter
    takes one ``response_format`` schema per batch; grouping by both everywhere is safe.
    """
    response_format = body.get("response_format")
    return str(body.get("model")), repr(response_format) if response_format is not None else ""


# --- 403 -----------------------------------------------------------------------------------

ForbiddenKind = Literal["content_blocked", "permission"]


@dataclass(frozen=True)
class Forbidden:
    """What a 403 means: ``content_blocked`` (this request only) or ``permission`` (maybe the key)."""

    kind: ForbiddenKind
    reasons: tuple[str, ...] = ()
    """For the operator: moderation ``reasons``, guardrail ``patterns``, the provider's name."""


_MODERATION_KEYS = ("reasons", "flagged_input", "provider_name")
_GUARDRAIL_WORDS = ("guardrail", "blocked", "moderat", "flagged", "prompt injection")


def classify_forbidden(body: Mapping[str, Any] | None) -> Forbidden:
    """Classify an OpenRouter 403 body (``{"error": {"code", "message", "metadata"}}``).

    Moderation: ``metadata`` with ``reasons`` / ``flagged_input`` / ``provider_name``.
    Guardrail: ``metadata.patterns``, or a message saying the request was blocked (the
    documented form is "Request blocked: prompt injection patterns detected"). Anything
    else — no metadata, ``permission_denied`` without a block — may be the key's.

    Assumption: a 403 whose message speaks of a guardrail, a block or moderation but carries
    no metadata is a block of this request too (the page shows guardrail bodies with
    ``patterns`` only; other guardrails may omit them).
    """
    error = body.get("error") if body else None
    if not isinstance(error, Mapping):
        return Forbidden("permission")
    metadata = error.get("metadata")
    metadata = metadata if isinstance(metadata, Mapping) else {}
    reasons: list[str] = []
    raw_reasons = metadata.get("reasons")
    if isinstance(raw_reasons, list):
        reasons += [str(reason) for reason in raw_reasons if isinstance(reason, str | int | float)]
    patterns = metadata.get("patterns")
    if isinstance(patterns, list):
        reasons += [f"pattern: {pattern}" for pattern in patterns if isinstance(pattern, str)]
    if isinstance(metadata.get("provider_name"), str):
        reasons.append(f"provider: {metadata['provider_name']}")
    message = str(error.get("message") or "").lower()
    moderated = any(key in metadata for key in _MODERATION_KEYS) or isinstance(patterns, list)
    if moderated or any(word in message for word in _GUARDRAIL_WORDS):
        return Forbidden("content_blocked", tuple(reason[:200] for reason in reasons[:10]))
    return Forbidden("permission")


FORBIDDEN_STREAK_FATAL = 3
"""Plain 403s on this many different messages in a row stop the process (a key, not a lead)."""


@dataclass
class ForbiddenStreak:
    """Counts plain (non-moderation) 403s across *different* messages; any success resets it.

    One lead's request can be refused for its own reasons; the same refusal for several
    different messages in a row, with nothing in between succeeding, is the key's.
    """

    threshold: int = FORBIDDEN_STREAK_FATAL
    _messages: set[str] = field(default_factory=set)

    def refused(self, message_key: str) -> bool:
        """Record a plain 403 for `message_key`; True when the streak says: stop the process."""
        self._messages.add(message_key)
        return len(self._messages) >= self.threshold

    def succeeded(self) -> None:
        self._messages.clear()
