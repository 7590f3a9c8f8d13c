"""The fetcher's load, reported to Redis every few seconds, where the operator reads it
without scraping pods (:class:`sluiceway_common.store.FetcherReports`).

A report says, over the seconds since the last one: how many fetches ended, their mean
upstream latency, the mean time a task waited for its rate-limit slot; and, now: how many
places the fetcher's tasks hold (waiting for a slot or fetching; see ``consumer.py``) and
how many it has (its concurrency). From these the operator
can tell whether the pipeline's rate limit, the upstream's latency or the fetchers' number is
what bounds the fetching.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass
from typing import Any, Protocol

import redis.exceptions

from sluiceway_common import store

log = logging.getLogger(__name__)

REPORT_EVERY = 5.0  # seconds between reports
REPORT_TTL = 3 * REPORT_EVERY  # a report outlives two missed ones, then it expires


@dataclass
class Load:
    """Running sums the fetcher keeps as tasks go; a report takes their growth."""

    fetches: int = 0
    fetch_seconds: float = 0.0
    waits: int = 0
    wait_seconds: float = 0.0


class Loaded(Protocol):
    load: Load
    requesting: int  # places held


def reporter_name() -> str:
    """This fetcher among the pipeline's: its host (on Kubernetes, the pod) and process."""
    return f"{socket.gethostname()}-{os.getpid()}"


def report(now: Load, before: Load, in_hand: int, concurrency: int, seconds: float
           ) -> dict[str, Any]:  # fmt: skip
    """The report of the ``seconds`` between two readings of the sums."""
    fetches = now.fetches - before.fetches
    waits = now.waits - before.waits
    return {
        "concurrency": concurrency,
        "in_hand": in_hand,
        "fetches": fetches,
        "latency": (now.fetch_seconds - before.fetch_seconds) / fetches if fetches else None,
        "rate_wait": (now.wait_seconds - before.wait_seconds) / waits if waits else None,
        "seconds": seconds,
    }


class Reporter:
    """Reports one fetcher's load until cancelled; :meth:`withdraw` takes it back."""

    def __init__(self, reports: store.FetcherReports, fetcher: Loaded, concurrency: int,
                 every: float = REPORT_EVERY) -> None:  # fmt: skip
        self._reports = reports
        self._fetcher = fetcher
        self._concurrency = concurrency
        self._every = every
        self.name = reporter_name()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        before, then = Load(**vars(self._fetcher.load)), loop.time()
        while True:
            await asyncio.sleep(self._every)
            now, at = Load(**vars(self._fetcher.load)), loop.time()
            load = report(now, before, self._fetcher.requesting, self._concurrency, at - then)
            before, then = now, at
            try:
                await self._reports.report(self.name, load, ttl=3 * self._every)
            except (redis.exceptions.RedisError, OSError) as exc:
                # The limiter already says Redis is away; this costs only the operator's view.
                log.debug("cannot report the fetcher's load: %s", exc)

    async def withdraw(self) -> None:
        try:
            await self._reports.withdraw(self.name)
        except (redis.exceptions.RedisError, OSError) as exc:
            log.debug("cannot withdraw the fetcher's load report: %s", exc)
