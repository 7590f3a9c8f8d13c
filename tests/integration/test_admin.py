"""``enqueue``, ``status``, ``failed`` and the demo's check against the real services."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aio_pika.abc import AbstractConnection

from sluiceway_admin.demo import Demo, DemoFailed, DemoSettings
from sluiceway_common import codec, store, topology
from tests.conftest import ServiceUrls
from tests.integration.helpers import (
    TcpProxy,
    depth,
    drain,
    eventually,
    publish,
    record,
    running_writer,
)

pytestmark = pytest.mark.integration


def sluiceway(
    services: ServiceUrls,
    database_url: str,
    pipeline: str,
    *args: str,
    stdin: bytes | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "SLUICEWAY_DATABASE_URL": database_url,
        "SLUICEWAY_AMQP_URL": services.amqp,
        "SLUICEWAY_REDIS_URL": services.redis,
        "SLUICEWAY_PIPELINE": pipeline,
        **(env or {}),
    }
    result = subprocess.run(
        [sys.executable, "-m", "sluiceway_common", *args],
        input=stdin,
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


async def test_enqueue_publishes_one_task_per_key_and_skips_blank_lines(
    services: ServiceUrls,
    database_url: str,
    pipeline: str,
    tmp_path: Path,
    amqp_connection: AbstractConnection,
) -> None:
    keys_file = tmp_path / "keys.txt"
    keys_file.write_bytes(b"a\n\n  b  \r\nc/d e\n\n\t\nZo\xc3\xab\n")
    result = sluiceway(services, database_url, pipeline, "enqueue", str(keys_file))
    assert result.returncode == 0, result.stderr
    tasks = await drain(amqp_connection, topology.Queues(pipeline).fetch)
    assert [codec.decode_task(m.body) for m in tasks] == ["a", "b", "c/d e", "Zoë"]
    assert all(m.delivery_mode == 2 for m in tasks)  # persistent


async def test_enqueue_reads_stdin(
    services: ServiceUrls, database_url: str, pipeline: str, amqp_connection: AbstractConnection
) -> None:
    keys = "".join(f"k{i}\n" for i in range(2000)).encode()
    result = sluiceway(services, database_url, pipeline, "enqueue", "-", stdin=keys)
    assert result.returncode == 0, result.stderr
    assert await depth(amqp_connection, topology.Queues(pipeline).fetch) == 2000


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (b"ok\n\xff\xfe\n", "line 2: not valid UTF-8"),
        (b"ok\nbad\x07key\n", "line 2: contains a control character"),
        (b"x" * 5000 + b"\n", "line 1: longer than 4096 bytes"),
        (b"ok\n" + b"x" * 100_000 + b"\n", "line 2: longer than 4096 bytes"),
        (b"ok\n" + b"x" * 100_000, "line 2: longer than 4096 bytes"),  # and no newline
    ],
)
async def test_enqueue_refuses_bad_lines_with_their_number(
    services: ServiceUrls,
    database_url: str,
    pipeline: str,
    tmp_path: Path,
    content: bytes,
    error: str,
) -> None:
    keys_file = tmp_path / "keys.txt"
    keys_file.write_bytes(content)
    result = sluiceway(services, database_url, pipeline, "enqueue", str(keys_file))
    assert result.returncode == 1
    assert error in result.stderr


def test_enqueue_of_a_missing_file_says_so(
    services: ServiceUrls, database_url: str, pipeline: str
) -> None:
    result = sluiceway(services, database_url, pipeline, "enqueue", "/nonexistent/keys")
    assert result.returncode == 1
    assert "cannot read /nonexistent/keys" in result.stderr


async def test_status_json_counts_queues_rows_and_failed(
    services: ServiceUrls,
    database_url: str,
    pipeline: str,
    redis_client: aioredis.Redis,
) -> None:
    assert (
        sluiceway(services, database_url, pipeline, "enqueue", "-", stdin=b"a\nb\nc\n").returncode
        == 0
    )
    await redis_client.sadd(store.failed_set(pipeline), "x", "y")
    result = sluiceway(services, database_url, pipeline, "status", "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    queues = topology.Queues(pipeline)
    by_name = {q["name"]: q for q in status["queues"]}
    assert by_name[queues.fetch]["ready"] == 3
    assert by_name[queues.records]["ready"] == 0
    assert status["rows"] == 0
    assert status["failed"] == 2
    assert status["buffered"] == 0
    assert status["retrying"] == 0
    assert (status["dead"], status["writers"], status["fetchers"]) == (0, 0, 0)
    assert status["depth_source"].startswith("passive declare")
    text = sluiceway(services, database_url, pipeline, "status")
    assert "keys failed   2" in text.stdout


async def test_status_counts_rows_landed_in_a_sink_table_all_of_them(
    services: ServiceUrls, database_url: str, pipeline: str, db: Any
) -> None:
    table = f"sink_{pipeline.replace('-', '_')}"
    env = {"SLUICEWAY_SINK_TABLE": f'public."{table}"', "SLUICEWAY_SINK_KEY": "id"}
    result = sluiceway(services, database_url, pipeline, "status", "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert (json.loads(result.stdout)["rows"], json.loads(result.stdout)["rows_table"]) == (
        None, f'public."{table}"'
    )  # fmt: skip
    text = sluiceway(services, database_url, pipeline, "status", env=env).stdout
    assert f'sink table public."{table}" missing: create it with your own migrations' in text
    await db.execute(f'CREATE TABLE "{table}" (id bigint PRIMARY KEY)')
    try:
        await db.execute(f'INSERT INTO "{table}" SELECT generate_series(1, 1234)')
        # The pipeline's rows in records are not the sink's.
        await db.execute(
            "INSERT INTO records (pipeline, key, payload, fetched_at) "
            "VALUES ($1, 'k', '{}', now())",
            pipeline,
        )
        result = sluiceway(services, database_url, pipeline, "status", "--json", env=env)
        assert result.returncode == 0, result.stderr
        status = json.loads(result.stdout)
        assert (status["rows"], status["rows_table"]) == (1234, f'public."{table}"')
        text = sluiceway(services, database_url, pipeline, "status", env=env).stdout
        assert f'rows landed   1,234 in public."{table}" (the whole table)' in text
        plain = json.loads(sluiceway(services, database_url, pipeline, "status", "--json").stdout)
        assert (plain["rows"], plain["rows_table"]) == (1, "records")
    finally:
        await db.execute(f'DROP TABLE "{table}"')


async def test_failed_list_retry_clear(
    services: ServiceUrls,
    database_url: str,
    pipeline: str,
    redis_client: aioredis.Redis,
    amqp_connection: AbstractConnection,
) -> None:
    keys = [f"k{i}" for i in range(1200)]  # more than one SSCAN chunk
    await redis_client.sadd(store.failed_set(pipeline), *keys)
    await redis_client.hset(
        store.failed_info(pipeline),
        "k1",
        orjson.dumps({"reason": "HTTP 404 Not Found", "status": 404}),
    )
    listed = sluiceway(services, database_url, pipeline, "failed", "list")
    assert listed.returncode == 0
    assert len(listed.stdout.splitlines()) == 1200
    assert "k1\t404\tHTTP 404 Not Found" in listed.stdout.splitlines()
    as_json = sluiceway(services, database_url, pipeline, "failed", "list", "--json")
    assert {"key": "k1", "reason": "HTTP 404 Not Found", "status": 404} in [
        json.loads(line) for line in as_json.stdout.splitlines()
    ]

    retried = sluiceway(services, database_url, pipeline, "failed", "retry")
    assert retried.returncode == 0, retried.stderr
    assert "re-enqueued 1,200" in retried.stdout
    tasks = await drain(amqp_connection, topology.Queues(pipeline).fetch)
    assert sorted(codec.decode_task(m.body) for m in tasks) == sorted(keys)
    assert all((m.headers or {}).get(codec.RETRY_HEADER) for m in tasks)
    # Keys leave the set only when their records land (tests/integration/test_fetcher.py).
    assert await redis_client.scard(store.failed_set(pipeline)) == 1200

    # Their tasks were taken off the queue by hand: the keys are in flight until released.
    only = sluiceway(services, database_url, pipeline, "failed", "retry", "--reason", "404")
    assert "re-enqueued 0 failed keys" in only.stdout
    assert "already in flight 1;" in only.stdout
    await store.InFlight(redis_client, pipeline).release(keys)
    only = sluiceway(services, database_url, pipeline, "failed", "retry", "--reason", "404")
    assert "re-enqueued 1 failed keys" in only.stdout
    (task,) = await drain(amqp_connection, topology.Queues(pipeline).fetch)
    assert codec.decode_task(task.body) == "k1"

    cleared = sluiceway(services, database_url, pipeline, "failed", "clear")
    assert "cleared 1,200" in cleared.stdout
    assert await redis_client.exists(store.failed_set(pipeline)) == 0


async def _watch(
    services: ServiceUrls, database_url: str, pipeline: str, *args: str, stderr: int | None = None
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sluiceway_common", "status", "--watch", "--interval", "0.2", *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr,
        env={
            "PATH": "/usr/bin:/bin",
            "SLUICEWAY_DATABASE_URL": database_url,
            "SLUICEWAY_AMQP_URL": services.amqp,
            "SLUICEWAY_REDIS_URL": services.redis,
            "SLUICEWAY_PIPELINE": pipeline,
        },
    )  # fmt: skip


async def test_status_watch_rides_out_each_service_going_away(
    services: ServiceUrls, database_url: str, pipeline: str
) -> None:
    """PostgreSQL, then RabbitMQ, then Redis is cut off from a running ``status --watch`` for a
    second: it says it cannot read the status, and its readings come back once the service
    does (before, a closed PostgreSQL connection was never reopened, and a reconnecting broker
    connection stopped the watch with a RuntimeError)."""
    proxies = {
        "PostgreSQL": await TcpProxy(database_url).start(),
        "RabbitMQ": await TcpProxy(services.amqp).start(),
        "Redis": await TcpProxy(services.redis).start(),
    }
    through = ServiceUrls(services.database, proxies["RabbitMQ"].url, proxies["Redis"].url)
    watching = await _watch(
        through, proxies["PostgreSQL"].url, pipeline, "--json", stderr=asyncio.subprocess.PIPE
    )
    assert watching.stdout is not None
    assert watching.stderr is not None
    readings: list[float] = []  # the "at" of each document
    complaints: list[str] = []

    async def follow(stream: asyncio.StreamReader, lines: list[str]) -> None:
        while line := await stream.readline():
            lines.append(line.decode())

    docs: list[str] = []
    followers = [
        asyncio.create_task(follow(watching.stdout, docs)),
        asyncio.create_task(follow(watching.stderr, complaints)),
    ]

    async def reading_after(moment: float) -> bool:
        assert watching.returncode is None, "".join(complaints)
        readings.extend(json.loads(doc)["at"] for doc in docs[len(readings) :])
        return bool(readings) and readings[-1] > moment

    try:
        await eventually(lambda: reading_after(0), what="a first reading")
        for name, proxy in proxies.items():
            said = len(complaints)
            await proxy.cut()

            async def complained(said: int = said) -> bool:
                assert watching.returncode is None, "".join(complaints)
                return any("cannot read the status" in line for line in complaints[said:])

            await eventually(complained, what=f"a failed reading without {name}")
            await asyncio.sleep(1)
            await proxy.restore()
            back = time.time()
            await eventually(partial(reading_after, back), what=f"a reading with {name} back")
    finally:
        watching.terminate()
        await watching.wait()
        for task in followers:
            task.cancel()
        for proxy in proxies.values():
            await proxy.close()
    assert all("Traceback" not in line for line in complaints), "".join(complaints)


async def test_status_watch_json_follows_a_real_pipeline(
    services: ServiceUrls,
    database_url: str,
    pipeline: str,
    amqp_connection: AbstractConnection,
) -> None:
    queues = topology.Queues(pipeline)
    at = datetime(2026, 11, 1, tzinfo=UTC)
    await publish(
        amqp_connection, pipeline, queues.records,
        [record(f"k{i}", b"{}", at) for i in range(50)] + [b"garbage"],
    )  # fmt: skip
    watching = await _watch(services, database_url, pipeline, "--json")
    assert watching.stdout is not None
    try:
        first = json.loads(await asyncio.wait_for(watching.stdout.readline(), 30))
        assert first["depth_source"].startswith("passive declare")
        assert (first["writers"], first["dead"], first["rows"]) == (0, 0, 0)
        assert {q["name"]: q["ready"] for q in first["queues"]}[queues.records] == 51
        assert "rates" not in first
        async with running_writer(
            database_url, services.amqp, pipeline, batch_size=10, batch_timeout=0.1
        ):
            while True:
                doc = json.loads(await asyncio.wait_for(watching.stdout.readline(), 30))
                if doc["rows"] == 50 and doc["dead"] == 1 and doc["writers"] == 1:
                    break
        assert doc["rates"]["write"] > 0
        assert doc["rates"]["records_drain"] > 0
        assert doc["eta_seconds"] == 0  # nothing left to drain
        assert doc["at"] > first["at"]
    finally:
        watching.terminate()
        await watching.wait()


async def test_status_watch_prints_plain_views_when_not_on_a_terminal(
    services: ServiceUrls, database_url: str, pipeline: str
) -> None:
    watching = await _watch(services, database_url, pipeline)
    assert watching.stdout is not None
    try:
        text = ""
        while text.count(f"pipeline {pipeline}") < 2:
            text += (await asyncio.wait_for(watching.stdout.readline(), 30)).decode()
    finally:
        watching.terminate()
        await watching.wait()
    assert "\x1b" not in text
    assert "ETA to drain" in text
    assert "(depths: passive declare" in text


async def test_the_demo_check_finds_a_row_that_differs_from_what_the_api_served(
    services: ServiceUrls, database_url: str, pipeline: str, db: Any, tmp_path: Path,
    redis_client: aioredis.Redis,
) -> None:  # fmt: skip
    # The demo's last step: the table and the failed set against the sample API's answers.
    answers: dict[str, Any] = {"a": {"n": 1}, "b": {"n": 2}, "gone": None}
    await db.executemany(
        "INSERT INTO records (pipeline, key, payload, fetched_at) VALUES ($1, $2, $3, now())",
        [(pipeline, "a", '{"n": 1}'), (pipeline, "b", '{"n": 2}')],
    )
    await store.FailedSet(redis_client, pipeline).add("gone", {"reason": "HTTP 404"})
    config = DemoSettings.from_args(None, {
        "SLUICEWAY_DATABASE_URL": database_url, "SLUICEWAY_AMQP_URL": services.amqp,
        "SLUICEWAY_REDIS_URL": services.redis, "SLUICEWAY_PIPELINE": pipeline,
        "SLUICEWAY_DEMO_LOG_DIR": str(tmp_path)})  # fmt: skip
    demo = Demo(config)
    assert await demo.verify(answers) == (2, 1)
    with pytest.raises(DemoFailed, match=r"1 rows differ from what the API served, e\.g\. \['b'\]"):
        await demo.verify({**answers, "b": {"n": 3}})
    with pytest.raises(DemoFailed, match=r"1 rows missing, e\.g\. \['c'\]"):
        await demo.verify({**answers, "c": {"n": 4}})
    with pytest.raises(DemoFailed, match=r"the failed set holds 1 keys, not the 2 answered 404"):
        await demo.verify({**answers, "also-gone": None})
