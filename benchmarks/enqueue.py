"""Benchmark: ``sluiceway enqueue``, in two parts.

1. Publishing fetch tasks with confirms, aio-pika's per-message publish against sluiceway's
   batched ``ConfirmedPublisher``. Each round publishes ``--keys`` tasks to a fresh quorum
   queue declared as a pipeline's fetch queue, then deletes it. Median keys a second and CPU
   microseconds a key of this process (the broker's CPU is not counted).
2. The command itself, ``enqueue FILE`` beside ``enqueue --sql`` over the same
   ``--command-keys`` keys (a file, and a table in ``--database-url``), each round a fresh
   pipeline whose in-flight marks, in Redis, and queues are deleted after it; and each source
   alone (``--dry-run``: no claims, no publishing). Median keys a second from start to exit,
   CPU microseconds a key and peak RSS of the process, and what the claims cost Redis: the
   memory its in-flight set of that many marks takes (``INFO memory``) and the CPU Redis spent
   (``INFO cpu``, the whole server's, so other clients' work counts too).

The contenders of a part alternate round by round so all see the same machine load. Results
are printed and written to ``benchmarks/results/enqueue.json``. Run with ``make bench``;
``--only publisher`` or ``--only command`` runs one part and keeps the other's last results.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import redis.asyncio as aioredis
from aio_pika.abc import AbstractChannel

from sluiceway_common import amqp, codec, store, topology
from sluiceway_common.publisher import ConfirmedPublisher

RESULTS = Path(__file__).resolve().parent / "results" / "enqueue.json"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
REDIS_URL = "redis://127.0.0.1:6379/0"
DATABASE_URL = "postgresql://sluiceway:sluiceway@127.0.0.1:5432/sluiceway"

Contender = Callable[[AbstractChannel, str, list[bytes]], Awaitable[None]]


async def per_message(channel: AbstractChannel, queue: str, bodies: list[bytes]) -> None:
    """A task a message, each awaiting its own confirm, 512 in flight (what `enqueue` did)."""
    slots = asyncio.Semaphore(512)
    pending: set[asyncio.Task[None]] = set()

    async def send(body: bytes) -> None:
        try:
            await channel.default_exchange.publish(
                topology.persistent(body), routing_key=queue, mandatory=True
            )
        finally:
            slots.release()

    for body in bodies:
        await slots.acquire()
        task = asyncio.create_task(send(body))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)


async def batched(channel: AbstractChannel, queue: str, bodies: list[bytes]) -> None:
    publisher = ConfirmedPublisher(channel, queue)
    for body in bodies:
        await publisher.publish(body)
    await publisher.drain()
    assert publisher.confirmed == len(bodies)


CONTENDERS: dict[str, Contender] = {
    "aio-pika, a publish and a confirm wait per message": per_message,
    "sluiceway ConfirmedPublisher (256 a write, 4,096 in flight)": batched,
}


async def one_round(url: str, contender: Contender, keys: int) -> tuple[float, float]:
    """Return (keys a second, CPU microseconds a key) for one round."""
    pipeline = f"bench-{uuid.uuid4().hex[:8]}"
    queues = topology.Queues(pipeline)
    bodies = [codec.encode_task(f"user-{i:08d}") for i in range(keys)]
    connection = await amqp.connect(url, "bench")
    try:
        channel = await amqp.publishing_channel(connection)
        await topology.declare(channel, queues, queues.fetch)
        wall, cpu = time.perf_counter(), time.process_time()
        await contender(channel, queues.fetch, bodies)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        await channel.queue_delete(queues.fetch)
    finally:
        await connection.close()
    return keys / wall, cpu / keys * 1e6


async def run(url: str, keys: int, rounds: int) -> dict[str, dict[str, float]]:
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in CONTENDERS}
    for number in range(rounds):
        for name, contender in CONTENDERS.items():
            rate, cpu = await one_round(url, contender, keys)
            results[name].append((rate, cpu))
            print(f"round {number + 1}: {name}: {rate:,.0f} keys/s, {cpu:.0f} µs CPU a key")
    return {
        name: {
            "keys_per_second": statistics.median(r for r, _ in rounds_),
            "cpu_us_per_key": statistics.median(c for _, c in rounds_),
        }
        for name, rounds_ in results.items()
    }


# --- part 2: the command ------------------------------------------------------------------

COMMAND_CONTENDERS = {
    "enqueue FILE": ("file", False),
    "enqueue --sql": ("sql", False),
    "enqueue FILE --dry-run (the source alone)": ("file", True),
    "enqueue --sql --dry-run (the source alone)": ("sql", True),
}
DONE = re.compile(r"enqueued ([\d,]+) keys to")


async def redis_figures(client: aioredis.Redis) -> tuple[int, float]:
    """Redis's ``used_memory`` (bytes) and the CPU seconds its server has used so far."""
    memory, cpu = await client.info("memory"), await client.info("cpu")
    return int(memory["used_memory"]), float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


async def settled(client: aioredis.Redis) -> int:
    """Redis's ``used_memory`` once nothing deleted waits to be freed in the background."""
    while True:
        memory = await client.info("memory")
        if not int(memory.get("lazyfree_pending_objects", 0)):
            return int(memory["used_memory"])
        await asyncio.sleep(0.1)


def run_command(argv: list[str], env: dict[str, str], log: Path) -> tuple[float, float, int, str]:
    """Run ``argv`` to its end; return its wall seconds, CPU seconds, peak RSS in KiB (its
    VmHWM, read as it runs: ``ru_maxrss`` would count this process, forked before exec) and
    what it logged."""
    with log.open("wb") as errors:
        wall = time.perf_counter()
        process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=errors)  # fmt: skip
    peak = 0
    while True:
        try:
            status = Path(f"/proc/{process.pid}/status").read_text()
            found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
            peak = max(peak, int(found[1]) if found else 0)
        except OSError:
            pass
        pid, code, rusage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        time.sleep(0.1)
    wall = time.perf_counter() - wall
    process.returncode = os.waitstatus_to_exitcode(code)
    logged = log.read_text()
    if process.returncode != 0:
        raise RuntimeError(f"{argv[3:]} exited with {process.returncode}: {logged[-800:]}")
    return wall, rusage.ru_utime + rusage.ru_stime, peak, logged


async def command_round(
    args: argparse.Namespace, name: str, table: str, keys_file: Path, logs: Path
) -> dict[str, float]:
    """One run of contender ``name`` on a fresh pipeline, cleaned up after it."""
    source, dry_run = COMMAND_CONTENDERS[name]
    pipeline = f"bench-{uuid.uuid4().hex[:8]}"
    queues = topology.Queues(pipeline)
    env = {key: value for key, value in os.environ.items() if not key.startswith("SLUICEWAY_")}
    env |= {
        "SLUICEWAY_AMQP_URL": args.amqp_url, "SLUICEWAY_REDIS_URL": args.redis_url,
        "SLUICEWAY_DATABASE_URL": args.database_url, "SLUICEWAY_PIPELINE": pipeline,
    }  # fmt: skip
    argv = [sys.executable, "-m", "sluiceway_common", "enqueue"]
    argv += [str(keys_file)] if source == "file" else ["--sql", f"SELECT key FROM {table}"]
    argv += ["--dry-run"] if dry_run else []
    client = aioredis.Redis.from_url(args.redis_url)
    connection = await aio_pika.connect(args.amqp_url)
    log = logs / f"{pipeline}.log"
    try:
        await settled(client)  # the last round's set gone
        memory, redis_cpu = await redis_figures(client)
        wall, cpu, peak, logged = await asyncio.to_thread(run_command, argv, env, log)
        figures = {
            "keys_per_second": args.command_keys / wall,
            "cpu_us_per_key": cpu / args.command_keys * 1e6,
            "peak_rss_mib": peak / 1024,
        }
        if not dry_run:
            done = DONE.search(logged)
            assert done, logged
            assert int(done[1].replace(",", "")) == args.command_keys, logged
            assert await client.zcard(store.inflight(pipeline)) == args.command_keys
            marked, redis_cpu_after = await redis_figures(client)
            figures["redis_bytes_per_mark"] = (marked - memory) / args.command_keys
            usage = await client.memory_usage(store.inflight(pipeline), samples=0)
            figures["redis_set_bytes_per_mark"] = int(usage or 0) / args.command_keys
            await client.delete(store.inflight(pipeline))
            figures["redis_bytes_per_mark_freed"] = (
                marked - await settled(client)
            ) / args.command_keys
            figures["redis_cpu_us_per_key"] = (
                (redis_cpu_after - redis_cpu) / args.command_keys * 1e6
            )
            channel = await connection.channel()
            declared = await channel.declare_queue(queues.fetch, passive=True)
            assert declared.declaration_result.message_count == args.command_keys
            await channel.close()
    finally:
        await client.delete(*store.owned(pipeline))
        for queue in queues.owned():
            channel = await connection.channel()
            await channel.queue_delete(queue)
            await channel.close()
        await connection.close()
        await client.aclose()
    return figures


async def run_commands(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    table = f"bench_enqueue_keys_{uuid.uuid4().hex[:8]}"
    db = await asyncpg.connect(args.database_url)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in COMMAND_CONTENDERS}
    with tempfile.TemporaryDirectory(prefix="bench-enqueue-") as scratch:
        keys_file = Path(scratch) / "keys.txt"
        try:
            # The same keys in both sources, in the same order.
            await db.execute(
                f"CREATE TABLE {table} AS SELECT 'k' || lpad(g::text, 9, '0') AS key"
                f" FROM generate_series(0, {args.command_keys - 1}) g"
            )
            await db.copy_from_query(f"SELECT key FROM {table}", output=str(keys_file))
            for number in range(args.command_rounds):
                for name in COMMAND_CONTENDERS:
                    figures = await command_round(args, name, table, keys_file, Path(scratch))
                    results[name].append(figures)
                    print(f"round {number + 1}: {name}: " + describe(figures), flush=True)
        finally:
            await db.execute(f"DROP TABLE IF EXISTS {table}")
            await db.close()
    return {
        name: {figure: statistics.median(r[figure] for r in rounds_) for figure in rounds_[0]}
        for name, rounds_ in results.items()
    }


def describe(figures: dict[str, float]) -> str:
    text = (f"{figures['keys_per_second']:,.0f} keys/s, {figures['cpu_us_per_key']:.1f} µs CPU "
            f"a key, peak RSS {figures['peak_rss_mib']:.1f} MiB")  # fmt: skip
    if "redis_bytes_per_mark" in figures:
        text += (f"; Redis {figures['redis_bytes_per_mark']:.0f} bytes a mark (set "
                 f"{figures['redis_set_bytes_per_mark']:.0f}, freed "
                 f"{figures['redis_bytes_per_mark_freed']:.0f}), "
                 f"{figures['redis_cpu_us_per_key']:.1f} µs CPU a key")  # fmt: skip
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=50_000, help="part 1: keys a round")
    parser.add_argument("--rounds", type=int, default=3, help="part 1: rounds")
    parser.add_argument("--command-keys", type=int, default=1_000_000, help="part 2: keys a run")
    parser.add_argument("--command-rounds", type=int, default=3, help="part 2: rounds")
    parser.add_argument("--only", choices=("publisher", "command"))
    parser.add_argument("--amqp-url", default=AMQP_URL)
    parser.add_argument("--redis-url", default=REDIS_URL)
    parser.add_argument("--database-url", default=DATABASE_URL,
                        help="part 2: where the table of keys is made for --sql")  # fmt: skip
    args = parser.parse_args()
    results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if args.only != "command":
        results |= {"keys": args.keys, "rounds": args.rounds, "medians": publisher_part(args)}
    if args.only != "publisher":
        medians = asyncio.run(run_commands(args))
        for name, figures in medians.items():
            print(f"median: {name}: " + describe(figures))
        file, sql = medians["enqueue FILE"], medians["enqueue --sql"]
        print(
            f"--sql against FILE: {sql['keys_per_second'] / file['keys_per_second']:.2f}x the "
            f"keys a second, {sql['cpu_us_per_key'] / file['cpu_us_per_key']:.2f}x the CPU a "
            f"key, peak RSS {sql['peak_rss_mib'] - file['peak_rss_mib']:+.1f} MiB"
        )
        results["command"] = {
            "keys": args.command_keys, "rounds": args.command_rounds, "medians": medians,
        }  # fmt: skip
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


def publisher_part(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    medians = asyncio.run(run(args.amqp_url, args.keys, args.rounds))
    (old, old_figures), (new, new_figures) = medians.items()
    for name, figures in medians.items():
        print(
            f"median: {name}: {figures['keys_per_second']:,.0f} keys/s, "
            f"{figures['cpu_us_per_key']:.0f} µs CPU a key"
        )
    speedup = new_figures["keys_per_second"] / old_figures["keys_per_second"]
    saving = old_figures["cpu_us_per_key"] / new_figures["cpu_us_per_key"]
    print(f"{new} against {old}: {speedup:.1f}x the keys a second, {saving:.1f}x less CPU a key")
    return medians


if __name__ == "__main__":
    main()
