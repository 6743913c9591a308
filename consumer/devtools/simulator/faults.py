"""The simulator's faults: what can go wrong, how often (`Faults`), and the named profiles.

Scripted faults (`fail_next_*`) are `_Script`s; random ones are drawn with `_draw` from a
seeded generator, so a chaos run is reproducible.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from .texts import AIRequestKind

AIFaultKind = Literal[
    "429",  # rate limited, with a Retry-After in the requested form
    "402_in_flight",  # OpenRouter's transient in-flight budget 402, with Retry-After
    "402",  # no credits
    "400",
    "401",
    "403",
    "404",
    "408",
    "409",
    "413",
    "422",
    "500",
    "502",
    "503",  # with Retry-After
    "hang",  # sleep `hang_s` before answering (past any sane client timeout)
    "error_body",  # 200 with a top-level "error"
    "choice_error",  # 200 with choices[0].error and finish_reason "error"
    "finish_error",  # 200 with finish_reason "error" but some content
    "no_choices",  # 200 with "choices": []
    "empty",  # 200 with whitespace content (finish_reason "length")
    "bad_json",  # 200 whose content is not the JSON a split asked for
    "not_json",  # 200 whose body is an HTML page
    "no_usage",  # a good 200 without a usage block (some providers omit it)
    "too_many_parts",  # a one-call answer with more parts than maxItems (valid JSON, invalid parts)
    "moderation_403",  # OpenRouter's moderation 403 (error.metadata.reasons, flagged_input, provider_name)
    "guardrail_403",  # OpenRouter's guardrail 403 (error.metadata.patterns)
]
SendFaultKind = Literal[
    "400",
    "401",
    "403",
    "404",
    "422",
    "429",
    "500",  # JSON 500 that does not blame the socket
    "502_html",  # a proxy's HTML error page
    "connection_closed",  # 400 "Error: Connection Closed": the instance's socket is dead
    "dead_socket_400",  # the same, by the name issue 21 gives it (Evolution 2.3 wraps it as a 400)
    "cloud_graph_error_201",  # WHATSAPP-BUSINESS: a Graph error object returned as a 201
    "not_on_whatsapp",  # 400 exists:false
    "hang",  # never answers within `hang_s`, and does not send
    "hang_after_accept",  # records the send, then hangs: the ambiguous-timeout case
]
StateFaultKind = Literal["401", "404", "500", "hang", "close", "connecting"]
FindFaultKind = Literal["500", "hang", "bad_json"]
RetryAfterForm = Literal["seconds", "http_date", "ms", "none"]
BatchFaultKind = Literal["failed", "expired", "expired_partial", "item_errors", "late", "500", "429"]
"""``expired_partial``: the batch expires with half its items done (OpenAI: in the output file)."""
BatchApiKind = Literal["openai", "openrouter"]

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Seconds = Annotated[float, Field(ge=0.0)]

_AI_KINDS = frozenset(get_args(AIFaultKind))
_SEND_KINDS = frozenset(get_args(SendFaultKind))
_STATE_KINDS = frozenset(get_args(StateFaultKind))
_FIND_KINDS = frozenset(get_args(FindFaultKind))


class Faults(BaseModel):
    """Random misbehaviour, drawn per request from the simulator's seeded generator.

    Probabilities are per request and checked in field order; a scripted fault
    (`Simulator.fail_next_ai` …) always wins over a random one.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    ai_latency_s: Seconds = 0.0
    ai_latency_jitter_s: Seconds = 0.0
    send_latency_s: Seconds = 0.0
    state_latency_s: Seconds = 0.0
    hang_s: Seconds = 60.0

    ai_rate_limited_p: Probability = 0.0
    ai_retry_after_s: Seconds = 1.0
    ai_server_error_p: Probability = 0.0
    ai_hang_p: Probability = 0.0
    ai_error_body_p: Probability = 0.0
    ai_empty_p: Probability = 0.0
    split_bad_json_p: Probability = 0.0
    # Issue 21 (OpenRouter): a request whose text contains `moderation_marker` (a lead's name
    # or field) is answered with OpenRouter's moderation 403; `batch_api` is the Batch API
    # served: OpenAI's files + batches, or OpenRouter's /api/beta/batches (no /files: 404).
    moderation_marker: str = "MODERATION-FLAG"
    batch_api: BatchApiKind = "openai"
    send_server_error_p: Probability = 0.0
    send_hang_p: Probability = 0.0
    send_hang_after_accept_p: Probability = 0.0
    find_unavailable_p: Probability = 0.0

    reject_phones: frozenset[str] = frozenset()
    disconnected_instances: frozenset[str] = frozenset()
    dead_socket_instances: frozenset[str] = frozenset()
    # Issue 13: a number's own limits, as the Cloud API enforces them. Above
    # `instance_rate_limits[instance]` accepted sends within `instance_rate_window_s`, a send
    # answers 429 with error code 130429 and a Retry-After; a banned instance answers 403
    # "banned", a logged-out one 500 "logged out" (Baileys' loggedOut).
    instance_rate_limits: dict[str, int] = Field(default_factory=dict)
    instance_rate_window_s: Annotated[float, Field(gt=0.0)] = 60.0
    banned_instances: frozenset[str] = frozenset()
    logged_out_instances: frozenset[str] = frozenset()
    # Issue 21 (Evolution 2.3 as it really answers): `br_jid_rewrite` stores a send under
    # Evolution's createJid form of the number (a Brazilian mobile loses its 9th digit when
    # DDD >= 31 and the subscriber number starts 7-9), answers that jid and matches
    # findMessages on it exactly; `lid_sender` stores and answers a made-up `…@lid` chat
    # (WhatsApp's LID addressing); `send_graph_error_p` answers a share of sends 201 with a
    # Graph error of code `graph_error_code` (Evolution's WHATSAPP-BUSINESS channel).
    br_jid_rewrite: bool = False
    lid_sender: bool = False
    send_graph_error_p: Probability = 0.0
    graph_error_code: int = 130429
    seed: int | None = None


FAULT_PROFILES: Mapping[str, Faults] = MappingProxyType(
    {
        "none": Faults(),
        "light": Faults(
            ai_rate_limited_p=0.02,
            ai_retry_after_s=2.0,
            ai_server_error_p=0.01,
            ai_hang_p=0.002,
            ai_error_body_p=0.01,
            ai_empty_p=0.01,
            split_bad_json_p=0.02,
            send_server_error_p=0.01,
            send_hang_p=0.002,
        ),
        "chaos": Faults(
            ai_rate_limited_p=0.10,
            ai_retry_after_s=3.0,
            ai_server_error_p=0.05,
            ai_hang_p=0.02,
            ai_error_body_p=0.03,
            ai_empty_p=0.03,
            split_bad_json_p=0.10,
            send_server_error_p=0.05,
            send_hang_p=0.02,
        ),
    }
)


def fault_profile(name: str, **overrides: Any) -> Faults:
    """A named profile (`FAULT_PROFILES`) with some fields replaced, validated."""
    try:
        base = FAULT_PROFILES[name]
    except KeyError:
        raise ValueError(
            f"unknown fault profile {name!r} (choose from {', '.join(FAULT_PROFILES)})"
        ) from None
    return Faults.model_validate({**base.model_dump(), **overrides})


@dataclass
class _Script:
    kind: str
    remaining: int
    retry_after_s: float | None = None
    retry_after_form: RetryAfterForm = "seconds"
    only: AIRequestKind | None = None
    instance: str | None = None
    number: str | None = None
    text_contains: str | None = None
    graph_code: int | None = None


def _take_script(scripts: list[_Script], matches: Callable[[_Script], bool]) -> _Script | None:
    """The first script that `matches`, used once (removed when it has no uses left)."""
    for index, script in enumerate(scripts):
        if matches(script):
            script.remaining -= 1
            if script.remaining <= 0:
                del scripts[index]
            return script
    return None


def _check_kind(kind: str, allowed: frozenset[str]) -> None:
    if kind not in allowed:
        raise ValueError(f"unknown fault kind {kind!r} (choose from {', '.join(sorted(allowed))})")


def _draw(rng: random.Random, chances: list[tuple[str, float]], *, default: str = "ok") -> str:
    """One roll against cumulative probabilities, so the configured rates hold exactly."""
    roll = rng.random()
    threshold = 0.0
    for outcome, probability in chances:
        threshold += probability
        if roll < threshold:
            return outcome
    return default
