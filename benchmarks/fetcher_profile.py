"""Profile: where one fetcher at its defaults spends its CPU.

Prefills ``--keys`` fetch tasks, starts one ``sluiceway fetcher`` (``SLUICEWAY_CONCURRENCY``
and every other setting at its default, the rate limit out of the way) against the sample API
answering after ``--latency-ms``, attaches py-spy to it once it is fetching, and stops both
when the sample API has served every key. Prints the fetcher's CPU a key and the profile's
top: the functions most often on CPU themselves (*self*), and those most often on the stack
(*total*), as shares of the samples. ``--python`` profiles another checkout's fetcher (its
``.venv/bin/python``), for a profile before and after a change. Needs the ``bench`` group
(py-spy): ``uv sync --group bench``.

    python -m benchmarks.fetcher_profile --keys 20000 --latency-ms 0
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aio_pika
import httpx
import redis.asyncio as aioredis

from benchmarks.fetcher import REDIS_URL, fetcher_env, queues_for_run, sample_api, served
from benchmarks.writer import DEFAULT_AMQP_URL, Child, ContenderFailed, prefill, usage
from sluiceway_common import codec, store

FETCHER_READY = "fetching sluiceway."


def frame_name(frame: str) -> str:
    """``function (path:line)`` as ``function (file)``: lines of one function count once."""
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if "site-packages" in parts or "src" in parts else path
    return f"{name} ({short})"


def top(raw: Path, count: int) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """Samples, and the ``count`` functions most on CPU themselves and most on the stack."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        weight = int(n)
        samples += weight
        frames = [frame_name(f) for f in stack.split(";") if not f.startswith("process ")]
        if not frames:
            continue
        own[frames[-1]] += weight
        for name in set(frames):
            total[name] += weight
    return samples, own.most_common(count), total.most_common(count)


async def profile(args: argparse.Namespace, logs: Path) -> None:
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        raise SystemExit("py-spy not found: uv sync --group bench")
    async with sample_api(args.latency_ms) as base:
        connection = await aio_pika.connect(args.amqp_url)
        try:
            async with queues_for_run(connection, f"bench-profile-{os.getpid()}") as queues:
                keys = (codec.encode_task(f"user-p-{i}") for i in range(args.keys))
                await prefill(connection, queues.fetch, keys)
                env = fetcher_env(
                    args, queues.pipeline, base + "/users/{key}", 1e6, args.concurrency
                )
                argv = (args.python, "-m", "sluiceway_common", "fetcher")
                redis_client = aioredis.Redis.from_url(args.redis_url)
                reports = store.FetcherReports(redis_client, queues.pipeline)
                load: dict[str, object] = {}
                async with httpx.AsyncClient() as client, redis_client:
                    before = await served(client, base)
                    with Child("fetcher", argv, env, FETCHER_READY, logs) as child:
                        await child.wait_ready(60)
                        raw = logs / "profile.txt"
                        recording = await asyncio.create_subprocess_exec(
                            spy, "record", "--pid", str(child.proc.pid), "--format", "raw",
                            "--rate", str(args.rate), "--output", str(raw),
                            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
                        )  # fmt: skip
                        _, cpu_before = usage(child.proc.pid)
                        started = time.perf_counter()
                        while await served(client, base) - before < args.keys:
                            if child.proc.poll() is not None:
                                raise ContenderFailed(f"fetcher exited:\n{child.tail()}")
                            loads = (await reports.read()).values()
                            load = next(iter(loads), load)
                            await asyncio.sleep(0.02)
                        elapsed = time.perf_counter() - started
                        _, cpu_after = usage(child.proc.pid)
                        recording.send_signal(signal.SIGINT)
                        await asyncio.wait_for(recording.wait(), 30)
                        await child.stop()
        finally:
            await connection.close()
    if args.raw:
        shutil.copy(raw, args.raw)
    samples, own, total = top(raw, args.top)
    print(f"{args.keys:,} keys at {args.latency_ms:g} ms, "
          f"concurrency {args.concurrency or 'default'}: {args.keys / elapsed:,.0f} keys/s, "
          f"{(cpu_after - cpu_before) / args.keys * 1e6:,.0f} µs CPU a key; "
          f"{samples:,} samples")  # fmt: skip
    if load:
        print("the fetcher's last load report: " + ", ".join(f"{k} {v}" for k, v in load.items()))
    for title, rows in (("self", own), ("total", total)):
        print(f"\n{title:>6}  function")
        for name, n in rows:
            print(f"{n / samples:>6.1%}  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keys", type=int, default=20_000)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--concurrency", type=int, default=0, help="0: the fetcher's default")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples a second")
    parser.add_argument("--raw", help="keep py-spy's raw stacks here")
    parser.add_argument("--python", default=sys.executable, help="the fetcher's interpreter")
    parser.add_argument("--amqp-url", default=DEFAULT_AMQP_URL)
    parser.add_argument("--redis-url", default=REDIS_URL)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sluiceway-fetch-profile-") as logs:
        asyncio.run(profile(args, Path(logs)))


if __name__ == "__main__":
    main()
