"""What every fault scenario shares: a controllable upstream, the pipeline as real processes,
and the one checker that ends each scenario by reading the table row by row.

A scenario pushes a known set of keys through the whole pipeline, injects its fault, waits
until every key has landed or failed, then calls :func:`check_table`: every key that should
land is in ``records`` (or the scenario's sink table, :class:`SinkTable`) once with the
upstream's payload, every failing key is in the failed set with its reason, nothing else is
anywhere (no dead letter, no buffered row left over).
Each check is appended to ``.run/faults.jsonl``, from which the README's table is made.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import asyncpg
import redis.asyncio as aioredis
from aio_pika.abc import AbstractConnection
from aiohttp import web

from sluiceway_common import codec, store, topology
from sluiceway_common.amqp import publishing_channel
from sluiceway_common.publisher import ConfirmedPublisher
from sluiceway_sample_api.data import is_missing, user
from tests.e2e.conftest import Processes
from tests.integration.helpers import (
    depth,
    eventually,
    failed_infos,
    failed_keys,
    http_server,
)

REPORT = Path(__file__).resolve().parents[2] / ".run" / "faults.jsonl"
NOT_FOUND_RATE = 0.03


class Upstream:
    """Serves the sample API's users (``user(key)``, 404 for :func:`is_missing` keys) and
    misbehaves on demand: ``mode`` "ok", "503" (all 503), "429" (429 with ``Retry-After``),
    "hang" (the answer never comes). Notes each request's arrival on its own clock."""

    def __init__(self, latency: float = 0.0, retry_after: int = 2) -> None:
        self.mode = "ok"
        self.latency = latency
        self.retry_after = retry_after
        self.in_flight = 0
        self.arrivals: list[tuple[float, str, int]] = []  # (time, key, status; 0: never)
        self.attempts: Counter[str] = Counter()
        self.hang_keys: set[str] = set()  # these hang whatever the mode
        self._released = asyncio.Event()

    def set_mode(self, mode: str) -> None:
        self.mode = mode
        if mode == "hang":
            self._released.clear()
        else:
            self._released.set()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        key = unquote(request.raw_path.split("?", 1)[0].removeprefix("/users/"))
        self.attempts[key] += 1
        self.in_flight += 1
        arrived = time.monotonic()
        try:
            if self.latency:
                await asyncio.sleep(self.latency)
            mode = self.mode
            if key in self.hang_keys:
                self.arrivals.append((arrived, key, 0))
                await asyncio.sleep(3600)
            if mode == "hang":
                self.arrivals.append((arrived, key, 0))
                await self._released.wait()
                await asyncio.sleep(3600)  # the client gave up long ago
            status = {"503": 503, "429": 429}.get(
                mode, 404 if is_missing(key, NOT_FOUND_RATE) else 200
            )
            self.arrivals.append((arrived, key, status))
            if status == 200:
                return web.json_response(user(key))
            headers = {"Retry-After": str(self.retry_after)} if status == 429 else {}
            return web.json_response({"error": mode}, status=status, headers=headers)
        finally:
            self.in_flight -= 1

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        """Serve on a free port; yield the source URL template."""
        app = web.Application()
        app.router.add_get("/users/{tail:.*}", self.handle)
        async with http_server(app) as base:
            yield base + "/users/{key}"


def sample_keys(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{i:05d}" for i in range(n)]


def expected(keys: Iterable[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """What the upstream's answers make of ``keys``: payloads to land, reasons to fail."""
    landing, failing = {}, {}
    for key in keys:
        if is_missing(key, NOT_FOUND_RATE):
            failing[key] = "HTTP 404"
        else:
            landing[key] = user(key)
    return landing, failing


class Pipeline:
    """The real processes of one test's pipeline, started the way a user starts them."""

    def __init__(self, processes: Processes, source: str) -> None:
        self.processes = processes
        self.source = source
        self.counts: Counter[str] = Counter()

    def _name(self, role: str) -> str:
        self.counts[role] += 1
        return f"{role}-{self.counts[role]}"

    def writer(self, **env: str) -> subprocess.Popen[bytes]:
        settings = {"SLUICEWAY_BATCH_SIZE": "100", "SLUICEWAY_BATCH_TIMEOUT": "0.2", **env}
        # stdout named: no setting is taken for it (mypy's concern with **settings).
        return self.processes.start(self._name("writer"), "writer", stdout=None, **settings)

    def fetcher(self, **env: str) -> subprocess.Popen[bytes]:
        settings = {
            "SLUICEWAY_SOURCE_URL": self.source,
            "SLUICEWAY_RATE_LIMIT": "2000",
            "SLUICEWAY_MAX_ATTEMPTS": "8",
            "SLUICEWAY_REQUEST_TIMEOUT": "5",
            **env,
        }
        return self.processes.start(self._name("fetcher"), "fetcher", stdout=None, **settings)

    def logs(self, role: str) -> str:
        return "\n".join(self.processes.log(f"{role}-{i}") for i in range(1, self.counts[role] + 1))


def kill(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)


async def enqueue(amqp: AbstractConnection, pipeline: str, keys: list[str]) -> None:
    """Queue a fetch task per key, all at once as `sluiceway enqueue` does (confirms in flight,
    not one awaited at a time: scenarios time their faults against the keys being queued)."""
    queues = topology.Queues(pipeline)
    channel = await publishing_channel(amqp)
    try:
        await topology.declare(channel, queues)
        publisher = ConfirmedPublisher(channel, queues.fetch)
        for key in keys:
            await publisher.publish(codec.encode_task(key))
        await publisher.drain()
    finally:
        await channel.close()


@dataclass(frozen=True)
class SinkTable:
    """A typed sink table of the user's own for a scenario (``SLUICEWAY_SINK_*``), in a
    schema of its own whose name needs quotes: the upstream's user in typed columns, its
    whole payload in ``raw``, newest fetch winning by ``seen_at``."""

    schema: str  # unquoted

    @property
    def name(self) -> str:
        return '"' + self.schema.replace('"', '""') + '".users'

    async def create(self, db: asyncpg.Connection) -> None:
        await db.execute(f'CREATE SCHEMA "{self.schema}"')
        await db.execute(
            f"CREATE TABLE {self.name} (key text PRIMARY KEY, name text NOT NULL, age integer,"
            " score numeric, active boolean, city text, tags jsonb, raw jsonb NOT NULL,"
            " seen_at timestamptz NOT NULL)"
        )

    async def drop(self, db: asyncpg.Connection) -> None:
        await db.execute(f'DROP SCHEMA "{self.schema}" CASCADE')

    def settings(self) -> dict[str, str]:
        columns = {
            "name": "/payload/name", "age": "/payload/age", "score": "/payload/score",
            "active": "/payload/active", "city": "/payload/address/city",
            "tags": "/payload/tags", "raw": "/payload", "seen_at": "/fetched_at",
        }  # fmt: skip
        return {
            "SLUICEWAY_SINK_TABLE": self.name,
            "SLUICEWAY_SINK_COLUMNS": json.dumps(columns),
            "SLUICEWAY_SINK_VERSION": "seen_at",
        }

    async def rows(self, db: asyncpg.Connection) -> list[tuple[str, Any]]:
        """Each row's key and payload; a typed column that differs from the payload's value
        makes the payload ``None`` (a wrong row)."""
        found = []
        for row in await db.fetch(f"SELECT * FROM {self.name}"):
            payload = json.loads(row["raw"])
            typed = (row["name"], row["age"], float(row["score"]), row["active"], row["city"],
                     json.loads(row["tags"]))  # fmt: skip
            wanted = (payload["name"], payload["age"], payload["score"], payload["active"],
                      payload["address"]["city"], payload["tags"])  # fmt: skip
            found.append((row["key"], payload if typed == wanted else None))
        return found


async def landed_rows(
    db: asyncpg.Connection, pipeline: str, sink: SinkTable | None = None
) -> list[tuple[str, Any]]:
    """The pipeline's landed rows as (key, payload): in ``records``, or in ``sink``."""
    if sink is not None:
        return await sink.rows(db)
    found = await db.fetch("SELECT key, payload FROM records WHERE pipeline = $1", pipeline)
    return [(row["key"], json.loads(row["payload"])) for row in found]


async def count_rows(db: asyncpg.Connection, pipeline: str, sink: SinkTable | None = None) -> int:
    if sink is not None:
        counted: int = await db.fetchval(f"SELECT count(*) FROM {sink.name}")
        return counted
    n: int = await db.fetchval("SELECT count(*) FROM records WHERE pipeline = $1", pipeline)
    return n


async def rows_grow(db: asyncpg.Connection, pipeline: str, what: str) -> None:
    """Wait until ``records`` holds more of the pipeline's rows than now: it is streaming."""
    floor = await count_rows(db, pipeline)

    async def grown() -> bool:
        return await count_rows(db, pipeline) > floor

    await eventually(grown, within=60, what=what)


async def settled(
    db: asyncpg.Connection,
    redis: aioredis.Redis,
    amqp: AbstractConnection,
    pipeline: str,
    total: int,
    within: float = 120,
    alive: Iterable[subprocess.Popen[bytes]] = (),
    sink: SinkTable | None = None,
) -> None:
    """Wait until ``total`` keys have landed in ``records`` (or ``sink``) or failed, and
    nothing waits on the records queue or in the buffer; fail early if one of ``alive``
    died."""
    queues = topology.Queues(pipeline)
    watched = list(alive)

    async def done() -> bool:
        for process in watched:
            assert process.poll() is None, f"a process exited with {process.returncode}"
        rows = await count_rows(db, pipeline, sink)
        failed = int(await redis.scard(store.failed_set(pipeline)))
        if rows + failed < total:
            return False
        buffered = await db.fetchval(
            "SELECT count(*) FROM records_buffer WHERE pipeline = $1", pipeline
        )
        return buffered == 0 and await depth(amqp, queues.records) == 0

    await eventually(done, within=within, what=f"{total} keys landed or failed")


@dataclass
class Check:
    """One scenario run's verdict on the table, row by row."""

    scenario: str
    rows_checked: int = 0
    failed_checked: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dead_letters: int = 0
    note: str = ""

    def assert_exact(self) -> None:
        problems = {
            "lost": self.lost, "duplicated": self.duplicated, "wrong payload": self.wrong,
            "unexpected": self.unexpected,
        }  # fmt: skip
        shown = {k: v[:10] for k, v in problems.items() if v}
        if shown or self.dead_letters:
            raise AssertionError(f"{self.scenario}: {shown}, {self.dead_letters} dead letters")


async def check_table(
    scenario: str,
    db: asyncpg.Connection,
    redis: aioredis.Redis,
    amqp: AbstractConnection,
    pipeline: str,
    landing: Mapping[str, Any],
    failing: Mapping[str, str],
    note: str = "",
    sink: SinkTable | None = None,
) -> Check:
    """Check ``records`` (or ``sink``), the failed set, the buffer and the dead-letter queue
    against what should be there: ``landing`` maps each key to the upstream's payload,
    ``failing`` each failing key to a text its recorded reason must contain. Records the
    result in the report and asserts that nothing was lost, duplicated, wrong or
    unexpected."""
    check = Check(scenario, note=note)
    rows: Counter[str] = Counter()
    for key, payload in await landed_rows(db, pipeline, sink):
        rows[key] += 1
        check.rows_checked += 1
        if key not in landing:
            check.unexpected.append(key)
        elif payload != landing[key]:
            check.wrong.append(key)
    buffered = await db.fetch("SELECT key FROM records_buffer WHERE pipeline = $1", pipeline)
    info = await failed_infos(redis, pipeline)
    failed = await failed_keys(redis, pipeline)
    for key in failed:
        check.failed_checked += 1
        if key not in failing:
            check.unexpected.append(key)
        elif failing[key] not in info.get(key, {}).get("reason", ""):
            check.wrong.append(key)
    for key in landing:
        if key not in rows:
            check.lost.append(key)
    for key in failing:
        if key not in failed:
            check.lost.append(key)
    # A key is in one place, once: a row, or a failed key; never also left in the buffer.
    places = rows + Counter(failed) + Counter(r["key"] for r in buffered)
    check.duplicated = sorted(k for k, n in places.items() if n > 1)
    check.dead_letters = await depth(amqp, topology.Queues(pipeline).dead)
    record_check(check)
    check.assert_exact()
    return check


def record_check(check: Check) -> None:
    """Append ``check`` to the report the README table is made from."""
    REPORT.parent.mkdir(exist_ok=True)
    line = {
        **asdict(check),
        **{k: len(v) for k, v in asdict(check).items() if isinstance(v, list)},
        "at": time.time(),
        "suite": os.environ.get("SLUICEWAY_FAULTS_SUITE", "test"),
    }
    with REPORT.open("a") as out:
        out.write(json.dumps(line) + "\n")
