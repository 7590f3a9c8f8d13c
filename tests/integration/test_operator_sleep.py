"""Sleep and wake, and scale-down steps, with the real operator against kmock and the real
RabbitMQ and Redis: a Pipeline whose fetchers and writers have ``minReplicas: 0`` goes to
zero once every queue has been empty for ``idleSeconds``; keys queued wake the fetchers
alone, records above the writers' activation threshold wake the writers; and writers drained
step down no faster than their ``scaleDownPolicies`` allow."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
from aio_pika.abc import AbstractConnection

from sluiceway_common import store, topology
from tests.conftest import ServiceUrls
from tests.integration.helpers import publish
from tests.integration.test_operator import (  # noqa: F401 -- cluster is a fixture
    Cluster,
    assert_nothing_pruned,
    cluster,
    replicas,
    running_operator,
)
from tests.integration.test_operator_fetchers import (
    LOAD,
    SAMPLED,
    fetchers,
    pipeline_body,
    purge,
    secret,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


async def migrated(cluster: Cluster, name: str) -> None:  # noqa: F811
    """Let the Pipeline's migration Job succeed (kmock runs no Jobs)."""
    doc = await cluster.until("Pipeline", name, lambda p: p.get("status", {}).get(
        "migration", {}).get("job"), "migration Job started")  # fmt: skip
    await cluster.patch("Job", doc["status"]["migration"]["job"], {"status": {
        "conditions": [{"type": "Complete", "status": "True"}]}})  # fmt: skip


async def counts(cluster: Cluster, name: str) -> tuple[int, int]:  # noqa: F811
    """(fetchers, writers) the Deployments are set to."""
    fetcher = await cluster.get("Deployment", f"{name}-fetcher") or {}
    writer = await cluster.get("Deployment", f"{name}-writer") or {}
    return replicas(fetcher), replicas(writer)


async def test_an_idle_pipeline_sleeps_and_its_queues_wake_each_component(
    cluster: Cluster,  # noqa: F811 -- the fixture imported above
    services: ServiceUrls, amqp_connection: AbstractConnection, redis_client: aioredis.Redis,
    pipeline: str,
) -> None:  # fmt: skip
    await cluster.create(secret(services))
    queues = topology.Queues(pipeline)
    await publish(amqp_connection, pipeline, queues.records, [])  # declared, empty
    body = pipeline_body("nightly", pipeline, 50, {
        "replicas": 1, "minReplicas": 0, "maxReplicas": 4,
        "scaleDownStabilizationSeconds": 1}, idleSeconds=3, writer={
        "minReplicas": 0, "maxReplicas": 3, "targetQueueDepth": 5,
        "activationQueueDepth": 4, "scaleDownStabilizationSeconds": 1})  # fmt: skip

    async with running_operator():
        await cluster.create(body)
        await migrated(cluster, "nightly")
        # Every queue empty: the fetcher it started with stays while the idle wait runs...
        doc = await cluster.until("Pipeline", "nightly", lambda p: p["status"].get(
            "idleSince") is not None, "idle since", within=SAMPLED)  # fmt: skip
        # ...and after idleSeconds both are at zero (the writers never woke).
        await cluster.until("Deployment", "nightly-fetcher", lambda d: replicas(d) == 0,
                            "fetchers asleep", within=SAMPLED)  # fmt: skip
        assert await counts(cluster, "nightly") == (0, 0)
        doc = await cluster.get("Pipeline", "nightly") or {}
        assert fetchers(doc)["bound"] == "idle"

        # Keys queued: the fetchers wake (a poll, and the management API's sampling); the
        # writers stay asleep, as the records queue is empty, and the pipeline is not idle.
        await publish(amqp_connection, pipeline, queues.fetch, [b"{}"] * 40)
        await cluster.until("Deployment", "nightly-fetcher", lambda d: replicas(d) >= 1,
                            "fetchers awake", within=SAMPLED)  # fmt: skip
        doc = await cluster.until("Pipeline", "nightly", lambda p: p["status"].get(
            "idleSince") is None, "no longer idle")  # fmt: skip
        assert (await counts(cluster, "nightly"))[1] == 0

        # Records at the writers' activation threshold (4) keep them asleep; one more wakes
        # them, to the policy's count (5 records at 5 a writer: one).
        await publish(amqp_connection, pipeline, queues.records, [b"{}"] * 4)
        await cluster.until("Pipeline", "nightly", lambda p: p["status"].get(
            "queueDepth") == 4, "4 records read", within=SAMPLED)  # fmt: skip
        await asyncio.sleep(2)  # two polls that see them
        assert (await counts(cluster, "nightly"))[1] == 0
        await publish(amqp_connection, pipeline, queues.records, [b"{}"])
        await cluster.until("Deployment", "nightly-writer", lambda d: replicas(d) == 1,
                            "a writer awake", within=SAMPLED)  # fmt: skip

        # The fetch queue drained while records wait: the fetcher stays (the pipeline still
        # has work), the writer too.
        await purge(amqp_connection, queues.fetch)
        await store.FetcherReports(redis_client, pipeline).report("fetcher-a", LOAD, ttl=60)
        await cluster.until("Pipeline", "nightly", lambda p: fetchers(p).get("backlog") == 0,
                            "the fetch queue read empty", within=SAMPLED)  # fmt: skip
        await asyncio.sleep(4)  # past idleSeconds and the stabilization window
        fetching, writing = await counts(cluster, "nightly")
        assert fetching >= 1
        assert writing == 1

        # Everything drained: both asleep again after idleSeconds.
        await purge(amqp_connection, queues.records)
        await cluster.until("Pipeline", "nightly", lambda p: (
            p["status"].get("writers", {}).get("current"), p["status"].get("fetchers", {}).get(
                "current")) == (0, 0), "both asleep", within=SAMPLED)  # fmt: skip
        assert await counts(cluster, "nightly") == (0, 0)
    assert_nothing_pruned(cluster.api)


async def test_writers_step_down_no_faster_than_their_policy(
    cluster: Cluster,  # noqa: F811 -- the fixture imported above
    services: ServiceUrls, amqp_connection: AbstractConnection, pipeline: str,
) -> None:  # fmt: skip
    await cluster.create(secret(services))
    queues = topology.Queues(pipeline)
    await publish(amqp_connection, pipeline, queues.records, [b"{}"] * 25)
    writer: dict[str, Any] = {
        "minReplicas": 1, "maxReplicas": 10, "targetQueueDepth": 5,
        "scaleDownStabilizationSeconds": 0,
        "scaleDownPolicies": [{"type": "Pods", "value": 1, "periodSeconds": 600},
                              {"type": "Percent", "value": 10, "periodSeconds": 600}]}  # fmt: skip
    async with running_operator():
        await cluster.create(pipeline_body("steps", pipeline, 50, {}, writer=writer))
        await migrated(cluster, "steps")
        await cluster.until("Deployment", "steps-writer", lambda d: replicas(d) == 5,
                            "5 writers for 25 records", within=SAMPLED)  # fmt: skip
        # Drained: one pod fewer (the larger of 1 pod and 10% of 5), then no more within the
        # period, however long the queue stays empty.
        await purge(amqp_connection, queues.records)
        await cluster.until("Deployment", "steps-writer", lambda d: replicas(d) == 4,
                            "one writer fewer", within=SAMPLED)  # fmt: skip
        await asyncio.sleep(4)
        assert replicas(await cluster.get("Deployment", "steps-writer") or {}) == 4
        doc = await cluster.get("Pipeline", "steps") or {}
        assert doc["status"]["writers"]["desired"] == 4
    assert_nothing_pruned(cluster.api)
