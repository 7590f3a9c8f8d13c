"""``sluiceway enqueue`` on big input and through a broker cut, as the real command.

`make test` streams ``SLUICEWAY_ENQUEUE_LINES`` (50,000) lines; `make test-faults` streams
10 million. Either way every key is queued, the process's peak memory stays that of a
1,000-line run, and progress is logged while it works. ``enqueue --sql`` over 100,000 rows
does the same through a server-side cursor: its peak memory is that of a 1,000-row query.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage

from sluiceway_common import codec, topology
from tests.conftest import ServiceUrls
from tests.e2e.conftest import Processes
from tests.faults.harness import Check, record_check
from tests.integration.helpers import TcpProxy, depth, eventually

pytestmark = pytest.mark.e2e

LINES = int(os.environ.get("SLUICEWAY_ENQUEUE_LINES", "50000"))
# ~10,000 keys/s measured here; the bound only stops a hang.
WITHIN = 120 + LINES / 1000
# Peak RSS a big run may add to a 1,000-line run's: a leak of 2 bytes a key shows at 10 M.
RSS_SLACK_KIB = 16 * 1024
PROGRESS_EVERY = 10  # seconds: Progress's log_interval


def write_keys(path: Path, count: int, prefix: str = "k") -> list[str]:
    keys = [f"{prefix}{i:09d}" for i in range(count)] if count <= 1_000_000 else []
    with path.open("w") as out:
        for start in range(0, count, 100_000):
            chunk = range(start, min(count, start + 100_000))
            out.write("".join(f"{prefix}{i:09d}\n" for i in chunk))
    return keys


@dataclass
class Run:
    status: int
    stderr: str
    peak_rss_kib: int
    seconds: float


class Enqueue:
    """``sluiceway enqueue ARGS…`` as a child process, its peak RSS read as it runs.

    (Not the ``ru_maxrss`` of its exit: that counts the forked test process before exec.)
    """

    def __init__(
        self,
        processes: Processes,
        logs: Path,
        amqp_url: str,
        *args: str,
        stdin: int = subprocess.DEVNULL,
    ) -> None:
        self.started = time.monotonic()
        self.errors = logs / f"enqueue-{time.monotonic_ns()}.log"
        with self.errors.open("wb") as errors:
            self.process = subprocess.Popen(
                processes.command("enqueue", *args),
                env={**processes.env, "SLUICEWAY_AMQP_URL": amqp_url},
                stdin=stdin,
                stdout=subprocess.DEVNULL,
                stderr=errors,
            )

    def _peak_rss_kib(self) -> int:
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return 0
        found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
        return int(found[1]) if found else 0

    async def finished(self, within: float) -> Run:
        deadline = time.monotonic() + within
        peak = 0
        while self.process.poll() is None:
            peak = max(peak, self._peak_rss_kib())
            if time.monotonic() > deadline:
                self.process.kill()
                self.process.wait()
                raise AssertionError(
                    f"enqueue still running after {within:.0f}s:\n{self.errors.read_text()}"
                )
            await asyncio.sleep(0.1)
        return Run(
            self.process.returncode, self.errors.read_text(), peak, time.monotonic() - self.started
        )


async def queued_keys(connection: AbstractConnection, queue: str) -> Counter[str]:
    """Take every task now on ``queue``; count each key's tasks."""
    expected = await depth(connection, queue)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=2000)
    found: Counter[str] = Counter()
    taken = 0
    done = asyncio.Event()

    async def take(message: AbstractIncomingMessage) -> None:
        nonlocal taken
        found[codec.decode_task(message.body)] += 1
        taken += 1
        if taken >= expected:
            done.set()

    declared = await channel.declare_queue(queue, passive=True)
    await declared.consume(take, no_ack=True)
    await asyncio.wait_for(done.wait(), 300)
    await channel.close()
    return found


@pytest.mark.timeout(2 * WITHIN + 300)
async def test_a_big_file_streams_in_constant_memory_with_progress(
    processes: Processes,
    services: ServiceUrls,
    pipeline: str,
    tmp_path: Path,
    amqp_connection: AbstractConnection,
) -> None:
    small, big = tmp_path / "small.txt", tmp_path / "big.txt"
    write_keys(small, 1000, prefix="s")  # not the big file's keys, which would be in flight
    keys = write_keys(big, LINES)
    fetch = topology.Queues(pipeline).fetch
    baseline = await Enqueue(processes, tmp_path, services.amqp, str(small)).finished(WITHIN)
    assert baseline.status == 0, baseline.stderr
    run = await Enqueue(processes, tmp_path, services.amqp, str(big)).finished(WITHIN)
    assert run.status == 0, run.stderr
    assert f"enqueued {LINES + 1000:,} keys" not in run.stderr  # counts are the run's own
    assert f"enqueued {LINES:,} keys to {fetch}" in run.stderr
    assert await depth(amqp_connection, fetch) == LINES + 1000
    progress = re.findall(r"enqueued ([\d,]+) keys so far", run.stderr)
    assert len(progress) >= int(run.seconds // PROGRESS_EVERY) - 1
    assert [int(n.replace(",", "")) for n in progress] == sorted(
        int(n.replace(",", "")) for n in progress
    )
    assert run.peak_rss_kib - baseline.peak_rss_kib < RSS_SLACK_KIB
    if keys:  # up to a million, check the queue key by key
        found = await queued_keys(amqp_connection, fetch)
        assert found == Counter([f"s{i:09d}" for i in range(1000)] + keys)
    print(
        f"\nenqueue: {LINES:,} lines in {run.seconds:.1f} s ({LINES / run.seconds:,.0f} keys/s), "
        f"peak RSS {run.peak_rss_kib / 1024:.1f} MiB (1,000 lines: "
        f"{baseline.peak_rss_kib / 1024:.1f} MiB), {len(progress)} progress lines"
    )


SQL_ROWS = 100_000
SQL_NULLS = 10  # NULL and empty rows among them, which the run skips and counts
# A 100,000-row run added 3.7-7.5 MiB to a 1,000-row run's peak here (a full confirm window
# and the cursor's prefetch); the same query read whole, asyncpg's fetch for the cursor,
# added 17 MiB.
SQL_RSS_SLACK_KIB = 12 * 1024


@pytest.mark.timeout(120)
async def test_a_big_query_streams_in_constant_memory(
    processes: Processes,
    services: ServiceUrls,
    pipeline: str,
    tmp_path: Path,
    amqp_connection: AbstractConnection,
    db: asyncpg.Connection,
) -> None:
    table = f'"keys_{pipeline}"'
    await db.execute(
        f"CREATE TABLE {table} AS SELECT 'q' || lpad(g::text, 9, '0') AS key"
        f" FROM generate_series(0, {SQL_ROWS - 1}) g"
        f" UNION ALL SELECT CASE WHEN g % 2 = 0 THEN NULL ELSE '' END"
        f" FROM generate_series(1, {SQL_NULLS}) g"
    )
    try:
        fetch = topology.Queues(pipeline).fetch
        small = "SELECT 's' || lpad(g::text, 9, '0') FROM generate_series(0, 999) g"
        baseline = await Enqueue(processes, tmp_path, services.amqp, "--sql", small).finished(60)
        assert baseline.status == 0, baseline.stderr
        run = await Enqueue(
            processes, tmp_path, services.amqp, "--sql", f"SELECT key FROM {table}"
        ).finished(90)
    finally:
        await db.execute(f"DROP TABLE {table}")
    assert run.status == 0, run.stderr
    # The queue's name is matched loosely: its "sluiceway" prefix is also the test database's
    # password, which every log line blots out.
    final = re.search(
        rf"enqueued ([\d,]+) keys to \S*\.{pipeline}\.fetch in [\d.]+s \([\d,]+/s\); "
        r"already in flight ([\d,]+), not queued again(?:; ([\d,]+) blank or NULL skipped)?",
        run.stderr,
    )
    assert final, run.stderr
    assert final.groups() == (f"{SQL_ROWS:,}", "0", f"{SQL_NULLS}")
    assert run.peak_rss_kib - baseline.peak_rss_kib < SQL_RSS_SLACK_KIB
    assert await depth(amqp_connection, fetch) == SQL_ROWS + 1000
    found = await queued_keys(amqp_connection, fetch)
    assert found == Counter(
        [f"s{i:09d}" for i in range(1000)] + [f"q{i:09d}" for i in range(SQL_ROWS)]
    )
    print(
        f"\nenqueue --sql: {SQL_ROWS:,} rows in {run.seconds:.1f} s "
        f"({SQL_ROWS / run.seconds:,.0f} keys/s), peak RSS {run.peak_rss_kib / 1024:.1f} MiB "
        f"(1,000 rows: {baseline.peak_rss_kib / 1024:.1f} MiB)"
    )


async def test_a_broker_cut_mid_enqueue_says_where_to_resume_and_the_resume_loses_nothing(
    processes: Processes,
    services: ServiceUrls,
    pipeline: str,
    tmp_path: Path,
    amqp_connection: AbstractConnection,
) -> None:
    source = tmp_path / "keys.txt"
    keys = write_keys(source, 60_000)
    fetch = topology.Queues(pipeline).fetch
    proxy = await TcpProxy(services.amqp).start()
    try:
        enqueue = Enqueue(processes, tmp_path, proxy.url, str(source))

        async def under_way() -> bool:
            try:
                return await depth(amqp_connection, fetch) >= 10_000
            except Exception:  # not declared yet
                return False

        await eventually(under_way, within=60, what="10,000 keys queued")
        await proxy.cut()
        cut = await enqueue.finished(60)
    finally:
        await proxy.close()
    assert cut.status == 1, cut.stderr
    said = re.search(
        r"stopped by the broker \(.*\) after ([\d,]+) keys were confirmed; every key before "
        r"line ([\d,]+) is queued\. Resume with: tail -n \+(\d+) (\S+) \| sluiceway enqueue -",
        cut.stderr,
    )
    assert said, cut.stderr
    confirmed, before, resume = (int(said[i].replace(",", "")) for i in (1, 2, 3))
    assert said[4] == str(source)
    assert resume == before == confirmed + 1  # one key a line, none blank
    assert confirmed < len(keys)

    rest = tmp_path / "rest.txt"
    rest.write_text("".join(f"{key}\n" for key in keys[resume - 1 :]))
    resumed = await Enqueue(processes, tmp_path, services.amqp, str(rest)).finished(WITHIN)
    assert resumed.status == 0, resumed.stderr

    found = await queued_keys(amqp_connection, fetch)
    lost = [key for key in keys if key not in found]
    twice = sum(n - 1 for n in found.values())
    assert not lost
    assert set(found) == set(keys)
    # Only keys sent but not yet confirmed at the cut are queued twice: at most a window.
    assert twice <= 4096 + 256
    record_check(
        Check(
            "enqueue cut mid-stream, resumed",
            rows_checked=len(keys),
            lost=lost,
            note=f"cut after {confirmed:,} confirmed; resumed from line {resume:,}; "
            f"{twice} keys queued twice (fetched twice, stored once)",
        )
    )


async def test_a_broker_cut_while_nothing_awaits_a_confirm_stops_the_run(
    processes: Processes,
    services: ServiceUrls,
    pipeline: str,
    tmp_path: Path,
    amqp_connection: AbstractConnection,
) -> None:
    """A cut between reads, every key sent so far confirmed, stops the run at its next
    publish: it does not wait for a broker that the run cannot go on without."""
    fetch = topology.Queues(pipeline).fetch
    proxy = await TcpProxy(services.amqp).start()
    try:
        enqueue = Enqueue(processes, tmp_path, proxy.url, "-", stdin=subprocess.PIPE)
        feed = enqueue.process.stdin
        assert feed is not None
        feed.write("".join(f"a{i:04d}\n" for i in range(1000)).encode())
        feed.flush()

        async def confirmed() -> bool:
            try:
                return await depth(amqp_connection, fetch) == 1000
            except Exception:  # not declared yet
                return False

        await eventually(confirmed, within=60, what="the first 1,000 keys queued")
        await proxy.cut()
        feed.write("".join(f"b{i:04d}\n" for i in range(1000)).encode())
        feed.close()
        cut = await enqueue.finished(60)
    finally:
        await proxy.close()
    assert cut.status == 1, cut.stderr
    assert re.search(
        r"stopped by the broker \(.*\) after 1,000 keys were confirmed; every key before "
        r"line 1,001 is queued\. Resume with: tail -n \+1001 - \| sluiceway enqueue -",
        cut.stderr,
    ), cut.stderr
    assert await depth(amqp_connection, fetch) == 1000
