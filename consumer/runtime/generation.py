"""Generating one message's text and bubbles at the lowest LLM cost (issue 14).

Carved out of `pipeline` so that the send side and the generation side change apart.

- Unsplit configs: one plain chat completion.
- Split configs: ONE chat completion with a strict ``{"parts": [...]}`` schema (it used to
  be two: generate, then split). Only a model whose provider refuses the schema falls back
  to generate → split, remembered per model for the life of the process (logged once and
  counted in ``campaignq_structured_output_fallbacks``). The LLM split call needs the same
  capability, so for such a model the split is the deterministic splitter.
- An answer that is not valid parts (too many, too long, not JSON) is still used when its
  text is a valid message: the deterministic splitter cuts it. Only an answer with no
  usable text is an `InvalidAIOutputError` (retried like any bad generation).
- Every request is laid out for the provider's prompt cache (`llmcost.prompt_layout`) and
  carries the campaign's stable cache key.

The same request bodies and the same answer checks serve the batch path (`pregenerate`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from loguru import logger

from ..core.costs import estimate_cost_usd
from ..core.llmcost import (
    StructuredOutputMemory,
    cache_key,
    needs_cache_control,
    parts_response_format,
    prompt_layout,
)
from ..core.models import CampaignConfig
from ..core.prompt import build_user_prompt
from ..core.split import SplitAnswer, parse_split_answer, plan_parts
from ..core.validation import validate_generated_text
from ..errors import InvalidAIOutputError, InvalidConfigError, PermanentError, TemporaryError
from ..settings import Settings
from .ai import AIClient, Completion, StructuredOutputUnsupportedError
from .metrics import ConsumerMetrics

_LOOKS_LIKE_PARTS = re.compile(r"""\bparts["']?\s*:\s*\[""")
"""An attempt at the parts JSON (possibly broken): never to be sent as if it were prose."""

MODE_PLAIN = "plain"
MODE_STRUCTURED = "structured"
MODE_GENERATE_SPLIT = "generate_split"
MODE_BATCH = "batch"


@dataclass(frozen=True)
class Generation:
    """What one message's generation produced and cost; stored on the row before any send."""

    text: str
    parts: list[str]
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cache_write_tokens: int
    cost_usd: float | None
    ai_calls: int
    mode: str
    ai_ms: int
    split_ms: int | None


@dataclass
class _Tally:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reported_cost: float | None = None
    calls: int = 0

    def add(self, completion: Completion) -> None:
        usage = completion.usage
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.cached_tokens += usage.cached_tokens
        self.cache_write_tokens += usage.cache_write_tokens
        if usage.cost_usd is not None:
            self.reported_cost = (self.reported_cost or 0.0) + usage.cost_usd


def uses_structured_output(
    config: CampaignConfig, settings: Settings, memory: StructuredOutputMemory
) -> bool:
    """One-call generation applies to split configs of models not known to refuse schemas."""
    return config.split_messages and settings.ai_structured_output and memory.supports(config.ai_model)


def request_body(
    ai: AIClient,
    config: CampaignConfig,
    settings: Settings,
    *,
    lead_name: str | None,
    custom_fields: Mapping[str, Any] | None,
    structured: bool,
) -> dict[str, Any]:
    """The chat completion body for one lead (sync call or batch line): cacheable prefix first."""
    if not config.system_prompt or config.system_prompt.isspace():  # no copy of a long prompt
        raise InvalidConfigError("the campaign's system prompt is empty")
    layout = prompt_layout(
        system_prompt=config.system_prompt,
        lead_prompt=build_user_prompt(lead_name=lead_name, custom_fields=custom_fields),
        structured=structured,
        max_parts=config.max_parts,
        max_chars=settings.max_part_chars,
    )
    return ai.chat_body(
        model=config.ai_model,
        messages=layout.messages(cache_control=needs_cache_control(config.ai_model)),
        max_tokens=config.max_tokens,
        response_format=parts_response_format(max_parts=config.max_parts) if structured else None,
        cache_key=cache_key(config_id=str(config.id), model=config.ai_model, shared_prefix=layout.shared),
    )


def parts_from_structured(
    content: str, *, config: CampaignConfig, settings: Settings
) -> tuple[str, list[str]]:
    """Text and bubbles from a one-call answer, validated as the two-call path validates.

    Valid parts are kept as the model cut them. Parts that break a limit, or an answer that
    is plain prose, keep their text and go through the deterministic splitter. No usable
    text at all: `InvalidAIOutputError`.
    """
    max_chars = settings.max_part_chars
    parsed = parse_split_answer(content, max_parts=config.max_parts, max_chars=max_chars)
    if parsed is not None:
        text = validate_generated_text("\n\n".join(parsed), min_chars=settings.min_message_chars)
        return text, plan_parts(
            text, split_enabled=True, llm_parts=parsed, max_parts=config.max_parts, max_chars=max_chars
        )
    salvaged = _salvage_text(content)
    text = validate_generated_text(salvaged, min_chars=settings.min_message_chars)
    return text, plan_parts(
        text, split_enabled=True, llm_parts=None, max_parts=config.max_parts, max_chars=max_chars
    )


def _salvage_text(content: str) -> str:
    """The message inside an answer that broke the schema's limits, or the prose answer itself."""
    stripped = content.strip()
    if not _LOOKS_LIKE_PARTS.search(stripped) and not stripped.startswith(("{", "[", "```")):
        return stripped  # prose: the model ignored the schema but wrote the message
    try:
        answer = SplitAnswer.model_validate_json(stripped.strip("`").removeprefix("json").strip())
    except ValueError:
        raise InvalidAIOutputError("structured answer is neither the JSON asked for nor a message") from None
    return "\n\n".join(part.strip() for part in answer.parts if part.strip())


class Generator:
    """Turns a lead and a campaign config into stored-ready text and bubbles; one per process."""

    def __init__(
        self,
        *,
        ai: AIClient,
        settings: Settings,
        metrics: ConsumerMetrics,
        memory: StructuredOutputMemory | None = None,
    ) -> None:
        self.ai = ai
        self.settings = settings
        self.metrics = metrics
        self.memory = memory or StructuredOutputMemory()

    async def generate(
        self,
        config: CampaignConfig,
        *,
        lead_name: str | None,
        custom_fields: Mapping[str, Any] | None,
        on_stage: Callable[[str], None],
        log_id: str,
    ) -> Generation:
        tally = _Tally()
        started = time.perf_counter()
        split_ms: int | None = None
        on_stage("generate")
        if uses_structured_output(config, self.settings, self.memory):
            try:
                completion = await self._call(config, lead_name, custom_fields, structured=True, tally=tally)
            except StructuredOutputUnsupportedError as exc:
                self._remember_refusal(config.ai_model, str(exc))
            else:
                ai_ms = _ms_since(started)
                on_stage("validate")
                text, parts = parts_from_structured(completion.content, config=config, settings=self.settings)
                return self._finish(config, tally, text, parts, MODE_STRUCTURED, ai_ms, None)
        completion = await self._call(config, lead_name, custom_fields, structured=False, tally=tally)
        ai_ms = _ms_since(started)
        on_stage("validate")
        text = validate_generated_text(completion.content, min_chars=self.settings.min_message_chars)
        llm_parts: list[str] | None = None
        mode = MODE_PLAIN
        if config.split_messages:
            mode = MODE_GENERATE_SPLIT
            on_stage("split")
            split_started = time.perf_counter()
            if self.memory.supports(config.ai_model):
                llm_parts = await self._split_call(config, text, tally, log_id)
            split_ms = _ms_since(split_started)
            self.metrics.split_seconds.observe(split_ms / 1000)
        parts = plan_parts(
            text,
            split_enabled=config.split_messages,
            llm_parts=llm_parts,
            max_parts=config.max_parts,
            max_chars=self.settings.max_part_chars,
        )
        return self._finish(config, tally, text, parts, mode, ai_ms, split_ms)

    async def _call(
        self,
        config: CampaignConfig,
        lead_name: str | None,
        custom_fields: Mapping[str, Any] | None,
        *,
        structured: bool,
        tally: _Tally,
    ) -> Completion:
        body = request_body(
            self.ai,
            config,
            self.settings,
            lead_name=lead_name,
            custom_fields=custom_fields,
            structured=structured,
        )
        tally.calls += 1
        metrics = self.metrics
        started = time.perf_counter()
        if structured:
            metrics.ai_call_kinds["structured"].inc()
        else:
            metrics.ai_call_kinds["generate"].inc()
        # The body just built is the body sent (issue 15): `compose` / `generate` would lay
        # the same request out a second time.
        completion = await self.ai.complete_chat(body, structured=structured)
        metrics.generate_seconds.observe(time.perf_counter() - started)
        tally.add(completion)
        return completion

    async def _split_call(
        self, config: CampaignConfig, text: str, tally: _Tally, log_id: str
    ) -> list[str] | None:
        tally.calls += 1
        self.metrics.ai_call_kinds["split"].inc()
        try:
            answer = await self.ai.split(
                model=config.ai_model,
                text=text,
                max_parts=config.max_parts,
                max_chars=self.settings.max_part_chars,
                max_tokens=self.settings.split_max_tokens,
            )
        except (TemporaryError, PermanentError) as exc:
            # Splitting is best effort: the deterministic splitter is a fine answer, and
            # failing here would throw away a generation we already paid for.
            logger.bind(message_id=log_id, error_class=exc.error_class).info(
                "split call failed ({}); using the deterministic splitter", exc
            )
            return None
        tally.add(answer)
        return parse_split_answer(
            answer.content, max_parts=config.max_parts, max_chars=self.settings.max_part_chars
        )

    def _remember_refusal(self, model: str, reason: str) -> None:
        if self.memory.mark_unsupported(model, reason):
            self.metrics.structured_output_fallbacks.labels(model=model).inc()
            logger.warning(
                "model {} refuses structured output ({}); its split messages use generate → split "
                "for the life of this process",
                model,
                reason,
            )

    def _finish(
        self,
        config: CampaignConfig,
        tally: _Tally,
        text: str,
        parts: list[str],
        mode: str,
        ai_ms: int,
        split_ms: int | None,
    ) -> Generation:
        cost = estimate_cost_usd(
            model=config.ai_model,
            prompt_tokens=tally.prompt_tokens,
            completion_tokens=tally.completion_tokens,
            reported_cost_usd=tally.reported_cost,
            prices=self.settings.model_prices,
        )
        record_generation_metrics(
            self.metrics,
            workspace_id=config.workspace_id,
            mode=mode,
            prompt_tokens=tally.prompt_tokens,
            completion_tokens=tally.completion_tokens,
            cached_tokens=tally.cached_tokens,
            cache_write_tokens=tally.cache_write_tokens,
            cost_usd=cost,
        )
        return Generation(
            text=text,
            parts=parts,
            prompt_tokens=tally.prompt_tokens,
            completion_tokens=tally.completion_tokens,
            cached_tokens=tally.cached_tokens,
            cache_write_tokens=tally.cache_write_tokens,
            cost_usd=cost,
            ai_calls=tally.calls,
            mode=mode,
            ai_ms=ai_ms,
            split_ms=split_ms,
        )


def record_generation_metrics(
    metrics: ConsumerMetrics,
    *,
    workspace_id: object,
    mode: str,
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int,
    cache_write_tokens: int,
    cost_usd: float | None,
) -> None:
    """Per-workspace counters: cached share = cached/prompt, cost per 1,000 = 1000·cost/messages.

    `workspace_id` is the workspace's UUID (or its text); the children are bound once per
    workspace (`ConsumerMetrics.workspace`), not looked up by label on every message."""
    metrics.prompt_tokens.inc(prompt_tokens)
    metrics.completion_tokens.inc(completion_tokens)
    metrics.cached_tokens.inc(cached_tokens)
    metrics.cache_write_tokens.inc(cache_write_tokens)
    workspace = metrics.workspace(workspace_id)
    workspace.generated(mode).inc()
    workspace.prompt_tokens.inc(prompt_tokens)
    workspace.cached_tokens.inc(cached_tokens)
    if cost_usd is not None:
        workspace.cost_usd.inc(cost_usd)


def _ms_since(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)
