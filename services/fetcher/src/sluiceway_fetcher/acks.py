"""Acknowledging fetch tasks in runs: one ``multiple`` ack for the tasks finished in a row.

aio-pika acks one delivery a frame; a fetcher that acked each task alone spent on every key
an ack frame of its own and, on a quorum queue, a settle command in the broker's log
(measured here on RabbitMQ 3.10: a consumer acking one by one cost 132 µs of its own CPU and
96 µs of the broker's a message; acking in runs of up to 32, 83 and 27). A task is still
acknowledged only once it is finished, never before: :meth:`Acks.done` only marks it.

The tasks of a channel are delivered in order of their delivery tags, one after another, and
an ack with ``multiple`` covers every delivery up to its tag. So the *run* is the tasks,
oldest first, that are finished or settled otherwise (a nack, a reject): right after the
tasks finishing together (a pack's, when its confirm comes) the run's last task is acked
with ``multiple``. A task finished behind one still open (waiting for its place, its answer
or its pack) waits for it, at most :data:`HOLD`, and is then acked alone: a slow request
does not hold the acks, and with them the prefetch, of the tasks delivered after it. An ack
with ``multiple`` goes only over delivery tags that follow each other from the channel's
first (1): a delivery this module never saw is never acked by accident.

A channel lost takes its unacknowledged deliveries with it; the broker delivers them again,
and the fetcher's outcomes are harmless twice (see ``consumer.py``).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass, field

from aio_pika.abc import AbstractIncomingMessage

from sluiceway_common import amqp

log = logging.getLogger(__name__)

# How long a finished task's ack waits for an earlier task still open before it goes alone:
# about a pack's linger and confirm, the usual gap between tasks that answered close together
# but landed in consecutive packs.
HOLD = 0.025


class State(enum.Enum):
    OPEN = enum.auto()  # delivered, being handled
    FINISHED = enum.auto()  # to be acked
    SETTLING = enum.auto()  # its nack or reject is being sent: the run must not pass it
    SETTLED = enum.auto()  # acked, nacked or rejected


@dataclass(slots=True)
class Delivery:
    """A fetch task as :class:`Acks` keeps it, from its delivery to its ack."""

    message: AbstractIncomingMessage
    tag: int
    state: State = State.OPEN
    finished: float = 0.0  # loop time


@dataclass
class _Channel:
    """The deliveries of one channel not yet settled, oldest first."""

    channel: object  # held, so that its id names no other channel while it is kept
    tasks: deque[Delivery] = field(default_factory=deque)
    acked_to: int = 0  # every tag up to this one is settled


class Acks:
    """Acks the tasks of one fetcher; :meth:`received` first, then one of :meth:`done`,
    :meth:`nack` or :meth:`reject` for each; :meth:`close` before the channel closes."""

    def __init__(self, hold: float = HOLD) -> None:
        self._hold = hold
        self._channels: dict[int, _Channel] = {}
        self._flushing: asyncio.Task[None] | None = None  # the last flush, perhaps ended
        self._again = False  # a task finished while a flush was under way
        self._timer: asyncio.TimerHandle | None = None
        self.tasks = 0  # tasks acked
        self.frames = 0  # ack frames that acked them

    def received(self, message: AbstractIncomingMessage) -> Delivery:
        """Note a delivery as it arrives, before anything awaits: its task is open."""
        task = Delivery(message, message.delivery_tag or 0)
        try:
            channel = message.channel
        except amqp.BROKER_ERRORS:
            return task  # lost already: nothing of it can be acked
        kept = self._channels.get(id(channel))
        if kept is None or kept.channel is not channel:
            kept = self._channels[id(channel)] = _Channel(channel)
        kept.tasks.append(task)
        return task

    def done(self, task: Delivery) -> None:
        """The task is finished: it is acked soon, with the tasks finished around it."""
        task.state = State.FINISHED
        task.finished = asyncio.get_running_loop().time()
        self._flush_soon()

    async def nack(self, task: Delivery, requeue: bool = True) -> None:
        """Give the task back to the queue (``requeue``) or drop it, now."""
        await self._settle(task, task.message.nack(requeue=requeue))

    async def reject(self, task: Delivery) -> None:
        """Drop the task (a message that cannot be a task), now."""
        await self._settle(task, task.message.reject(requeue=False))

    async def _settle(self, task: Delivery, sending: Awaitable[None]) -> None:
        task.state = State.SETTLING  # no run passes it until its frame is sent
        try:
            await sending
        finally:
            task.state = State.SETTLED
            self._flush_soon()

    async def close(self) -> None:
        """Ack every finished task now, those behind an open one alone; call once the tasks
        in hand are finished, before the channel closes."""
        while (flushing := self._under_way()) is not None:
            await asyncio.gather(flushing, return_exceptions=True)
        await self._flush(everything=True)

    def _flush_soon(self) -> None:
        # A task, not a call now: the tasks woken with this one (a pack's) are finished
        # too by the time it runs, and go in the same run.
        if self._under_way() is not None:
            self._again = True
        else:
            self._flushing = asyncio.get_running_loop().create_task(self._flush())
            self._flushing.add_done_callback(self._flushed)

    def _under_way(self) -> asyncio.Task[None] | None:
        """The flush under way, if one is: it looks at ``_again`` again before it ends. One
        that has ended does not, even in the turn of the loop before its done callback."""
        flushing = self._flushing
        return flushing if flushing is not None and not flushing.done() else None

    @staticmethod
    def _flushed(flushing: asyncio.Task[None]) -> None:
        if not flushing.cancelled() and flushing.exception() is not None:
            log.error("acking fetch tasks failed: %r", flushing.exception())

    async def _flush(self, everything: bool = False) -> None:
        self._again = True
        while self._again:
            self._again = False
            await self._flush_once(everything)

    async def _flush_once(self, everything: bool) -> None:
        loop = asyncio.get_running_loop()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        now = loop.time()
        due = None if everything else now - self._hold
        wake: float | None = None
        for key, channel in list(self._channels.items()):
            try:
                await self._ack_run(channel)
                held = await self._ack_held(channel, due)
            except amqp.BROKER_ERRORS as exc:
                finished = sum(task.state is State.FINISHED for task in channel.tasks)
                log.warning(
                    "broker connection lost: %d finished fetch tasks not acknowledged "
                    "return to the queue: %s", finished, exc,
                )  # fmt: skip
                del self._channels[key]
                continue
            if not channel.tasks and key != self._newest():
                del self._channels[key]
            if held is not None and (wake is None or held < wake):
                wake = held
        if wake is not None:
            self._timer = loop.call_later(
                max(0.0, wake + self._hold - loop.time()), self._flush_soon
            )

    def _newest(self) -> int | None:
        return next(reversed(self._channels), None)

    async def _ack_run(self, channel: _Channel) -> None:
        """Ack the run of tasks settled from the oldest, with one ``multiple`` ack."""
        tasks = channel.tasks
        last: Delivery | None = None
        count = 0
        while tasks:
            task = tasks[0]
            if task.tag != channel.acked_to + 1 or task.state in (State.OPEN, State.SETTLING):
                break
            tasks.popleft()
            channel.acked_to = task.tag
            if task.state is State.FINISHED:
                task.state = State.SETTLED
                last, count = task, count + 1
        if last is not None:
            await last.message.ack(multiple=True)
            self.tasks += count
            self.frames += 1

    async def _ack_held(self, channel: _Channel, due: float | None) -> float | None:
        """Ack alone each finished task held since ``due`` (None: every one); return when
        the oldest still held was finished."""
        oldest = None
        for task in list(channel.tasks):
            if task.state is not State.FINISHED:
                continue
            if due is None or task.finished <= due:
                task.state = State.SETTLED
                await task.message.ack()
                self.tasks += 1
                self.frames += 1
            elif oldest is None:
                oldest = task.finished
        return oldest


__all__ = ["HOLD", "Acks"]
