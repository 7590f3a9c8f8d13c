"""The shared rate limit with real ``sluiceway fetcher`` processes, measured by the upstream's
own clock, and ``sluiceway rate`` changing it while they run."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from aio_pika.abc import AbstractConnection

from sluiceway_common import codec, store, topology
from tests.e2e.conftest import Processes
from tests.integration.helpers import consumers, depth, eventually, publish
from tests.integration.test_ratelimit import Upstream, most_in_one_second, rate_keys

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
async def _forget_rate_keys(pipeline: str, redis_client: aioredis.Redis) -> AsyncIterator[None]:
    yield
    await redis_client.delete(*rate_keys(pipeline))


async def start_fetchers(
    processes: Processes,
    connection: AbstractConnection,
    count: int,
    source: str,
    rate: str,
) -> None:
    for i in range(count):
        processes.start(
            f"fetcher-{i}",
            "fetcher",
            SLUICEWAY_SOURCE_URL=source,
            SLUICEWAY_RATE_LIMIT=rate,
            SLUICEWAY_PUBLISH_LINGER_MS="0",  # one record a message: the test counts them
        )
    queue = topology.Queues(processes.env["SLUICEWAY_PIPELINE"]).fetch

    async def all_consuming() -> bool:
        for i, process in enumerate(processes.started):
            assert process.poll() is None, processes.log(f"fetcher-{i}")
        return await consumers(connection, queue) == count

    await eventually(all_consuming, within=60, what=f"{count} fetchers consuming")


def stop_fetchers(processes: Processes) -> list[int]:
    """SIGTERM each fetcher; return how many keys each fetched."""
    fetched = []
    for i, process in enumerate(processes.started):
        assert processes.terminate(process) == 0, processes.log(f"fetcher-{i}")
        found = re.search(r"fetcher stopped: (\d+) keys fetched", processes.log(f"fetcher-{i}"))
        assert found, processes.log(f"fetcher-{i}")
        fetched.append(int(found[1]))
    return fetched


async def test_three_fetchers_share_one_limit(
    processes: Processes, pipeline: str, amqp_connection: AbstractConnection
) -> None:
    limit, keys = 40, 220  # about 5.5 s of traffic
    queues = topology.Queues(pipeline)
    upstream = Upstream()
    async with upstream.serving() as source:
        await start_fetchers(processes, amqp_connection, 3, source, str(limit))
        await publish(
            amqp_connection,
            pipeline,
            queues.fetch,
            [codec.encode_task(f"k{i}") for i in range(keys)],
        )
        await eventually(lambda: _arrived(upstream, keys), within=60, what="every request")
        fetched = stop_fetchers(processes)
    times = upstream.times
    assert len(times) == keys
    # Each fetcher alone would allow 40/s, 120/s together; shared, no second holds more
    # than the limit and 5% (and one request, for a window closed at both ends).
    assert most_in_one_second(times) <= limit * 1.05 + 1, most_in_one_second(times)
    # With a backlog throughout, the limit is used.
    assert (keys - 1) / (times[-1] - times[0]) >= limit * 0.9
    assert all(fetched), fetched  # all three took part
    assert sum(fetched) == keys
    assert await depth(amqp_connection, queues.records) == keys


async def _arrived(upstream: Upstream, count: int) -> bool:
    return len(upstream.arrivals) >= count


async def test_rate_set_and_clear_change_the_limit_of_running_fetchers(
    processes: Processes, pipeline: str, amqp_connection: AbstractConnection
) -> None:
    queues = topology.Queues(pipeline)
    upstream = Upstream()
    loop = asyncio.get_running_loop()
    async with upstream.serving() as source:
        await start_fetchers(processes, amqp_connection, 2, source, "1000")
        result = processes.run("rate", "set", "8")
        assert result.returncode == 0, result.stderr
        assert "limit:  8 requests/s, set with `sluiceway rate set`" in result.stdout
        await publish(
            amqp_connection, pipeline, queues.fetch, [codec.encode_task(f"k{i}") for i in range(80)]
        )
        await eventually(lambda: _arrived(upstream, 1), what="the first request")
        await asyncio.sleep(2.5)
        slow = upstream.times
        # 8/s across both fetchers, from their next request on, where each alone would go at
        # 1000/s: 80 keys take 10 s instead of a tenth of one.
        assert most_in_one_second(slow) <= 8 * 1.05 + 1
        assert 8 * 2 <= len(slow) <= 8 * 3
        result = processes.run("rate", "clear")
        assert result.returncode == 0, result.stderr
        assert "not set: each fetcher uses its SLUICEWAY_RATE_LIMIT" in result.stdout
        cleared = loop.time()
        await eventually(lambda: _arrived(upstream, 80), what="the rest, at 1000/s")
        assert loop.time() - cleared < 3
        stop_fetchers(processes)


def test_rate_show_set_clear(processes: Processes) -> None:
    shown = json.loads(processes.run("rate", "show", "--json").stdout)
    assert shown == {
        "pipeline": processes.env["SLUICEWAY_PIPELINE"],
        "limit": None,
        "paused_for": 0.0,
    }
    assert processes.run("rate", "set", "2.5").returncode == 0
    assert json.loads(processes.run("rate", "show", "--json").stdout)["limit"] == 2.5
    assert "limit:  2.5 requests/s" in processes.run("rate", "show").stdout
    assert processes.run("rate", "clear").returncode == 0
    assert json.loads(processes.run("rate", "show", "--json").stdout)["limit"] is None


async def test_rate_show_tells_of_a_pause(
    processes: Processes, pipeline: str, redis_client: aioredis.Redis
) -> None:
    seconds, micros = await redis_client.time()
    await redis_client.set(
        store.rate_pause_until(pipeline), repr(seconds + micros / 1e6 + 30), px=31_000
    )
    shown = json.loads(processes.run("rate", "show", "--json").stdout)
    assert 25 < shown["paused_for"] <= 30
    assert "paused: for 2" in processes.run("rate", "show").stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("set", "fast"), "N='fast' is not allowed: expected requests per second"),
        (("set", "0"), "N='0' is not allowed: expected requests per second, a number from 0.01"),
        (("set", "nan"), "N='nan' is not allowed"),
        (("set",), "set needs N: expected requests per second"),
        (("clear", "5"), "clear takes no N"),
    ],
)
def test_rate_refuses_a_bad_limit_with_one_line(
    processes: Processes, args: tuple[str, ...], message: str
) -> None:
    result = processes.run("rate", *args)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"sluiceway rate: {message}"), line
