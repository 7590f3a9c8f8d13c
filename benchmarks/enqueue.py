"""Benchmark: publishing fetch tasks with confirms, aio-pika's per-message publish against
sluiceway's batched ``ConfirmedPublisher``.

Each round publishes ``--keys`` tasks to a fresh quorum queue declared as a pipeline's fetch
queue, then deletes it; the contenders alternate round by round so both see the same machine
load. Prints the median keys a second and CPU microseconds a key of this process (the
broker's CPU is not counted), and writes ``benchmarks/results/enqueue.json``. Run with
``make bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from aio_pika.abc import AbstractChannel

from sluiceway_common import amqp, codec, topology
from sluiceway_common.publisher import ConfirmedPublisher

RESULTS = Path(__file__).resolve().parent / "results" / "enqueue.json"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--amqp-url", default=AMQP_URL)
    args = parser.parse_args()
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
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps({"keys": args.keys, "rounds": args.rounds, "medians": medians}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
