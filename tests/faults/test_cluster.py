"""The pipeline on a three-node RabbitMQ cluster (:mod:`tests.faults.cluster`), every
process given all three nodes in ``SLUICEWAY_AMQP_URL``, a node lost mid-stream: every key
lands or fails exactly once, checked row by row.

`make test` runs the first scenario on 600 keys: the node that every process connects to
first, which leads the records queue, SIGKILLed. `make test-faults` and `make test-cluster`
run them all on 1,500 (``SLUICEWAY_CLUSTER_KEYS``): that one, a follower killed, the leader
paused for 45 s (SIGSTOP), the leader restarted (stopped cleanly, started again) while the
fetchers publish, and a rolling restart, one node at a time. Each records the time
to recover (the longest stall after the fault) and the throughput before, during and after.
While the node is down, the operator's depth reading is taken through the nodes that answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import asyncpg
import pytest
import redis.asyncio as aioredis

from sluiceway_common import topology
from sluiceway_operator.broker import DepthReader
from tests.e2e.conftest import Processes
from tests.faults.cluster import Node, RabbitCluster, unavailable
from tests.faults.harness import (
    Pipeline,
    Upstream,
    check_table,
    count_rows,
    enqueue,
    expected,
    sample_keys,
    settled,
)
from tests.integration.helpers import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

KEYS = int(os.environ.get("SLUICEWAY_CLUSTER_KEYS", "600"))
RATE = 100  # keys a second: a stream long enough for the fault to land mid-way
# Seconds a paused leader stays paused: well past the (5 + 1) x 3 = 18 s in which the 5 s
# heartbeats of the nodes' URLs find it, so that the rows landing meanwhile show the
# pipeline going on without it.
PAUSED_FOR = 45.0


@pytest.fixture(scope="module")
def rabbit_cluster() -> Iterator[RabbitCluster]:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    # Not under pytest's temporary folder, which only root may enter: the nodes run as the
    # rabbitmq user.
    root = Path(tempfile.mkdtemp(prefix="sluiceway-rabbit-cluster-"))
    root.chmod(0o755)
    cluster = RabbitCluster(root)
    try:
        cluster.start()
        print(f"\nRabbitMQ cluster of 3 started and joined in {cluster.started_in:.0f} s")
        yield cluster
    finally:
        cluster.stop()


class Throughput:
    """Rows landed over time, sampled every ``EVERY`` seconds while a scenario runs."""

    EVERY = 0.25

    def __init__(self, db: asyncpg.Connection, pipeline: str) -> None:
        self.db, self.pipeline = db, pipeline
        self.samples: list[tuple[float, int]] = []

    async def run(self) -> None:
        while True:
            self.samples.append((time.monotonic(), await count_rows(self.db, self.pipeline)))
            await asyncio.sleep(self.EVERY)

    def rows(self) -> int:
        return self.samples[-1][1] if self.samples else 0

    def rate(self, start: float, end: float) -> float:
        inside = [(t, n) for t, n in self.samples if start <= t <= end]
        if len(inside) < 2 or inside[-1][0] == inside[0][0]:
            return 0.0
        return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])

    def longest_stall(self, start: float, end: float) -> tuple[float, float]:
        """The longest time from ``start`` to ``end`` without a row landing: (its start,
        its length in seconds). A fault's time to recover."""
        longest, at, since = 0.0, start, start
        before = [n for t, n in self.samples if t < start]
        previous = before[-1] if before else 0
        for t, n in self.samples:
            if t < start:
                continue
            if n > previous or t >= end:
                if min(t, end) - since > longest:
                    longest, at = min(t, end) - since, since
                since = t
            previous = n
            if t >= end:
                break
        return at, longest


async def read_depth_without(cluster: RabbitCluster, pipeline: str, victim: Node) -> None:
    """The operator's depth reading, given every node's management API with the node that
    is down first: it reads from one that answers, so its scaling goes on."""
    apis = [victim, *(node for node in cluster.nodes if node is not victim)]
    reader = DepthReader(cluster.urls, ",".join(node.management_url for node in apis))

    async def counted() -> bool:
        # A queue whose leader just moved has no counts until its new leader's are sampled:
        # a passive declare's reading meanwhile.
        depth = await reader.read(topology.Queues(pipeline).records)
        return depth.source == "management-api"

    try:
        await eventually(counted, within=60, what="a depth from a management API that answers")
    finally:
        await reader.close()


async def stream_through(
    cluster: RabbitCluster,
    processes: Processes,
    db: asyncpg.Connection,
    redis_client: aioredis.Redis,
    pipeline: str,
    scenario: str,
    fault: str,
    rate: int = RATE,
) -> None:
    """Run ``KEYS`` keys through a pipeline on the cluster at ``rate`` keys a second, inject
    ``fault`` when a quarter have landed, wait for all of them, and check the table; note the
    longest stall after the fault (the time to recover) and the rows/s before the fault,
    during it (the fault and the stall) and after."""
    keys = sample_keys(scenario[:1], KEYS)
    landing, failing = expected(keys)
    first = cluster.nodes[0]
    # The queues are declared through the first node, which leads them: the node that every
    # process reaches first.
    setup = await aio_pika.connect(first.url)
    await enqueue(setup, pipeline, keys)
    await setup.close()
    assert cluster.leader(topology.Queues(pipeline).records) is first
    meter = Throughput(db, pipeline)
    sampling = asyncio.create_task(meter.run())
    try:
        async with Upstream().serving() as source:
            pipe = Pipeline(processes, source)
            every = {"SLUICEWAY_AMQP_URL": cluster.urls}
            writer = pipe.writer(**every)
            fetcher = pipe.fetcher(SLUICEWAY_RATE_LIMIT=str(rate), **every)
            await eventually(lambda: _landed(meter, KEYS // 4), within=120,
                             what="a quarter of the rows")  # fmt: skip
            faulted = time.monotonic()
            at_fault = meter.rows()
            victim = await inject(cluster, pipeline, fault)
            fault_over = time.monotonic()
            await eventually(lambda: _landed(meter, at_fault + 1), within=120,
                             what="rows landing after the fault")  # fmt: skip
            if victim is not None:
                await read_depth_without(cluster, pipeline, victim)
            if victim is not None and fault == "leader paused":
                cluster.resume(victim)  # it rejoins as a follower
            elif victim is not None:
                # Back once the pipeline went on without it (so the next scenario has three
                # nodes): a quorum member that returns catches up with the log.
                await asyncio.to_thread(cluster.start_node, victim)
            await eventually(lambda: _landed(meter, KEYS - len(failing)), within=300,
                             what="every row")  # fmt: skip
            finished = time.monotonic()
            await stop(sampling)  # the checks below use its database connection
            check = await aio_pika.connect(cluster.nodes[-1].url)
            try:
                await settled(db, redis_client, check, pipeline, len(keys), within=120,
                              alive=(writer, fetcher))  # fmt: skip
                stalled, stall = meter.longest_stall(faulted, finished)
                during_end = max(fault_over, stalled + stall)
                before = meter.rate(meter.samples[0][0], faulted)
                during = meter.rate(faulted, during_end)
                after = meter.rate(during_end, finished)
                await check_table(
                    scenario, db, redis_client, check, pipeline, landing, failing,
                    note=f"{fault}; recovered in {stall:.1f} s; rows/s before {before:.0f}, "
                         f"during {during:.0f}, after {after:.0f}",
                )  # fmt: skip
            finally:
                await check.close()
    finally:
        await stop(sampling)
    print(
        f"\n{scenario}: longest stall {stall:.1f} s; rows/s before {before:.0f}, during "
        f"{during:.0f}, after {after:.0f}"
    )


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _landed(meter: Throughput, rows: int) -> bool:
    return meter.rows() >= rows


async def inject(cluster: RabbitCluster, pipeline: str, fault: str) -> Node | None:
    """Do ``fault`` to the cluster; return the node it took down and left down."""
    records = topology.Queues(pipeline).records
    if fault == "leader killed":
        victim = cluster.leader(records)
    elif fault == "follower killed":
        leader = cluster.leader(records)
        victim = next(n for n in reversed(cluster.nodes) if n is not leader)
    elif fault == "leader paused":
        # SIGSTOP: its sockets stay open and say nothing, as a node cut off from the others
        # and from its clients would. The two others elect a new leader; the processes on it
        # notice through the missed heartbeats and move on.
        victim = cluster.leader(records)
        cluster.pause(victim)
        # Paused for longer than the heartbeats take to notice: the rows that land meanwhile
        # went through another node.
        await asyncio.sleep(PAUSED_FOR)
        return victim
    elif fault == "leader restarted":
        # Stopped cleanly and started again while the fetchers publish through it.
        await asyncio.to_thread(cluster.restart, cluster.leader(records))
        return None
    elif fault == "rolling restart":
        for node in cluster.nodes:
            await asyncio.to_thread(cluster.restart, node)
        return None
    else:  # pragma: no cover
        raise ValueError(fault)
    await asyncio.to_thread(cluster.kill, victim)
    return victim


@pytest.mark.parametrize(("scenario", "fault", "rate"), [
    pytest.param("cluster: leader node killed", "leader killed", RATE, id="leader"),
    pytest.param("cluster: follower killed", "follower killed", RATE, id="follower",
                 marks=pytest.mark.cluster),
    pytest.param("cluster: leader paused", "leader paused", 30, id="paused",
                 marks=pytest.mark.cluster),
    pytest.param("cluster: leader restarted", "leader restarted", 30, id="restarted",
                 marks=pytest.mark.cluster),
    # Slower, so that the stream outlasts three restarts of about 20 s each.
    pytest.param("cluster: rolling restart", "rolling restart", 15, id="rolling",
                 marks=pytest.mark.cluster),
])  # fmt: skip
async def test_a_node_lost_mid_stream_loses_nothing(
    rabbit_cluster: RabbitCluster,
    processes: Processes,
    db: asyncpg.Connection,
    redis_client: aioredis.Redis,
    pipeline: str,
    scenario: str,
    fault: str,
    rate: int,
) -> None:
    await stream_through(rabbit_cluster, processes, db, redis_client, pipeline, scenario, fault,
                         rate)  # fmt: skip
