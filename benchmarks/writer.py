"""Benchmark: landing records from a pre-filled RabbitMQ queue in PostgreSQL.

Every contender drains the same N records (about 400 bytes each, every key unique) into a
database of its own, freshly created and migrated, from queues of its own declared exactly as
sluiceway declares them. A round runs every contender once; rounds alternate the contenders
(rotating their order) so that all of them see the same machine, and the report gives medians.
The clock runs from the consumer's spawn to the moment the last row is visible as committed;
the consumer's start-up (spawn to its "consuming" line) is reported on its own as well.

Contenders, each a process of its own:

- ``sluiceway writer``, batches of 1000 or 0.2 s, one record a message;
- the same writer on *packed* messages, 50 records a message (a JSON array), which the
  writer may not accept yet: it is then reported as "not supported yet";
- a minimal reference consumer defined here (``--run-reference``): aio-pika, COPY into a
  temporary table and one upsert a batch, one ``ack(multiple=True)`` a batch;
- a naive consumer (``--run-naive``): one upsert and one ack a message, the floor; it gets
  fewer records when the full count would take more than about a minute;
- Celery with celery-batches (``benchmarks/celery_app.py``), solo and prefork pools, fed one
  task a record with ``apply_async`` before the worker starts.

Also measured: the writer's peak RSS while it drains a large backlog, and the latency of each
record at a trickle of 10 a second against ``BATCH_TIMEOUT``.

Run with ``make bench``; ``--records 20000 --rounds 1 --skip-memory --quick`` is a short run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import aio_pika.exceptions
import aiormq.exceptions
import asyncpg
import orjson
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from sluiceway_common import codec, topology
from sluiceway_common.publisher import ConfirmedPublisher

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "writer"
DEFAULT_DATABASE_URL = "postgresql://sluiceway:sluiceway@127.0.0.1:5432/sluiceway"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"

BATCH_SIZE = 1000
BATCH_TIMEOUT = 0.2
PREFETCH = 2 * BATCH_SIZE  # what the sluiceway writer takes for this batch size
PACKED = 50  # records in one packed message
PUBLISH_WINDOW = 1000  # unconfirmed messages in flight while pre-filling
RECORD_BYTES = 400
POLL = 0.05
RSS_EVERY = 0.1
# The row count scans the table: between polls of a busy drain it is asked once a second
# and every POLL only once the queue shows nothing ready, so the watching does not slow
# what it watches.
COUNT_EVERY = 1.0
STALL = 30.0  # seconds without any progress before a contender is given up
DEAD_GRACE = 2.0  # seconds to let dead-lettering settle before calling packed unsupported
BROKER_ERRORS = (aio_pika.exceptions.AMQPError, aiormq.exceptions.AMQPError, ConnectionError)

WRITER_READY = "to PostgreSQL (schema"
REFERENCE_READY = "reference consumer ready"
NAIVE_READY = "naive consumer ready"
CELERY_READY = "ready."

STAGE = "bench_stage"
STAGE_DDL = f"""
CREATE TEMPORARY TABLE {STAGE} (
    key text NOT NULL, payload jsonb NOT NULL, fetched_at timestamptz NOT NULL
) ON COMMIT DELETE ROWS
"""
STAGE_COLUMNS = ("key", "payload", "fetched_at")
BATCH_UPSERT = f"""
INSERT INTO records (pipeline, key, payload, fetched_at)
SELECT DISTINCT ON (key) $1, key, payload, fetched_at FROM {STAGE} ORDER BY key, fetched_at DESC
ON CONFLICT (pipeline, key) DO UPDATE
    SET payload = EXCLUDED.payload, fetched_at = EXCLUDED.fetched_at, written_at = now()
    WHERE records.fetched_at < EXCLUDED.fetched_at
"""
ONE_UPSERT = """
INSERT INTO records (pipeline, key, payload, fetched_at) VALUES ($1, $2, $3, $4)
ON CONFLICT (pipeline, key) DO UPDATE
    SET payload = EXCLUDED.payload, fetched_at = EXCLUDED.fetched_at, written_at = now()
    WHERE records.fetched_at < EXCLUDED.fetched_at
"""
COUNT = "SELECT count(*) FROM records WHERE pipeline = $1"


class ContenderFailed(Exception):
    """A contender died, stalled or ran out of time; the message says which and why."""


# ---------------------------------------------------------------------------------------------
# The records


def record_key(i: int) -> str:
    return f"bench-{i:09d}"


def payload_doc(i: int, small: bool = False) -> dict[str, Any]:
    """The upstream JSON of record ``i``: small, or padded so the record is ~400 bytes."""
    if small:
        return {"id": i}
    doc: dict[str, Any] = {
        "id": i,
        "name": f"User {i:09d}",
        "email": f"user-{i:09d}@example.com",
        "active": i % 3 != 0,
        "score": i % 100_000,
        "tags": ["alpha", "beta", "gamma"],
        "bio": "",
    }
    bare = len(codec.encode_record(record_key(i), orjson.dumps(doc), fetched_at()))
    doc["bio"] = ("lorem ipsum dolor sit amet " * 20)[: max(0, RECORD_BYTES - bare)]
    return doc


_FETCHED_AT = datetime.now(UTC)


def fetched_at() -> datetime:
    return _FETCHED_AT


def record_bodies(count: int, small: bool = False) -> Iterator[bytes]:
    for i in range(count):
        doc = orjson.dumps(payload_doc(i, small))
        yield codec.encode_record(record_key(i), doc, fetched_at())


def packed_bodies(count: int) -> Iterator[bytes]:
    """``count`` records, ``PACKED`` to a message body (a JSON array of record objects)."""
    bodies = record_bodies(count)
    while chunk := [body for _, body in zip(range(PACKED), bodies, strict=False)]:
        yield b"[" + b",".join(chunk) + b"]"


# ---------------------------------------------------------------------------------------------
# Databases, queues and processes, each made for one run and removed after it


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


@contextlib.asynccontextmanager
async def fresh_database(admin_url: str) -> AsyncIterator[str]:
    """A new database migrated to head by ``sluiceway migrate``; dropped on the way out."""
    name = f"sluiceway_bench_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = with_database(admin_url, name)
    try:
        env = os.environ | {"SLUICEWAY_DATABASE_URL": url, "SLUICEWAY_LOG_LEVEL": "WARNING"}
        migrate = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sluiceway_common", "migrate",
            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            output, _ = await asyncio.wait_for(migrate.communicate(), 120)
        except TimeoutError:
            migrate.kill()
            await migrate.wait()
            raise ContenderFailed("sluiceway migrate took over 120 s") from None
        if migrate.returncode != 0:
            raise ContenderFailed(f"sluiceway migrate failed: {output.decode()[-500:]}")
        yield url
    finally:
        admin = await asyncpg.connect(admin_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@contextlib.asynccontextmanager
async def pipeline_queues(channel: AbstractChannel) -> AsyncIterator[topology.Queues]:
    """A new pipeline's queues, declared as sluiceway declares them; deleted on the way out."""
    queues = topology.Queues(f"bench-{secrets.token_hex(6)}")
    await topology.declare(channel, queues)
    try:
        yield queues
    finally:
        for name in queues.all():
            await channel.queue_delete(name)


async def depth(channel: AbstractChannel, queue: str) -> int:
    """Messages ready in ``queue`` (those delivered and not yet acked are not counted)."""
    declared = await channel.declare_queue(queue, passive=True)
    result = declared.declaration_result
    return int(result.message_count or 0)


async def prefill(
    connection: AbstractConnection,
    queue: str,
    bodies: Iterator[bytes],
    content_encoding: str | None = None,
) -> float:
    """Publish ``bodies`` to ``queue`` with confirms kept in flight; return messages a second.
    ``content_encoding`` marks them compressed (``zstd``), as the fetcher marks its packs."""
    channel = await connection.channel(publisher_confirms=True)
    try:
        properties = topology.persistent(b"", content_encoding=content_encoding).properties
        publisher = ConfirmedPublisher(channel, queue, properties=properties, window=PUBLISH_WINDOW)
        started = time.perf_counter()
        for body in bodies:
            await publisher.publish(body)
        await publisher.drain()
        return publisher.confirmed / (time.perf_counter() - started)
    finally:
        await channel.close()


def usage(pid: int) -> tuple[int, float]:
    """Resident KiB and CPU seconds of ``pid`` and its direct children (a prefork pool)."""
    rss, ticks = 0, 0
    pids = [pid]
    with contextlib.suppress(OSError):
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for one in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{one}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
            # utime and stime, the 14th and 15th fields; the command name may hold spaces.
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return rss, ticks / os.sysconf("SC_CLK_TCK")


class Child:
    """A contender's process, in a process group of its own, its output in a log file."""

    def __init__(
        self, name: str, argv: Sequence[str], env: dict[str, str], ready: str, logs: Path
    ) -> None:
        self.name = name
        self.log_path = logs / f"{name}-{secrets.token_hex(3)}.log"
        self._log = self.log_path.open("wb")
        self._ready = ready.encode()
        self._scanned = 0
        self.ready_at: float | None = None
        self.max_rss_kib = 0
        self.cpu_seconds = 0.0
        self.spawned = time.perf_counter()
        self.proc = subprocess.Popen(
            argv, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *_: object) -> None:
        self.kill()

    def check_ready(self) -> None:
        if self.ready_at is not None:
            return
        now = time.perf_counter()
        with self.log_path.open("rb") as log:
            log.seek(max(0, self._scanned - len(self._ready)))
            text = log.read()
        self._scanned += len(text)
        if self._ready in text:
            self.ready_at = now

    def sample(self) -> None:
        rss, cpu = usage(self.proc.pid)
        self.max_rss_kib = max(self.max_rss_kib, rss)
        self.cpu_seconds = max(self.cpu_seconds, cpu)

    def tail(self, lines: int = 12) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    async def wait_ready(self, limit: float) -> None:
        deadline = time.perf_counter() + limit
        while self.ready_at is None:
            self.check_ready()
            if self.proc.poll() is not None:
                raise ContenderFailed(f"{self.name} exited with {self.proc.returncode}")
            if time.perf_counter() > deadline:
                raise ContenderFailed(f"{self.name} not ready after {limit:.0f} s")
            await asyncio.sleep(POLL)

    async def stop(self, limit: float = 30.0) -> int | None:
        """SIGTERM, then the exit status; ``None`` (and SIGKILL) when it outlives ``limit``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(self.proc.wait, limit)
        code = self.proc.poll()
        self.kill()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()


# ---------------------------------------------------------------------------------------------
# Watching a drain


@dataclass
class Drain:
    rows: int
    seconds: float | None  # spawn to the last row committed; None when it did not finish
    startup: float | None
    max_rss_mib: float
    cpu_seconds: float  # the consumer's, start-up included
    dead: int = 0


async def watch_drain(
    db: asyncpg.Connection,
    channel: AbstractChannel,
    child: Child,
    pipeline: str,
    rows: int,
    queue: str,
    limit: float,
    dead_queue: str | None = None,
    messages: int = 0,
) -> Drain:
    """Poll until ``rows`` rows of ``pipeline`` are committed, sampling the child's RSS.

    With ``dead_queue``, a drain whose messages are being dead-lettered ends once the dead
    queue holds them all or stops growing, and is returned with ``seconds=None``.
    """
    deadline = child.spawned + limit
    next_count = next_rss = 0.0
    landed = dead = 0
    last_state: tuple[int, int, int] | None = None
    last_change = time.perf_counter()

    def result(seconds: float | None) -> Drain:
        return Drain(
            rows=landed,
            seconds=seconds,
            startup=None if child.ready_at is None else child.ready_at - child.spawned,
            max_rss_mib=child.max_rss_kib / 1024,
            cpu_seconds=child.cpu_seconds,
            dead=dead,
        )

    while True:
        now = time.perf_counter()
        if now >= next_rss:
            child.sample()
            next_rss = now + RSS_EVERY
        child.check_ready()
        ready = await depth(channel, queue)
        if dead_queue is not None:
            dead = await depth(channel, dead_queue)
        if ready == 0 or now >= next_count:
            # The snapshot of the count is taken when the query starts: a row it sees was
            # committed before this stamp.
            stamp = time.perf_counter()
            landed = await db.fetchval(COUNT, pipeline)
            next_count = stamp + COUNT_EVERY
            if landed >= rows:
                child.sample()
                return result(stamp - child.spawned)
        state = (ready, landed, dead)
        if state != last_state:
            last_state, last_change = state, now
        if dead and (dead >= messages or now - last_change > DEAD_GRACE):
            return result(None)
        if child.proc.poll() is not None:
            raise ContenderFailed(
                f"{child.name} exited with {child.proc.returncode} after {landed} rows:\n"
                + child.tail()
            )
        if now - last_change > STALL:
            raise ContenderFailed(
                f"{child.name} made no progress for {STALL:.0f} s at {landed} rows"
            )
        if now > deadline:
            raise ContenderFailed(f"{child.name} timed out after {limit:.0f} s at {landed} rows")
        await asyncio.sleep(POLL)


def drain_timeout(rows: int) -> float:
    """A bound no healthy contender reaches (300 rows a second), never under two minutes."""
    return max(120.0, rows / 300)


# ---------------------------------------------------------------------------------------------
# Contenders


@dataclass(frozen=True)
class Contender:
    name: str
    kind: str  # writer, packed, reference, naive, celery-solo, celery-prefork
    batch: str


CONTENDERS = (
    Contender("sluiceway writer", "writer", f"{BATCH_SIZE} / {BATCH_TIMEOUT:g} s"),
    Contender(
        f"sluiceway writer, packed x{PACKED}", "packed", f"{BATCH_SIZE} / {BATCH_TIMEOUT:g} s"
    ),
    Contender("reference (aio-pika + COPY)", "reference", f"{BATCH_SIZE} / {BATCH_TIMEOUT:g} s"),
    Contender("naive (upsert + ack each)", "naive", "1"),
    Contender(
        "Celery + celery-batches, solo", "celery-solo", f"{BATCH_SIZE} / {BATCH_TIMEOUT:g} s"
    ),
    Contender(
        "Celery + celery-batches, prefork x2",
        "celery-prefork",
        f"{BATCH_SIZE} / {BATCH_TIMEOUT:g} s",
    ),
)


@dataclass
class Run:
    """One contender's round."""

    contender: str
    round: int
    status: str  # ok, not supported yet, failed
    rows: int = 0
    seconds: float | None = None
    startup: float | None = None
    rows_per_s: float | None = None
    steady_rows_per_s: float | None = None  # rows over the time after the start-up
    publish_per_s: float | None = None
    max_rss_mib: float | None = None
    cpu_us_per_row: float | None = None
    exit_code: int | None = None
    note: str = ""


@dataclass
class Bench:
    admin_url: str
    amqp_url: str
    connection: AbstractConnection
    channel: AbstractChannel
    logs: Path
    celery_ran: bool = False
    failures: list[str] = field(default_factory=list)


def service_env(database_url: str, amqp_url: str, pipeline: str) -> dict[str, str]:
    return os.environ | {
        "SLUICEWAY_DATABASE_URL": database_url,
        "SLUICEWAY_AMQP_URL": amqp_url,
        "SLUICEWAY_PIPELINE": pipeline,
        "SLUICEWAY_BATCH_SIZE": str(BATCH_SIZE),
        "SLUICEWAY_BATCH_TIMEOUT": str(BATCH_TIMEOUT),
        "SLUICEWAY_LOG_LEVEL": "INFO",
    }


def consumer_argv(kind: str) -> tuple[list[str], str]:
    """The command line of an AMQP contender and the line it prints once consuming."""
    if kind in ("writer", "packed"):
        return [sys.executable, "-m", "sluiceway_common", "writer"], WRITER_READY
    if kind == "reference":
        return [sys.executable, __file__, "--run-reference"], REFERENCE_READY
    return [sys.executable, __file__, "--run-naive"], NAIVE_READY


def finished(run: Run, drain: Drain, exit_code: int | None) -> Run:
    run.rows, run.startup, run.max_rss_mib = drain.rows, drain.startup, drain.max_rss_mib
    if drain.rows:
        run.cpu_us_per_row = drain.cpu_seconds * 1e6 / drain.rows
    run.exit_code = exit_code
    if drain.seconds is not None:
        run.seconds = drain.seconds
        run.rows_per_s = drain.rows / drain.seconds
        if drain.startup is not None and drain.seconds > drain.startup:
            run.steady_rows_per_s = drain.rows / (drain.seconds - drain.startup)
    if exit_code != 0 and run.status == "ok":
        run.status = "failed"
        run.note = f"exit status {exit_code} after SIGTERM (0 expected)"
    return run


async def run_amqp(bench: Bench, contender: Contender, rows: int, round_no: int) -> Run:
    """The writer, packed or not, the reference or the naive consumer, on a pre-filled queue."""
    run = Run(contender.name, round_no, "ok")
    packed = contender.kind == "packed"
    async with contextlib.AsyncExitStack() as stack:
        database = await stack.enter_async_context(fresh_database(bench.admin_url))
        queues = await stack.enter_async_context(pipeline_queues(bench.channel))
        bodies = packed_bodies(rows) if packed else record_bodies(rows)
        run.publish_per_s = await prefill(bench.connection, queues.records, bodies)
        db = await asyncpg.connect(database)
        stack.push_async_callback(db.close)
        argv, ready = consumer_argv(contender.kind)
        env = service_env(database, bench.amqp_url, queues.pipeline)
        child = stack.enter_context(Child(contender.kind, argv, env, ready, bench.logs))
        drain = await watch_drain(
            db, bench.channel, child, queues.pipeline, rows, queues.records,
            limit=min(drain_timeout(rows), 180.0) if packed else drain_timeout(rows),
            dead_queue=queues.dead if packed else None,
            messages=-(-rows // PACKED),
        )  # fmt: skip
        exit_code = await child.stop()
        if packed and drain.seconds is None:
            run.status = "not supported yet"
            run.note = (
                f"the writer dead-lettered {drain.dead} of {-(-rows // PACKED)} packed "
                f"messages ({drain.rows} rows landed)"
            )
        return finished(run, drain, exit_code)


async def run_celery(bench: Bench, contender: Contender, rows: int, round_no: int) -> Run:
    """Celery: ``rows`` tasks published, then a worker started on them."""
    run = Run(contender.name, round_no, "ok")
    prefork = contender.kind == "celery-prefork"
    concurrency = 2 if prefork else 1
    queue = f"sluiceway-bench-celery-{secrets.token_hex(6)}"
    bench.celery_ran = True
    async with contextlib.AsyncExitStack() as stack:
        database = await stack.enter_async_context(fresh_database(bench.admin_url))
        pipeline = f"bench-{secrets.token_hex(6)}"
        env = service_env(database, bench.amqp_url, pipeline) | {
            "BENCH_CELERY_QUEUE": queue,
            "BENCH_CELERY_CONCURRENCY": str(concurrency),
            "BENCH_CELERY_PREFETCH": str(PREFETCH),
            "PYTHONPATH": str(ROOT),
        }
        stack.push_async_callback(delete_celery_queue, bench, queue)
        run.publish_per_s = await celery_publish(env, rows)
        # Celery publishes without confirms: the count is whole only once the broker has it.
        deadline = time.perf_counter() + 120
        while (queued := await depth(bench.channel, queue)) < rows:
            if time.perf_counter() > deadline:
                raise ContenderFailed(f"only {queued} of {rows} Celery tasks reached the queue")
            await asyncio.sleep(POLL)
        db = await asyncpg.connect(database)
        stack.push_async_callback(db.close)
        argv = [
            sys.executable, "-m", "celery", "-A", "benchmarks.celery_app", "worker",
            "-P", "prefork" if prefork else "solo", "-c", str(concurrency),
            "-n", f"{queue}@%h", "--loglevel", "INFO",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        child = stack.enter_context(Child(contender.kind, argv, env, CELERY_READY, bench.logs))
        drain = await watch_drain(
            db, bench.channel, child, pipeline, rows, queue, limit=drain_timeout(rows)
        )
        return finished(run, drain, await child.stop())


async def celery_publish(env: dict[str, str], rows: int) -> float:
    """Run ``--run-celery-publish`` in a process of its own; return its tasks a second."""
    publisher = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--run-celery-publish", "--records", str(rows),
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        output, _ = await asyncio.wait_for(publisher.communicate(), drain_timeout(rows))
    except TimeoutError:
        publisher.kill()
        await publisher.wait()
        raise ContenderFailed("publishing the Celery tasks timed out") from None
    lines = output.decode(errors="replace").strip().splitlines()
    if publisher.returncode != 0 or not lines:
        raise ContenderFailed("publishing the Celery tasks failed:\n" + "\n".join(lines[-12:]))
    return float(json.loads(lines[-1])["tasks_per_s"])


async def delete_celery_queue(bench: Bench, queue: str) -> None:
    with contextlib.suppress(*BROKER_ERRORS):
        await bench.channel.queue_delete(queue)
    with contextlib.suppress(*BROKER_ERRORS):
        await bench.channel.exchange_delete(queue)


DELAYED_LEVELS = 28  # kombu's native delayed delivery: one queue and exchange a bit of delay


async def exchange_exists(connection: AbstractConnection, name: str) -> bool:
    channel = await connection.channel()
    try:
        await channel.declare_exchange(name, passive=True)
        return True
    except BROKER_ERRORS:
        return False
    finally:
        with contextlib.suppress(*BROKER_ERRORS):
            await channel.close()


async def delete_celery_topology(connection: AbstractConnection) -> None:
    """Remove the delayed-delivery queues and exchanges a Celery worker on quorum queues makes."""
    channel = await connection.channel()
    try:
        for level in range(DELAYED_LEVELS):
            await channel.queue_delete(f"celery_delayed_{level}")
            await channel.exchange_delete(f"celery_delayed_{level}")
        await channel.exchange_delete("celery_delayed_delivery")
    finally:
        await channel.close()


async def run_one(bench: Bench, contender: Contender, rows: int, round_no: int) -> Run:
    started = time.perf_counter()
    try:
        if contender.kind.startswith("celery"):
            run = await run_celery(bench, contender, rows, round_no)
        else:
            run = await run_amqp(bench, contender, rows, round_no)
    except (ContenderFailed, *BROKER_ERRORS, asyncpg.PostgresError, OSError) as exc:
        run = Run(contender.name, round_no, "failed", note=f"{type(exc).__name__}: {exc}")
    if run.status == "failed":
        bench.failures.append(f"{contender.name}, round {round_no}: {run.note}")
    rate = f"{run.rows_per_s:,.0f} rows/s" if run.rows_per_s else run.status
    print(
        f"  round {round_no} {contender.name:<38} {rate:>16}  "
        f"({time.perf_counter() - started:.0f} s with set-up)",
        flush=True,
    )
    return run


async def naive_rows(bench: Bench, records: int, budget: float) -> tuple[int, str]:
    """How many records the naive consumer gets: what it lands in about ``budget`` seconds."""
    probe = min(records, 2000)
    run = await run_one(bench, CONTENDERS[3], probe, 0)
    rate = run.steady_rows_per_s or run.rows_per_s
    if rate is None:
        return probe, f"probe of {probe} records failed: {run.note}"
    rows = min(records, max(1000, int(rate * budget)))
    return rows, f"probe: {rate:,.0f} rows/s on {probe} records, so {rows:,} records a round"


# ---------------------------------------------------------------------------------------------
# Memory under a backlog, latency at a trickle


async def measure_memory(bench: Bench, records: int) -> dict[str, Any]:
    """The writer's peak RSS while it drains a backlog of ``records`` small records."""
    async with contextlib.AsyncExitStack() as stack:
        database = await stack.enter_async_context(fresh_database(bench.admin_url))
        queues = await stack.enter_async_context(pipeline_queues(bench.channel))
        publish = await prefill(
            bench.connection, queues.records, record_bodies(records, small=True)
        )
        db = await asyncpg.connect(database)
        stack.push_async_callback(db.close)
        argv, ready = consumer_argv("writer")
        env = service_env(database, bench.amqp_url, queues.pipeline)
        child = stack.enter_context(Child("writer-memory", argv, env, ready, bench.logs))
        drain = await watch_drain(
            db, bench.channel, child, queues.pipeline, records, queues.records,
            limit=drain_timeout(records),
        )  # fmt: skip
        exit_code = await child.stop()
    assert drain.seconds is not None
    return {
        "records": records,
        "record_bytes": len(next(record_bodies(1, small=True))),
        "prefill_messages_per_s": round(publish),
        "max_rss_mib": round(drain.max_rss_mib, 1),
        "drain_seconds": round(drain.seconds, 2),
        "rows_per_s": round(records / drain.seconds),
        "exit_code": exit_code,
    }


def percentile(values: Sequence[float], p: float) -> float:
    """The nearest-rank percentile: a value that was measured, not an interpolation."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


async def measure_latency(bench: Bench, rate: float, seconds: float) -> dict[str, Any]:
    """Publish ``rate`` records a second to a running writer; time each until committed."""
    total = int(rate * seconds)
    published: dict[str, float] = {}
    seen: dict[str, tuple[float, float]] = {}  # key: (seen by a poll, written_at)
    async with contextlib.AsyncExitStack() as stack:
        database = await stack.enter_async_context(fresh_database(bench.admin_url))
        queues = await stack.enter_async_context(pipeline_queues(bench.channel))
        db = await asyncpg.connect(database)
        stack.push_async_callback(db.close)
        argv, ready = consumer_argv("writer")
        env = service_env(database, bench.amqp_url, queues.pipeline)
        child = stack.enter_context(Child("writer-latency", argv, env, ready, bench.logs))
        await child.wait_ready(60)
        channel = await bench.connection.channel(publisher_confirms=True)
        stack.push_async_callback(channel.close)
        publisher = ConfirmedPublisher(channel, queues.records, window=PUBLISH_WINDOW)

        async def poll() -> None:
            while len(seen) < total:
                stamp = time.time()
                for key, written_at in await db.fetch(
                    "SELECT key, written_at FROM records WHERE pipeline = $1", queues.pipeline
                ):
                    if key not in seen:
                        seen[key] = (stamp, written_at.timestamp())
                await asyncio.sleep(0.02)

        poller = asyncio.create_task(poll())
        started = time.perf_counter()
        for i in range(total):
            await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
            key = f"trickle-{i:06d}"
            body = codec.encode_record(key, orjson.dumps(payload_doc(i)), datetime.now(UTC))
            published[key] = time.time()
            await publisher.publish(body)
            await publisher.flush()  # each record on its own, when it is due
        await publisher.drain()
        try:
            await asyncio.wait_for(poller, 30)
        except TimeoutError:
            raise ContenderFailed(f"only {len(seen)} of {total} trickled records landed") from None
        exit_code = await child.stop()
    written = [(seen[k][1] - t) * 1000 for k, t in published.items()]
    observed = [(seen[k][0] - t) * 1000 for k, t in published.items()]
    budget = round((BATCH_TIMEOUT + 0.1) * 1000, 1)

    def ms(values: list[float]) -> dict[str, float]:
        return {"p50": round(percentile(values, 50), 1), "p99": round(percentile(values, 99), 1)}

    return {
        "records": total,
        "rate_per_s": rate,
        "batch_timeout_ms": BATCH_TIMEOUT * 1000,
        "budget_ms": budget,
        # written_at is now() of the writer's transaction, i.e. when it began, a little
        # before the commit; the poll sees the row after the commit, within 20 ms.
        "written_at_ms": ms(written),
        "seen_by_poll_ms": ms(observed),
        "within_budget": percentile(observed, 99) <= budget,
        "exit_code": exit_code,
    }


# ---------------------------------------------------------------------------------------------
# The consumers run as processes of their own (--run-reference, --run-naive) and the Celery
# publisher (--run-celery-publish)


def stop_on_sigterm(*events: asyncio.Event) -> None:
    def on_signal() -> None:
        for event in events:
            event.set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)


async def reference_consumer(amqp_url: str, database_url: str, pipeline: str) -> int:
    """Batches of ``BATCH_SIZE`` or ``BATCH_TIMEOUT``: COPY, one upsert, one multiple ack."""
    stop, wake = asyncio.Event(), asyncio.Event()
    stop_on_sigterm(stop, wake)
    db = await asyncpg.connect(database_url)
    connection = await aio_pika.connect(amqp_url)
    try:
        await db.execute(STAGE_DDL)
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=PREFETCH)
        _, queue, _ = await topology.declare(channel, topology.Queues(pipeline))
        held: list[AbstractIncomingMessage] = []
        oldest = 0.0

        async def on_message(message: AbstractIncomingMessage) -> None:
            nonlocal oldest
            if not held:
                oldest = time.monotonic()
                wake.set()
            held.append(message)
            if len(held) >= BATCH_SIZE:
                wake.set()

        await queue.consume(on_message)
        print(REFERENCE_READY, file=sys.stderr, flush=True)
        while not stop.is_set():
            left = None if not held else oldest + BATCH_TIMEOUT - time.monotonic()
            if len(held) < BATCH_SIZE and (left is None or left > 0):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), left)
                wake.clear()
                continue
            batch, held[:] = held[:BATCH_SIZE], held[BATCH_SIZE:]
            if held:
                oldest = time.monotonic()  # they came during the last flush, at the latest
            records = [codec.decode_record(message.body) for message in batch]
            async with db.transaction():
                await db.copy_records_to_table(
                    STAGE,
                    records=[(r.key, r.payload, r.fetched_at) for r in records],
                    columns=STAGE_COLUMNS,
                )
                await db.execute(BATCH_UPSERT, pipeline)
            await batch[-1].ack(multiple=True)
        # What is held unacked goes back to the queue when the connection closes.
    finally:
        await connection.close()
        await db.close()
    return 0


async def naive_consumer(amqp_url: str, database_url: str, pipeline: str) -> int:
    """One upsert (its own transaction) and one ack a message."""
    stop = asyncio.Event()
    stop_on_sigterm(stop)
    db = await asyncpg.connect(database_url)
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=PREFETCH)
        _, queue, _ = await topology.declare(channel, topology.Queues(pipeline))

        async def consume() -> None:
            async with queue.iterator() as messages:
                print(NAIVE_READY, file=sys.stderr, flush=True)
                async for message in messages:
                    r = codec.decode_record(message.body)
                    await db.execute(ONE_UPSERT, pipeline, r.key, r.payload, r.fetched_at)
                    await message.ack()

        consuming = asyncio.create_task(consume())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({consuming, stopping}, return_when=asyncio.FIRST_COMPLETED)
        consuming.cancel()
        stopping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consuming
    finally:
        await connection.close()
        await db.close()
    return 0


def celery_publish_main(records: int) -> int:
    """Publish ``records`` tasks the way a Celery user would, reusing one producer."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.celery_app import app, land

    stamp = fetched_at().isoformat()
    started = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for i in range(records):
            land.apply_async((record_key(i), payload_doc(i), stamp), producer=producer)
    print(json.dumps({"tasks_per_s": records / (time.perf_counter() - started)}))
    return 0


# ---------------------------------------------------------------------------------------------
# The report


def summarize(runs: list[Run], rows_by_kind: dict[str, int]) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for contender in CONTENDERS:
        mine = [r for r in runs if r.contender == contender.name and r.round > 0]
        if not mine:
            continue
        ok = [r for r in mine if r.status == "ok" and r.rows_per_s is not None]

        def median(values: list[float | None]) -> float | None:
            present = [v for v in values if v is not None]
            return statistics.median(present) if present else None

        unsupported = [r for r in mine if r.status == "not supported yet"]
        status = (
            "ok" if len(ok) == len(mine) else ("not supported yet" if unsupported else "failed")
        )
        summary[contender.kind] = {
            "system": contender.name,
            "batch": contender.batch,
            "records": rows_by_kind[contender.kind],
            "status": status,
            "rounds": len(mine),
            "rows_per_s": median([r.rows_per_s for r in ok]),
            "steady_rows_per_s": median([r.steady_rows_per_s for r in ok]),
            "startup_s": median([r.startup for r in ok]),
            "publish_per_s": median([r.publish_per_s for r in mine]),
            "max_rss_mib": max((r.max_rss_mib or 0 for r in ok), default=None),
            "cpu_us_per_row": median([r.cpu_us_per_row for r in ok]),
            "note": next((r.note for r in mine if r.note), ""),
        }
    writer = summary.get("writer", {}).get("rows_per_s")
    for entry in summary.values():
        rate = entry["rows_per_s"]
        entry["vs_writer"] = rate / writer if rate and writer else None
    return summary


def number(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def print_table(summary: dict[str, dict[str, Any]], records: int, rounds: int) -> None:
    print(
        f"\nwriter: {records:,} records of ~{RECORD_BYTES} B from a pre-filled queue, "
        f"medians of {rounds} rounds, spawn to last row committed"
    )
    header = (
        f"  {'system':<38} {'batch':>12} {'records':>9} {'rows/s':>9} {'x writer':>9} "
        f"{'start s':>8} {'steady/s':>9} {'CPU us/row':>10} {'RSS MiB':>8} {'publish/s':>10}"
    )
    print(header)
    print("  " + "-" * (len(header) - 2))
    for entry in summary.values():
        if entry["status"] != "ok":
            rate, ratio = entry["status"], ""
        else:
            rate = number(entry["rows_per_s"], ",.0f")
            ratio = number(entry["vs_writer"], ".2f")
        print(
            f"  {entry['system']:<38} {entry['batch']:>12} {entry['records']:>9,} {rate:>9} "
            f"{ratio:>9} {number(entry['startup_s'], '.2f'):>8} "
            f"{number(entry['steady_rows_per_s'], ',.0f'):>9} "
            f"{number(entry['cpu_us_per_row'], ',.0f'):>10} "
            f"{number(entry['max_rss_mib'], '.0f'):>8} {number(entry['publish_per_s'], ',.0f'):>10}"
        )
    print(
        "  rows/s: spawn to last row committed; start s: spawn to consuming; steady/s: rows/s "
        "after start-up;\n  CPU us/row: the consumer's CPU (all its processes, start-up "
        "included) per row; RSS: its peak;\n  publish/s: the pre-fill (sluiceway: confirms, "
        f"{PUBLISH_WINDOW} in flight; Celery: apply_async, its default of no confirms)"
    )
    for entry in summary.values():
        if entry["note"]:
            print(f"  note, {entry['system']}: {entry['note']}")


def write_chart(summary: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [entry["system"] for entry in summary.values()]
    rates = [entry["rows_per_s"] or 0.0 for entry in summary.values()]
    figure, axes = plt.subplots(figsize=(10, 5.5), layout="constrained")
    bars = axes.barh(names, rates, color=["#1f77b4" if r else "#bbbbbb" for r in rates])
    labels = [
        f"{entry['rows_per_s']:,.0f}" if entry["rows_per_s"] else entry["status"]
        for entry in summary.values()
    ]
    axes.bar_label(bars, labels=labels, padding=4)
    axes.invert_yaxis()
    axes.set_xlabel("rows/s, median (spawn to last row committed)")
    axes.xaxis.set_major_formatter(lambda value, _: f"{value:,.0f}")
    axes.set_xlim(0, max(rates or [1]) * 1.2)
    axes.set_title(title, fontsize=10)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def machine(servers: dict[str, str]) -> dict[str, Any]:
    return {
        "load_average_at_end": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        **servers,
    }


def source() -> dict[str, Any]:
    """The commit measured, and whether the code run differed from it (uncommitted edits)."""

    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, timeout=30)
        return done.stdout.strip()

    changed = git("status", "--porcelain", "--", "services", "migrations").splitlines()
    return {"commit": git("rev-parse", "HEAD"), "uncommitted_service_files": len(changed)}


# ---------------------------------------------------------------------------------------------
# Main


async def bench_main(args: argparse.Namespace) -> int:
    logs = Path(tempfile.mkdtemp(prefix="sluiceway-bench-writer-"))
    connection = await aio_pika.connect(args.amqp_url)
    celery_topology_existed = await exchange_exists(connection, "celery_delayed_delivery")
    bench = Bench(args.database_url, args.amqp_url, connection, await connection.channel(), logs)
    runs: list[Run] = []
    extra: dict[str, Any] = {}
    try:
        admin = await asyncpg.connect(args.database_url)
        try:
            servers = {"postgresql": str(await admin.fetchval("SHOW server_version"))}
        finally:
            await admin.close()
        transport = getattr(connection, "transport", None)
        properties = getattr(getattr(transport, "connection", None), "server_properties", {})
        servers["rabbitmq"] = str(properties.get("version", "?"))
        # The machine is shared: a load over the core count at the start says others ran too.
        servers["load_average_at_start"] = " ".join(f"{x:.2f}" for x in os.getloadavg())

        kinds = [c for c in CONTENDERS if c.kind not in args.skip]
        rows_by_kind = {c.kind: args.records for c in kinds}
        if any(c.kind == "naive" for c in kinds):
            print("naive consumer: sizing its run", flush=True)
            rows_by_kind["naive"], extra["naive_sizing"] = await naive_rows(
                bench, args.records, 10.0 if args.quick else 45.0
            )
            print(f"  {extra['naive_sizing']}", flush=True)
        for round_no in range(1, args.rounds + 1):
            print(f"round {round_no} of {args.rounds}", flush=True)
            shift = (round_no - 1) % max(1, len(kinds))
            for contender in kinds[shift:] + kinds[:shift]:
                runs.append(await run_one(bench, contender, rows_by_kind[contender.kind], round_no))
        if not args.skip_memory:
            print(f"memory: the writer draining {args.memory_records:,} records", flush=True)
            try:
                extra["memory"] = await measure_memory(bench, args.memory_records)
            except (ContenderFailed, asyncpg.PostgresError, OSError) as exc:
                bench.failures.append(f"memory: {exc}")
        print("latency: 10 records a second to a running writer", flush=True)
        try:
            extra["latency"] = await measure_latency(bench, 10.0, 5.0 if args.quick else 20.0)
        except (ContenderFailed, asyncpg.PostgresError, OSError) as exc:
            bench.failures.append(f"latency: {exc}")
    finally:
        if bench.celery_ran and not celery_topology_existed:
            with contextlib.suppress(*BROKER_ERRORS):
                await delete_celery_topology(bench.connection)
        await connection.close()

    summary = summarize(runs, rows_by_kind)
    print_table(summary, args.records, args.rounds)
    if "memory" in extra:
        m = extra["memory"]
        print(
            f"\nmemory: writer peak RSS {m['max_rss_mib']:.0f} MiB draining a backlog of "
            f"{m['records']:,} records of {m['record_bytes']} B ({m['rows_per_s']:,} rows/s)"
        )
    if "latency" in extra:
        lat = extra["latency"]
        print(
            f"latency at {lat['rate_per_s']:g}/s, BATCH_TIMEOUT {lat['batch_timeout_ms']:.0f} ms: "
            f"publish to commit p50 {lat['seen_by_poll_ms']['p50']:.0f} ms, "
            f"p99 {lat['seen_by_poll_ms']['p99']:.0f} ms (written_at: p50 "
            f"{lat['written_at_ms']['p50']:.0f}, p99 {lat['written_at_ms']['p99']:.0f} ms); "
            f"budget {lat['budget_ms']:.0f} ms: {'met' if lat['within_budget'] else 'MISSED'}"
        )
    output = args.output or (None if args.quick else RESULTS)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        document = {
            "benchmark": "writer",
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine(servers),
            "source": source(),
            "config": {
                "records": args.records,
                "record_bytes": RECORD_BYTES,
                "rounds": args.rounds,
                "batch_size": BATCH_SIZE,
                "batch_timeout_s": BATCH_TIMEOUT,
                "prefetch": PREFETCH,
                "packed_records_per_message": PACKED,
                "quick": args.quick,
                "clock": "consumer spawn to the last row seen committed (polled every 50 ms)",
            },
            "summary": summary,
            "runs": [asdict(run) for run in runs],
            **extra,
            "failures": bench.failures,
        }
        json_path = output.with_suffix(".json")
        json_path.write_text(json.dumps(document, indent=2) + "\n")
        title = (
            "Records landed from a pre-filled RabbitMQ queue into PostgreSQL\n"
            f"{args.records:,} records of ~{RECORD_BYTES} B, median of {args.rounds} rounds, "
            f"{os.cpu_count()} shared cores (naive: {rows_by_kind.get('naive', 0):,} records)"
        )
        write_chart(summary, output.with_suffix(".png"), title)
        print(f"\nresults: {json_path} and {output.with_suffix('.png')}")
    return finish(logs, bench.failures, args.keep_logs)


def finish(logs: Path, failures: list[str], keep_logs: bool) -> int:
    """The exit status: 1 with the failures listed and the logs kept for them, else 0 (and
    the logs removed unless ``keep_logs``)."""
    if failures:
        print(f"\nfailures (logs in {logs}):", *failures, sep="\n  ", file=sys.stderr)
        return 1
    if keep_logs:
        print(f"logs in {logs}")
    else:
        shutil.rmtree(logs, ignore_errors=True)
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory-records", type=int, default=1_000_000)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--keep-logs", action="store_true", help="keep the contenders' logs")
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=[c.kind for c in CONTENDERS],
        help="leave a contender out (repeatable)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a short trickle and naive run, and no results written unless --output is given",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help=f"write OUTPUT.json and OUTPUT.png (default {RESULTS.relative_to(ROOT)})",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("SLUICEWAY_DATABASE_URL", DEFAULT_DATABASE_URL),
        help="a database whose role may create databases",
    )
    parser.add_argument(
        "--amqp-url", default=os.environ.get("SLUICEWAY_AMQP_URL", DEFAULT_AMQP_URL)
    )
    internal = parser.add_mutually_exclusive_group()
    for flag in ("--run-reference", "--run-naive", "--run-celery-publish"):
        internal.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args()
    if args.run_reference or args.run_naive:
        consumer = reference_consumer if args.run_reference else naive_consumer
        return asyncio.run(
            consumer(
                os.environ["SLUICEWAY_AMQP_URL"],
                os.environ["SLUICEWAY_DATABASE_URL"],
                os.environ["SLUICEWAY_PIPELINE"],
            )
        )
    if args.run_celery_publish:
        return celery_publish_main(args.records)
    if args.records < 1 or args.rounds < 1 or args.memory_records < 1:
        print("--records, --rounds and --memory-records must be at least 1", file=sys.stderr)
        return 2
    return asyncio.run(bench_main(args))


if __name__ == "__main__":
    sys.exit(main())
