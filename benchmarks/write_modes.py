"""Benchmark: where each write mode wins — direct against buffered, 1, 2 and 4 writers, on
disjoint keys and on keys that many records share.

For each cell a fresh pipeline's records queue is pre-filled with packed messages (so the
broker's per-message cost stays out of the way), then the writers start; the clock runs from
the first writer ready to the moment every key's newest record is in ``records`` (in buffered
mode that includes the merge). Modes alternate within each cell, round by round; medians are
printed and written to ``benchmarks/results/write_modes.json``. Run with ``make bench``.
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

from benchmarks.writer import (
    DEFAULT_AMQP_URL,
    DEFAULT_DATABASE_URL,
    PACKED,
    ROOT,
    WRITER_READY,
    Child,
    ContenderFailed,
    fresh_database,
    pipeline_queues,
    prefill,
)
from sluiceway_common import codec

RESULTS = ROOT / "benchmarks" / "results" / "write_modes.json"
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
            env = os.environ | {
                "SLUICEWAY_DATABASE_URL": database_url,
                "SLUICEWAY_AMQP_URL": args.amqp_url,
                "SLUICEWAY_PIPELINE": queues.pipeline,
                "SLUICEWAY_BATCH_SIZE": "1000",
                "SLUICEWAY_BATCH_TIMEOUT": "0.2",
                "SLUICEWAY_WRITE_MODE": mode,
                "SLUICEWAY_MERGE_INTERVAL": "0.2",
                "SLUICEWAY_LOG_LEVEL": "INFO",
            }
            argv = [sys.executable, "-m", "sluiceway_common", "writer"]
            children = [Child(f"{mode}-{i}", argv, env, WRITER_READY, logs)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument("--amqp-url", default=DEFAULT_AMQP_URL)
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
