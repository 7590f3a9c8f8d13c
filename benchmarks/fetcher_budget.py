"""Benchmark: how much of the rate limit the fetchers spend, counted by the operator or fixed.

A *contender* is the ``fetcher`` section of a Pipeline, parsed by the operator's own
``spec.parse`` (so the start count and the scale-down window are the CRD's defaults), each
fetcher holding ``CONCURRENCY`` (8) requests in flight:

* ``operator``: ``minReplicas: 1, maxReplicas: 8``; the operator sizes the fetchers;
* ``fixed 1``: no bounds, the CRD's default ``replicas: 1``;
* ``fixed 8``: ``replicas: 8``, the operator's maximum, a generous fixed count.

There is no Kubernetes here, so the benchmark plays the operator's part with the operator's
code: every ``pollIntervalSeconds`` (5 s) it reads the fetch and delay queues' depth
(``broker.DepthReader``) and the fetchers' load reports in Redis (``store.FetcherReports``),
asks ``scaling.fetchers_wanted`` for the count (through its ``Stabilizer``, as the controller
does) and starts or stops real ``sluiceway fetcher`` processes to match, as the Deployment's
pods would be.

Scenarios: the sample API answering after 50 ms at a limit of 200 requests/s, and after
500 ms at 50/s. A fetcher holding 8 requests sends at most 160 and 16 a second there, so one
fixed fetcher is short in both. The policy's count goes with ``limit * latency /
concurrency``: these stand for 800/s and 200/s at the CRD's default concurrency of 32, which
two cores could not serve at 50 ms (one fetcher at 32 would then hold ~600/s on its own).

*Utilisation* is the requests the sample API served a second (its ``/stats``) over a steady
window, divided by the limit. The window opens ``SETTLE`` seconds after every fetcher wanted
is running (for the operator: after it scaled on a measured latency) and lasts ``--window``
seconds; the fetcher CPU is that of every fetcher process over the window. A round runs each
scenario's contenders one after the other, their order rotating from round to round; the
report gives medians of ``--rounds``, and each round's ratios side by side.

Results are printed and written to ``benchmarks/results/fetcher_budget.json``. Run with
``make bench``; ``--rounds 1 --window 5`` is a short run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import tempfile
import time
from collections import Counter
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import redis.asyncio as aioredis

from benchmarks.fetcher import (
    FETCHER_ARGV,
    FETCHER_READY,
    REDIS_URL,
    fetcher_env,
    queues_for_run,
    sample_api,
    served,
)
from benchmarks.writer import DEFAULT_AMQP_URL, ROOT, Child, ContenderFailed, prefill
from sluiceway_common import codec, store, topology
from sluiceway_operator import scaling, spec
from sluiceway_operator.broker import DepthReader

RESULTS = ROOT / "benchmarks" / "results" / "fetcher_budget.json"
SCENARIOS = ((50, 200), (500, 50))  # (the sample API's latency in ms, the limit a second)
CONCURRENCY = 8
CONTENDERS: dict[str, dict[str, int]] = {
    "operator": {"minReplicas": 1, "maxReplicas": 8, "concurrency": CONCURRENCY},
    "fixed 1": {"concurrency": CONCURRENCY},
    "fixed 8": {"replicas": 8, "concurrency": CONCURRENCY},
}
POLL_SECONDS = 5
SETTLE = 2.0  # seconds from the last fetcher ready to the window: the limiter's burst spent
WARMUP_LIMIT = 60.0  # seconds a contender may take to settle before it is given up
TICK = 0.1
LATE_SLOTS = re.compile(r"(\d+) rate-limit slots given up for a late wake-up")


def pipeline_spec(name: str, source: str, limit: float, fetcher: dict[str, int]
                  ) -> spec.PipelineSpec:  # fmt: skip
    return spec.parse(name, "bench", {
        "connectionsSecret": "bench", "image": {"repository": "bench", "tag": "bench"},
        "source": {"url": source, "rateLimit": limit}, "fetcher": fetcher,
        "pollIntervalSeconds": POLL_SECONDS,
    })  # fmt: skip


class Fleet:
    """A fetcher Deployment's pods, played by processes: started and stopped to a count."""

    def __init__(self, name: str, env: dict[str, str], logs: Path) -> None:
        self._name, self._env, self._logs = name, env, logs
        self.running: list[Child] = []
        self.stopped: list[Child] = []

    async def scale(self, count: int) -> None:
        while len(self.running) < count:
            spawned = len(self.running) + len(self.stopped)
            self.running.append(Child(f"{self._name}-{spawned}", FETCHER_ARGV, self._env,
                                      FETCHER_READY, self._logs))  # fmt: skip
        extra, self.running = self.running[count:], self.running[:count]
        for child in extra:
            child.sample()  # its CPU, while /proc still has it
        await asyncio.gather(*(child.stop() for child in extra))
        self.stopped += extra

    def ready_since(self) -> float | None:
        """When the last running fetcher got ready; None while one is starting."""
        ready: list[float] = []
        for child in self.running:
            child.check_ready()
            if child.proc.poll() is not None:
                raise ContenderFailed(f"{child.name} exited:\n{child.tail()}")
            if child.ready_at is None:
                return None
            ready.append(child.ready_at)
        return max(ready, default=None)

    def cpu(self) -> dict[str, float]:
        """CPU seconds of every fetcher started, by name."""
        for child in self.running:
            child.sample()
        return {child.name: child.cpu_seconds for child in self.running + self.stopped}

    async def close(self) -> None:
        await self.scale(0)

    def late_slots(self) -> int:
        """Rate-limit slots the fetchers gave up for waking too late (each says at its stop)."""
        said = (LATE_SLOTS.search(c.log_path.read_text(errors="replace")) for c in self.stopped)
        return sum(int(found[1]) for found in said if found)


class Operator:
    """The controller's fetcher scaling for one Pipeline (``Controller._scale_fetchers``)."""

    def __init__(self, pipeline: spec.PipelineSpec, reader: DepthReader,
                 redis: aioredis.Redis, now: float) -> None:  # fmt: skip
        self.pipeline, self._reader, self._redis = pipeline, reader, redis
        self.stabilizer = scaling.Stabilizer(pipeline.fetcher.stabilization)
        self.stabilizer.seed(now, pipeline.fetcher.replicas)
        self.polls: list[dict[str, Any]] = []

    @property
    def measured(self) -> bool:
        """Whether a poll has sized the fetchers on a measured latency."""
        return any(poll["latency"] is not None for poll in self.polls)

    async def poll(self, current: int, now: float) -> int:
        fetcher = self.pipeline.fetcher
        assert fetcher.min_replicas is not None
        assert fetcher.max_replicas is not None
        queues = topology.Queues(self.pipeline.pipeline)
        depth = await self._reader.read_total((queues.fetch, *queues.retries()))
        reports = await store.FetcherReports(self._redis, self.pipeline.pipeline).read()
        latency = scaling.mean_latency(list(reports.values()))
        plan = scaling.fetchers_wanted(
            backlog=depth.messages, rate=self.pipeline.rate_limit, latency=latency,
            concurrency=fetcher.concurrency, low=fetcher.min_replicas,
            high=fetcher.max_replicas, current=current,
        )  # fmt: skip
        replicas = self.stabilizer.recommend(now, plan.replicas, current)
        waits = [r["rate_wait"] for r in reports.values() if r.get("rate_wait") is not None]
        in_hand = sum(r.get("in_hand") or 0 for r in reports.values())
        ended = sum(r["fetches"] / r["seconds"] for r in reports.values() if r.get("seconds"))
        self.polls.append({
            "backlog": depth.messages, "latency": latency, "reports": len(reports),
            "in_hand": in_hand, "rate_wait": statistics.fmean(waits) if waits else None,
            # How long a task holds its place (Little's law): the wait for a slot, the
            # request and the publish, where the latency counts the request alone.
            "held": in_hand / ended if ended else None,
            "replicas": replicas, "bound": plan.bound,
        })  # fmt: skip
        return replicas


@dataclass
class Bench:
    args: argparse.Namespace
    connection: aio_pika.abc.AbstractConnection
    redis: aioredis.Redis
    reader: DepthReader
    http: httpx.AsyncClient
    apis: dict[int, str]  # the sample API's base URL by its latency (ms)
    logs: Path


async def run(bench: Bench, latency_ms: int, limit: int, contender: str, round_no: int
              ) -> dict[str, Any]:  # fmt: skip
    """One contender in one scenario: warm up, then a window of ``--window`` seconds."""
    base, window = bench.apis[latency_ms], bench.args.window
    name = f"bench-budget-{os.getpid()}-{round_no}-{latency_ms}-{contender.replace(' ', '')}"
    async with queues_for_run(bench.connection, name) as queues:
        pipeline = pipeline_spec(queues.pipeline, base + "/users/{key}", limit,
                                 CONTENDERS[contender])  # fmt: skip
        # Keys enough that the backlog outlasts the slowest warm-up and the window.
        keys = int(limit * (WARMUP_LIMIT + window + 10))
        await prefill(bench.connection, queues.fetch,
                      (codec.encode_task(f"k{i}") for i in range(keys)))  # fmt: skip
        env = fetcher_env(bench.args, queues.pipeline, pipeline.source_url, pipeline.rate_limit,
                          pipeline.fetcher.concurrency)  # fmt: skip
        # Bytecode cached after the first start, as an image has it: without, every fetcher
        # compiles its imports again (~1.6 s of CPU), and eight starting together take 15 s.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        fleet = Fleet(name, env, bench.logs)
        started = time.perf_counter()
        operator = (Operator(pipeline, bench.reader, bench.redis, started)
                    if pipeline.fetcher.scaled else None)  # fmt: skip
        try:
            await fleet.scale(pipeline.fetcher.replicas)
            next_poll = started + pipeline.poll_interval
            opened: float | None = None
            served_before, cpu_before = 0, dict[str, float]()
            counts: list[int] = []
            while True:
                now = time.perf_counter()
                if operator is not None and now >= next_poll:
                    next_poll += pipeline.poll_interval
                    await fleet.scale(await operator.poll(len(fleet.running), now))
                ready = fleet.ready_since()
                if opened is None:
                    if (ready is not None and now - ready >= SETTLE
                            and (operator is None or operator.measured)):  # fmt: skip
                        served_before, cpu_before = await served(bench.http, base), fleet.cpu()
                        opened = time.perf_counter()
                    elif now - started > WARMUP_LIMIT:
                        raise ContenderFailed(f"{contender} not settled in {WARMUP_LIMIT:.0f} s")
                else:
                    counts.append(len(fleet.running))
                    if now - opened >= window:
                        break
                await asyncio.sleep(TICK)
            served_after, cpu_after = await served(bench.http, base), fleet.cpu()
            assert opened is not None
            seconds = time.perf_counter() - opened
            [left] = await topology.queue_depths(bench.connection, (queues.fetch,))
        finally:
            await fleet.close()
            await bench.redis.delete(*store.owned(queues.pipeline))
        late = fleet.late_slots()
    if left.ready == 0:
        raise ContenderFailed(f"{contender}: the backlog ran out; measure with more keys")
    requests = served_after - served_before
    cpu = sum(cpu_after[n] - cpu_before.get(n, 0.0) for n in cpu_after)
    polls = operator.polls if operator is not None else []
    return {
        "contender": contender, "round": round_no,
        "fetchers": max(counts), "fetchers_min": min(counts),
        "bound": polls[-1]["bound"] if polls else "fixed",
        "latency_read_ms": polls[-1]["latency"] * 1000 if polls and polls[-1]["latency"] else None,
        "warmup_s": opened - started, "window_s": seconds,
        "requests_per_s": requests / seconds, "utilisation": requests / seconds / limit,
        "fetcher_cpu_cores": cpu / seconds, "cpu_us_per_request": cpu / max(requests, 1) * 1e6,
        "late_slots": late,  # over the whole run, warm-up included
        "polls": polls,
    }  # fmt: skip


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of one contender's rounds in one scenario."""

    def median(key: str) -> float:
        return float(statistics.median(r[key] for r in runs))

    return {
        "fetchers": median("fetchers"),
        "bound": Counter(r["bound"] for r in runs).most_common(1)[0][0],
        **{key: median(key) for key in ("utilisation", "requests_per_s", "fetcher_cpu_cores",
                                        "cpu_us_per_request", "warmup_s")},
        "rounds": runs,
    }  # fmt: skip


def side_by_side(by_round: dict[str, list[dict[str, Any]]], key: str, over: str
                 ) -> dict[str, Any]:  # fmt: skip
    """The operator's ``key`` ÷ the ``over`` contender's, round by round, and its median."""
    pairs = zip(by_round["operator"], by_round[over], strict=True)
    ratios = [mine[key] / theirs[key] if theirs[key] else float("inf") for mine, theirs in pairs]
    return {"median": statistics.median(ratios), "rounds": ratios}


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    runs: dict[tuple[int, int], dict[str, list[dict[str, Any]]]] = {
        scenario: {c: [] for c in CONTENDERS} for scenario in SCENARIOS
    }
    print(f"{'latency':>8}{'limit/s':>9}  {'contender':<10}{'fetchers':>9}  {'bound':<14}"
          f"{'used':>6}{'req/s':>8}{'CPU cores':>11}{'µs/req':>8}{'late':>6}",
          flush=True)  # fmt: skip
    async with AsyncExitStack() as stack:
        apis = {ms: await stack.enter_async_context(sample_api(ms)) for ms, _ in SCENARIOS}
        connection = await aio_pika.connect(args.amqp_url)
        stack.push_async_callback(connection.close)
        redis = aioredis.Redis.from_url(args.redis_url)
        stack.push_async_callback(redis.aclose)
        reader = DepthReader(args.amqp_url)
        stack.push_async_callback(reader.close)
        http = await stack.enter_async_context(httpx.AsyncClient())
        logs = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sluiceway-budget-")))
        state = Bench(args, connection, redis, reader, http, apis, logs)
        names = list(CONTENDERS)
        for round_no in range(args.rounds):
            for latency_ms, limit in SCENARIOS:
                shift = round_no % len(names)
                for contender in names[shift:] + names[:shift]:
                    one = await run(state, latency_ms, limit, contender, round_no)
                    runs[latency_ms, limit][contender].append(one)
                    print(f"{latency_ms:>6}ms{limit:>9}  {contender:<10}{one['fetchers']:>9}  "
                          f"{one['bound']:<14}{one['utilisation']:>6.0%}"
                          f"{one['requests_per_s']:>8.0f}{one['fetcher_cpu_cores']:>11.2f}"
                          f"{one['cpu_us_per_request']:>8.0f}{one['late_slots']:>6}",
                          flush=True)  # fmt: skip
    scenarios = []
    for (latency_ms, limit), by_contender in runs.items():
        scenarios.append({
            "latency_ms": latency_ms, "limit": limit,
            "contenders": {c: summary(r) for c, r in by_contender.items()},
            "operator_over_fixed_1": side_by_side(by_contender, "utilisation", "fixed 1"),
            "operator_over_fixed_8": side_by_side(by_contender, "utilisation", "fixed 8"),
            "operator_cpu_over_fixed_8": side_by_side(by_contender, "fetcher_cpu_cores",
                                                      "fixed 8"),
        })  # fmt: skip
    return {"scenarios": scenarios}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=float, default=8.0, help="seconds measured a run")
    parser.add_argument("--amqp-url", default=DEFAULT_AMQP_URL)
    parser.add_argument("--redis-url", default=REDIS_URL)
    args = parser.parse_args()
    began, load = time.perf_counter(), os.getloadavg()
    results = asyncio.run(bench(args))
    header = {"cores": os.cpu_count(), "concurrency": CONCURRENCY, "load_average_before": load,
              "load_average_after": os.getloadavg(), "poll_seconds": POLL_SECONDS,
              "window_seconds": args.window, "settle_seconds": SETTLE, "rounds": args.rounds,
              "runtime_s": time.perf_counter() - began}  # fmt: skip
    for scenario in results["scenarios"]:
        print(f"{scenario['latency_ms']} ms, {scenario['limit']}/s: operator ÷ fixed 1 "
              f"{scenario['operator_over_fixed_1']['median']:.2f}x, ÷ fixed 8 "
              f"{scenario['operator_over_fixed_8']['median']:.2f}x at "
              f"{scenario['operator_cpu_over_fixed_8']['median']:.2f}x its CPU "
              f"(medians of {args.rounds} rounds)")  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(header | results, indent=2) + "\n")
    print(f"results in {RESULTS.relative_to(ROOT)} after {header['runtime_s']:.0f} s")


if __name__ == "__main__":
    main()
