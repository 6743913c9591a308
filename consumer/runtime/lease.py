"""One held message's lease as this process sees it: a local deadline, and whether it was lost.

PGMQ's visibility timeout is the lease; the server knows when it ends, we only know a lower
bound: the moment we *asked* for it (read or heartbeat extend) plus the visibility timeout.
That bound is the local deadline. A part is sent only when the deadline leaves room for the
whole send (its timeout, its typing delay, and a margin to record the answer), so a send can
never outlive the lease: nobody else can read the message while our request is in flight.

A lease the heartbeat finds lost (another reader has it) or could not confirm before the
deadline is *revoked*: the message's task is cancelled at once — unless a send is in flight,
which is left to finish (cancelling it would make the part uncertain); the check before the
next send then stops it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..core.models import QueueMessage
from ..errors import LeaseLostError


def has_room(*, deadline: float, now: float, needed_s: float) -> bool:
    """Pure: does a lease ending at `deadline` leave `needed_s` seconds from `now`?"""
    return deadline - now >= needed_s


@dataclass(eq=False)
class Lease:
    msg: QueueMessage
    message_id: uuid.UUID | None
    started: float
    """`clock()` just before the read that took this lease."""
    deadline: float
    """`clock()` before the last successful read/extend, plus the visibility timeout."""
    vt_s: float
    task: asyncio.Task[str] | None = None
    lost: str | None = None
    """Why this lease was revoked; None while held."""
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    renew: Callable[[Lease], Awaitable[bool]] | None = field(default=None, repr=False)
    """Extend this lease now (one guarded statement); False when the database says it is gone.
    Set by the worker; raises what the database raised when it cannot be reached."""
    _sending: bool = False

    @classmethod
    def taken(
        cls,
        msg: QueueMessage,
        message_id: uuid.UUID | None,
        *,
        asked_at: float,
        vt_s: float,
        clock: Callable[[], float] = time.monotonic,
        renew: Callable[[Lease], Awaitable[bool]] | None = None,
    ) -> Lease:
        return cls(
            msg, message_id, started=asked_at, deadline=asked_at + vt_s, vt_s=vt_s, clock=clock, renew=renew
        )

    @property
    def key(self) -> tuple[int, int]:
        return (self.msg.msg_id, self.msg.read_ct)

    @property
    def confirmed_at(self) -> float:
        """When the current deadline was granted (deadline minus the visibility timeout)."""
        return self.deadline - self.vt_s

    def confirm(self, *, asked_at: float, vt_s: float) -> None:
        """The heartbeat extended the lease with a call issued at `asked_at`."""
        if self.lost is None:
            self.deadline = max(self.deadline, asked_at + vt_s)

    def room_s(self) -> float:
        return self.deadline - self.clock()

    async def ensure_room(self, needed_s: float) -> None:
        """Return when the lease is held with `needed_s` seconds to spare, extending it first
        when it is short (a long generation ate it); raise `LeaseLostError` when it is lost,
        or cannot be confirmed (the database does not answer) and is too short."""
        if self.lost is not None:
            raise LeaseLostError(self.lost)
        if not self.fits(needed_s) and self.renew is not None:
            asked_at = self.clock()
            try:
                held = await self.renew(self)
            except Exception as exc:  # the database is unreachable: the lease stays unconfirmed
                raise LeaseLostError(
                    f"could not extend a short lease before a send ({type(exc).__name__})"
                ) from exc
            if held:
                self.confirm(asked_at=asked_at, vt_s=self.vt_s)
            else:
                self.revoke("lease lost: another worker has it")
        self.require_room(needed_s)

    def fits(self, needed_s: float) -> bool:
        return has_room(deadline=self.deadline, now=self.clock(), needed_s=needed_s)

    def require_room(self, needed_s: float) -> None:
        """Raise `LeaseLostError` unless the lease is held with `needed_s` seconds to spare."""
        if self.lost is not None:
            raise LeaseLostError(self.lost)
        now = self.clock()
        if not has_room(deadline=self.deadline, now=now, needed_s=needed_s):
            raise LeaseLostError(
                f"the lease has {max(0.0, self.deadline - now):.1f} s left and a send needs "
                f"{needed_s:.1f} s; stopping before the next part"
            )

    @contextmanager
    def sending(self) -> Iterator[None]:
        """Marks a send in flight: a revocation meanwhile waits for it instead of cancelling it."""
        self._sending = True
        try:
            yield
        finally:
            self._sending = False

    def revoke(self, reason: str) -> bool:
        """Mark the lease lost and cancel the message's task unless a send is in flight.
        Returns True the first time (so callers count and log it once)."""
        if self.lost is not None:
            return False
        self.lost = reason
        if self.task is not None and not self.task.done() and not self._sending:
            self.task.cancel(reason)
        return True
