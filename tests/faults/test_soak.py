"""A bounded soak (`make soak`): steady load for SLUICEWAY_SOAK_SECONDS (1,200 by default)
with the writer restarted (SIGTERM) every minute. The fetcher's and the writers' RSS and
open file descriptors must stay flat, throughput must not decay, and the table is exact at
the end. The figures are printed and kept in ``.run/soak.json``."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
from aio_pika.abc import AbstractConnection

from sluiceway_common import settings
from tests.e2e.conftest import Processes
from tests.faults.harness import (
    REPORT,
    Pipeline,
    Upstream,
    check_table,
    count_rows,
    enqueue,
    expected,
    settled,
)

pytestmark = [pytest.mark.e2e, pytest.mark.soak]

SECONDS = float(os.environ.get("SLUICEWAY_SOAK_SECONDS", "1200"))
RATE = 200  # keys a second, enqueued and fetched
RESTART_EVERY = 60.0
SAMPLE_EVERY = 10.0


def usage(pid: int) -> tuple[float, int]:
    """RSS in MiB and open file descriptors of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
    return rss / 1024, len(os.listdir(f"/proc/{pid}/fd"))


async def test_soak(
    processes: Processes,
    pipeline: str,
    db: asyncpg.Connection,
    redis_client: aioredis.Redis,
    amqp_connection: AbstractConnection,
) -> None:
    upstream = Upstream()
    keys: list[str] = []
    samples: list[dict[str, float]] = []
    async with upstream.serving() as source:
        pipe = Pipeline(processes, source)
        writer = pipe.writer()
        fetcher = pipe.fetcher(SLUICEWAY_RATE_LIMIT=str(RATE * 1.5))
        started = time.monotonic()
        last_restart = last_sample = started
        last_rows, restarts = 0, 0
        while (now := time.monotonic()) - started < SECONDS:
            batch = [f"soak-{len(keys) + i:08d}" for i in range(RATE)]
            keys.extend(batch)
            await enqueue(amqp_connection, pipeline, batch)
            if now - last_restart >= RESTART_EVERY:
                assert processes.terminate(writer) == 0, pipe.logs("writer")
                writer = pipe.writer()
                restarts += 1
                last_restart = now
            # A writer that has just started is not a fair reading of its RSS.
            if now - last_sample >= SAMPLE_EVERY and now - last_restart > 5:
                rows = await count_rows(db, pipeline)
                fetcher_rss, fetcher_fds = usage(fetcher.pid)
                writer_rss, writer_fds = usage(writer.pid)
                rate = (rows - last_rows) / (now - last_sample)
                samples.append({
                    "t": round(now - started, 1), "rows_per_s": rate,
                    "fetcher_rss_mib": fetcher_rss, "fetcher_fds": fetcher_fds,
                    "writer_rss_mib": writer_rss, "writer_fds": writer_fds,
                })  # fmt: skip
                last_rows, last_sample = rows, now
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - now)))
        await settled(db, redis_client, amqp_connection, pipeline, len(keys), within=300,
                      alive=(writer, fetcher))  # fmt: skip
    landing, failing = expected(keys)
    check = await check_table(
        "soak", db, redis_client, amqp_connection, pipeline, landing, failing,
        note=f"{SECONDS:.0f} s at {RATE} keys/s, writer restarted {restarts} times",
    )  # fmt: skip
    # The first readings include start-up and the queues filling; judge from the second on.
    steady = samples[1:]
    quarter = max(1, len(steady) // 4)
    first, last = steady[:quarter], steady[-quarter:]

    def median(rows: list[dict[str, float]], name: str) -> float:
        return statistics.median(row[name] for row in rows)

    medians = {
        f"{name}_{when}": median(rows, name)
        for name in ("rows_per_s", "fetcher_rss_mib", "fetcher_fds", "writer_rss_mib", "writer_fds")
        for when, rows in (("first", first), ("last", last))
    }
    figures = {
        "seconds": SECONDS, "keys": len(keys), "rows_checked": check.rows_checked,
        "writer_restarts": restarts, "samples": samples, **medians,
    }  # fmt: skip
    (REPORT.parent / "soak.json").write_text(json.dumps(figures, indent=1))
    print(json.dumps({k: v for k, v in figures.items() if k != "samples"}, indent=1))
    assert medians["fetcher_rss_mib_last"] <= medians["fetcher_rss_mib_first"] * 1.25 + 10
    assert medians["writer_rss_mib_last"] <= medians["writer_rss_mib_first"] * 1.25 + 10
    # The fetcher's HTTP pool may open connections up to its concurrency (the default) in a
    # burst; past that, more descriptors would be a leak.
    pool = int(settings.CONCURRENCY.default or 0)
    assert medians["fetcher_fds_last"] <= medians["fetcher_fds_first"] + pool
    assert medians["writer_fds_last"] <= medians["writer_fds_first"] + 5
    assert medians["rows_per_s_last"] >= medians["rows_per_s_first"] * 0.8
