"""Benchmark: the whole pipeline end to end as a user runs it, beside Celery as users run it.

A *round* of a contender pushes the same keys (``sluiceway demo``'s: ``user-000000``…, every
1000th with a space, a slash and a non-ASCII letter) from a file through fetching the sample
API (``sluiceway sample-api``, a process of its own, answering every key, after 0 ms or after
50 ms: ``--latency``) into PostgreSQL's ``records`` table, in a scratch database migrated by
``sluiceway migrate``. Each round has a pipeline name, queues and rows of its own, all removed
after it. The contenders, with the settings a user starts with:

- ``sluiceway``: ``sluiceway writer`` and ``sluiceway fetcher`` (default settings; the rate
  limit set out of the way, ``SLUICEWAY_RATE_LIMIT=1000000``), then ``sluiceway enqueue FILE``;
- ``celery-prefork`` and ``celery-threads``: ``benchmarks/celery_app.py``, a Celery worker of
  ``fetch`` tasks (acks late; pool prefork x2, or threads x32, one pooled ``httpx.Client`` a
  process) that call the celery-batches ``land`` task, run by a second, solo worker that
  upserts each batch (1000 or 0.2 s) into the same table; then a script that queues one
  ``fetch`` a line of the file (``python -m benchmarks.celery_app FILE``).

The clock runs from the enqueuing process's spawn to the last row seen committed (the pipeline's
row count, polled every 0.1 s). Polled with it, the sample API's count of answers gives the
rate of the fetching alone: the keys answered from the first poll that saw an answer to the
first that saw them all, a second (at 50 ms, what one fetcher's requests in flight reach,
without the enqueuing process's start nor the writer's last batch). CPU is each process's
own (``/proc``; a prefork pool's children included): the fetching and the writing worker's
from ready to the last row, the enqueuing process's whole life (``wait4``), start-up
included, as a user pays it. Every round is then checked: its row count is the number of
keys, every row's payload is the user ``sluiceway_sample_api.data`` makes for its key, and a
random 50 of them are what the running sample API answers. Rounds alternate the contenders
(A B C, A B C, …); the report gives medians.

A contender whose requests in flight cannot fetch ``--keys`` in ``--budget`` seconds at an
upstream latency (at most in-flight ÷ latency keys a second: Celery's prefork x2 at 50 ms, 40)
gets what it fetches in that time instead, at least 1000 keys; the table says so.

Results are printed and written to ``benchmarks/results/end_to_end.json``. Run with ``make
bench``; ``--keys 2000 --rounds 1 --latency 0`` is a short run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import httpx
import redis.asyncio as aioredis
from aio_pika.abc import AbstractConnection

from benchmarks.writer import (
    BROKER_ERRORS,
    DEFAULT_AMQP_URL,
    DEFAULT_DATABASE_URL,
    ROOT,
    WRITER_READY,
    Child,
    ContenderFailed,
    delete_celery_topology,
    exchange_exists,
    finish,
    fresh_database,
    machine,
    source,
    usage,
)
from sluiceway_admin.demo import demo_keys
from sluiceway_common import codec, settings, store, topology
from sluiceway_sample_api.data import user

RESULTS = ROOT / "benchmarks" / "results" / "end_to_end.json"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
SLUICEWAY = (sys.executable, "-m", "sluiceway_common")
FETCHER_READY = "fetching sluiceway."
API_READY = "listening on http"
RATE_LIMIT = "1000000"  # requests/s for the whole pipeline: far above what one machine serves
POLL = 0.1
READY_LIMIT = 60.0  # seconds for a service to start consuming
STALL = 60.0  # seconds without a new row before a round is given up
ENQUEUE_EXIT = 60.0  # seconds the enqueuing process may outlive the last row
SPOT_CHECKS = 50  # rows compared with what the running sample API answers
COUNT = "SELECT count(*) FROM records WHERE pipeline = $1"
PROCESSES = ("fetcher", "writer", "enqueue")


@dataclass(frozen=True)
class Contender:
    kind: str
    name: str
    in_flight: int  # requests at once: keys/s cannot pass in_flight / latency


CONTENDERS = (
    Contender("sluiceway", "sluiceway", int(settings.CONCURRENCY.default or 32)),
    Contender("celery-prefork", "Celery + celery-batches, prefork x2", 2),
    Contender("celery-threads", "Celery + celery-batches, threads x32", 32),
)
CELERY_POOLS = {"celery-prefork": "prefork", "celery-threads": "threads"}
CELERY_PREFETCH_MULTIPLIER = 4  # Celery's default
CELERY_STORE_PREFETCH = 2000  # celery-batches flushes 1000: twice that in hand


def keys_for(keys: int, in_flight: int, latency_ms: float, budget: float) -> int:
    """The keys a round of a contender gets: ``keys``, unless ``in_flight`` requests at once
    at ``latency_ms`` could not fetch them in ``budget`` seconds; then what they could, but
    at least 1000 (and never more than ``keys``)."""
    if latency_ms <= 0:
        return keys
    most = int(in_flight / (latency_ms / 1000) * budget)
    return min(keys, max(1000, most))


@dataclass
class Run:
    """One contender's round at one upstream latency."""

    contender: str
    latency_ms: float
    round: int
    keys: int
    status: str = "ok"  # ok or failed
    seconds: float | None = None
    keys_per_s: float | None = None
    cpu_us_per_key: dict[str, float] = field(default_factory=dict)  # per process and total
    startup_cpu_s: dict[str, float] = field(default_factory=dict)  # services, spawn to ready
    api_cpu_us_per_key: float | None = None  # the sample API's, not the contender's
    served: dict[str, int] = field(default_factory=dict)  # the sample API's answers, by status
    fetch_keys_per_s: float | None = None  # the sample API's answers a second while fetching
    note: str = ""


def check_rows(keys: Sequence[str], rows: Mapping[str, Any]) -> list[str]:
    """What is wrong with ``rows`` (key: payload as landed) for ``keys``: missing, extra, or
    a payload that is not the sample API's user for its key. Empty when all is right."""
    problems = []
    wanted = set(keys)
    if absent := sorted(wanted - rows.keys()):
        problems.append(f"{len(absent)} of {len(wanted)} rows missing, e.g. {absent[:3]}")
    if extra := sorted(rows.keys() - wanted):
        problems.append(f"{len(extra)} rows for keys not enqueued, e.g. {extra[:3]}")
    if wrong := sorted(k for k in wanted & rows.keys() if rows[k] != user(k)):
        problems.append(f"{len(wrong)} payloads differ from the sample API's, e.g. {wrong[:3]}")
    return problems


@dataclass
class Bench:
    args: argparse.Namespace
    database_url: str  # the scratch database
    connection: AbstractConnection
    redis: aioredis.Redis
    http: httpx.AsyncClient
    logs: Path
    key_files: dict[int, Path] = field(default_factory=dict)
    api: Child | None = None
    api_url: str = ""
    failures: list[str] = field(default_factory=list)
    celery_ran: bool = False  # a Celery worker started, and may have made its delayed queues

    def key_file(self, count: int) -> Path:
        if count not in self.key_files:
            path = self.logs / f"keys-{count}.txt"
            path.write_text("".join(key + "\n" for key in demo_keys(count)), encoding="utf-8")
            self.key_files[count] = path
        return self.key_files[count]

    def env(self, pipeline: str, **extra: str) -> dict[str, str]:
        """The environment of a contender's process: none of this shell's SLUICEWAY_* (a
        contender runs with its defaults), the services' URLs and the round's pipeline."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEWAY_")}
        return env | {
            "SLUICEWAY_DATABASE_URL": self.database_url,
            "SLUICEWAY_AMQP_URL": self.args.amqp_url,
            "SLUICEWAY_REDIS_URL": self.args.redis_url,
            "SLUICEWAY_PIPELINE": pipeline,
            "SLUICEWAY_SOURCE_URL": self.api_url + "/users/{key}",
            "SLUICEWAY_LOG_LEVEL": "INFO",
            **extra,
        }


# ---------------------------------------------------------------------------------------------
# The sample API, one process a latency


@contextlib.asynccontextmanager
async def sample_api(bench: Bench, latency_ms: float) -> AsyncIterator[None]:
    argv = [
        *SLUICEWAY,
        "sample-api",
        "--sample-port",
        "0",
        "--sample-latency-ms",
        f"{latency_ms:g}",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEWAY_")}
    with Child(f"sample-api-{latency_ms:g}ms", argv, env, API_READY, bench.logs) as api:
        await api.wait_ready(READY_LIMIT)
        line = next(x for x in api.log_path.read_text().splitlines() if API_READY in x)
        bench.api, bench.api_url = api, line.split()[-1]
        try:
            yield
        finally:
            bench.api, bench.api_url = None, ""
            await api.stop()


async def served(bench: Bench) -> dict[str, int]:
    stats = (await bench.http.get(bench.api_url + "/stats")).json()["served"]
    return {status: int(count) for status, count in stats.items()}


# ---------------------------------------------------------------------------------------------
# A round


@dataclass
class Fetching:
    """The sample API's count of answers, as the polls saw it: the first poll that saw an
    answer and the first that saw all ``keys``."""

    keys: int
    first: tuple[float, int] | None = None  # (stamp, answers)
    last: tuple[float, int] | None = None

    @property
    def done(self) -> bool:
        return self.last is not None

    def saw(self, stamp: float, answers: int) -> None:
        if self.first is None and answers > 0:
            self.first = (stamp, answers)
        if self.first is not None and self.last is None and answers >= self.keys:
            self.last = (stamp, answers)

    def rate(self) -> float | None:
        """Answers a second between the two polls; None when one poll saw them all."""
        if self.first is None or self.last is None or self.last[0] == self.first[0]:
            return None
        return (self.last[1] - self.first[1]) / (self.last[0] - self.first[0])


def reap(child: Child) -> float | None:
    """The CPU seconds of ``child`` once it has exited (reaping it), else None."""
    pid, status, rusage = os.wait4(child.proc.pid, os.WNOHANG)
    if pid == 0:
        return None
    child.proc.returncode = os.waitstatus_to_exitcode(status)
    return rusage.ru_utime + rusage.ru_stime


async def push_through(
    bench: Bench,
    run: Run,
    pipeline: str,
    services: dict[str, Child],
    enqueue_argv: Sequence[str],
    env: dict[str, str],
) -> None:
    """With ``services`` (fetcher, writer) consuming, run the enqueuing command and time the
    keys from its spawn to the last row committed; fill in ``run``'s figures."""
    await asyncio.gather(*(child.wait_ready(READY_LIMIT) for child in services.values()))
    assert bench.api is not None
    ready_cpu = {name: usage(child.proc.pid)[1] for name, child in services.items()}
    run.startup_cpu_s = {name: round(cpu, 3) for name, cpu in ready_cpu.items()}
    api_cpu = usage(bench.api.proc.pid)[1]
    served_before = await served(bench)
    db = await asyncpg.connect(bench.database_url)
    try:
        with Child("enqueue", enqueue_argv, env, "", bench.logs) as enqueue:
            enqueue_cpu: float | None = None
            landed, last_change = 0, time.perf_counter()
            fetching = Fetching(run.keys)
            answered_before = sum(served_before.values())
            limit = max(120.0, run.keys / 30)
            while True:
                if (
                    enqueue_cpu is None
                    and (enqueue_cpu := reap(enqueue)) is not None
                    and enqueue.proc.returncode != 0
                ):
                    raise ContenderFailed(
                        f"enqueue exited with {enqueue.proc.returncode}:\n{enqueue.tail()}"
                    )
                for name, child in services.items():
                    if child.proc.poll() is not None:
                        raise ContenderFailed(
                            f"{name} exited with {child.proc.returncode} at {landed} rows:\n"
                            + child.tail()
                        )
                # The count's snapshot is taken as the query starts: what it sees was
                # committed before this stamp.
                stamp = time.perf_counter()
                count = await db.fetchval(COUNT, pipeline)
                if not fetching.done:
                    answered = sum((await served(bench)).values()) - answered_before
                    fetching.saw(stamp, answered)
                if count >= run.keys:
                    break
                if count != landed:
                    landed, last_change = count, stamp
                if stamp - last_change > STALL:
                    raise ContenderFailed(f"no new row for {STALL:.0f} s at {landed} rows")
                if stamp - enqueue.spawned > limit:
                    raise ContenderFailed(f"not done after {limit:.0f} s, at {landed} rows")
                await asyncio.sleep(POLL)
            run.seconds = stamp - enqueue.spawned
            cpu = {
                name: usage(child.proc.pid)[1] - ready_cpu[name] for name, child in services.items()
            }
            api_cpu = usage(bench.api.proc.pid)[1] - api_cpu
            deadline = time.perf_counter() + ENQUEUE_EXIT
            while enqueue_cpu is None:
                if time.perf_counter() > deadline:
                    raise ContenderFailed(
                        f"enqueue still running {ENQUEUE_EXIT:.0f} s after the last row"
                    )
                await asyncio.sleep(POLL)
                enqueue_cpu = reap(enqueue)
            if enqueue.proc.returncode != 0:
                raise ContenderFailed(
                    f"enqueue exited with {enqueue.proc.returncode}:\n{enqueue.tail()}"
                )
        cpu["enqueue"] = enqueue_cpu
        for name, child in services.items():
            if (code := await child.stop()) != 0:
                raise ContenderFailed(
                    f"{name} exited with {code} on SIGTERM (0 expected):\n{child.tail()}"
                )
        after = await served(bench)
        run.served = {
            s: n - served_before.get(s, 0) for s, n in after.items() if n != served_before.get(s, 0)
        }
        run.keys_per_s = run.keys / run.seconds
        run.fetch_keys_per_s = fetching.rate()
        run.cpu_us_per_key = {name: cpu[name] * 1e6 / run.keys for name in PROCESSES}
        run.cpu_us_per_key["total"] = sum(cpu.values()) * 1e6 / run.keys
        run.api_cpu_us_per_key = api_cpu * 1e6 / run.keys
        await verify(bench, db, run, pipeline)
    finally:
        await db.close()


async def verify(bench: Bench, db: asyncpg.Connection, run: Run, pipeline: str) -> None:
    """Every key's row, holding what the sample API serves for it; a sample of them asked of
    the running sample API itself."""
    keys = demo_keys(run.keys)
    found = await db.fetch(
        "SELECT key, payload::text AS payload FROM records WHERE pipeline = $1", pipeline
    )
    rows = {r["key"]: json.loads(r["payload"]) for r in found}
    if problems := check_rows(keys, rows):
        raise ContenderFailed("the table does not match the sample API: " + "; ".join(problems))
    for key in random.sample(keys, min(SPOT_CHECKS, len(keys))):
        answer = await bench.http.get(codec.key_url(bench.api_url + "/users/{key}", key))
        if answer.status_code != 200 or answer.json() != rows[key]:
            raise ContenderFailed(
                f"row {key!r} differs from the sample API's answer now ({answer.status_code})"
            )


async def forget(
    bench: Bench, pipeline: str, queues: Sequence[str], exchanges: Sequence[str] = ()
) -> None:
    """Remove a round's rows, queues, exchanges and Redis keys."""
    db = await asyncpg.connect(bench.database_url)
    try:
        await db.execute("DELETE FROM records WHERE pipeline = $1", pipeline)
    finally:
        await db.close()
    channel = await bench.connection.channel()
    try:
        for queue in queues:
            await channel.queue_delete(queue)
        for exchange in exchanges:
            await channel.exchange_delete(exchange)
    finally:
        await channel.close()
    await bench.redis.delete(*store.owned(pipeline))


async def run_sluiceway(bench: Bench, run: Run) -> None:
    pipeline = f"e2e-{secrets.token_hex(5)}"
    env = bench.env(pipeline, SLUICEWAY_RATE_LIMIT=RATE_LIMIT)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(forget, bench, pipeline, topology.Queues(pipeline).owned())
        services = {
            "writer": stack.enter_context(
                Child("writer", [*SLUICEWAY, "writer"], env, WRITER_READY, bench.logs)
            ),
            "fetcher": stack.enter_context(
                Child("fetcher", [*SLUICEWAY, "fetcher"], env, FETCHER_READY, bench.logs)
            ),
        }
        argv = [*SLUICEWAY, "enqueue", str(bench.key_file(run.keys))]
        await push_through(bench, run, pipeline, services, argv, env)


def celery_worker(pool: str, concurrency: int, queue: str, name: str) -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "benchmarks.celery_app", "worker",
        "-P", pool, "-c", str(concurrency), "-Q", queue, "-n", f"{name}@%h",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip


async def run_celery(bench: Bench, run: Run, contender: Contender) -> None:
    # Imported here, as writer.py does: Celery is in the bench dependency group only.
    from benchmarks.celery_app import WORKER_READY as CELERY_READY

    bench.celery_ran = True
    token = secrets.token_hex(5)
    pipeline, queue = f"e2e-{token}", f"sluiceway-bench-e2e-{token}"
    fetch_queue = f"{queue}-fetch"
    env = bench.env(
        pipeline,
        BENCH_CELERY_QUEUE=queue,
        BENCH_CELERY_FETCH_QUEUE=fetch_queue,
        PYTHONPATH=str(ROOT),
    )
    store_env = env | {
        "BENCH_CELERY_CONCURRENCY": "1",
        "BENCH_CELERY_PREFETCH": str(CELERY_STORE_PREFETCH),
    }
    fetch_env = env | {
        "BENCH_CELERY_CONCURRENCY": str(contender.in_flight),
        "BENCH_CELERY_PREFETCH": str(CELERY_PREFETCH_MULTIPLIER * contender.in_flight),
    }
    async with contextlib.AsyncExitStack() as stack:
        both = (queue, fetch_queue)
        stack.push_async_callback(forget, bench, pipeline, both, both)
        store_argv = celery_worker("solo", 1, queue, f"store-{token}")
        fetch_argv = celery_worker(
            CELERY_POOLS[contender.kind], contender.in_flight, fetch_queue, f"fetch-{token}"
        )
        services = {
            "writer": stack.enter_context(
                Child("celery-store", store_argv, store_env, CELERY_READY, bench.logs)
            ),
            "fetcher": stack.enter_context(
                Child(contender.kind, fetch_argv, fetch_env, CELERY_READY, bench.logs)
            ),
        }
        argv = [sys.executable, "-m", "benchmarks.celery_app", str(bench.key_file(run.keys))]
        await push_through(bench, run, pipeline, services, argv, env)


async def run_one(bench: Bench, contender: Contender, latency_ms: float, round_no: int) -> Run:
    args = bench.args
    run = Run(
        contender.kind,
        latency_ms,
        round_no,
        keys_for(args.keys, contender.in_flight, latency_ms, args.budget),
    )
    started = time.perf_counter()
    try:
        if contender.kind == "sluiceway":
            await run_sluiceway(bench, run)
        else:
            await run_celery(bench, run, contender)
    except (
        ContenderFailed,
        *BROKER_ERRORS,
        asyncpg.PostgresError,
        httpx.HTTPError,
        OSError,
    ) as exc:
        run.status, run.note = "failed", f"{type(exc).__name__}: {exc}"
        bench.failures.append(f"{contender.name}, {latency_ms:g} ms, round {round_no}: {run.note}")
    if run.status == "ok":
        assert run.keys_per_s is not None
        outcome = (
            f"{run.keys_per_s:,.0f} keys/s, {run.cpu_us_per_key['total']:,.0f} µs CPU a key "
            f"(fetcher {run.cpu_us_per_key['fetcher']:,.0f}, writer "
            f"{run.cpu_us_per_key['writer']:,.0f}, enqueue {run.cpu_us_per_key['enqueue']:,.0f}); "
            f"fetching {number(run.fetch_keys_per_s)} keys/s"
        )
        if run.served != {"200": run.keys}:
            outcome += f"; the sample API answered {run.served}"
    else:
        outcome = "FAILED: " + run.note.splitlines()[0]
    print(
        f"  {latency_ms:g} ms, round {round_no}, {contender.name}, {run.keys:,} keys: {outcome} "
        f"({time.perf_counter() - started:.0f} s with set-up)",
        flush=True,
    )
    return run


# ---------------------------------------------------------------------------------------------
# The report


def summarize(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """Medians of each contender's rounds at each latency, in the order they ran."""
    summary = []
    groups: dict[tuple[float, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.latency_ms, run.contender), []).append(run)
    names = {c.kind: c.name for c in CONTENDERS}
    for (latency_ms, kind), mine in groups.items():
        ok = [r for r in mine if r.status == "ok"]
        entry: dict[str, Any] = {
            "contender": kind,
            "name": names[kind],
            "latency_ms": latency_ms,
            "keys": mine[0].keys,
            "rounds": len(mine),
            "rounds_ok": len(ok),
            "keys_per_s": None,
            "cpu_us_per_key": {},
            "rounds_keys_per_s": [r.keys_per_s for r in mine],
        }
        if ok:
            entry["keys_per_s"] = statistics.median(r.keys_per_s or 0.0 for r in ok)
            entry["cpu_us_per_key"] = {
                name: statistics.median(r.cpu_us_per_key[name] for r in ok)
                for name in (*PROCESSES, "total")
            }
            entry["api_cpu_us_per_key"] = statistics.median(r.api_cpu_us_per_key or 0.0 for r in ok)
            rates = [r.fetch_keys_per_s for r in ok if r.fetch_keys_per_s is not None]
            entry["fetch_keys_per_s"] = statistics.median(rates) if rates else None
            entry["rounds_fetch_keys_per_s"] = [r.fetch_keys_per_s for r in mine]
        summary.append(entry)
    return summary


def ratios(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """sluiceway against each other contender, round by round (the rounds ran side by side):
    its keys/s over theirs, and their CPU a key over its."""
    found = []
    by = {(r.latency_ms, r.contender, r.round): r for r in runs if r.status == "ok"}
    for latency_ms in dict.fromkeys(r.latency_ms for r in runs):
        for other in dict.fromkeys(r.contender for r in runs if r.contender != "sluiceway"):
            pairs = [
                (by[(latency_ms, "sluiceway", n)], by[(latency_ms, other, n)])
                for n in sorted({r.round for r in runs})
                if (latency_ms, "sluiceway", n) in by and (latency_ms, other, n) in by
            ]
            if not pairs:
                continue
            speed = [(s.keys_per_s or 0.0) / (o.keys_per_s or 1.0) for s, o in pairs]
            cpu = [o.cpu_us_per_key["total"] / s.cpu_us_per_key["total"] for s, o in pairs]
            found.append(
                {
                    "latency_ms": latency_ms,
                    "against": other,
                    "keys_per_s": statistics.median(speed),
                    "keys_per_s_rounds": speed,
                    "less_cpu": statistics.median(cpu),
                    "less_cpu_rounds": cpu,
                }
            )
    return found


def number(value: float | None, spec: str = ",.0f") -> str:
    return "—" if value is None else format(value, spec)


def table(summary: Sequence[Mapping[str, Any]], keys: int) -> str:
    """The results as a Markdown table, medians; a contender that fetched fewer than ``keys``
    a round says how many."""
    lines = [
        "| contender | upstream latency | keys/s | fetching, keys/s "
        "| CPU µs a key (services + enqueue) | fetcher CPU µs a key | writer | enqueue |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for entry in summary:
        name = entry["name"]
        if entry["keys"] != keys:
            name += f" ({entry['keys']:,} keys a round)"
        if entry["rounds_ok"] < entry["rounds"]:
            name += f" ({entry['rounds'] - entry['rounds_ok']} of {entry['rounds']} rounds failed)"
        cpu = entry["cpu_us_per_key"]
        lines.append(
            f"| {name} | {entry['latency_ms']:g} ms | {number(entry['keys_per_s'])} "
            f"| {number(entry.get('fetch_keys_per_s'))} | {number(cpu.get('total'))} "
            f"| {number(cpu.get('fetcher'))} | {number(cpu.get('writer'))} "
            f"| {number(cpu.get('enqueue'), ',.1f')} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Main


async def bench_main(args: argparse.Namespace) -> int:
    # SIGTERM cancels the run like Ctrl-C, so every child is killed on the way out.
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    logs = Path(tempfile.mkdtemp(prefix="sluiceway-bench-e2e-"))
    contenders = [c for c in CONTENDERS if not args.only or c.kind in args.only]
    runs: list[Run] = []
    failures: list[str] = []
    bench: Bench | None = None
    connection = await aio_pika.connect(args.amqp_url)
    celery_topology_existed = await exchange_exists(connection, "celery_delayed_delivery")
    load_at_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    started = time.perf_counter()
    try:
        async with contextlib.AsyncExitStack() as stack:
            database_url = await stack.enter_async_context(fresh_database(args.database_url))
            redis = aioredis.Redis.from_url(args.redis_url)
            stack.push_async_callback(redis.aclose)
            http = await stack.enter_async_context(httpx.AsyncClient(timeout=30))
            bench = Bench(args, database_url, connection, redis, http, logs, failures=failures)
            admin = await asyncpg.connect(database_url)
            try:
                servers = {"postgresql": str(await admin.fetchval("SHOW server_version"))}
            finally:
                await admin.close()
            servers["load_average_at_start"] = load_at_start
            for latency_ms in args.latency:
                print(f"upstream latency {latency_ms:g} ms", flush=True)
                async with sample_api(bench, latency_ms):
                    for round_no in range(1, args.rounds + 1):
                        for contender in contenders:
                            runs.append(await run_one(bench, contender, latency_ms, round_no))
    finally:
        if not celery_topology_existed and bench is not None and bench.celery_ran:
            with contextlib.suppress(*BROKER_ERRORS):
                await delete_celery_topology(connection)
        await connection.close()
    minutes = (time.perf_counter() - started) / 60
    summary, compared = summarize(runs), ratios(runs)
    print(
        f"\nend to end: {args.keys:,} keys, medians of {args.rounds} rounds, "
        f"{minutes:.1f} min in all\n"
    )
    print(table(summary, args.keys))
    for ratio in compared:
        rounds = " · ".join(f"{x:.2f}" for x in ratio["keys_per_s_rounds"])
        cpu_rounds = " · ".join(f"{x:.2f}" for x in ratio["less_cpu_rounds"])
        print(
            f"{ratio['latency_ms']:g} ms, sluiceway against {ratio['against']}: "
            f"{ratio['keys_per_s']:.2f}x the keys/s ({rounds}), "
            f"{ratio['less_cpu']:.2f}x less CPU a key ({cpu_rounds})"
        )
    output: Path = args.output
    output.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": "end_to_end",
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "minutes": round(minutes, 1),
        "machine": machine(servers),
        "source": source(),
        "config": {
            "keys": args.keys,
            "rounds": args.rounds,
            "latency_ms": args.latency,
            "budget_s": args.budget,
            "only": args.only,
            "clock": "enqueue spawned to the last row seen committed (polled every 0.1 s)",
            "cpu": "fetcher and writer from ready to the last row; enqueue its whole life",
        },
        "summary": summary,
        "ratios": compared,
        "runs": [asdict(run) for run in runs],
        "failures": failures,
    }
    await asyncio.to_thread(
        output.write_text, json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    )
    print(f"\nresults: {output}")
    return finish(logs, failures, args.keep_logs)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keys", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--latency",
        type=float,
        nargs="+",
        default=[0.0, 50.0],
        help="the sample API's latencies, ms (default: 0 50)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=[c.kind for c in CONTENDERS],
        help="run this contender (repeatable; default: all)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=60.0,
        help="seconds a round may take at the contender's in-flight bound",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--database-url",
        default=DEFAULT_DATABASE_URL,
        help="a database whose role may create databases",
    )
    parser.add_argument("--amqp-url", default=DEFAULT_AMQP_URL)
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    args = parser.parse_args(argv)
    if args.keys < 1 or args.rounds < 1 or args.budget <= 0 or min(args.latency) < 0:
        parser.error("--keys and --rounds are at least 1, --budget above 0, --latency 0 or more")
    return args


def main() -> int:
    args = parse_args()
    try:
        return asyncio.run(bench_main(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; every process it started was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
