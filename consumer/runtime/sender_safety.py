"""Sender safety at the consumer (issue 13): the thin edge that carries out `pacing` and
`send_window` decisions for one message.

Three hooks, called by `pipeline.py` (each marked "issue 13" there):

* `hold_if_not_now(ctx)` — before any work (and any AI spend): a paused inbox or a lead
  outside its send window hands the message back to the queue.
* `before_bubble(ctx, ...)` — before each bubble: the first one books the message's span on
  the inbox (paced or capped inboxes only; one short UPDATE … RETURNING), waits in-process
  when the slot is near, else hands the message back until its slot; later bubbles wait for
  their planned time so the message's bubbles keep order, gaps and typing delays.
* `after_failure(ctx, exc, stage)` — a gateway 429 / ban / logout is reported to the
  database, which pushes the inbox's next slot out and pauses it when it must.

Handing back (`hold`) is `campaignq_hold_back`: visible again later, row `queued`, no attempt
burnt, the deferral clock not advanced. Waiting never happens in a consumer slot beyond
`pace_max_wait_s`, so a paced inbox cannot starve the others.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime

from loguru import logger

from ..core.models import MessageContext, SenderContext
from ..core.pacing import booking_usable, daily_cap, hold_delay_s, next_utc_midnight, plan_message
from ..core.send_window import lead_zone, next_opening
from ..errors import InboxBannedError, RateLimitedError, SendHeldError
from ..settings import Settings
from ..vocabulary import ErrorClass, Outcome
from .db import TRANSIENT_DB_ERRORS, Database, persist
from .whatsapp import typing_delay_ms

HELD_OUTCOME = Outcome.HELD
HOLD_SEND_WINDOW = "send_window"
HOLD_PACE = "pace"
HOLD_DAILY_CAP = "daily_cap"
HOLD_INBOX_PAUSED = "inbox_paused"
ERROR_CLASS_OPTED_OUT = ErrorClass.OPTED_OUT


def window_hold(
    sender: SenderContext, phone: str | None, at: datetime, *, spread_s: float, rng: random.Random
) -> SendHeldError | None:
    """A hold until the lead's window opens (plus a random spread), or None when open at `at`."""
    if sender.window_start is None or sender.window_end is None:
        return None
    zone = lead_zone(lead_timezone=sender.lead_timezone, phone=phone, config_timezone=sender.config_timezone)
    opening = next_opening(at, sender.window_start, sender.window_end, zone)
    if opening is None:
        return None
    delay_s = (opening - at).total_seconds() + spread_s * rng.random()
    return SendHeldError(
        f"outside the lead's send window ({sender.window_start:%H:%M}-{sender.window_end:%H:%M} {zone}); "
        f"opens at {opening:%Y-%m-%d %H:%M} UTC",
        reason=HOLD_SEND_WINDOW,
        delay_s=delay_s,
    )


def paused_hold(sender: SenderContext, *, recheck_s: float, rng: random.Random) -> SendHeldError | None:
    inbox = sender.inbox
    if inbox is None or inbox.paused_at is None:
        return None
    return SendHeldError(
        f"inbox paused: {inbox.pause_reason or 'by an operator'}",
        reason=HOLD_INBOX_PAUSED,
        delay_s=recheck_s * (0.75 + 0.5 * rng.random()),
    )


class SenderSafety:
    def __init__(
        self,
        *,
        db: Database,
        settings: Settings,
        rng: random.Random | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.db = db
        self.settings = settings
        self.rng = rng or random.Random()  # noqa: S311 (jitter, not security)
        self.clock = clock

    # --- before any work -----------------------------------------------------------------

    async def hold_if_not_now(self, ctx: MessageContext) -> str | None:
        """Hand the message back (returns the outcome) when its inbox is paused or its lead is
        outside the send window; None when it may be processed now."""
        held = self._pause_or_window(ctx, self.clock())
        if held is None:
            return None
        return await self.hold(ctx, held)

    def _pause_or_window(self, ctx: MessageContext, now: datetime) -> SendHeldError | None:
        """A paused inbox holds every message; a closed window only one not started yet (a
        message with bubbles already delivered is completed, never left half-sent overnight)."""
        s = self.settings
        held = paused_hold(ctx.sender, recheck_s=s.paused_inbox_recheck_s, rng=self.rng)
        if held is None and ctx.parts_sent == 0:
            held = window_hold(ctx.sender, ctx.phone, now, spread_s=s.window_open_spread_s, rng=self.rng)
        return held

    # --- before each bubble ----------------------------------------------------------------

    async def before_bubble(
        self, ctx: MessageContext, *, index: int, parts: list[str], delay_ms: int
    ) -> None:
        """Wait for this bubble's planned time; raise `SendHeldError` (first bubble only) when
        the message must go back to the queue instead."""
        sender = ctx.sender
        if not sender.checked:
            await self._plan(ctx, index=index, parts=parts)
        plan = sender.plan
        if plan is None or sender.slot_monotonic is None:
            return
        start = sender.slot_monotonic + plan.start_after_s(index, delay_ms / 1000.0)
        wait_s = start - time.monotonic()
        if wait_s > 0:
            await asyncio.sleep(wait_s)

    async def _plan(self, ctx: MessageContext, *, index: int, parts: list[str]) -> None:
        s, sender = self.settings, ctx.sender
        now = self.clock()
        held = self._pause_or_window(ctx, now)
        if held is not None:
            raise held
        inbox = sender.inbox
        if inbox is None or not inbox.needs_booking(now):
            sender.checked = True
            return
        wpm, cap_s = s.typing_words_per_minute, s.typing_delay_cap_s
        delays_s = [
            0.0 if i == 0 else typing_delay_ms(parts[i], words_per_minute=wpm, cap_s=cap_s) / 1000.0
            for i in range(index, len(parts))
        ]
        plan = plan_message(
            first_index=index,
            typing_delays_s=delays_s,
            max_sends_per_minute=inbox.max_sends_per_minute,
            jitter=s.pace_jitter,
            rng=self.rng,
        )
        booked_wait_s = (
            sender.slot_wait_s - (time.monotonic() - sender.read_monotonic)
            if sender.slot_wait_s is not None
            else None
        )
        if booked_wait_s is not None and booking_usable(
            wait_s=booked_wait_s, max_wait_s=s.pace_max_wait_s, late_tolerance_s=s.pace_late_tolerance_s
        ):
            wait_s = max(0.0, booked_wait_s)
        else:
            booked, slot_wait_s = await self.db.book_send_slot(
                inbox_id=inbox.inbox_id,
                message_id=ctx.require_message_id(),
                span_s=plan.span_s,
                daily_cap=daily_cap(inbox, now),
                first_bubble=ctx.parts_sent == 0,
                bubbles=len(parts) - index,
            )
            if not booked or slot_wait_s is None:
                reset = next_utc_midnight(now)
                raise SendHeldError(
                    f"the inbox's daily cap ({daily_cap(inbox, now)}) is reached; resets at 00:00 UTC",
                    reason=HOLD_DAILY_CAP,
                    delay_s=(reset - now).total_seconds() + s.window_open_spread_s * self.rng.random(),
                )
            wait_s = max(0.0, slot_wait_s)
        if wait_s > s.pace_max_wait_s:
            early_s = min(s.pace_max_wait_s * 0.5, s.poll_interval_s + 0.5)
            raise SendHeldError(
                f"the inbox's next free slot is in {wait_s:.1f} s ({inbox.max_sends_per_minute}/min)",
                reason=HOLD_PACE,
                delay_s=hold_delay_s(wait_s, early_s=early_s),
            )
        sender.plan = plan
        sender.slot_monotonic = time.monotonic() + wait_s
        sender.checked = True

    # --- handing back and reporting ----------------------------------------------------------

    async def hold(self, ctx: MessageContext, held: SendHeldError) -> str:
        """Back to the queue for `held.delay_s`, no attempt burnt (shielded, retried through
        a database blip like every outcome write)."""
        message_id = ctx.require_message_id()
        ctx.last_error_class = held.reason
        await asyncio.shield(
            persist(
                lambda: self.db.hold_back(
                    ctx.msg, message_id, delay_s=held.delay_s, reason=held.reason, detail=str(held)
                ),
                what="hold back",
                within_s=self.settings.visibility_timeout_s,
            )
        )
        logger.bind(
            outcome=HELD_OUTCOME, message_id=str(message_id), msg_id=ctx.msg.msg_id, error_class=held.reason
        ).info("held {}: {}; visible again in {:.1f} s", message_id, held, held.delay_s)
        return HELD_OUTCOME

    async def after_failure(self, ctx: MessageContext, exc: BaseException, *, stage: str) -> None:
        """Report a gateway rate limit, ban or logout against the inbox (best effort)."""
        inbox = ctx.sender.inbox
        if inbox is None or stage != "send":
            return
        if isinstance(exc, InboxBannedError):
            kind, retry_after_s = exc.kind, None
        elif isinstance(exc, RateLimitedError):
            kind, retry_after_s = "rate_limited", exc.retry_after_s
        else:
            return
        s = self.settings
        try:
            reason = await self.db.report_inbox_trouble(
                inbox_id=inbox.inbox_id,
                kind=kind,
                detail=str(exc),
                retry_after_s=retry_after_s,
                threshold=s.pause_after_rate_limits,
                window_s=s.rate_limit_pause_window_s,
            )
        except TRANSIENT_DB_ERRORS as err:
            logger.warning("could not report {} of inbox {}: {}", kind, inbox.inbox_id, err)
            return
        if reason is not None:
            logger.bind(inbox_id=str(inbox.inbox_id)).warning(
                "inbox {} paused automatically: {}", inbox.inbox_id, reason
            )
