"""One message, one attempt: triage → generate → validate → split → send each part → outcome.

The worker (`worker.py`) owns reading, leases and concurrency; this module owns what
happens to a single message. Every decision is delegated to the pure core (`triage`,
`validation`, `split`, `policy`); this module only carries decisions out.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

from loguru import logger

from . import policy
from .ai import AIClient
from .costs import estimate_cost_usd
from .db import Database, persist
from .errors import (
    CampaignqError,
    DeferralError,
    FatalError,
    InvalidConfigError,
    LeaseLostError,
    PermanentError,
    SendHeldError,
    TemporaryError,
)
from .metrics import ConsumerMetrics
from .models import CampaignConfig, MessageContext
from .prompt import build_user_prompt
from .sender_safety import SenderSafety
from .settings import Settings
from .split import parse_split_answer, plan_parts
from .triage import ArchiveOnly, DeadLetterNow, LeaseLost, Process, ReleaseToPending, Skip, triage
from .validation import normalize_phone, validate_generated_text
from .whatsapp import WhatsAppClient, typing_delay_ms

T = TypeVar("T")

SHUTDOWN_PERSIST_S = 5.0
"""How long a drain-timeout release keeps retrying its writes through a database outage."""


@dataclass
class Attempt:
    """What one attempt did so far: the stage it is in and how long each stage took."""

    started: float = field(default_factory=time.perf_counter)
    stage: str = "triage"
    ai_ms: int | None = None
    split_ms: int | None = None
    send_ms: int = 0
    parts_sent_now: int = 0

    def timings(self) -> dict[str, int | None]:
        return {"ai_ms": self.ai_ms, "split_ms": self.split_ms, "send_ms": self.send_ms}


def _ms_since(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)


class MessagePipeline:
    def __init__(
        self,
        *,
        db: Database,
        ai: AIClient,
        whatsapp: WhatsAppClient,
        settings: Settings,
        metrics: ConsumerMetrics,
        on_fatal: Callable[[FatalError], None],
        rng: random.Random | None = None,
    ) -> None:
        self.db = db
        self.ai = ai
        self.whatsapp = whatsapp
        self.settings = settings
        self.metrics = metrics
        self.on_fatal = on_fatal
        self.rng = rng or random.Random()  # noqa: S311 (jitter, not security)
        self.safety = SenderSafety(db=db, settings=settings, rng=self.rng)  # issue 13

    async def handle(self, ctx: MessageContext) -> str:
        """Carry one message to an outcome; returns the outcome's name (for logs and metrics)."""
        attempt = Attempt()
        action = triage(ctx, max_attempts=self.settings.max_attempts)
        try:
            if isinstance(action, Process):
                # issue 13: a paused inbox or a closed send window hands the message back first
                outcome = await self.safety.hold_if_not_now(ctx) or await self._process(ctx, attempt)
            else:
                outcome = await _shielded(self._settle_without_processing(ctx, action))
        except asyncio.CancelledError:
            # Drain timeout: hand the message back at once, without counting an attempt.
            if isinstance(action, Process):
                await _shielded(self._record_progress(ctx, within_s=SHUTDOWN_PERSIST_S))
                await self._persist(
                    lambda: self.db.release_now(ctx.msg, ctx.message_id),
                    "release",
                    within_s=SHUTDOWN_PERSIST_S,
                )
                self._log(ctx, attempt, "released", "shutdown", level="WARNING")
            raise
        self.metrics.outcomes.labels(outcome=outcome, error_class=ctx_error_class(ctx, outcome)).inc()
        self.metrics.message_seconds.observe(time.perf_counter() - attempt.started)
        return outcome

    async def _settle_without_processing(
        self, ctx: MessageContext, action: ReleaseToPending | Skip | ArchiveOnly | DeadLetterNow | LeaseLost
    ) -> str:
        attempt = Attempt()
        message_id = ctx.message_id
        if isinstance(action, LeaseLost) or (message_id is None and not isinstance(action, DeadLetterNow)):
            self.metrics.leases_lost.inc()
            self._log(ctx, attempt, "lease_lost", "another worker holds this message", level="WARNING")
            return "lease_lost"
        if isinstance(action, DeadLetterNow):
            await self._persist(
                lambda: self.db.dead_letter(
                    ctx.msg,
                    message_id if ctx.found and action.fails_row else None,
                    reason=action.reason,
                    error_class=action.error_class,
                    error=action.why,
                    stage="triage",
                    burns_attempt=action.burns_attempt,
                ),
                "dead letter",
            )
            ctx.last_error_class = action.error_class
            self._log(ctx, attempt, "dead_letter", f"{action.reason}: {action.why}", level="WARNING")
            return "dead_letter"
        message_id = ctx.require_message_id()
        if isinstance(action, ReleaseToPending):
            await self._persist(lambda: self.db.release_to_pending(ctx.msg, message_id), "release to pending")
            self._log(ctx, attempt, "released_to_pending", action.why)
            return "released_to_pending"
        if isinstance(action, Skip):
            await self._persist(
                lambda: self.db.skip(ctx.msg, message_id, error_class=action.error_class, error=action.why),
                "skip",
            )
            self._log(ctx, attempt, "skipped", action.why)
            return "skipped"
        await self._persist(lambda: self.db.archive_leased(ctx.msg), "archive")
        self._log(ctx, attempt, "archived", f"{action.why}; nothing sent", level="WARNING")
        return "archived"

    # --- the real work ---------------------------------------------------------------------------

    async def _process(self, ctx: MessageContext, attempt: Attempt) -> str:
        try:
            await self._deliver(ctx, attempt)
        except asyncio.CancelledError:
            raise
        except LeaseLostError as exc:
            self.metrics.leases_lost.inc()
            self._log(ctx, attempt, "lease_lost", str(exc), level="WARNING")
            return "lease_lost"
        except SendHeldError as held:  # issue 13: pace, daily cap, window — not a failure
            await _shielded(self._record_progress(ctx))
            return await _shielded(self.safety.hold(ctx, held))
        except Exception as exc:  # every error becomes a policy decision; nothing escapes
            return await _shielded(self._fail(ctx, attempt, exc))
        message_id = ctx.require_message_id()
        done = await self._persist(
            lambda: self.db.complete_sent(ctx.msg, message_id, send_ms=attempt.send_ms), "success"
        )
        if not done:
            await _shielded(self._record_progress(ctx))
            self.metrics.leases_lost.inc()
            self._log(ctx, attempt, "lease_lost", "sent, but the lease was gone at ack time", level="WARNING")
            return "lease_lost"
        self._log(ctx, attempt, "sent", f"{len(ctx.parts or [])} part(s)")
        return "sent"

    async def _record_progress(self, ctx: MessageContext, *, within_s: float | None = None) -> None:
        """Persist the parts acknowledged so far (the last one is otherwise only recorded on success)."""
        message_id, parts_sent = ctx.message_id, ctx.parts_sent
        if parts_sent > 0 and message_id is not None:
            await self._persist(
                lambda: self.db.record_part_sent(message_id, parts_sent),
                "acknowledged parts",
                within_s=within_s,
            )

    async def _persist(
        self, call: Callable[[], Awaitable[T]], what: str, *, within_s: float | None = None
    ) -> T:
        """A write that records what already happened: shielded from cancellation, and retried
        through a database outage for as long as our lease lasts (`db.persist`)."""
        window_s = self.settings.visibility_timeout_s if within_s is None else within_s
        return await _shielded(persist(call, what=what, within_s=window_s))

    async def _deliver(self, ctx: MessageContext, attempt: Attempt) -> None:
        config = ctx.config
        if config is None:
            raise InvalidConfigError("the run's campaign config or its inbox is missing")
        ctx.require_message_id()
        attempt.stage = "validate_lead"
        number = normalize_phone(ctx.phone)  # before any AI spend: a bad phone fails fast
        attempt.stage = "inbox"
        await self.whatsapp.ensure_connected(config.instance)
        parts = ctx.parts if ctx.parts is not None else await self._generate(ctx, config, attempt)
        attempt.stage = "send"
        for index in range(ctx.parts_sent, len(parts)):
            delay_ms = (
                0
                if index == 0
                else typing_delay_ms(
                    parts[index],
                    words_per_minute=self.settings.typing_words_per_minute,
                    cap_s=self.settings.typing_delay_cap_s,
                )
            )
            await self.safety.before_bubble(ctx, index=index, parts=parts, delay_ms=delay_ms)  # issue 13
            started = time.perf_counter()
            await self.whatsapp.send_text(
                instance=config.instance, number=number, text=parts[index], delay_ms=delay_ms
            )
            elapsed_ms = _ms_since(started)
            attempt.send_ms += elapsed_ms
            self.metrics.stage_seconds.labels(stage="send").observe(elapsed_ms / 1000)
            ctx.parts_sent = index + 1
            attempt.parts_sent_now += 1
            if index + 1 < len(parts):
                # The gateway acknowledged this part: record it now (shielded from
                # cancellation, retried through a database outage) so no retry sends it
                # again. The last part is recorded by the success transaction itself, one
                # round trip fewer per message.
                await self._record_progress(ctx)

    async def _generate(self, ctx: MessageContext, config: CampaignConfig, attempt: Attempt) -> list[str]:
        if not config.system_prompt.strip():
            raise InvalidConfigError("the campaign's system prompt is empty")
        attempt.stage = "generate"
        started = time.perf_counter()
        completion = await self.ai.generate(
            model=config.ai_model,
            system_prompt=config.system_prompt,
            user_prompt=build_user_prompt(lead_name=ctx.lead_name, custom_fields=ctx.custom_fields),
            max_tokens=config.max_tokens,
        )
        attempt.ai_ms = _ms_since(started)
        self.metrics.stage_seconds.labels(stage="generate").observe(attempt.ai_ms / 1000)
        attempt.stage = "validate"
        text = validate_generated_text(completion.content, min_chars=self.settings.min_message_chars)
        prompt_tokens = completion.usage.prompt_tokens
        completion_tokens = completion.usage.completion_tokens
        reported_cost = completion.usage.cost_usd
        llm_parts: list[str] | None = None
        if config.split_messages:
            attempt.stage = "split"
            started = time.perf_counter()
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
                logger.bind(message_id=str(ctx.message_id), error_class=policy.error_class_of(exc)).info(
                    "split call failed ({}); using the deterministic splitter", exc
                )
            else:
                llm_parts = parse_split_answer(
                    answer.content, max_parts=config.max_parts, max_chars=self.settings.max_part_chars
                )
                prompt_tokens += answer.usage.prompt_tokens
                completion_tokens += answer.usage.completion_tokens
                if answer.usage.cost_usd is not None:
                    reported_cost = (reported_cost or 0.0) + answer.usage.cost_usd
            attempt.split_ms = _ms_since(started)
            self.metrics.stage_seconds.labels(stage="split").observe(attempt.split_ms / 1000)
        parts = plan_parts(
            text,
            split_enabled=config.split_messages,
            llm_parts=llm_parts,
            max_parts=config.max_parts,
            max_chars=self.settings.max_part_chars,
        )
        self.metrics.tokens.labels(kind="prompt").inc(prompt_tokens)
        self.metrics.tokens.labels(kind="completion").inc(completion_tokens)
        cost = estimate_cost_usd(
            model=config.ai_model,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            reported_cost_usd=reported_cost,
            prices=self.settings.model_prices,
        )
        message_id = ctx.require_message_id()
        ai_ms, split_ms = attempt.ai_ms, attempt.split_ms
        stored = await self._persist(
            lambda: self.db.store_generation(
                ctx.msg,
                message_id,
                text=text,
                parts=parts,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                cost_usd=cost,
                ai_ms=ai_ms,
                split_ms=split_ms,
            ),
            "generation",
        )
        if not stored:
            raise LeaseLostError("could not store the generation: the lease is gone")
        ctx.generated_message = text
        ctx.parts = parts
        ctx.parts_sent = 0
        return parts

    async def _fail(self, ctx: MessageContext, attempt: Attempt, exc: Exception) -> str:
        if isinstance(exc, FatalError):
            self.on_fatal(exc)
        await self.safety.after_failure(ctx, exc, stage=attempt.stage)  # issue 13: 429 / ban → inbox
        deferred_for_s = 0.0
        if ctx.first_deferred_at is not None:
            deferred_for_s = max(0.0, (datetime.now(UTC) - ctx.first_deferred_at).total_seconds())
        decision = policy.decide(
            exc,
            attempts_made=ctx.retry_count + 1,
            max_attempts=self.settings.max_attempts,
            deferred_for_s=deferred_for_s,
            max_deferral_s=self.settings.max_deferral_s,
            backoff_base_s=self.settings.backoff_base_s,
            backoff_max_s=self.settings.backoff_max_s,
            rng=self.rng,
            max_retry_after_s=self.settings.ai_max_retry_after_s,
        )
        error_class = policy.error_class_of(exc)
        ctx.last_error_class = error_class
        error_text = _describe(exc)
        if isinstance(decision, policy.DeadLetter):
            dead = decision
            await self._persist(
                lambda: self.db.dead_letter(
                    ctx.msg,
                    ctx.message_id,
                    reason=dead.reason,
                    error_class=dead.error_class,
                    error=error_text,
                    stage=attempt.stage,
                    burns_attempt=not isinstance(exc, DeferralError),
                ),
                "dead letter",
            )
            self._log(ctx, attempt, "dead_letter", f"{decision.reason}: {error_text}", level="WARNING")
            return "dead_letter"
        retry = decision
        await self._persist(
            lambda: self.db.retry_later(
                ctx.msg,
                ctx.message_id,
                delay_s=retry.delay_s,
                burns_attempt=retry.burns_attempt,
                error_class=error_class,
                error=error_text,
                stage=attempt.stage,
            ),
            "retry",
        )
        outcome = "retry" if decision.burns_attempt else "deferred"
        level = "ERROR" if error_class == policy.ERROR_CLASS_INTERNAL else "INFO"
        if error_class == policy.ERROR_CLASS_INTERNAL:
            logger.opt(exception=exc).error("unexpected error processing message {}", ctx.message_id)
        self._log(
            ctx, attempt, outcome, f"{error_text}; visible again in {decision.delay_s:.1f} s", level=level
        )
        return outcome

    def _log(
        self, ctx: MessageContext, attempt: Attempt, outcome: str, detail: str, *, level: str = "INFO"
    ) -> None:
        logger.bind(
            outcome=outcome,
            message_id=str(ctx.message_id) if ctx.message_id else None,
            run_id=str(ctx.run_id) if ctx.run_id else None,
            msg_id=ctx.msg.msg_id,
            attempt=ctx.retry_count + 1,
            error_class=ctx.last_error_class,
            stage=attempt.stage,
            **attempt.timings(),
        ).log(level, "{} {}: {}", outcome, ctx.message_id or f"msg_id={ctx.msg.msg_id}", detail)


def ctx_error_class(ctx: MessageContext, outcome: str) -> str:
    return ctx.last_error_class or ("none" if outcome == "sent" else outcome)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, CampaignqError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


async def _shielded(awaitable: Awaitable[T]) -> T:
    """Finish a state-changing database call even if our task is being cancelled (arq does
    the same for job completion): a half-recorded outcome is worse than a late shutdown."""
    return await asyncio.shield(awaitable)
