"""The pipeline's rate limit, shared by every fetcher process through Redis (and by
``enqueue --http``, whose listing requests go to the same upstream).

Each reservation is one atomic step in Redis: a Lua script (run with EVALSHA) reads the
pipeline's GCRA state, its limit override and its pause, and reserves slots with the
arithmetic :mod:`sluiceway_common.ratelimit` describes, on Redis's own clock, so that the
fetchers' clocks never matter. Within a process one reservation is in flight at a time, for
every request then waiting (see :class:`SharedLimiter`).

Redis keys (:class:`sluiceway_common.store.RateKeys`): ``rate:last`` (the state; it expires once
stale), ``rate:limit`` (``sluiceway rate set``; absent, each fetcher's own
``SLUICEWAY_RATE_LIMIT`` applies) and ``rate:pause_until`` (an upstream's Retry-After).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque

import redis.asyncio as aioredis
import redis.exceptions

from sluiceway_common.backoff import Backoff, Delays
from sluiceway_common.ratelimit import AHEAD, AIM, BURST, SPARE
from sluiceway_common.settings import RATE_LIMIT
from sluiceway_common.store import RateKeys

log = logging.getLogger(__name__)

# The arithmetic of the model in tests/gcra.py, operation for operation (test_ratelimit.py
# runs both on a table of cases and requires the same answers). Lua numbers are doubles, as
# Python floats are.
GCRA_LUA = """
local function gcra(tat, now, pause_until, rate, wanted, burst_seconds, ahead, spare)
  local interval = 1 / rate
  local burst = 1 + math.floor(rate * burst_seconds)
  local start = math.max(now, pause_until, tat - (burst - 1) * interval)
  local room = now + ahead - start
  if room < 0 then
    return -room + ahead / 2, 0, tat, interval
  end
  if start == now then
    wanted = wanted + math.floor(rate * spare)
  end
  local granted = math.min(wanted, math.floor(room / interval) + 1)
  return start - now, granted, math.max(tat, start) + granted * interval, interval
end
"""

HELPERS_LUA = """
-- Redis turns a Lua number into an integer reply, and tostring() keeps 14 digits: times
-- travel as strings of 17, which a double survives exactly.
local function num(x)
  return string.format('%.17g', x)
end

local function redis_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""

# KEYS: last, limit, pause_until. ARGV: this fetcher's rate, slots wanted, BURST, AHEAD, SPARE,
# AIM, and the lowest and highest limit SLUICEWAY_RATE_LIMIT allows.
# Returns {wait, granted, interval}: ``granted`` slots start ``wait`` seconds from now, one
# every ``interval``; with none granted, ask again in ``wait`` seconds.
RESERVE_LUA = (
    GCRA_LUA
    + HELPERS_LUA
    + """
local rate = tonumber(redis.call('GET', KEYS[2]))
-- An override outside the range SLUICEWAY_RATE_LIMIT allows (the key written by hand) is
-- ignored rather than trusted: a zero or a NaN would stop the pipeline or break the state.
if not (rate and rate >= tonumber(ARGV[7]) and rate <= tonumber(ARGV[8])) then
  rate = tonumber(ARGV[1])
end
rate = rate * tonumber(ARGV[6])  -- AIM: the slots are spaced for a little under the limit
local now = redis_now()
-- The state is the last slot, not the TAT: the next slot is one interval after it at the
-- limit in force now, so a new limit applies from the very next slot, not one old interval
-- later (100 s at 0.01/s).
local last = tonumber(redis.call('GET', KEYS[1]))
local tat = last and last + 1 / rate or 0
local pause_until = tonumber(redis.call('GET', KEYS[3])) or 0
local wait, granted, new_tat, interval = gcra(tat, now, pause_until, rate,
  tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]))
if granted > 0 then
  -- Kept while any limit could still space a slot from it: 100 s, the interval of the
  -- lowest limit allowed; an idle pipeline's state is gone after that.
  local last_slot = new_tat - interval
  redis.call('SET', KEYS[1], num(last_slot), 'PX', math.ceil((last_slot + 100 - now) * 1000))
end
return {num(wait), granted, num(interval)}
"""
)

# KEYS: pause_until. ARGV: seconds. A pause is only ever extended, never shortened: several
# fetchers told to pause at once end up with the latest end any of them was given.
# Returns {remaining before, remaining now}, in seconds (<= 0: not paused).
PAUSE_LUA = (
    HELPERS_LUA
    + """
local now = redis_now()
local current = tonumber(redis.call('GET', KEYS[1])) or 0
local wanted = now + tonumber(ARGV[1])
if wanted > current then
  redis.call('SET', KEYS[1], num(wanted), 'PX', math.ceil((wanted - now) * 1000) + 1000)
end
return {num(current - now), num(math.max(current, wanted) - now)}
"""
)

# While Redis cannot be reached nothing is fetched; it is asked again after these waits
# (redis-py retries each call a few times underneath as well).
REDIS_DELAYS = Delays(first=0.1, cap=3.0)
# A caller told to wait longer than this (a pause, a low limit) asks again after it anyway,
# so that a pause deleted or a limit raised by hand reaches it within this time.
RECHECK = 1.0
# A slot this late when its caller wakes (a process starved of CPU, a stalled event loop)
# is given up and the caller takes another. Gone late, its request would land in the next
# slots' time, beside the other fetchers' requests made on time: slots a starved process
# had reserved all at once would reach the upstream together.
LATE = 0.005
# Far from the limit, a fetcher that asked for a slot within this long keeps a run in hand:
# as a run ends, the next is reserved, of spare slots only (none when the limit is near, so
# a run kept costs the others nothing they were about to use). Requests that all take about
# the upstream's latency come in waves (64 answered, 64 asked, every 50 ms); a run lasts
# SPARE, so it ended between two waves and every wave waited for a reservation (1.8 ms a
# fetch at 50 ms, measured). A fetcher whose requests take longer lets its runs lapse: for it
# that wait is a small part of a request, and its Redis calls stay one a wave.
KEEP = 0.1


class LimiterClosed(Exception):
    """The fetcher is stopping: a request that has no slot yet gives its task back."""


class SharedLimiter:
    """Spaces the requests of every fetcher of ``pipeline`` by the pipeline's rate limit.

    :meth:`acquire` returns when the caller's request may start. The process holds at most
    one *run* of reserved slots (see :mod:`sluiceway_common.ratelimit`); a caller takes the
    run's slot at hand (see :meth:`_take`), or else queues. One task at a time (the
    *refiller*) reserves a new run in Redis for every caller then queued, so a process makes
    one Redis call for as many requests as it has waiting, and a caller with a slot in the
    future sleeps rather than asks again. While the limit is far (a run comes with spare
    slots), the first caller to take a slot from the second half of the run starts the next
    reservation, so that the callers after the run's end find slots in hand rather than wait
    for Redis: at a limit out of the way, a run lasts :data:`~sluiceway_common.ratelimit.SPARE`
    and every caller waited for the round trip that renewed it (7 ms a fetch, a tenth of a
    50 ms request's time, on a loaded machine). Callers that come in waves, between which a
    run ends, find a run kept in hand instead (see :data:`KEEP`). A slot is still only ever
    used at or after its time, so no window holds more than Redis granted. ``rate`` is this
    fetcher's ``SLUICEWAY_RATE_LIMIT``: it applies when no override is set in Redis.
    """

    def __init__(self, client: aioredis.Redis, pipeline: str, rate: float) -> None:
        self._reserve = client.register_script(RESERVE_LUA)
        self._pause = client.register_script(PAUSE_LUA)
        self._rate_keys = RateKeys(client, pipeline)
        self._keys = self._rate_keys.script_keys
        bounds = RATE_LIMIT.bounds
        assert bounds is not None
        self._args = (repr(float(rate)), repr(BURST), repr(AHEAD), repr(SPARE), repr(AIM),
                      repr(float(bounds.low)), repr(float(bounds.high)))  # fmt: skip
        # The run: slots at first + i * interval for next <= i < count (loop time).
        self._first = 0.0
        self._interval = 1.0
        self._next = self._count = 0
        self._spare = False  # the run came with spare slots: the limit is far
        self._waiters: deque[asyncio.Future[float]] = deque()
        self._refiller: asyncio.Task[None] | None = None
        self._keeping: asyncio.TimerHandle | None = None
        self._asked = -math.inf  # loop time of the last call to acquire
        self._closed = False
        self._redis = Backoff(
            REDIS_DELAYS, log, "rate limiter: Redis unreachable, fetching paused",
            "rate limiter: Redis reachable again, fetching resumed",
        )  # fmt: skip
        self.late = 0  # slots given up because their caller woke too late (see LATE)

    async def acquire(self) -> None:
        """Wait for a slot, however long the pipeline's limit, a pause or a Redis outage
        takes; raise :class:`LimiterClosed` when :meth:`close` is called first."""
        loop = asyncio.get_running_loop()
        while True:
            if self._closed:
                raise LimiterClosed
            now = self._asked = loop.time()
            start = None if self._waiters else self._take(now)
            if start is None:
                slot = loop.create_future()
                self._waiters.append(slot)
                if self._refiller is None:
                    self._refiller = asyncio.create_task(self._refill())
                start = await slot
            elif self._refiller is None and self._spare and self._past_half(now):
                self._refiller = asyncio.create_task(self._refill(ahead=True))
            delay = start - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if loop.time() - start <= LATE:
                return
            self.late += 1

    def _take(self, now: float) -> float | None:
        """The run's slot for a caller at ``now``, or None: the last one passed, if no more
        than half of :data:`LATE` ago, else the next to come. Slots passed before it go
        unused (going late on them would crowd the slots after it, perhaps another
        fetcher's). A slot just passed is taken rather than waited past: far from the limit
        (a slot every microsecond) the next one is always still to come, and sleeping until
        it cost every request a turn of the event loop (1.9 ms a fetch, measured, at 0 ms
        upstream latency), though no request ever starts before its slot either way."""
        index = max(self._next, math.floor((now - self._first) / self._interval))
        if now - (self._first + index * self._interval) > LATE / 2:
            index += 1
        if index >= self._count:
            self._next = self._count
            return None
        self._next = index + 1
        return self._first + index * self._interval

    @property
    def _end(self) -> float:
        """When the run's last slot has passed."""
        return self._first + self._count * self._interval

    def _past_half(self, now: float) -> bool:
        return now >= (self._first + self._end) / 2

    def _keep_in_hand(self, loop: asyncio.AbstractEventLoop) -> None:
        """Far from the limit, reserve the next run as this one ends, if a caller asked
        within :data:`KEEP` by then (see there)."""
        if self._keeping is not None:
            self._keeping.cancel()
            self._keeping = None
        if self._spare:
            self._keeping = loop.call_at(self._end, self._renew, loop)

    def _renew(self, loop: asyncio.AbstractEventLoop) -> None:
        self._keeping = None
        if self._closed or self._refiller is not None or loop.time() - self._asked > KEEP:
            return
        self._refiller = asyncio.create_task(self._refill(keep=True))

    async def pause(self, seconds: float) -> tuple[float, float]:
        """Let no request of the pipeline start for ``seconds`` (or longer, when a longer
        pause is on); return how long the pause had left before, and has left now."""
        # This fetcher's spare slots go at once; the other fetchers' pass within SPARE.
        self._next = self._count
        before, after = await self._pause(
            keys=[self._rate_keys.pause_until], args=[repr(float(seconds))]
        )
        return float(before), float(after)

    async def override(self) -> float | None:
        """The limit set with ``sluiceway rate set``, when one is."""
        return await self._rate_keys.override()

    def close(self) -> None:
        """Stop handing out slots: every caller still waiting for one gets
        :class:`LimiterClosed`; callers already given a slot go ahead."""
        self._closed = True
        self._next = self._count
        if self._keeping is not None:
            self._keeping.cancel()
        if self._refiller is not None:
            self._refiller.cancel()
        while self._waiters:
            slot = self._waiters.popleft()
            if not slot.done():
                slot.set_exception(LimiterClosed())

    async def _refill(self, ahead: bool = False, keep: bool = False) -> None:
        """Reserve a run for the callers waiting; ``ahead``, for the next callers (see the
        class), once, even with none waiting yet; ``keep``, a run of spare slots only, if
        the limit is far (see :data:`KEEP`)."""
        loop = asyncio.get_running_loop()
        try:
            while (wanted := sum(not slot.done() for slot in self._waiters)) or ahead or keep:
                wanted = wanted if keep else max(wanted, 1)
                ahead = keep = False
                try:
                    reply = await self._reserve(
                        keys=self._keys, args=[self._args[0], wanted, *self._args[1:]]
                    )
                except (redis.exceptions.RedisError, OSError) as exc:
                    # Fail closed: without Redis no fetcher can know what the others sent.
                    await self._redis.failed(exc)
                    continue
                self._redis.succeeded()
                wait, granted, interval = float(reply[0]), int(reply[1]), float(reply[2])
                if not granted and not wanted:
                    break  # no spare slots to keep: the limit is near
                if not granted:
                    await asyncio.sleep(min(wait, RECHECK))
                    continue
                # The wait is on Redis's clock from when the script ran; counted from now,
                # after the reply's way back, a slot can only come late, never early (and
                # one that comes later than LATE is given up, see acquire()).
                now = loop.time()
                self._first, self._interval, self._next, self._count = (
                    now + wait, interval, 0, granted
                )  # fmt: skip
                self._spare = granted > wanted
                self._keep_in_hand(loop)
                while self._waiters:
                    if self._waiters[0].done():
                        self._waiters.popleft()  # its caller was cancelled
                        continue
                    start = self._take(now)
                    if start is None:
                        break
                    self._waiters.popleft().set_result(start)
        except Exception as exc:
            # A reply the code does not understand: make it loud in every caller.
            log.error("rate limiter failed: %r", exc)
            while self._waiters:
                slot = self._waiters.popleft()
                if not slot.done():
                    slot.set_exception(exc)
        finally:
            self._refiller = None
