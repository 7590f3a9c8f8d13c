"""The shared rate limit on real Redis: its Lua script against the Python arithmetic, the
override, the pause, the expiry of its state, and fetchers that stop fetching while Redis is
cut off and lose nothing."""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import redis.asyncio as aioredis
from aio_pika.abc import AbstractConnection
from aiohttp import web

from sluiceway_common import codec, store, topology
from sluiceway_common.limiter import (
    GCRA_LUA,
    HELPERS_LUA,
    KEEP,
    LATE,
    RECHECK,
    LimiterClosed,
    SharedLimiter,
)
from sluiceway_common.ratelimit import AHEAD, AIM, BURST, SPARE
from sluiceway_common.settings import RATE_LIMIT
from tests.conftest import ServiceUrls
from tests.gcra import Gcra
from tests.integration.helpers import (
    TcpProxy,
    depth,
    eventually,
    http_server,
    publish,
    running_fetcher,
)

pytestmark = pytest.mark.integration


def rate_keys(pipeline: str) -> list[str]:
    return [
        store.rate_last(pipeline),
        store.rate_limit(pipeline),
        store.rate_pause_until(pipeline),
    ]


@pytest.fixture(autouse=True)
async def _forget_rate_keys(pipeline: str, redis_client: aioredis.Redis) -> AsyncIterator[None]:
    # The state and the pause expire by themselves; an override would stay.
    yield
    await redis_client.delete(*rate_keys(pipeline))


class Upstream:
    """A test-side upstream that notes when, by its own clock, each request arrived.

    ``answers`` maps a key to ``(status, headers)`` for the keys that should not get a 200.
    """

    def __init__(self, answers: dict[str, tuple[int, dict[str, str]]] | None = None) -> None:
        self.arrivals: list[tuple[float, str]] = []
        self.answers = answers or {}

    @property
    def times(self) -> list[float]:
        return sorted(t for t, _ in self.arrivals)

    async def handle(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        self.arrivals.append((asyncio.get_running_loop().time(), key))
        status, headers = self.answers.get(key, (200, {}))
        return web.json_response({"key": key}, status=status, headers=headers)

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        """Serve on a free port; yield the source URL template."""
        app = web.Application()
        app.router.add_get("/items/{key}", self.handle)
        async with http_server(app) as base:
            yield base + "/items/{key}"


def most_in_one_second(times: list[float]) -> int:
    """The most arrivals in any 1-second window, closed at both ends."""
    times = sorted(times)
    return max((bisect.bisect_right(times, t + 1.0) - i for i, t in enumerate(times)), default=0)


# --- the Lua script against the Python arithmetic ------------------------------------------

HARNESS = (
    GCRA_LUA
    + HELPERS_LUA
    + """
local a = {}
for i = 1, 8 do a[i] = tonumber(ARGV[i]) end
local wait, granted, tat, interval = gcra(a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8])
return {num(wait), num(granted), num(tat), num(interval)}
"""
)
NOW = 1_795_980_221.274426  # a Redis TIME in seconds, to the microsecond

CASES = [
    # (tat, now, pause_until, rate, wanted)
    (0.0, NOW, 0.0, 10, 1),  # idle
    (NOW - 3.5, NOW, 0.0, 10, 1),  # stale state
    (NOW + 0.04, NOW, 0.0, 10, 1),  # next slot within the horizon
    (NOW + 0.2, NOW, 0.0, 10, 1),  # beyond it: ask again later
    (NOW + 0.05, NOW, 0.0, 10, 1),  # exactly at the horizon's end
    (NOW + 0.001, NOW, 0.0, 3, 5),  # an interval that is no finite decimal
    (NOW + 1 / 7, NOW, 0.0, 7, 2),
    (0.0, NOW, 0.0, 0.01, 3),  # the lowest limit
    (0.0, NOW, 0.0, 1_000_000, 32),  # the highest, a batch
    (0.0, NOW, 0.0, 1_000_000, 100_000),  # more wanted than fit in the horizon
    (NOW + 0.049, NOW, 0.0, 5000, 32),
    (NOW + 0.0123, NOW, 0.0, 333.33, 32),
    (NOW + 0.01, NOW, 0.0, 50, 4),  # the burst starts at 50/s
    (NOW + 0.01, NOW, 0.0, 49.99, 4),
    (0.0, NOW, NOW + 30, 10, 1),  # paused
    (NOW + 0.1, NOW, NOW + 0.03, 100, 8),  # a pause ending within the horizon
    (NOW + 0.1, NOW, NOW - 0.03, 100, 8),  # a pause that is over
    (NOW, NOW + 0.000001, 0.0, 40, 32),
    (0.0, NOW, 0.0, 5000, 3),  # idle at a high limit: spare slots
    (NOW + 0.0001, NOW, 0.0, 5000, 3),  # within the burst: still the first slot now
    (NOW + 0.03, NOW, 0.0, 5000, 3),  # the limit reached: none
    (0.0, NOW, 0.0, 1_000_000, 0),  # none wanted, idle: spare slots only (limiter.KEEP)
    (NOW + 0.03, NOW, 0.0, 5000, 0),  # none wanted, the limit reached: nothing
]


def random_cases(count: int) -> list[tuple[float, float, float, float, int]]:
    rng = random.Random(4)
    cases = []
    for _ in range(count):
        rate = round(10 ** rng.uniform(-2, 6), rng.choice([0, 2, 6]))
        rate = min(max(rate, 0.01), 1_000_000)
        now = NOW + rng.uniform(0, 86_400)
        tat = rng.choice([0.0, now + rng.uniform(-2, 2), now + rng.uniform(-0.1, 0.1)])
        pause = rng.choice([0.0, 0.0, now + rng.uniform(-1, 1)])
        cases.append((tat, now, pause, rate, rng.choice([0, 1, 2, 8, 32, 4096])))
    return cases


async def test_the_lua_script_and_the_python_arithmetic_agree(
    redis_client: aioredis.Redis,
) -> None:
    harness = redis_client.register_script(HARNESS)
    for tat, now, pause, rate, wanted in CASES + random_cases(300):
        args = [float(tat), now, float(pause), float(rate), wanted, BURST, AHEAD, SPARE]
        # repr: the shortest text that reads back as the same double, in Lua as in Python.
        wait, granted, new_tat, interval = await harness(args=[repr(a) for a in args])
        expected = Gcra(rate).reserve(tat, now, wanted, pause)
        got = (float(wait), int(float(granted)), float(new_tat), float(interval))
        # Exactly: both are IEEE doubles doing the same operations in the same order.
        assert got == (expected.wait, expected.granted, expected.tat, expected.interval), (
            tat, now, pause, rate, wanted,
        )  # fmt: skip


# --- the limiter on the real script ---------------------------------------------------------


async def closed(*limiters: SharedLimiter) -> None:
    """Close ``limiters`` and wait for the reservation each may have under way (far from the
    limit one keeps a run in hand) before its Redis client goes."""
    refills = [limiter._refiller for limiter in limiters if limiter._refiller is not None]
    for limiter in limiters:
        limiter.close()
    await asyncio.gather(*refills, return_exceptions=True)


@pytest.fixture
async def limiter_at(
    redis_client: aioredis.Redis, pipeline: str
) -> AsyncIterator[Callable[[float], SharedLimiter]]:
    """Makes the test's limiters of ``pipeline`` at a rate, closed before ``redis_client``."""
    made: list[SharedLimiter] = []

    def make(rate: float) -> SharedLimiter:
        made.append(SharedLimiter(redis_client, pipeline, rate))
        return made[-1]

    yield make
    await closed(*made)


async def acquire_times(limiter: SharedLimiter, count: int) -> list[float]:
    loop = asyncio.get_running_loop()
    times: list[float] = []

    async def one() -> None:
        await limiter.acquire()
        times.append(loop.time())

    await asyncio.gather(*(one() for _ in range(count)))
    return sorted(times)


async def test_two_limiters_share_one_limit(services: ServiceUrls, pipeline: str) -> None:
    # Two clients, as two fetcher processes would have; nothing shared but Redis.
    a, b = (aioredis.Redis.from_url(services.redis) for _ in range(2))
    try:
        both = await asyncio.gather(
            acquire_times(SharedLimiter(a, pipeline, 50), 30),
            acquire_times(SharedLimiter(b, pipeline, 50), 30),
        )
    finally:
        await a.aclose()
        await b.aclose()
    times = sorted(both[0] + both[1])
    assert most_in_one_second(times) <= 50 * 1.02 + 1
    # 60 slots at 50/s with a burst of 2: about 1.2 s, not the 0.6 s of two limits.
    assert times[-1] - times[0] >= (60 - 2) / 50 - 0.02


async def test_an_override_applies_at_once_and_a_bad_one_is_ignored(
    redis_client: aioredis.Redis, pipeline: str, limiter_at: Callable[[float], SharedLimiter]
) -> None:
    limiter = limiter_at(1000)
    assert await limiter.override() is None
    await redis_client.set(store.rate_limit(pipeline), "5")
    assert await limiter.override() == 5
    times = await acquire_times(limiter, 4)
    assert times[-1] - times[0] >= 3 * 0.2 - 0.01
    # Just outside SLUICEWAY_RATE_LIMIT's bounds too: the script takes them from the setting.
    bounds = RATE_LIMIT.bounds
    assert bounds is not None
    outside = (repr(bounds.low * 0.99), repr(bounds.high * 1.01))
    for bad in ("0", "-3", "nan", "inf", "fast", "2000000", *outside):
        await redis_client.set(store.rate_limit(pipeline), bad)
        await redis_client.delete(store.rate_last(pipeline))
        assert await limiter.override() is None
        times = await acquire_times(limiter, 20)
        assert times[-1] - times[0] < 0.15, bad  # 1000/s, this fetcher's own


async def test_a_pause_holds_every_limiter_and_is_only_ever_extended(
    services: ServiceUrls, pipeline: str, redis_client: aioredis.Redis
) -> None:
    loop = asyncio.get_running_loop()
    other = aioredis.Redis.from_url(services.redis)
    pausing = SharedLimiter(redis_client, pipeline, 1000)
    waiting = SharedLimiter(other, pipeline, 1000)
    try:
        before, after = await pausing.pause(1.0)
        paused_at = loop.time()
        assert before <= 0
        assert after == pytest.approx(1.0, abs=0.01)
        # A shorter pause asked for meanwhile does not cut it short.
        before, after = await waiting.pause(0.1)
        assert 0.9 < before <= after <= 1.0
        ttl = await redis_client.pttl(store.rate_pause_until(pipeline))
        assert 1000 < ttl <= 2000  # the pause, and a second: gone soon after it ends
        times = await acquire_times(waiting, 3)
        assert times[0] >= paused_at + 1.0 - 0.01
    finally:
        await closed(pausing, waiting)
        await other.aclose()


async def test_the_state_expires_when_no_limit_could_still_space_from_it(
    redis_client: aioredis.Redis, pipeline: str
) -> None:
    loop = asyncio.get_running_loop()
    times = await acquire_times(SharedLimiter(redis_client, pipeline, 20), 3)
    ttl = await redis_client.pttl(store.rate_last(pipeline))
    # 100 s (the interval of the lowest limit) after the last slot, which is in the past or
    # at most AHEAD in the future.
    assert 100_000 - 1000 * (loop.time() - times[-1]) - 50 <= ttl <= 100_000 + 1000 * AHEAD
    # Nothing else is left behind by reserving.
    assert not await redis_client.exists(store.rate_pause_until(pipeline))


async def test_a_raised_limit_reaches_a_waiting_caller_within_a_second(
    redis_client: aioredis.Redis, pipeline: str
) -> None:
    loop = asyncio.get_running_loop()
    limiter = SharedLimiter(redis_client, pipeline, 0.2)  # one slot every 5 s
    await limiter.acquire()
    waiting = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0.3)
    assert not waiting.done()
    raised = loop.time()
    await redis_client.set(store.rate_limit(pipeline), "100")
    await asyncio.wait_for(waiting, timeout=2)
    # Spaced from the last slot at the new limit: no leftover of the old 5-second interval.
    assert loop.time() - raised <= RECHECK + 0.1
    # And lowered again: the next slot is an interval of the new limit after the last one.
    await redis_client.set(store.rate_limit(pipeline), "2")
    times = await acquire_times(limiter, 2)
    assert times[1] - times[0] >= 0.5 - 0.01


async def test_a_slot_its_caller_wakes_too_late_for_is_given_up(
    redis_client: aioredis.Redis, pipeline: str
) -> None:
    # A process starved of CPU wakes after its slot: that request must not go out in the
    # time of the slots after it (another fetcher's, perhaps), but in a slot of its own.
    limiter = SharedLimiter(redis_client, pipeline, 10)  # one slot every 100 ms, no spare
    await limiter.acquire()
    first_slot = await redis_client.get(store.rate_last(pipeline))
    waiting = asyncio.create_task(limiter.acquire())
    # Once the next slot is reserved (within AHEAD of its time) and handed to its caller,
    # which sleeps until it, the loop stalls. (Stalled between the script's run and the
    # reply's handling, the slot would be placed after the stall, and be on time.)
    async with asyncio.timeout(2):
        # Polled often: the slot is due 25 ms after it is reserved.
        while (  # noqa: ASYNC110
            await redis_client.get(store.rate_last(pipeline)) == first_slot
            or limiter._waiters  # not handed out yet
        ):
            await asyncio.sleep(0.002)
    assert not waiting.done()
    time.sleep(0.3)  # noqa: ASYNC251 -- the stall is the point
    seconds, micros = await redis_client.time()
    stalled_until = seconds + micros / 1e6
    await asyncio.wait_for(waiting, timeout=2)
    after_stall = limiter.late
    assert after_stall >= 1  # its slot given up (and the next too, if it also woke late)
    # The slot it went in was reserved after the stall, spaced from every other one.
    last_slot = await _last_slot(redis_client, pipeline)
    assert last_slot >= stalled_until - LATE
    # A caller on time is not counted: of ten more callers, a loaded machine may wake a few
    # late (each is then counted and takes another slot), but not all of them.
    for _ in range(10):
        await limiter.acquire()
    assert limiter.late - after_stall < 10


async def _last_slot(client: aioredis.Redis, pipeline: str) -> float:
    """The time of the last slot reserved, as the limiter keeps it in Redis."""
    raw = await client.get(store.rate_last(pipeline))
    assert raw is not None
    return float(raw)


async def test_slots_are_spaced_for_a_little_under_the_limit(
    redis_client: aioredis.Redis, pipeline: str
) -> None:
    # Room for the shift between a slot and its request reaching the upstream (AIM).
    limiter = SharedLimiter(redis_client, pipeline, 40)  # no burst, no spare slots
    await limiter.acquire()
    first = await _last_slot(redis_client, pipeline)
    for _ in range(10):
        await limiter.acquire()
    last = await _last_slot(redis_client, pipeline)
    assert last - first == pytest.approx(10 / (40 * AIM), abs=1e-6)
    assert AIM < 1


async def test_far_from_the_limit_the_next_run_is_reserved_before_this_one_ends(
    limiter_at: Callable[[float], SharedLimiter],
) -> None:
    # A run of spare slots lasts SPARE; a caller taking a slot from its second half starts
    # the next reservation, with no caller waiting for it yet. (Before, the run was renewed
    # only once a caller found it ended, and that caller waited for Redis.)
    limiter = limiter_at(100_000)
    loop = asyncio.get_running_loop()
    renewed_ahead = False
    for _ in range(50):  # a loaded machine may oversleep the run; try again
        await limiter.acquire()
        if limiter._refiller is not None:
            await limiter._refiller  # the run this caller's slot came from is in hand
        run_end = limiter._first + limiter._count * limiter._interval
        assert limiter._count > 1  # spare slots: the limit is far
        await asyncio.sleep(max(0.0, run_end - SPARE / 4 - loop.time()))
        if loop.time() >= run_end:
            continue
        await limiter.acquire()  # a slot of this run, in its second half
        if limiter._refiller is not None and not limiter._waiters:
            renewed_ahead = True
            break
    assert renewed_ahead


async def test_far_from_the_limit_a_caller_goes_without_waiting_for_the_loop(
    limiter_at: Callable[[float], SharedLimiter],
) -> None:
    # A slot every microsecond: the slot that has just passed is taken, so a caller with a
    # run in hand returns at once, not after a turn of the event loop (a sleep of under a
    # microsecond until the next slot, which on a busy loop cost milliseconds a fetch).
    limiter = limiter_at(1_000_000)
    loop = asyncio.get_running_loop()
    await limiter.acquire()  # the run, reserved
    waited = 0
    for _ in range(20):
        if limiter._refiller is not None:
            await limiter._refiller
        turned = asyncio.Event()
        loop.call_soon(turned.set)
        first = limiter._first
        await limiter.acquire()
        if limiter._first != first:
            continue  # the run ran out: this caller waited for a new one, as it must
        waited += turned.is_set()
    assert waited == 0
    assert limiter.late == 0


async def test_far_from_the_limit_a_run_is_kept_in_hand_between_waves_of_callers(
    limiter_at: Callable[[float], SharedLimiter],
) -> None:
    # Callers that come back after an upstream's latency (here 50 ms, five runs' time)
    # find a run in hand, reserved as the last one ended; idle for longer than KEEP, the
    # limiter lets its runs lapse and stops calling Redis.
    limiter = limiter_at(1_000_000)
    loop = asyncio.get_running_loop()
    in_hand = 0
    for _ in range(10):
        await limiter.acquire()
        await asyncio.sleep(0.05)
        now = loop.time()
        in_hand += limiter._first <= now < limiter._first + limiter._count * limiter._interval
    assert in_hand >= 8  # a loaded machine may let a renewal come late once or twice
    await asyncio.sleep(KEEP + 3 * SPARE)
    assert limiter._keeping is None
    assert limiter._refiller is None
    assert loop.time() > limiter._first + limiter._count * limiter._interval


async def test_close_gives_back_the_callers_without_a_slot(
    redis_client: aioredis.Redis, pipeline: str
) -> None:
    limiter = SharedLimiter(redis_client, pipeline, 1)
    await limiter.acquire()
    waiting = asyncio.create_task(limiter.acquire())  # its slot is a second away
    await asyncio.sleep(0.2)
    limiter.close()
    with pytest.raises(LimiterClosed):
        await waiting
    with pytest.raises(LimiterClosed):
        await limiter.acquire()


# --- the fetcher with the limiter -----------------------------------------------------------


async def test_a_429_with_retry_after_pauses_every_fetcher(
    services: ServiceUrls,
    pipeline: str,
    amqp_connection: AbstractConnection,
    redis_client: aioredis.Redis,
) -> None:
    queues = topology.Queues(pipeline)
    upstream = Upstream({"slow-down": (429, {"Retry-After": "2"})})
    keys = [f"k{i}" for i in range(6)]
    async with (
        upstream.serving() as source,
        running_fetcher(services.amqp, services.redis, pipeline, source),
        running_fetcher(services.amqp, services.redis, pipeline, source),
    ):
        await publish(amqp_connection, pipeline, queues.fetch, [codec.encode_task("slow-down")])
        await eventually(
            lambda: _in_failed(redis_client, pipeline, "slow-down"), what="the 429 recorded"
        )
        # The pause is in Redis before the key is recorded as failed.
        ttl = await redis_client.pttl(store.rate_pause_until(pipeline))
        assert ttl > 1000
        [(answered, _)] = upstream.arrivals
        await publish(amqp_connection, pipeline, queues.fetch, [codec.encode_task(k) for k in keys])
        await eventually(
            lambda: _depth_is(amqp_connection, queues.records, len(keys)), what="every record"
        )
    later = [t for t, key in upstream.arrivals if key != "slow-down"]
    assert len(later) == len(keys)
    # Both fetchers' requests waited: none reached the upstream within its 2 seconds.
    assert min(later) >= answered + 2.0 - 0.01
    info = await redis_client.hget(store.failed_info(pipeline), "slow-down")
    assert info is not None
    assert json.loads(info)["status"] == 429


async def _in_failed(client: aioredis.Redis, pipeline: str, key: str) -> bool:
    return bool(await client.sismember(store.failed_set(pipeline), key))


async def _depth_is(connection: AbstractConnection, queue: str, count: int) -> bool:
    return await depth(connection, queue) >= count


async def test_redis_cut_off_stops_fetching_and_loses_nothing(
    services: ServiceUrls,
    pipeline: str,
    amqp_connection: AbstractConnection,
    redis_client: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sluiceway_fetcher")
    caplog.set_level(logging.INFO, logger="sluiceway_common.limiter")
    queues = topology.Queues(pipeline)
    upstream = Upstream()
    proxy = await TcpProxy(services.redis).start()
    try:
        async with (
            upstream.serving() as source,
            running_fetcher(services.amqp, proxy.url, pipeline, source),
        ):
            first = [codec.encode_task(f"a{i}") for i in range(5)]
            await publish(amqp_connection, pipeline, queues.fetch, first)
            await eventually(lambda: _depth_is(amqp_connection, queues.records, 5))
            # Slots reserved before the cut may still be used: far from the limit a run is
            # kept in hand for KEEP after the last request, then lapses.
            await asyncio.sleep(KEEP + 2 * SPARE)
            await proxy.cut()
            await publish(
                amqp_connection,
                pipeline,
                queues.fetch,
                [codec.encode_task(f"b{i}") for i in range(20)],
            )
            await eventually(
                lambda: _logged(caplog, "rate limiter: Redis unreachable, fetching paused"),
                what="the warning",
            )
            await asyncio.sleep(2)
            # Not one request while the limit cannot be known; the tasks are held, not lost.
            assert len(upstream.arrivals) == 5
            # 16 tasks held unacked (the prefetch: twice the 8 places) and 4 still queued.
            assert await depth(amqp_connection, queues.fetch) == 4
            assert await depth(amqp_connection, queues.records) == 5
            await proxy.restore()
            await eventually(lambda: _depth_is(amqp_connection, queues.records, 25))
    finally:
        await proxy.close()
    assert sorted(key for _, key in upstream.arrivals) == sorted(
        [f"a{i}" for i in range(5)] + [f"b{i}" for i in range(20)]
    )
    assert await redis_client.scard(store.failed_set(pipeline)) == 0
    messages = [r.getMessage() for r in caplog.records]
    assert sum(m.startswith("rate limiter: Redis unreachable") for m in messages) == 1
    assert messages.count("rate limiter: Redis reachable again, fetching resumed") == 1


async def _logged(caplog: pytest.LogCaptureFixture, prefix: str) -> bool:
    return any(r.getMessage().startswith(prefix) for r in caplog.records)


async def test_stopping_gives_back_the_tasks_waiting_for_the_limit(
    services: ServiceUrls,
    pipeline: str,
    amqp_connection: AbstractConnection,
    redis_client: aioredis.Redis,
) -> None:
    queues = topology.Queues(pipeline)
    upstream = Upstream()
    await redis_client.set(store.rate_limit(pipeline), "0.2")  # one request per 5 s
    loop = asyncio.get_running_loop()
    async with upstream.serving() as source:
        async with running_fetcher(services.amqp, services.redis, pipeline, source):
            keys = [codec.encode_task(f"k{i}") for i in range(5)]
            await publish(amqp_connection, pipeline, queues.fetch, keys)
            await eventually(lambda: _depth_is(amqp_connection, queues.records, 1))
            stopping = loop.time()
        assert loop.time() - stopping < 3  # it did not wait for the next slot
    assert len(upstream.arrivals) == 1
    assert await depth(amqp_connection, queues.records) == 1
    assert await depth(amqp_connection, queues.fetch) == 4
