"""A pipeline's state in Redis: each structure's key names and every operation on it.

Five structures, each owned here and nowhere else:

* the *failed set*: the keys whose fetch failed for good, and beside it a hash of each key's
  reason as JSON (``{"reason", "status", "attempts", "at"}``). The fetcher adds a key and
  removes it once a retried fetch lands; ``sluiceway failed`` lists, retries and clears them;
  ``sluiceway status`` counts them.
* the *rate keys*: the shared limiter's state, the limit set with ``sluiceway rate set`` (or by
  the operator) and an upstream's pause. The limiter's Lua script reads and writes them in one
  atomic step; the rest goes through :class:`RateKeys`. Times in them are Redis server time in
  seconds, so that no fetcher's clock matters.
* the *in-flight marks*: a sorted set of the keys whose fetch task is queued, waiting on a
  delay queue or held by a fetcher, each scored with the Redis time its mark lapses.
  ``sluiceway enqueue`` and ``sluiceway failed retry`` claim a key before they queue it and
  skip it while its mark holds; the fetcher releases it once the key's record is confirmed or
  the key enters the failed set. A mark whose task was lost lapses by itself (see
  :class:`InFlight`).
* the *feed runs*: a hash of each feed's last ``enqueue --feed NAME`` run as JSON, which the
  operator reports in the Pipeline's status.
* the *fetcher reports*: each running fetcher's load (requests in hand, upstream latency,
  time waited for rate-limit slots), a key per fetcher that Redis expires when the fetcher
  stops reporting, and a set of their names; the operator reads them to size the fetchers.

The key names are a contract (users and checks outside the project read them).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Iterable, Sequence
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


def inflight(pipeline: str) -> str:
    """Sorted set: key -> Redis time (seconds) at which its in-flight mark lapses."""
    return f"sluiceway:{pipeline}:inflight"


def feed_runs(pipeline: str) -> str:
    """Hash: feed name -> JSON of its last run (see :class:`FeedRuns`)."""
    return f"sluiceway:{pipeline}:feeds"


def fetchers(pipeline: str) -> str:
    """Set of the names of the fetchers that have reported (see :class:`FetcherReports`)."""
    return f"sluiceway:{pipeline}:fetchers"


def fetcher_report(pipeline: str, name: str) -> str:
    """One fetcher's last report as JSON; it expires when the fetcher stops reporting."""
    return f"sluiceway:{pipeline}:fetcher:{name}"


def owned(pipeline: str) -> tuple[str, ...]:
    """Every Redis key of the pipeline: what to delete along with it."""
    return (
        failed_set(pipeline), failed_info(pipeline),
        rate_last(pipeline), rate_limit(pipeline), rate_pause_until(pipeline),
        inflight(pipeline), feed_runs(pipeline), fetchers(pipeline),
    )  # fmt: skip


# --- the failed set ----------------------------------------------------------------------


class FailedSet:
    """One pipeline's failed keys and their reasons."""

    CHUNK = 500  # keys a scan step and a reason lookup take at a time

    def __init__(self, client: aioredis.Redis, pipeline: str) -> None:
        self._client = client
        self._keys = failed_set(pipeline)
        self._info = failed_info(pipeline)
        self._inflight = inflight(pipeline)

    async def add(self, key: str, info: dict[str, Any]) -> None:
        """Record ``key`` as failed for good, with why; in the same step it stops being in
        flight, so that it can be queued again (``failed retry``) and is never in neither."""
        async with self._client.pipeline(transaction=True) as tx:
            tx.sadd(self._keys, key)
            tx.hset(self._info, key, orjson.dumps(info))
            tx.zrem(self._inflight, key)
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


# --- the in-flight marks ------------------------------------------------------------------

# Drops the lapsed marks, then marks each key of ARGV[3..] that holds no mark (or every one,
# when ARGV[2] is "1") until now + ARGV[1] seconds, on Redis's clock; returns the positions
# (from 1) of the keys it did not mark, most often none: a reply of every key claimed cost a
# run of a million keys 6% of its time, read element by element. One atomic step, so two
# feeds racing over the same keys claim each key once; a key twice in one call is claimed
# once.
CLAIM_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.6f', now))
local lapses = string.format('%.6f', now + tonumber(ARGV[1]))
local force = ARGV[2] == '1'
local skipped = {}
for i = 3, #ARGV do
  if force or not redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], lapses, ARGV[i])
  else
    skipped[#skipped + 1] = i - 2
  end
end
return skipped
"""

# Marks that have not lapsed, on Redis's clock.
COUNT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
return redis.call('ZCOUNT', KEYS[1], '(' .. string.format('%.6f', now), '+inf')
"""


class InFlight:
    """One pipeline's in-flight marks.

    A mark is claimed by whoever queues the key and released by the fetcher when the key's
    task ends (its record confirmed, or the key in the failed set); a retry on a delay queue
    keeps it. A task lost with its queue never releases its mark, so every mark lapses after
    the lifetime its claimer gave (``SLUICEWAY_INFLIGHT_TIMEOUT``); a key whose task outlives
    that may be queued twice, which costs a second fetch and no row.
    """

    def __init__(self, client: aioredis.Redis, pipeline: str) -> None:
        self._client = client
        self.key = inflight(pipeline)
        self._claim = client.register_script(CLAIM_LUA)
        self._count = client.register_script(COUNT_LUA)

    async def claim(self, keys: Sequence[str], lifetime: float, force: bool = False) -> list[str]:
        """Mark ``keys`` in flight for ``lifetime`` seconds; return those that were not
        (all of them, marked again, with ``force``), in order, each once."""
        if not keys:
            return []
        args: list[str | int] = [plain(lifetime), int(force), *keys]
        skipped = {int(position) - 1 for position in await self._claim(keys=[self.key], args=args)}
        if not skipped:
            return list(keys)
        return [key for at, key in enumerate(keys) if at not in skipped]

    async def release(self, keys: Collection[str]) -> None:
        """``keys`` are no longer in flight."""
        if keys:
            await self._client.zrem(self.key, *keys)

    async def count(self) -> int:
        """Keys in flight now."""
        return int(await self._count(keys=[self.key]))


# --- the feed runs ------------------------------------------------------------------------


class FeedRuns:
    """The last run of each of a pipeline's feeds (``enqueue --feed NAME``), as JSON:
    ``{"started", "finished", "ok", "queued", "in_flight", "skipped", "error"}`` (times ISO
    8601 in UTC; ``error`` null on success)."""

    def __init__(self, client: aioredis.Redis, pipeline: str) -> None:
        self._client = client
        self.key = feed_runs(pipeline)

    async def record(self, feed: str, run: dict[str, Any]) -> None:
        await self._client.hset(self.key, feed, orjson.dumps(run))

    async def read(self) -> dict[str, dict[str, Any]]:
        """Every feed's last run, by name."""
        found: dict[bytes | str, bytes | str] = await self._client.hgetall(self.key)
        return {
            (name.decode() if isinstance(name, bytes) else name): orjson.loads(run)
            for name, run in found.items()
        }

    async def forget(self, feeds: Iterable[str]) -> None:
        """Drop the runs of feeds that no longer exist."""
        names = list(feeds)
        if names:
            await self._client.hdel(self.key, *names)


# --- the fetcher reports -------------------------------------------------------------------


class FetcherReports:
    """What each running fetcher of a pipeline last said of its load.

    A report is a JSON object (``{"concurrency", "in_hand", "fetches", "latency",
    "rate_wait", "seconds"}``: see the fetcher's ``report.py``) under a key of the fetcher's
    own that expires ``ttl`` seconds after it was written, on Redis's clock, so a fetcher
    that dies stops counting by itself. The set of names is only an index of where to look:
    a name whose report has expired is dropped from it at the next reading.
    """

    def __init__(self, client: aioredis.Redis, pipeline: str) -> None:
        self._client = client
        self._pipeline = pipeline
        self.names = fetchers(pipeline)

    async def report(self, name: str, load: dict[str, Any], ttl: float) -> None:
        async with self._client.pipeline(transaction=True) as tx:
            tx.set(fetcher_report(self._pipeline, name), orjson.dumps(load), px=int(ttl * 1000))
            tx.sadd(self.names, name)
            await tx.execute()

    async def withdraw(self, name: str) -> None:
        """A fetcher that stops takes its report back at once."""
        async with self._client.pipeline(transaction=True) as tx:
            tx.delete(fetcher_report(self._pipeline, name))
            tx.srem(self.names, name)
            await tx.execute()

    async def read(self) -> dict[str, dict[str, Any]]:
        """The reports of the fetchers reporting now, by name."""
        found: set[bytes | str] = await self._client.smembers(self.names)
        names = sorted(raw.decode() if isinstance(raw, bytes) else raw for raw in found)
        if not names:
            return {}
        loads = await self._client.mget([fetcher_report(self._pipeline, n) for n in names])
        gone = [name for name, load in zip(names, loads, strict=True) if load is None]
        if gone:
            await self._client.srem(self.names, *gone)
        return {
            name: orjson.loads(load)
            for name, load in zip(names, loads, strict=True)
            if load is not None
        }


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
