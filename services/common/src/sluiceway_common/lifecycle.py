"""Running a service: one uvloop event loop, SIGTERM and SIGINT turned into a stop event."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import TypeVar

import uvloop

from sluiceway_common.logs import error_text
from sluiceway_common.settings import mask

T = TypeVar("T")


def run_until_signalled(main: Callable[[asyncio.Event], Awaitable[int]]) -> int:
    """Run ``main(stop)`` in a fresh event loop; ``stop`` is set on SIGTERM or SIGINT.

    ``main`` is expected to stop consuming when ``stop`` is set, finish what it holds and
    return its exit status.
    """

    async def runner() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            return await main(stop)
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)

    # uvloop: the client libraries' per-message work is mostly event-loop calls, and the
    # writer lands about a quarter more single-record messages a second on it (README).
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as loop_runner:
        return loop_runner.run(runner())


class StartupError(Exception):
    """A service could not reach what it needs at start-up; the message is one line."""


async def reach(what: str, url: str, connecting: Awaitable[T], within: float = 30.0) -> T:
    """Await ``connecting`` (a client connecting to ``url``); turn any failure, refusal,
    bad credentials or time-out alike, into a :class:`StartupError` naming ``what``, with
    the URL's password masked."""
    try:
        return await asyncio.wait_for(connecting, within)
    except Exception as exc:
        raise StartupError(f"cannot reach {what} at {mask(url)}: {error_text(exc)}") from exc
