"""Trying a dependency again while it is away: the waits between tries, and saying so once.

A *dependency* is something a process needs and keeps trying until it answers: PostgreSQL
for the writer's batches and the merger, Redis for the fetcher's rate limit. An *outage* is
the run of failed tries between two that succeed. :class:`Delays` is the sequence of waits
after each failed try of an outage (no clock, no I/O); :class:`Backoff` waits them out, cut
short when a stop event is set, and says an outage once, with the first failure's reason,
when it begins, and once when it is over. Each failed try shows at debug level, with its
traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from sluiceway_common.logs import error_text

Sleep = Callable[[float, asyncio.Event | None], Awaitable[None]]
"""How a :class:`Backoff` waits: ``sleep(seconds, stop)``, returning early once ``stop`` is
set (see :func:`pause`)."""


async def pause(seconds: float, stop: asyncio.Event | None = None) -> None:
    """Wait ``seconds``, or until ``stop`` is set if that comes first."""
    if stop is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


@dataclass(frozen=True, slots=True)
class Delays:
    """The waits after the failed tries of one outage: ``first``, then ``factor`` times the
    wait before, up to ``cap``; without end, since a dependency is tried until it answers.
    ``first == cap`` makes a steady interval."""

    first: float
    cap: float
    factor: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.first <= self.cap or self.factor < 1:
            raise ValueError("delays need 0 < first <= cap and factor >= 1")

    def __iter__(self) -> Iterator[float]:
        delay = self.first
        while True:
            yield delay
            delay = min(delay * self.factor, self.cap)


class Backoff:
    """One dependency's outages, for the loop that keeps trying it.

    The loop calls :meth:`failed` after a try that failed (it waits before returning) and
    :meth:`succeeded` after one that did not. ``lost`` is the warning an outage begins with,
    followed by the reason ``describe`` gives for the failure; ``back`` is the line said
    when it is over. Log lines go to ``log``, the caller's logger.
    """

    def __init__(
        self,
        delays: Delays,
        log: logging.Logger,
        lost: str,
        back: str,
        *,
        describe: Callable[[BaseException], str] = error_text,
        sleep: Sleep = pause,
    ) -> None:
        self._delays = delays
        self._log = log
        self._lost = lost
        self._back = back
        self._describe = describe
        self._sleep = sleep
        self._waits: Iterator[float] | None = None  # the current outage's; None: none
        self.retries = 0  # failed tries waited out, over every outage

    @property
    def failing(self) -> bool:
        """Whether the last try failed."""
        return self._waits is not None

    async def failed(self, exc: BaseException, stop: asyncio.Event | None = None) -> None:
        """A try failed with ``exc``: say so if it begins an outage, then wait the next delay,
        or until ``stop`` is set if that comes first."""
        reason = self._describe(exc)
        if self._waits is None:
            self._waits = iter(self._delays)
            self._log.warning("%s (%s)", self._lost, reason)
        delay = next(self._waits)
        self.retries += 1
        self._log.debug("%s (%s); next try in %gs", self._lost, reason, delay, exc_info=exc)
        await self._sleep(delay, stop)

    def succeeded(self) -> None:
        """A try succeeded: say the outage is over if there was one; the next outage's
        delays start from the first again."""
        if self._waits is not None:
            self._waits = None
            self._log.info("%s", self._back)
