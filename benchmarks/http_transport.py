"""Benchmark: CPU per upstream request, httpx's client against the fetcher's GET over aiohttp.

Starts the sample API in a child process on loopback, then alternates rounds of the two
clients (same requests, same concurrency) so that both see the same machine load, and
prints the median of each with their ratio. Run with ``make bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time

import httpx

from sluiceway_fetcher.transport import Answer, Upstream


def client(kind: str, concurrency: int) -> httpx.AsyncClient | Upstream:
    if kind == "httpx":
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        return httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(limits=limits), timeout=30)
    return Upstream({}, concurrency, 30)


async def one_round(kind: str, base: str, requests: int, concurrency: int) -> tuple[float, float]:
    """Return (requests per second, CPU microseconds per request) for one round."""
    async with client(kind, concurrency) as http:
        slots = asyncio.Semaphore(concurrency)

        async def get(i: int) -> None:
            async with slots:
                response = await http.get(f"{base}/users/user-{i}")
                status = response.status if isinstance(response, Answer) else response.status_code
                assert status == 200, status

        await asyncio.gather(*(get(i) for i in range(concurrency * 4)))  # warm the pool
        wall, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(get(i) for i in range(requests)))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return requests / wall, cpu / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    api = subprocess.Popen(
        [sys.executable, "-m", "sluiceway_common", "sample-api", "--sample-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert api.stdout is not None
        base = api.stdout.readline().decode().split()[-1]
        results: dict[str, list[tuple[float, float]]] = {"httpx": [], "fetcher": []}
        for _ in range(args.rounds):
            for kind in results:
                results[kind].append(
                    asyncio.run(one_round(kind, base, args.requests, args.concurrency))
                )
        print(f"upstream GETs: {args.requests} a round, {args.concurrency} in flight, "
              f"{args.rounds} rounds, medians")  # fmt: skip
        medians = {}
        for kind, rounds in results.items():
            rate = statistics.median(r for r, _ in rounds)
            cpu = statistics.median(c for _, c in rounds)
            medians[kind] = cpu
            print(f"  {kind:<20} {rate:>8,.0f} req/s  {cpu:>7,.0f} µs CPU/request")
        print(f"  CPU per request, httpx / fetcher: {medians['httpx'] / medians['fetcher']:.1f}x")
    finally:
        api.terminate()
        api.wait()
        api.stdout.close()  # type: ignore[union-attr]


if __name__ == "__main__":
    main()
