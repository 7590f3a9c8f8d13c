"""A pipeline's state in Redis: each structure's key names and every operation on it.

Two structures, each owned here and nowhere else:

* the *failed set*: the keys whose fetch failed for good, and beside it a hash of each key's
  reason as JSON (``{"reason", "status", "attempts", "at"}``). The fetcher adds a key and
  removes it once a retried fetch lands; ``sluiceway failed`` lists, retries and clears them;
  ``sluiceway status`` counts them.
* the *rate keys*: the shared limiter's state, the limit set with ``sluiceway rate set`` (or by
  the operator) and an upstream's pause. The limiter's Lua script reads and writes them in one
  atomic step; the rest goes through :class:`RateKeys`. Times in them are Redis server time in
  seconds, so that no fetcher's clock matters.

The key names are a contract (users and checks outside the project read them).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from sluiceway_common.settings import RATE_LIMIT, plain

# --- key names ---------------------------------------------------------------------------


def failed_set(pipeline: str) -> str:
    """Set of keys whose fetch failed for good."""
    return f"sluiceway:{pipeline}:failed"


def failed_info(pipeline: str) -> str:
    """Hash beside the failed set: key -> JSON ``{"reason", "status", "attempts", "at"}``."""
    return f"sluiceway:{pipeline}:failed:info"


def rate_last(pipeline: str) -> str:
    """The limiter's state (GCRA): when the last reserved request may start. It expires
    100 s after that, so an idle pipeline leaves nothing behind."""
    return f"sluiceway:{pipeline}:rate:last"


def rate_limit(pipeline: str) -> str:
    """Requests per second set by ``sluiceway rate set`` or the operator; while it is absent
    each fetcher uses its own ``SLUICEWAY_RATE_LIMIT``."""
    return f"sluiceway:{pipeline}:rate:limit"


def rate_pause_until(pipeline: str) -> str:
    """No request starts before this time: the upstream asked for a pause (Retry-After)."""
    return f"sluiceway:{pipeline}:rate:pause_until"


def owned(pipeline: str) -> tuple[str, ...]:
    """Every Redis key of the pipeline: what to delete along with it."""
    return (
        failed_set(pipeline), failed_info(pipeline),
        rate_last(pipeline), rate_limit(pipeline), rate_pause_until(pipeline),
    )  # fmt: skip


# --- the failed set ----------------------------------------------------------------------


class FailedSet:
    """One pipeline's failed keys and their reasons."""

    CHUNK = 500  # keys a scan step and a reason lookup take at a time

    def __init__(self, client: aioredis.Redis, pipeline: str) -> None:
        self._client = client
        self._keys = failed_set(pipeline)
        self._info = failed_info(pipeline)

    async def add(self, key: str, info: dict[str, Any]) -> None:
        """Record ``key`` as failed for good, with why."""
        async with self._client.pipeline(transaction=True) as tx:
            tx.sadd(self._keys, key)
            tx.hset(self._info, key, orjson.dumps(info))
            await tx.execute()

    async def forget(self, key: str) -> None:
        """``key`` landed after all: it leaves the set and its reason goes."""
        async with self._client.pipeline(transaction=True) as tx:
            tx.srem(self._keys, key)
            tx.hdel(self._info, key)
            await tx.execute()

    async def count(self) -> int:
        return int(await self._client.scard(self._keys))

    async def members(self) -> set[str]:
        """Every failed key at once (for checks on a bounded set, such as the demo's)."""
        found: set[bytes | str] = await self._client.smembers(self._keys)
        return {raw.decode() if isinstance(raw, bytes) else raw for raw in found}

    async def chunks(self) -> AsyncIterator[list[str]]:
        """The failed keys, :data:`CHUNK` at a time, in constant memory."""
        keys: list[str] = []
        async for raw in self._client.sscan_iter(self._keys, count=self.CHUNK):
            keys.append(raw.decode())
            if len(keys) == self.CHUNK:
                yield keys
                keys = []
        if keys:
            yield keys

    async def infos(self, keys: Iterable[str]) -> list[dict[str, Any]]:
        """The reason of each of ``keys`` in order; ``{}`` where none is recorded."""
        found = await self._client.hmget(self._info, list(keys))
        return [orjson.loads(info) if info else {} for info in found]

    async def clear(self) -> int:
        """Forget every failed key; return how many there were."""
        async with self._client.pipeline(transaction=True) as tx:
            tx.scard(self._keys)
            tx.delete(self._keys, self._info)
            count, _ = await tx.execute()
        return int(count)


# --- the rate keys -----------------------------------------------------------------------


def parse_limit(raw: bytes | str | None) -> float | None:
    """A stored override as the limiter takes it: None when absent or outside what
    ``SLUICEWAY_RATE_LIMIT`` allows (written by hand), which every reader then ignores."""
    if raw is None:
        return None
    try:
        return float(RATE_LIMIT.parse(raw.decode() if isinstance(raw, bytes) else raw))
    except ValueError:
        return None


@dataclass(frozen=True)
class RateState:
    limit: float | None  # the override; None when each fetcher uses its own setting
    paused_for: float  # seconds the upstream's pause has left; 0 when none


class RateKeys:
    """One pipeline's rate-limit override and pause, outside the limiter's atomic step."""

    def __init__(self, client: aioredis.Redis, pipeline: str) -> None:
        self._client = client
        self.last = rate_last(pipeline)
        self.limit = rate_limit(pipeline)
        self.pause_until = rate_pause_until(pipeline)

    @property
    def script_keys(self) -> tuple[str, str, str]:
        """KEYS of the limiter's reservation script, in its order."""
        return (self.last, self.limit, self.pause_until)

    async def override(self) -> float | None:
        """The limit set for the whole pipeline, when one is."""
        return parse_limit(await self._client.get(self.limit))

    async def set_override(self, value: float) -> None:
        await self._client.set(self.limit, plain(value))

    async def clear_override(self) -> None:
        await self._client.delete(self.limit)

    async def read(self) -> RateState:
        """The override and how long the upstream's pause has left, on Redis's clock."""
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.get(self.limit)
            pipe.get(self.pause_until)
            (seconds, micros), limit, pause_until = await pipe.execute()
        now = seconds + micros / 1_000_000
        paused_for = max(float(pause_until) - now, 0.0) if pause_until else 0.0
        return RateState(parse_limit(limit), paused_for)
