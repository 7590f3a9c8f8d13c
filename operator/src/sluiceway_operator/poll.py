"""When a Pipeline's timers run: every ``pollIntervalSeconds`` of that Pipeline, and at once
when the Pipeline changes.

A kopf timer has one interval for every object, and a Pipeline has its own. So the
operator's timers are declared with interval 0: kopf calls one again as soon as it returns
(applying the status patch it left each time), and its handler first waits here for its
next run. The handler's own :class:`Poll`, kept in kopf's per-object memo, is what a change
to the Pipeline wakes.

kopf gives a stopped timer a few event-loop cycles to return before it leaves it running
orphaned, so a timer stopped mid-run (the Pipeline deleted, the operator exiting) returns at
once: its work is cancelled and left to unwind, and :meth:`Poll.unwound` waits for that.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import kopf

T = TypeVar("T")


async def _first(*waits: Awaitable[Any], seconds: float | None = None) -> None:
    """Until the first of ``waits`` is done, or ``seconds``; the others are cancelled."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


def _unwound(task: asyncio.Task[Any]) -> None:
    # A cancelled run that failed while unwinding has nobody left to tell.
    with contextlib.suppress(asyncio.CancelledError):
        task.exception()


@dataclass
class Poll:
    """One timer's schedule for one Pipeline."""

    changed: asyncio.Event = field(default_factory=asyncio.Event)
    started: bool = False
    # Runs cancelled by a stop, held until they have unwound.
    _cancelled: set[asyncio.Task[Any]] = field(default_factory=set)

    async def due(self, seconds: float, stopped: kopf.DaemonStopped) -> bool:
        """Wait for the next run: at once the first time, else ``seconds`` after the last one
        or when the Pipeline changed, whichever comes first. False: the timer is stopped."""
        if self.started and not self.changed.is_set() and not stopped:
            await _first(self.changed.wait(), stopped.wait(), seconds=seconds)
        self.started = True
        self.changed.clear()
        return not stopped

    async def run(self, work: Coroutine[Any, Any, T], stopped: kopf.DaemonStopped) -> T | None:
        """``work``'s result; None if the timer is stopped first."""
        task = asyncio.ensure_future(work)
        try:
            await _first(task, stopped.wait())  # cancels the other
        finally:
            if not task.done():
                self._cancelled.add(task)
                task.add_done_callback(self._cancelled.discard)
                task.add_done_callback(_unwound)
        return task.result() if task.done() else None

    async def unwound(self, within: float) -> None:
        """Until the runs that a stop cancelled have unwound, or ``within`` seconds: what
        they hold (the controller's clients) is closed only after."""
        if self._cancelled:
            await asyncio.wait(set(self._cancelled), timeout=within)
