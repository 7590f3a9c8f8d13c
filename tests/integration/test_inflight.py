"""Each key at most once in flight, on the real services: ``enqueue`` and ``failed retry``
claim a key before they queue it and skip it while its mark holds; the fetcher releases the
mark once the key lands or fails for good; a retry keeps it; a lost task's mark lapses."""

from __future__ import annotations

import asyncio
import io
import json
import random
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aio_pika.abc import AbstractConnection
from aiohttp import web

from sluiceway_admin import enqueue
from sluiceway_admin.progress import Progress
from sluiceway_admin.sources import Chunk
from sluiceway_common import codec, store, topology
from tests.conftest import ServiceUrls
from tests.integration.helpers import depth, drain, eventually, http_server, running_fetcher
from tests.integration.test_admin import sluiceway

pytestmark = pytest.mark.integration

RAN = re.compile(r"enqueued ([\d,]+) keys to \S+ in .*; already in flight ([\d,]+),")


def ran(stderr: str) -> tuple[int, int]:
    """(queued, already in flight) from an enqueue run's last line."""
    found = RAN.search(stderr)
    assert found, stderr
    return int(found[1].replace(",", "")), int(found[2].replace(",", ""))


async def queued_keys(connection: AbstractConnection, pipeline: str) -> list[str]:
    return [
        codec.decode_task(m.body) for m in await drain(connection, topology.Queues(pipeline).fetch)
    ]


async def test_claims_racing_over_the_same_keys_claim_each_key_once(
    redis_client: aioredis.Redis, pipeline: str
) -> None:
    keys = [f"k{i}" for i in range(10_000)]
    inflight = store.InFlight(redis_client, pipeline)

    async def feed(seed: int) -> list[str]:
        order = random.Random(seed).sample(keys, len(keys))
        claimed: list[str] = []
        for start in range(0, len(order), 500):
            claimed += await inflight.claim(order[start : start + 500], 60)
        return claimed

    results = await asyncio.gather(*(feed(seed) for seed in range(4)))
    every = [key for claimed in results for key in claimed]
    assert sorted(every) == sorted(keys)  # each key claimed by exactly one feed
    assert all(results)  # they did race: every feed won some
    assert await inflight.count() == len(keys)
    assert await inflight.claim(["k1", "new", "new"], 60) == ["new"]
    assert await inflight.claim(["k1", "k2"], 60, force=True) == ["k1", "k2"]


async def test_two_enqueues_racing_over_the_same_10000_keys_queue_10000_tasks(
    services: ServiceUrls,
    database_url: str,
    pipeline: str,
    tmp_path: Path,
    amqp_connection: AbstractConnection,
) -> None:
    keys = [f"user-{i:05d}" for i in range(10_000)]
    forward, backward = tmp_path / "forward.txt", tmp_path / "backward.txt"
    forward.write_text("".join(f"{key}\n" for key in keys))
    backward.write_text("".join(f"{key}\n" for key in reversed(keys)))
    env = {
        "PATH": "/usr/bin:/bin",
        "SLUICEWAY_DATABASE_URL": database_url,
        "SLUICEWAY_AMQP_URL": services.amqp,
        "SLUICEWAY_REDIS_URL": services.redis,
        "SLUICEWAY_PIPELINE": pipeline,
    }
    runs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sluiceway_common", "enqueue", str(path),
            env=env, stderr=asyncio.subprocess.PIPE,
        )
        for path in (forward, backward)
    ]  # fmt: skip
    outputs = await asyncio.gather(*(run.communicate() for run in runs))
    assert [run.returncode for run in runs] == [0, 0], outputs
    (queued_a, skipped_a), (queued_b, skipped_b) = (ran(err.decode()) for _, err in outputs)
    assert queued_a + queued_b == 10_000
    assert skipped_a + skipped_b == 10_000
    found = await queued_keys(amqp_connection, pipeline)
    assert len(found) == 10_000
    assert sorted(found) == keys


def upstream() -> web.Application:
    """``gone`` is 404, ``flaky`` always 503, any other key a user."""

    async def user(request: web.Request) -> web.Response:
        key = request.match_info["key"]
        if key == "gone":
            return web.json_response({"error": "no such user"}, status=404)
        if key == "flaky":
            return web.json_response({"error": "busy"}, status=503)
        return web.json_response({"id": key})

    app = web.Application()
    app.router.add_get("/users/{key}", user)
    return app


async def test_a_key_leaves_in_flight_when_it_lands_or_fails_for_good_not_when_it_is_retried(
    services: ServiceUrls,
    database_url: str,
    pipeline: str,
    amqp_connection: AbstractConnection,
    redis_client: aioredis.Redis,
) -> None:
    queues = topology.Queues(pipeline)
    inflight = store.InFlight(redis_client, pipeline)
    keys = b"ok\ngone\nflaky\n"
    first = sluiceway(services, database_url, pipeline, "enqueue", "-", stdin=keys)
    assert ran(first.stderr) == (3, 0)
    again = sluiceway(services, database_url, pipeline, "enqueue", "-", stdin=keys)
    assert ran(again.stderr) == (0, 3)
    status = json.loads(sluiceway(services, database_url, pipeline, "status", "--json").stdout)
    assert status["in_flight"] == 3

    async with (
        http_server(upstream()) as base,
        running_fetcher(
            services.amqp, services.redis, pipeline, base + "/users/{key}", max_attempts=2
        ),
    ):

        async def settled() -> bool:
            landed = await depth(amqp_connection, queues.records) == 1
            failed = await redis_client.sismember(store.failed_set(pipeline), "gone")
            retrying = await redis_client.zscore(inflight.key, "flaky") is not None
            return landed and bool(failed) and retrying and await inflight.count() == 1

        # "flaky" has had its first attempt and waits for its second on a delay queue (or
        # is being tried again): it is the one key still in flight.
        await eventually(settled, what="ok to land, gone to fail, flaky to wait for a retry")

        async def flaky_failed() -> bool:
            return bool(await redis_client.sismember(store.failed_set(pipeline), "flaky"))

        await eventually(flaky_failed, what="flaky to fail for good after its second attempt")
    assert await inflight.count() == 0
    status = json.loads(sluiceway(services, database_url, pipeline, "status", "--json").stdout)
    assert status["in_flight"] == 0
    await drain(amqp_connection, queues.records)
    third = sluiceway(services, database_url, pipeline, "enqueue", "-", stdin=keys)
    assert ran(third.stderr) == (3, 0)  # landed or failed: each may be queued again
    assert sorted(await queued_keys(amqp_connection, pipeline)) == ["flaky", "gone", "ok"]


async def test_failed_retry_skips_keys_in_flight_and_claims_those_it_queues(
    services: ServiceUrls,
    database_url: str,
    pipeline: str,
    amqp_connection: AbstractConnection,
    redis_client: aioredis.Redis,
) -> None:
    await redis_client.sadd(store.failed_set(pipeline), "a", "b")
    queued = sluiceway(services, database_url, pipeline, "enqueue", "-", stdin=b"a\n")
    assert ran(queued.stderr) == (1, 0)
    retried = sluiceway(services, database_url, pipeline, "failed", "retry")
    assert "re-enqueued 1 failed keys" in retried.stdout
    assert "already in flight 1;" in retried.stdout
    assert sorted(await queued_keys(amqp_connection, pipeline)) == ["a", "b"]
    assert await store.InFlight(redis_client, pipeline).count() == 2


async def test_a_lost_task_s_key_is_queued_again_once_its_mark_lapses(
    services: ServiceUrls,
    database_url: str,
    pipeline: str,
    amqp_connection: AbstractConnection,
    redis_client: aioredis.Redis,
) -> None:
    lifetime = ("--inflight-timeout", "5")
    first = sluiceway(services, database_url, pipeline, "enqueue", "-", *lifetime, stdin=b"k\n")
    assert ran(first.stderr) == (1, 0)
    inflight = store.InFlight(redis_client, pipeline)
    # Still marked: a claim (what a second run would do) gets nothing. Checked in-process at
    # once, as a second run's start-up on a loaded machine could outlast the mark.
    assert await inflight.claim(["k"], 5) == []
    assert await queued_keys(amqp_connection, pipeline) == ["k"]  # the task is lost

    async def lapsed() -> bool:
        return await inflight.count() == 0

    await eventually(lapsed, within=15, what="the mark to lapse")
    status = json.loads(sluiceway(services, database_url, pipeline, "status", "--json").stdout)
    assert status["in_flight"] == 0
    last = sluiceway(services, database_url, pipeline, "enqueue", "-", *lifetime, stdin=b"k\n")
    assert ran(last.stderr) == (1, 0)
    assert await queued_keys(amqp_connection, pipeline) == ["k"]


async def test_a_feed_run_records_its_outcome_for_the_operator(
    services: ServiceUrls,
    database_url: str,
    pipeline: str,
    redis_client: aioredis.Redis,
) -> None:
    ok = sluiceway(services, database_url, pipeline, "enqueue", "-", "--feed", "ids",
                   stdin=b"a\nb\n\nb\n")  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    bad = sluiceway(services, database_url, pipeline, "enqueue", "--sql", "SELECT nope",
                    "--feed", "nightly")  # fmt: skip
    assert bad.returncode == 1
    runs = await store.FeedRuns(redis_client, pipeline).read()
    assert set(runs) == {"ids", "nightly"}
    assert runs["ids"]["ok"] is True
    assert (runs["ids"]["queued"], runs["ids"]["in_flight"], runs["ids"]["skipped"]) == (2, 1, 1)
    assert runs["ids"]["error"] is None
    assert runs["ids"]["started"] <= runs["ids"]["finished"]
    assert runs["nightly"]["ok"] is False
    assert "nope" in runs["nightly"]["error"]
    assert runs["nightly"]["queued"] == 0


async def test_an_enqueue_stopped_by_sigterm_gives_back_the_marks_of_keys_not_queued(
    services: ServiceUrls,
    database_url: str,
    pipeline: str,
    amqp_connection: AbstractConnection,
    redis_client: aioredis.Redis,
) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "SLUICEWAY_DATABASE_URL": database_url,
        "SLUICEWAY_AMQP_URL": services.amqp,
        "SLUICEWAY_REDIS_URL": services.redis,
        "SLUICEWAY_PIPELINE": pipeline,
    }
    query = "SELECT 'k' || i FROM generate_series(1, 300000) i"
    run = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sluiceway_common", "enqueue", "--sql", query,
        env=env, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    fetch = topology.Queues(pipeline).fetch

    async def under_way() -> bool:
        try:
            return await depth(amqp_connection, fetch) >= 20_000
        except Exception:  # not declared yet
            return False

    await eventually(under_way, within=60, what="20,000 keys queued")
    run.terminate()
    _, stderr = await run.communicate()
    assert run.returncode == 1, stderr
    said = re.search(
        r"stopped by a signal \(SIGTERM or Ctrl-C\) after ([\d,]+) keys", stderr.decode()
    )
    assert said, stderr
    queued = set(await queued_keys(amqp_connection, pipeline))
    assert int(said[1].replace(",", "")) <= len(queued) < 300_000
    members = await redis_client.zrange(store.inflight(pipeline), 0, -1)
    marked = {raw.decode() for raw in members if isinstance(raw, bytes)}
    assert len(marked) == len(members)
    # Every key still marked is in the queue: none was left marked without a task.
    assert marked <= queued
    assert len(marked) >= int(said[1].replace(",", ""))


async def test_a_stop_while_redis_claims_a_chunk_gives_back_what_the_claim_marked(
    services: ServiceUrls,
    pipeline: str,
    amqp_connection: AbstractConnection,
    redis_client: aioredis.Redis,
) -> None:
    # One chunk so large that Redis takes about a second over its claim: a stop 0.2 s after
    # the chunk is read lands while the claim's answer is awaited. A run that dropped the
    # answer would leave the whole chunk marked with no task queued.
    keys = [f"k{i}" for i in range(1_000_000)]
    read = asyncio.Event()

    async def source() -> AsyncIterator[Chunk]:
        read.set()
        yield list(enumerate(keys, 1))

    show = Progress("enqueued", "keys", stream=io.StringIO())
    run = asyncio.create_task(
        enqueue.enqueue(services.amqp, services.redis, pipeline, source(), show, lifetime=600)
    )
    await read.wait()
    await asyncio.sleep(0.2)
    assert not run.done()
    run.cancel()
    with pytest.raises(enqueue.Interrupted) as stopped:
        await run
    assert stopped.value.by == "a signal"
    queued = set(await queued_keys(amqp_connection, pipeline))
    members = await redis_client.zrange(store.inflight(pipeline), 0, -1)
    assert {raw.decode() for raw in members if isinstance(raw, bytes)} <= queued
