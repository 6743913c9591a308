"""One message, one attempt: triage → generate → validate → split → send each part → outcome.

The worker (`worker.py`) owns reading, leases and concurrency; this module owns what
happens to a single message. Every decision is delegated to the pure core (`triage`,
`validation`, `split`, `policy`); this module only carries decisions out.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from loguru import logger

from ..core import policy
from ..core.jid import USER_SUFFIX, digits
from ..core.models import CampaignConfig, MessageContext
from ..core.triage import (
    ArchiveOnly,
    DeadLetterNow,
    LeaseLost,
    Process,
    ReleaseToPending,
    Skip,
    parts_to_reconcile,
    triage,
)
from ..core.validation import normalize_phone
from ..errors import (
    CampaignqError,
    DeferralError,
    FatalError,
    InvalidConfigError,
    LeadOptedOutError,
    LeaseLostError,
    ReconcileUnavailableError,
    SendHeldError,
    SendOutcomeUnknownError,
    UncertainSendHeldError,
)
from ..settings import Settings
from ..vocabulary import ErrorClass, Outcome
from .ai import AIClient
from .db import TRANSIENT_DB_ERRORS, WRITES_IN_FLIGHT, Database, persist
from .generation import Generator
from .lease import Lease
from .metrics import ConsumerMetrics
from .sender_safety import SenderSafety
from .whatsapp import SendReceipt, WhatsAppClient, typing_delay_ms

T = TypeVar("T")

SHUTDOWN_PERSIST_S = 5.0
"""How long a drain-timeout release keeps retrying its writes through a database outage."""

_WRITES = WRITES_IN_FLIGHT
"""The writes of the message being handled in this task that run outside it (a `_shielded`
write's task, a batched statement of `db.OutcomeBatcher`): a task that is cancelled waits for
them before it releases the message, so a released message can never be written by its old
holder (issue 9, the drain race)."""
_SHIELDED: contextvars.ContextVar[bool] = contextvars.ContextVar("campaignq_shielded", default=False)
"""True inside a `_shielded` task: nothing can cancel it but the loop's own shutdown, so the
writes it makes need no shield of their own (one shield per sequence, not one per write)."""


@dataclass
class Attempt:
    """What one attempt did so far: the stage it is in and how long each stage took."""

    started: float = field(default_factory=time.perf_counter)
    stage: str = "triage"
    ai_ms: int | None = None
    split_ms: int | None = None
    send_ms: int = 0
    parts_sent_now: int = 0
    answered_at: float | None = None
    """perf_counter() when the gateway last acknowledged a part not yet recorded."""
    uncertain_unrecorded: bool = False
    """An uncertain part (`ctx.uncertain_part`) not yet recorded in the row."""

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
        generator: Generator | None = None,
    ) -> None:
        self.db = db
        self.ai = ai
        self.generator = generator or Generator(ai=ai, settings=settings, metrics=metrics)
        self.whatsapp = whatsapp
        self.settings = settings
        self.metrics = metrics
        self.on_fatal = on_fatal
        self.rng = rng or random.Random()  # noqa: S311 (jitter, not security)
        self.safety = SenderSafety(db=db, settings=settings, rng=self.rng)  # issue 13

    async def handle(self, ctx: MessageContext, lease: Lease) -> str:
        """Carry one message to an outcome; returns the outcome's name (for logs and metrics)."""
        attempt = Attempt()
        writes: list[asyncio.Future[Any]] = []
        _WRITES.set(writes)  # this task's own context: the message's writes, nobody else's
        action = triage(ctx, max_attempts=self.settings.max_attempts)
        try:
            if isinstance(action, Process):
                # issue 13: a paused inbox or a closed send window hands the message back first
                outcome = await self.safety.hold_if_not_now(ctx) or await self._process(ctx, attempt, lease)
            else:
                outcome = await _shielded(self._settle_without_processing(ctx, action))
        except asyncio.CancelledError:
            # Cancelled by a revoked lease or by the drain timeout. Writes already on their way
            # (shielded) finish first: releasing before them would let a late store_generation
            # or outcome land on a message that is visible again (or already re-read).
            await _wait_for(writes)
            task = asyncio.current_task()
            if lease.lost is not None and task is not None and task.cancelling() <= 1:
                task.uncancel()  # our own revocation, not a shutdown: this task ends normally
                await _shielded(self._record_facts(ctx, attempt, within_s=self.settings.visibility_timeout_s))
                ctx.last_error_class = ErrorClass.LEASE_LOST  # counted in leases_lost where it was revoked
                self._log(ctx, attempt, "lease_lost", lease.lost, level="WARNING")
                outcome = Outcome.LEASE_LOST
            else:
                # Drain timeout: hand the message back at once, without counting an attempt.
                if isinstance(action, Process):
                    await _shielded(self._record_facts(ctx, attempt, within_s=SHUTDOWN_PERSIST_S))
                    if lease.lost is None:
                        await self._persist(
                            lambda: self.db.release_now(ctx.msg, ctx.message_id),
                            "release",
                            within_s=SHUTDOWN_PERSIST_S,
                        )
                    self._log(ctx, attempt, Outcome.RELEASED, "shutdown", level="WARNING")
                raise
        self.metrics.outcome(outcome, ctx_error_class(ctx, outcome)).inc()
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
            return Outcome.LEASE_LOST
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
            return Outcome.DEAD_LETTER
        message_id = ctx.require_message_id()
        if isinstance(action, ReleaseToPending):
            await self._persist(lambda: self.db.release_to_pending(ctx.msg, message_id), "release to pending")
            self._log(ctx, attempt, "released_to_pending", action.why)
            return Outcome.RELEASED_TO_PENDING
        if isinstance(action, Skip):
            await self._persist(
                lambda: self.db.skip(ctx.msg, message_id, error_class=action.error_class, error=action.why),
                "skip",
            )
            self._log(ctx, attempt, "skipped", action.why)
            return Outcome.SKIPPED
        await self._persist(lambda: self.db.archive_leased(ctx.msg), "archive")
        self._log(ctx, attempt, "archived", f"{action.why}; nothing sent", level="WARNING")
        return Outcome.ARCHIVED

    # --- the real work ---------------------------------------------------------------------------

    async def _process(self, ctx: MessageContext, attempt: Attempt, lease: Lease) -> str:
        try:
            await self._deliver(ctx, attempt, lease)
        except asyncio.CancelledError:
            raise
        except LeaseLostError as exc:
            self.metrics.leases_lost.inc()
            self._log(ctx, attempt, "lease_lost", str(exc), level="WARNING")
            return Outcome.LEASE_LOST
        except LeadOptedOutError as exc:  # issue 20: the lead said stop mid-message
            return await _shielded(self._skip_opted_out(ctx, attempt, exc))
        except SendHeldError as held:  # issue 13: pace, daily cap, window — not a failure
            await _shielded(self._record_progress(ctx))
            return await _shielded(self.safety.hold(ctx, held))
        except Exception as exc:  # every error becomes a policy decision; nothing escapes
            return await _shielded(self._fail(ctx, attempt, exc))
        message_id = ctx.require_message_id()
        done = await self._persist(
            lambda: self.db.complete_sent(ctx.msg, message_id, send_ms=attempt.send_ms),
            "success",
            batched=True,
        )
        self._recorded(attempt)
        if not done:
            await _shielded(self._record_progress(ctx))
            self.metrics.leases_lost.inc()
            self._log(ctx, attempt, "lease_lost", "sent, but the lease was gone at ack time", level="WARNING")
            return Outcome.LEASE_LOST
        self._log(ctx, attempt, "sent", f"{len(ctx.parts or [])} part(s)")
        return Outcome.SENT

    async def _skip_opted_out(self, ctx: MessageContext, attempt: Attempt, exc: LeadOptedOutError) -> str:
        """Nothing more is sent to a lead who opted out; the message ends `skipped`
        (`opted_out`), its queue message archived, with the parts already delivered counted in
        `parts_sent` (recorded by the write that brought the news)."""
        message_id = ctx.require_message_id()
        done = await self._persist(
            lambda: self.db.skip(ctx.msg, message_id, error_class=ErrorClass.OPTED_OUT, error=str(exc)),
            "skip",
        )
        ctx.last_error_class = ErrorClass.OPTED_OUT
        if not done:
            self.metrics.leases_lost.inc()
            self._log(
                ctx, attempt, "lease_lost", "opted out mid-message, but the lease was gone", level="WARNING"
            )
            return Outcome.LEASE_LOST
        self._log(ctx, attempt, "skipped", str(exc))
        return Outcome.SKIPPED

    async def _record_facts(
        self, ctx: MessageContext, attempt: Attempt, *, within_s: float | None = None
    ) -> None:
        """Record what the gateway has or may have that the row does not say yet: acknowledged
        parts (monotonic) and an uncertain part. Both are unguarded facts."""
        message_id, part, since = ctx.message_id, ctx.uncertain_part, ctx.uncertain_since
        if attempt.answered_at is not None or within_s is not None:
            await self._record_progress(ctx, within_s=within_s)
            self._recorded(attempt)
        if attempt.uncertain_unrecorded and message_id is not None and part is not None and since is not None:
            record = functools.partial(self.db.record_part_uncertain, message_id, part, since=since)
            await self._persist(record, "uncertain part", within_s=within_s)
            attempt.uncertain_unrecorded = False

    async def _record_progress(
        self, ctx: MessageContext, *, within_s: float | None = None, batched: bool = False
    ) -> bool:
        """Persist the parts acknowledged so far (the last one is otherwise only recorded on
        success). True when the lead has opted out since the message was read."""
        message_id, parts_sent = ctx.message_id, ctx.parts_sent
        if parts_sent > 0 and message_id is not None:
            return await self._persist(
                lambda: self.db.record_part_sent(message_id, parts_sent),
                "acknowledged parts",
                within_s=within_s,
                batched=batched,
            )
        return False

    async def _persist(
        self,
        call: Callable[[], Awaitable[T]],
        what: str,
        *,
        within_s: float | None = None,
        batched: bool = False,
    ) -> T:
        """A write that records what already happened: safe from cancellation, and retried
        through a database outage for as long as our lease lasts (`db.persist`).

        Safe from cancellation without a Task per write (P4, issue 15):
        - inside a `_shielded` sequence the write runs inline (the sequence is shielded once);
        - `batched=True`, for the hot path's writes that go through an `OutcomeBatcher` (parts
          acknowledged, success): the statement runs in the batcher's task, which our
          cancellation cannot reach, and is registered in `_WRITES`, so a cancelled task still
          waits for it before it releases the message. What a cancellation does stop is the
          retry after a transient error; the cancelled task's handler then records the facts
          itself (`_record_facts`, shielded and retried), and a success that did not land
          leaves the message to the next holder, which finds every part acknowledged and
          completes it without sending anything;
        - otherwise (store_generation, the cold paths, or batching off) one shield.
        """
        window_s = self.settings.visibility_timeout_s if within_s is None else within_s
        if _SHIELDED.get() or (batched and self.db.batching):
            return await persist(call, what=what, within_s=window_s)
        return await _shielded(persist(call, what=what, within_s=window_s))

    async def _deliver(self, ctx: MessageContext, attempt: Attempt, lease: Lease) -> None:
        config = ctx.config
        if config is None:
            raise InvalidConfigError("the run's campaign config or its inbox is missing")
        message_id = ctx.require_message_id()
        attempt.stage = "validate_lead"
        number = normalize_phone(ctx.phone)  # before any AI spend: a bad phone fails fast
        attempt.stage = "inbox"
        await self.whatsapp.ensure_connected(config.instance)
        # Parts whose delivery is unknown as this attempt starts (an uncertain send, or a
        # previous holder that stopped mid-message): reconciled before they are sent again.
        unknown = parts_to_reconcile(ctx)
        parts = ctx.parts if ctx.parts is not None else await self._generate(ctx, config, attempt)
        attempt.stage = "send"
        for index in range(ctx.parts_sent, len(parts)):
            if index in unknown:
                attempt.stage = "reconcile"
                delivered = await self._reconcile(
                    ctx, config, number, parts[index], index, since=unknown[index], just_sent=None
                )
                attempt.stage = "send"
                if delivered:
                    await self._acknowledged(ctx, attempt, index, len(parts))
                    continue
            delay_ms = (
                0
                if index == 0
                else typing_delay_ms(
                    parts[index],
                    words_per_minute=self.settings.typing_words_per_minute,
                    cap_s=self.settings.typing_delay_cap_s,
                )
            )
            # issue 13: the inbox's pace (may wait a moment for the booked slot, or hand back).
            await self.safety.before_bubble(ctx, index=index, parts=parts, delay_ms=delay_ms)
            # The whole send must fit in the lease: its timeout (which includes the typing
            # delay) plus a margin to record the answer. Otherwise stop here; the next holder
            # carries on from `parts_sent` once the lease has really ended. Checked after the
            # pace wait, which spends lease time.
            needed_s = self.settings.send_timeout_s + delay_ms / 1000 + self.settings.lease_margin_s
            await lease.ensure_room(needed_s)
            started = time.perf_counter()
            began_at = datetime.now(UTC)
            receipt: SendReceipt | None = None
            try:
                with lease.sending():
                    receipt = await self.whatsapp.send_text(
                        instance=config.instance, number=number, text=parts[index], delay_ms=delay_ms
                    )
            except SendOutcomeUnknownError as exc:
                # The request was written and no answer came: maybe delivered. Record that
                # first (a fact, whoever holds the lease), then ask the gateway.
                self.metrics.uncertain_sends.inc()
                if ctx.uncertain_part == index and ctx.uncertain_since is not None:
                    began_at = min(began_at, ctx.uncertain_since)
                since = began_at
                ctx.uncertain_part, ctx.uncertain_since = index, since
                attempt.uncertain_unrecorded = True
                await self._persist(
                    functools.partial(self.db.record_part_uncertain, message_id, index, since=since),
                    "uncertain part",
                )
                attempt.uncertain_unrecorded = False
                attempt.stage = "reconcile"
                if not await self._reconcile(
                    ctx, config, number, parts[index], index, since=since, just_sent=exc
                ):
                    raise exc  # not reached: right after the send, only "delivered" returns
                attempt.stage = "send"
            elapsed_ms = _ms_since(started)
            attempt.send_ms += elapsed_ms
            self.metrics.send_seconds.observe(elapsed_ms / 1000)
            await self._acknowledged(ctx, attempt, index, len(parts))
            if receipt is not None:
                await self._remember_chat(ctx, number, receipt, more_parts=index + 1 < len(parts))

    async def _remember_chat(
        self, ctx: MessageContext, number: str, receipt: SendReceipt, *, more_parts: bool
    ) -> None:
        """Keep the chat the gateway stored this message under (issue 21, point 3), so a later
        uncertain part of it is looked for there first (only the stored jid finds a LID chat).
        Written only while parts remain to send, and only when it is not the plain
        `<digits>@s.whatsapp.net` (NULL means that), once per attempt: one-part messages and
        plain numbers cost no statement, a split message to a rewritten Brazilian number or a
        LID chat one small UPDATE (not in the success transaction's path)."""
        jid = receipt.remote_jid
        if jid is None or jid == ctx.whatsapp_jid:
            return
        ctx.whatsapp_jid = jid
        message_id = ctx.message_id
        if not more_parts or jid == digits(number) + USER_SUFFIX or message_id is None:
            return
        # A hint, not a fact the invariants rest on (reconciliation asks every candidate chat
        # anyway): recorded after the acknowledgement, and a database error only costs it.
        try:
            await self.db.record_whatsapp_jid(message_id, jid)
        except TRANSIENT_DB_ERRORS as exc:
            logger.debug("could not record the chat of {}: {}", message_id, exc)

    async def _known_chat(self, ctx: MessageContext) -> str | None:
        """The chat recorded for this message, by this attempt or an earlier one (None: none)."""
        if ctx.whatsapp_jid is not None or ctx.message_id is None:
            return ctx.whatsapp_jid
        try:
            ctx.whatsapp_jid = await self.db.message_whatsapp_jid(ctx.message_id)
        except TRANSIENT_DB_ERRORS as exc:  # only a hint: every candidate chat is asked anyway
            logger.debug("could not read the recorded chat of {}: {}", ctx.message_id, exc)
        return ctx.whatsapp_jid

    async def _acknowledged(self, ctx: MessageContext, attempt: Attempt, index: int, total: int) -> None:
        ctx.parts_sent = index + 1
        attempt.parts_sent_now += 1
        attempt.answered_at = time.perf_counter()
        if index + 1 < total:
            # The gateway has this part: record it now (safe from cancellation, retried
            # through a database outage: `_persist`) so no retry sends it again. The last part
            # is recorded by the success transaction itself, one round trip fewer per message.
            # If we are cancelled while it is on its way, `attempt.answered_at` is still set and
            # the handler records it again (monotonic) before anything else.
            # The same write answers whether the lead opted out meanwhile (issue 20): if so,
            # no further part goes out.
            opted_out = await self._record_progress(ctx, batched=True)
            self._recorded(attempt)
            if opted_out:
                raise LeadOptedOutError(
                    f"the lead opted out after part {index + 1} of {total}; nothing more sent"
                )

    def _recorded(self, attempt: Attempt) -> None:
        if attempt.answered_at is not None:
            self.metrics.ack_record_seconds.observe(time.perf_counter() - attempt.answered_at)
            attempt.answered_at = None

    async def _reconcile(
        self,
        ctx: MessageContext,
        config: CampaignConfig,
        number: str,
        text: str,
        index: int,
        *,
        since: datetime,
        just_sent: SendOutcomeUnknownError | None,
    ) -> bool:
        """Ask the gateway whether an uncertain part was delivered and carry out the policy's
        decision (`policy.decide_uncertain`): True = delivered, count it; False = send it;
        raises to put the message back (check later) or to dead-letter it (hold)."""
        found: bool | None
        unavailable: ReconcileUnavailableError | None = None
        try:
            found = await self.whatsapp.find_sent(
                instance=config.instance,
                number=number,
                text=text,
                since_epoch_s=since.timestamp(),
                known_jid=await self._known_chat(ctx),
            )
        except ReconcileUnavailableError as exc:
            found, unavailable = None, exc
        self.metrics.reconciliations.labels(
            result="unavailable" if found is None else "found" if found else "absent"
        ).inc()
        name = config.uncertain_send_policy or self.settings.uncertain_send_policy
        uncertain_policy = policy.uncertain_send_policy(name)
        decision = policy.decide_uncertain(found, just_sent=just_sent is not None, policy=uncertain_policy)
        kind = type(decision).__name__
        self.metrics.uncertain_decisions.labels(policy=uncertain_policy, decision=kind).inc()
        logger.bind(
            message_id=str(ctx.message_id), msg_id=ctx.msg.msg_id, part=index + 1, policy=uncertain_policy
        ).log(
            "INFO" if isinstance(decision, policy.Acknowledged) else "WARNING",
            "uncertain part {} of message {}: gateway says {} -> {}{}",
            index + 1,
            ctx.message_id,
            "unavailable" if found is None else "delivered" if found else "not delivered",
            kind,
            "" if isinstance(decision, policy.Acknowledged) else f" ({decision.why})",
        )
        if isinstance(decision, policy.Acknowledged):
            return True
        if isinstance(decision, policy.SendAgain):
            return False
        if isinstance(decision, policy.Hold):
            raise UncertainSendHeldError(decision.why)
        if just_sent is not None:
            raise just_sent  # burns an attempt, as a send timeout always did
        raise ReconcileUnavailableError(f"{decision.why}: {unavailable}")

    async def _generate(self, ctx: MessageContext, config: CampaignConfig, attempt: Attempt) -> list[str]:
        """Generate (`generation.Generator`: one call per message) and store before any send."""

        def on_stage(stage: str) -> None:
            attempt.stage = stage

        made = await self.generator.generate(
            config,
            lead_name=ctx.lead_name,
            custom_fields=ctx.custom_fields,
            on_stage=on_stage,
            log_id=str(ctx.message_id),
        )
        attempt.ai_ms, attempt.split_ms = made.ai_ms, made.split_ms
        message_id = ctx.require_message_id()
        stored = await self._persist(
            lambda: self.db.store_generation(
                ctx.msg,
                message_id,
                text=made.text,
                parts=made.parts,
                prompt_tokens=made.prompt_tokens,
                completion_tokens=made.completion_tokens,
                cost_usd=made.cost_usd,
                ai_ms=made.ai_ms,
                split_ms=made.split_ms,
                cached_tokens=made.cached_tokens,
                cache_write_tokens=made.cache_write_tokens,
                ai_calls=made.ai_calls,
                mode=made.mode,
            ),
            "generation",
        )
        if not stored:
            raise LeaseLostError("could not store the generation: the lease is gone")
        ctx.generated_message = made.text
        ctx.parts = made.parts
        ctx.parts_sent = 0
        return made.parts

    async def _fail(self, ctx: MessageContext, attempt: Attempt, exc: Exception) -> str:
        if isinstance(exc, FatalError):
            self.on_fatal(exc)
        # What the gateway may already have (an acknowledged or uncertain part the failed
        # write did not record) goes into the row before the message is handed back as
        # `queued`: otherwise the next holder, seeing a clean row, would send it again. If
        # the database still refuses, this raises and the row stays `sending`, which makes
        # the next holder reconcile that part with the gateway first.
        await self._record_facts(ctx, attempt)
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
            return Outcome.DEAD_LETTER
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
        outcome = Outcome.RETRY if decision.burns_attempt else Outcome.DEFERRED
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
            message_id=ctx.message_id,
            run_id=ctx.run_id,
            msg_id=ctx.msg.msg_id,
            attempt=ctx.retry_count + 1,
            error_class=ctx.last_error_class,
            stage=attempt.stage,
            **attempt.timings(),
        ).log(level, "{} {}: {}", outcome, ctx.message_id or f"msg_id={ctx.msg.msg_id}", detail)


def ctx_error_class(ctx: MessageContext, outcome: str) -> str:
    return ctx.last_error_class or ("none" if outcome == Outcome.SENT else outcome)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, CampaignqError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


async def _shielded(awaitable: Awaitable[T]) -> T:
    """Finish a state-changing database call even if our task is being cancelled (arq does
    the same for job completion): a half-recorded outcome is worse than a late shutdown.

    The write is registered with the message being handled (`_WRITES`), so a cancelled
    task can wait for it before releasing the message."""
    future = asyncio.ensure_future(_inside_shield(awaitable))
    writes = _WRITES.get(None)
    if writes is not None:
        writes.append(future)
    return await asyncio.shield(future)


async def _inside_shield(awaitable: Awaitable[T]) -> T:
    _SHIELDED.set(True)  # this task's own context (a copy): the caller's is unchanged
    return await awaitable


async def _wait_for(writes: list[asyncio.Future[Any]]) -> None:
    """Wait until every write of this message has finished, whatever it raised, even if the
    task is cancelled again meanwhile (the caller sees that in `Task.cancelling()`)."""
    pending = [w for w in writes if not w.done()]
    if not pending:
        return
    gathered = asyncio.gather(*pending, return_exceptions=True)
    while not gathered.done():
        try:
            await asyncio.shield(gathered)
        except asyncio.CancelledError:
            continue
