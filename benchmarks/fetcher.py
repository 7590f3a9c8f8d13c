"""Benchmark: the fetcher's throughput and the shared rate limit's accuracy.

1. Throughput: one ``sluiceway fetcher`` process at its defaults (``--concurrency`` 0), no
   effective rate limit, against the sample API answering after each of ``--latency-ms``;
   fetches a second from the fetcher ready to the last key served, and the fetcher's CPU per
   fetch. Medians of ``--rounds``. ``--against PYTHON`` alternates, round by round, with the
   fetcher of another checkout (its ``.venv/bin/python``): a change measured side by side.
2. Accuracy: 1, 3 and 8 fetcher processes sharing a limit of 50 and of 500 requests/s against
   an upstream in this process that records when each request arrives (the upstream's clock):
   the most requests in any 1-second window, and the share of the limit used over the run.

Results are printed and written to ``benchmarks/results/fetcher.json``. Run with ``make bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aio_pika
import httpx
from aiohttp import web

from benchmarks.writer import DEFAULT_AMQP_URL, ROOT, Child, ContenderFailed, prefill, usage
from sluiceway_common import codec, topology

RESULTS = ROOT / "benchmarks" / "results" / "fetcher.json"
FETCHER_READY = "fetching sluiceway."
FETCHER_ARGV = (sys.executable, "-m", "sluiceway_common", "fetcher")
REDIS_URL = "redis://127.0.0.1:6379/0"


@asynccontextmanager
async def queues_for_run(connection: aio_pika.abc.AbstractConnection, name: str
                         ) -> AsyncIterator[topology.Queues]:  # fmt: skip
    queues = topology.Queues(name)
    channel = await connection.channel()
    await topology.declare(channel, queues)
    try:
        yield queues
    finally:
        for queue in queues.owned():
            await channel.queue_delete(queue)
        await channel.close()


def fetcher_env(args: argparse.Namespace, pipeline: str, source: str, limit: float,
                concurrency: int) -> dict[str, str]:  # fmt: skip
    """The fetcher's environment; ``concurrency`` 0 leaves it at the fetcher's default."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEWAY_")}
    return (
        env
        | {
            "SLUICEWAY_AMQP_URL": args.amqp_url,
            "SLUICEWAY_REDIS_URL": args.redis_url,
            "SLUICEWAY_PIPELINE": pipeline,
            "SLUICEWAY_SOURCE_URL": source,
            "SLUICEWAY_RATE_LIMIT": str(limit),
            "SLUICEWAY_LOG_LEVEL": "INFO",
        }
        | ({"SLUICEWAY_CONCURRENCY": str(concurrency)} if concurrency else {})
    )


async def throughput_round(args: argparse.Namespace, base: str, name: str, python: str,
                           logs: Path) -> tuple[float, float]:  # fmt: skip
    """(fetches a second, CPU µs a fetch) of one round of the fetcher ``python`` runs."""
    connection = await aio_pika.connect(args.amqp_url)
    try:
        async with queues_for_run(connection, f"bench-fetch-{os.getpid()}-{name}") as queues:
            keys = (codec.encode_task(f"user-{name}-{i}") for i in range(args.keys))
            await prefill(connection, queues.fetch, keys)
            async with httpx.AsyncClient() as client:
                served_before = await served(client, base)
                env = fetcher_env(args, queues.pipeline, base + "/users/{key}", 1e6,
                                  args.concurrency)  # fmt: skip
                argv = (python, *FETCHER_ARGV[1:])
                with Child(f"fetcher-{name}", argv, env, FETCHER_READY, logs) as child:
                    await child.wait_ready(60)
                    _, cpu_before = usage(child.proc.pid)
                    started = child.ready_at or time.perf_counter()
                    while await served(client, base) - served_before < args.keys:
                        if child.proc.poll() is not None:
                            raise ContenderFailed(f"fetcher exited:\n{child.tail()}")
                        if time.perf_counter() - started > 300:
                            raise ContenderFailed("fetcher did not finish in 300 s")
                        await asyncio.sleep(0.02)
                    elapsed = time.perf_counter() - started
                    _, cpu_after = usage(child.proc.pid)
                    await child.stop()
        return args.keys / elapsed, (cpu_after - cpu_before) / args.keys * 1e6
    finally:
        await connection.close()


async def served(client: httpx.AsyncClient, base: str) -> int:
    stats = (await client.get(base + "/stats")).json()["served"]
    return sum(int(n) for n in stats.values())


class Recorder:
    """An upstream that notes when each request arrives."""

    def __init__(self) -> None:
        self.arrivals: list[float] = []
        self.done = asyncio.Event()
        self._expected = 0

    def expect(self, count: int) -> None:
        self._expected = count
        if len(self.arrivals) >= count:
            self.done.set()

    async def handle(self, _: web.Request) -> web.Response:
        self.arrivals.append(time.monotonic())
        if self._expected and len(self.arrivals) >= self._expected:
            self.done.set()
        return web.json_response({"ok": True})


def most_in_one_second(times: list[float]) -> int:
    times = sorted(times)
    return max((bisect.bisect_right(times, t + 1.0) - i for i, t in enumerate(times)), default=0)


async def accuracy_run(args: argparse.Namespace, processes: int, limit: int,
                       logs: Path) -> dict[str, float]:  # fmt: skip
    recorder = Recorder()
    app = web.Application()
    app.router.add_get("/items/{key}", recorder.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    source = f"http://127.0.0.1:{runner.addresses[0][1]}/items/{{key}}"
    connection = await aio_pika.connect(args.amqp_url)
    try:
        name = f"bench-rate-{os.getpid()}-{processes}-{limit}"
        async with queues_for_run(connection, name) as queues:
            keys = int(limit * args.seconds)
            await prefill(connection, queues.fetch,
                          (codec.encode_task(f"k{i}") for i in range(keys)))  # fmt: skip
            env = fetcher_env(args, queues.pipeline, source, limit, 64)
            children = [Child(f"rate-{processes}-{limit}-{i}", FETCHER_ARGV, env,
                              FETCHER_READY, logs) for i in range(processes)]  # fmt: skip
            try:
                await asyncio.gather(*(c.wait_ready(60) for c in children))
                recorder.expect(keys)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(recorder.done.wait(), args.seconds * 3 + 30)
            finally:
                for child in children:
                    await child.stop()
    finally:
        await connection.close()
        await runner.cleanup()
    times = sorted(recorder.arrivals)
    span = times[-1] - times[0] if len(times) > 1 else 1.0
    return {
        "requests": len(times),
        "most_in_any_second": most_in_one_second(times),
        "allowed": limit * 1.05 + 1,
        "share_of_limit_used": (len(times) - 1) / span / limit,
    }


@asynccontextmanager
async def sample_api(latency_ms: float) -> AsyncIterator[str]:
    """``sluiceway sample-api`` on a free port, answering after ``latency_ms``; its base URL."""
    api = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sluiceway_common", "sample-api", "--sample-port", "0",
        "--sample-latency-ms", str(latency_ms), stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert api.stdout is not None
    try:
        yield (await api.stdout.readline()).decode().split()[-1]
    finally:
        api.terminate()
        await api.wait()


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"throughput": [], "accuracy": []}
    contenders = {"this": sys.executable} | ({"against": args.against} if args.against else {})
    with tempfile.TemporaryDirectory(prefix="sluiceway-fetch-bench-") as logs:
        for latency in args.latency_ms:
            rounds: dict[str, list[tuple[float, float]]] = {name: [] for name in contenders}
            async with sample_api(latency) as base:
                for r in range(args.rounds):
                    order = list(contenders)[r % len(contenders):] + list(contenders)[
                        : r % len(contenders)]  # fmt: skip
                    for name in order:
                        rounds[name].append(await throughput_round(
                            args, base, f"{latency:g}-{name}-{r}", contenders[name], Path(logs)
                        ))  # fmt: skip
            for name, measured in rounds.items():
                result = {
                    "contender": name, "python": contenders[name], "keys": args.keys,
                    "concurrency": args.concurrency or "default",
                    "upstream_latency_ms": latency,
                    "fetches_per_s": statistics.median(f for f, _ in measured),
                    "cpu_us_per_fetch": statistics.median(c for _, c in measured),
                    "rounds": measured,
                }  # fmt: skip
                results["throughput"].append(result)
                print(f"{latency:g} ms, {name}: {result['fetches_per_s']:,.0f} fetches/s, "
                      f"{result['cpu_us_per_fetch']:,.0f} µs CPU a fetch (medians of "
                      f"{args.rounds}); rounds: " + ", ".join(
                          f"{f:,.0f}/s {c:,.0f} µs" for f, c in measured), flush=True)  # fmt: skip
            if args.against:
                cpu = [a[1] / t[1] for t, a in zip(rounds["this"], rounds["against"], strict=True)]
                rate = [t[0] / a[0] for t, a in zip(rounds["this"], rounds["against"], strict=True)]
                print(f"{latency:g} ms, side by side: CPU a fetch, against ÷ this "
                      f"{statistics.median(cpu):.2f}x ({' · '.join(f'{x:.2f}' for x in cpu)}); "
                      f"fetches/s, this ÷ against {statistics.median(rate):.2f}x "
                      f"({' · '.join(f'{x:.2f}' for x in rate)})", flush=True)  # fmt: skip
        if not args.skip_accuracy:
            print(f"{'processes':>10}{'limit/s':>9}{'most in 1 s':>13}{'allowed':>9}"
                  f"{'used':>7}")  # fmt: skip
            for limit in (50, 500):
                for processes in (1, 3, 8):
                    run = await accuracy_run(args, processes, limit, Path(logs))
                    results["accuracy"].append({"processes": processes, "limit": limit,
                                                **run})  # fmt: skip
                    print(f"{processes:>10}{limit:>9}{run['most_in_any_second']:>13}"
                          f"{run['allowed']:>9.1f}{run['share_of_limit_used']:>7.0%}",
                          flush=True)  # fmt: skip
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=0, help="0: the fetcher's default")
    parser.add_argument(
        "--latency-ms",
        type=lambda v: [float(x) for x in v.split(",")],
        default=[0.0, 50.0],
        help="the sample API's, comma-separated",
    )
    parser.add_argument("--against", help="another checkout's python, alternated with this")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0, help="accuracy: traffic per run")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--amqp-url", default=DEFAULT_AMQP_URL)
    parser.add_argument("--redis-url", default=REDIS_URL)
    args = parser.parse_args()
    results = asyncio.run(bench(args))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"cores": os.cpu_count(), **results}, indent=2) + "\n")
    print(f"results in {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
