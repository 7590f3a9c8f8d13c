"""Benchmark: where each write mode wins — direct against buffered, 1, 2 and 4 writers, on
disjoint keys and on keys that many records share — and what a mapped sink table costs
against ``records``.

For each cell a fresh pipeline's records queue is pre-filled with packed messages (so the
broker's per-message cost stays out of the way), then the writers start; the clock runs from
the first writer ready to the moment every key's newest record is in ``records`` (in buffered
mode that includes the merge). Modes alternate within each cell, round by round; medians are
printed and written to ``benchmarks/results/write_modes.json``.

The sink part lands the same sample-API users (integer keys, packed 50 a message and
zstd-compressed, as the fetcher sends them) with one direct writer either into ``records`` or
into a typed table of 8 mapped columns (``SINK_DDL``, in a scratch schema dropped afterwards),
the two alternating round by round; each round's ratio is taken side by side. Results in
``benchmarks/results/sink.json``. Run with ``make bench`` (``--only sink`` for that part).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import orjson
import zstandard

from benchmarks.writer import (
    DEFAULT_AMQP_URL,
    DEFAULT_DATABASE_URL,
    PACKED,
    ROOT,
    WRITER_READY,
    Child,
    ContenderFailed,
    depth,
    fresh_database,
    pipeline_queues,
    prefill,
    usage,
)
from sluiceway_common import codec
from sluiceway_sample_api import data as sample

RESULTS = ROOT / "benchmarks" / "results" / "write_modes.json"
SINK_RESULTS = ROOT / "benchmarks" / "results" / "sink.json"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
VERSIONS = 10  # records per key in the overlapping pattern
PAYLOAD = orjson.dumps({"name": "x" * 200, "tags": ["a", "b", "c"], "score": 12345})
LIMIT = 300.0  # seconds a cell may take before it is given up


def bodies(records: int, pattern: str, seed: int) -> tuple[Iterator[bytes], int]:
    """Packed message bodies of ``records`` records, and how many distinct keys they hold.

    Disjoint: every record its own key. Overlapping: ``VERSIONS`` records a key, in random
    order, the newest with the latest ``fetched_at``."""
    if pattern == "disjoint":
        items = [(f"k{i:09d}", VERSIONS - 1) for i in range(records)]
    else:
        keys = records // VERSIONS
        items = [(f"k{i:09d}", v) for v in range(VERSIONS) for i in range(keys)]
        random.Random(seed).shuffle(items)
    encoded = [codec.encode_record(k, PAYLOAD, T0 + timedelta(seconds=v)) for k, v in items]

    def packed() -> Iterator[bytes]:
        for i in range(0, len(encoded), PACKED):
            yield b"[" + b",".join(encoded[i : i + PACKED]) + b"]"

    return packed(), len({k for k, _ in items})


WRITER = [sys.executable, "-m", "sluiceway_common", "writer"]


def writer_env(args: argparse.Namespace, database_url: str, pipeline: str,
               mode: str) -> dict[str, str]:  # fmt: skip
    return os.environ | {
        "SLUICEWAY_DATABASE_URL": database_url,
        "SLUICEWAY_AMQP_URL": args.amqp_url,
        "SLUICEWAY_PIPELINE": pipeline,
        "SLUICEWAY_BATCH_SIZE": "1000",
        "SLUICEWAY_BATCH_TIMEOUT": "0.2",
        "SLUICEWAY_WRITE_MODE": mode,
        "SLUICEWAY_MERGE_INTERVAL": "0.2",
        "SLUICEWAY_LOG_LEVEL": "INFO",
    }


async def run_cell(args: argparse.Namespace, database_url: str, mode: str, writers: int,
                   pattern: str, seed: int, logs: Path) -> float:  # fmt: skip
    """One run; returns rows (records) a second from the first writer ready to the last
    key's newest row in ``records``."""
    connection = await aio_pika.connect(args.amqp_url)
    db = await asyncpg.connect(database_url)
    try:
        channel = await connection.channel()
        async with pipeline_queues(channel) as queues:
            messages, keys = bodies(args.records, pattern, seed)
            await prefill(connection, queues.records, messages)
            env = writer_env(args, database_url, queues.pipeline, mode)
            children = [Child(f"{mode}-{i}", WRITER, env, WRITER_READY, logs)
                        for i in range(writers)]  # fmt: skip
            try:
                await asyncio.gather(*(c.wait_ready(60) for c in children))
                started = min(c.ready_at or time.perf_counter() for c in children)
                newest = T0 + timedelta(seconds=VERSIONS - 1)
                while True:
                    done = await db.fetchval(
                        "SELECT count(*) FROM records WHERE pipeline = $1 AND fetched_at = $2",
                        queues.pipeline, newest,
                    )  # fmt: skip
                    if done >= keys:
                        elapsed = time.perf_counter() - started
                        break
                    for child in children:
                        if child.proc.poll() is not None:
                            raise ContenderFailed(f"{child.name} exited:\n{child.tail()}")
                    if time.perf_counter() - started > LIMIT:
                        raise ContenderFailed(f"{mode}, {writers} writers: over {LIMIT} s")
                    await asyncio.sleep(0.05)
            finally:
                for child in children:
                    await child.stop()
            await db.execute("DELETE FROM records WHERE pipeline = $1", queues.pipeline)
            await db.execute("DELETE FROM records_buffer WHERE pipeline = $1", queues.pipeline)
        return float(args.records) / elapsed
    finally:
        await db.close()
        await connection.close()


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="sluiceway-modes-") as logs:
        async with fresh_database(args.database_url) as database_url:
            for writers in args.writers:
                for pattern in ("disjoint", "overlapping"):
                    for round_no in range(args.rounds):
                        modes = ("direct", "buffered") if round_no % 2 == 0 else (
                            "buffered", "direct")  # fmt: skip
                        for mode in modes:
                            rate = await run_cell(args, database_url, mode, writers, pattern,
                                                  seed=round_no, logs=Path(logs))  # fmt: skip
                            results.setdefault(f"{mode}/{writers}/{pattern}", []).append(rate)
                            print(f"  {mode:<8} {writers} writer(s) {pattern:<11} round "
                                  f"{round_no + 1}: {rate:>9,.0f} rows/s", flush=True)  # fmt: skip
    return {cell: {"median_rows_per_s": statistics.median(rates), "rounds": rates}
            for cell, rates in results.items()}  # fmt: skip


def print_table(summary: dict[str, Any], writers: list[int]) -> None:
    print("\nrows/s, medians (packed messages of 50; batches of 1,000)")
    print(f"{'writers':<9}{'keys':<13}{'direct':>10}{'buffered':>10}{'buffered/direct':>17}")
    for count in writers:
        for pattern in ("disjoint", "overlapping"):
            direct = summary[f"direct/{count}/{pattern}"]["median_rows_per_s"]
            buffered = summary[f"buffered/{count}/{pattern}"]["median_rows_per_s"]
            print(f"{count:<9}{pattern:<13}{direct:>10,.0f}{buffered:>10,.0f}"
                  f"{buffered / direct:>16.2f}x")  # fmt: skip


# --- a mapped sink table against records ---------------------------------------------------

SINK_SCHEMA = "sluiceway_bench_sink"
SINK_TABLE = f"{SINK_SCHEMA}.users"
SINK_DDL = f"""
CREATE TABLE {SINK_TABLE} (
    id       bigint PRIMARY KEY,
    name     text,
    age      integer,
    score    numeric,
    active   boolean,
    tags     jsonb,
    city     text,
    postcode text,
    seen_at  timestamptz
)"""
SINK_SETTINGS = {
    "SLUICEWAY_SINK_TABLE": SINK_TABLE,
    "SLUICEWAY_SINK_KEY": "id",
    "SLUICEWAY_SINK_COLUMNS": json.dumps(
        {
            "name": "/payload/name",
            "age": "/payload/age",
            "score": "/payload/score",
            "active": "/payload/active",
            "tags": "/payload/tags",
            "city": "/payload/address/city",
            "postcode": "/payload/address/postcode",
            "seen_at": "/fetched_at",
        }
    ),
    "SLUICEWAY_SINK_VERSION": "seen_at",
}
SINK_FILLED = f"""
SELECT count(*) FROM {SINK_TABLE} WHERE name LIKE '% %' AND age >= 18 AND score >= 0
    AND active IS NOT NULL AND jsonb_typeof(tags) = 'array' AND city <> ''
    AND postcode ~ '^[0-9]{{5}}$' AND seen_at = $1
"""
TARGETS = ("records", "sink")
FIRST_USER = 10_000_000  # the users' keys: integers, for the bigint key column
TAIL_POLL = 0.02  # seconds between row counts once the queue shows nothing ready


def user_bodies(records: int) -> list[bytes]:
    """``records`` sample-API users, packed ``PACKED`` a message and zstd-compressed, as the
    fetcher publishes them."""
    compressor = zstandard.ZstdCompressor(level=3)
    encoded = [
        codec.encode_record(str(k), orjson.dumps(sample.user(str(k))), T0)
        for k in range(FIRST_USER, FIRST_USER + records)
    ]
    return [compressor.compress(b"[" + b",".join(encoded[i : i + PACKED]) + b"]")
            for i in range(0, records, PACKED)]  # fmt: skip


async def backend_cpu(db: asyncpg.Connection) -> dict[int, float]:
    """CPU seconds of each other client's backend on this database: the writer's."""
    pids = await db.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
    )
    return {row["pid"]: usage(row["pid"])[1] for row in pids}


async def run_target(args: argparse.Namespace, database_url: str, target: str,
                     bodies: list[bytes], logs: Path) -> dict[str, float]:  # fmt: skip
    """One writer landing ``bodies`` into ``target``, from ready to the last row committed:
    rows a second, and CPU µs a row of the writer and of its PostgreSQL backends."""
    records = args.sink_records
    connection = await aio_pika.connect(args.amqp_url)
    db = await asyncpg.connect(database_url)
    try:
        channel = await connection.channel()
        async with pipeline_queues(channel) as queues:
            env = writer_env(args, database_url, queues.pipeline, "direct")
            count, params = "SELECT count(*) FROM records WHERE pipeline = $1", [queues.pipeline]
            if target == "sink":
                await db.execute(SINK_DDL)
                env |= SINK_SETTINGS
                count, params = f"SELECT count(*) FROM {SINK_TABLE}", []
            try:
                await prefill(connection, queues.records, iter(bodies), content_encoding="zstd")
                with Child(target, WRITER, env, WRITER_READY, logs) as child:
                    await child.wait_ready(60)
                    started = child.ready_at or time.perf_counter()
                    cpu, pg = usage(child.proc.pid)[1], await backend_cpu(db)
                    while True:
                        # The count scans the table: asked only once nothing is left ready.
                        if (
                            await depth(channel, queues.records) == 0
                            and await db.fetchval(count, *params) >= records
                        ):
                            elapsed = time.perf_counter() - started
                            break
                        if child.proc.poll() is not None:
                            raise ContenderFailed(f"{target} writer exited:\n{child.tail()}")
                        if time.perf_counter() - started > LIMIT:
                            raise ContenderFailed(f"{target}: over {LIMIT} s")
                        await asyncio.sleep(TAIL_POLL)
                    cpu = usage(child.proc.pid)[1] - cpu
                    pg_after = await backend_cpu(db)
                    pg_cpu = sum(t - pg.get(pid, 0.0) for pid, t in pg_after.items())
                    await child.stop()
                if target == "sink":  # every column typed and filled, the clock stopped
                    filled = await db.fetchval(SINK_FILLED, T0)
                    if filled != records:
                        raise ContenderFailed(f"sink: {filled} of {records} rows fully mapped")
            finally:
                if target == "sink":
                    await db.execute(f"DROP TABLE IF EXISTS {SINK_TABLE}")
                else:
                    await db.execute("DELETE FROM records WHERE pipeline = $1", queues.pipeline)
        return {"rows_per_s": records / elapsed, "writer_cpu_us_per_row": cpu / records * 1e6,
                "postgres_cpu_us_per_row": pg_cpu / records * 1e6}  # fmt: skip
    finally:
        await db.close()
        await connection.close()


async def bench_sink(args: argparse.Namespace) -> dict[str, Any]:
    """``records`` and the sink, alternating; per target its rounds and medians, and the
    rounds' sink ÷ records ratios."""
    bodies = user_bodies(args.sink_records)
    rounds: dict[str, list[dict[str, float]]] = {target: [] for target in TARGETS}
    with tempfile.TemporaryDirectory(prefix="sluiceway-sink-") as logs:
        async with fresh_database(args.database_url) as database_url:
            db = await asyncpg.connect(database_url)
            try:
                await db.execute(f"CREATE SCHEMA {SINK_SCHEMA}")
                for round_no in range(args.sink_rounds):
                    order = TARGETS if round_no % 2 == 0 else TARGETS[::-1]
                    for target in order:
                        run = await run_target(args, database_url, target, bodies, Path(logs))
                        rounds[target].append(run)
                        print(f"  {target:<8} round {round_no + 1}: {run['rows_per_s']:>9,.0f} "
                              f"rows/s, writer {run['writer_cpu_us_per_row']:.1f} µs/row, "
                              f"PostgreSQL {run['postgres_cpu_us_per_row']:.1f} µs/row",
                              flush=True)  # fmt: skip
            finally:
                await db.execute(f"DROP SCHEMA IF EXISTS {SINK_SCHEMA} CASCADE")
                await db.close()
    ratios = [s["rows_per_s"] / r["rows_per_s"] for s, r in zip(rounds["sink"], rounds["records"],
                                                              strict=True)]  # fmt: skip
    summary: dict[str, Any] = {
        target: {
            "median": {name: statistics.median(run[name] for run in runs) for name in runs[0]},
            "rounds": runs,
        }
        for target, runs in rounds.items()
    }
    summary["sink_over_records"] = {
        "median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
        "rounds": ratios,
    }  # fmt: skip
    return summary


def print_sink(summary: dict[str, Any]) -> None:
    print("\nsink table against records, medians (one direct writer; packed 50, zstd)")
    print(f"{'target':<10}{'rows/s':>10}{'writer µs/row':>15}{'PostgreSQL µs/row':>19}")
    for target in TARGETS:
        median = summary[target]["median"]
        print(f"{target:<10}{median['rows_per_s']:>10,.0f}"
              f"{median['writer_cpu_us_per_row']:>15.1f}"
              f"{median['postgres_cpu_us_per_row']:>19.1f}")  # fmt: skip
    ratio = summary["sink_over_records"]
    print(
        f"sink ÷ records: {ratio['median']:.2f}x (rounds {ratio['min']:.2f} to {ratio['max']:.2f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", choices=("modes", "sink"), help="run one part alone")
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--sink-records", type=int, default=100_000)
    parser.add_argument("--sink-rounds", type=int, default=5)
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument("--amqp-url", default=DEFAULT_AMQP_URL)
    args = parser.parse_args()
    if args.only != "sink":
        print(f"write modes: {args.records:,} records a run, {args.rounds} rounds, "
              f"{os.cpu_count()} cores", flush=True)  # fmt: skip
        summary = asyncio.run(bench(args))
        print_table(summary, args.writers)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps({
            "records": args.records, "rounds": args.rounds, "packed": PACKED,
            "versions_per_key_when_overlapping": VERSIONS, "cells": summary,
        }, indent=2) + "\n")  # fmt: skip
        print(f"results in {RESULTS.relative_to(ROOT)}")
    if args.only != "modes":
        print(f"\nsink against records: {args.sink_records:,} sample users a run, "
              f"{args.sink_rounds} rounds, {os.cpu_count()} cores", flush=True)  # fmt: skip
        sink = asyncio.run(bench_sink(args))
        print_sink(sink)
        SINK_RESULTS.write_text(json.dumps({
            "records": args.sink_records, "rounds": args.sink_rounds, "packed": PACKED,
            "compressed": "zstd", "writers": 1, "mode": "direct", "batch_size": 1000,
            "table": SINK_DDL.strip(), "settings": SINK_SETTINGS, **sink,
        }, indent=2) + "\n")  # fmt: skip
        print(f"results in {SINK_RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
