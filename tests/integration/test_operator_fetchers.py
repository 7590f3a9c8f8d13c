"""The fetchers on the rate budget, with the real operator against kmock and the real RabbitMQ
and Redis: keys queued in the fetch and delay queues, fetcher reports written to Redis as
running fetchers write them, and the fetcher Deployment sized by the policy (the bound in
``status.fetchers``), kept as it is while a metric is missing or the Pipeline is paused, and
left at ``replicas`` when no bounds are given."""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any

import pytest
import redis.asyncio as aioredis
from aio_pika.abc import AbstractConnection

from sluiceway_common import store, topology
from sluiceway_operator import crd
from tests.conftest import ServiceUrls
from tests.integration.helpers import publish
from tests.integration.test_operator import (  # noqa: F401 -- cluster is a fixture
    NAMESPACE,
    Cluster,
    assert_nothing_pruned,
    cluster,
    replicas,
    running_operator,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

# What a fetcher holding 32 requests at 0.5 s each reports (see the fetcher's report.py).
LOAD = {"concurrency": 32, "in_hand": 32, "fetches": 100, "latency": 0.5, "rate_wait": 0.0,
        "seconds": 5.0}  # fmt: skip
# The management API samples a queue's counts every 5 s: a reading can lag that long.
SAMPLED = 20


def secret(services: ServiceUrls, **changes: str) -> dict[str, Any]:
    values = {"DATABASE_URL": services.database, "AMQP_URL": services.amqp,
              "REDIS_URL": services.redis, "MANAGEMENT_URL": services.management_api(),
              **changes}  # fmt: skip
    data = {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}
    return {"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "conn", "namespace": NAMESPACE}, "data": data}  # fmt: skip


def pipeline_body(name: str, pipeline: str, rate: float, fetcher: dict[str, Any],
                  **spec: Any) -> dict[str, Any]:  # fmt: skip
    return {
        "apiVersion": f"{crd.GROUP}/{crd.VERSION}", "kind": "Pipeline",
        "metadata": {"name": name, "namespace": NAMESPACE, "uid": f"uid-{name}",
                     "resourceVersion": "1", "generation": 1},
        "spec": {"pipeline": pipeline, "connectionsSecret": "conn",
                 "image": {"repository": "registry.example/sluiceway", "tag": "1.0"},
                 "source": {"url": "https://api.example.com/users/{key}", "rateLimit": rate},
                 "fetcher": fetcher, "pollIntervalSeconds": 1, **spec},
    }  # fmt: skip


def fetchers(doc: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = doc.get("status", {}).get("fetchers") or {}
    return found


def condition(doc: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in doc.get("status", {}).get("conditions") or []
                 if c["type"] == type_), {})  # fmt: skip


async def pause(cluster: Cluster, value: str | None) -> None:  # noqa: F811
    await cluster.patch("Pipeline", "users",
                        {"metadata": {"annotations": {"sluiceway.io/paused": value}}})  # fmt: skip


async def purge(connection: AbstractConnection, queue: str) -> None:
    channel = await connection.channel()
    try:
        await (await channel.get_queue(queue, ensure=False)).purge()
    finally:
        await channel.close()


async def test_fetchers_follow_the_rate_budget_the_backlog_and_the_pause(
    cluster: Cluster,  # noqa: F811 -- the fixture imported above
    services: ServiceUrls, amqp_connection: AbstractConnection, redis_client: aioredis.Redis,
    pipeline: str, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.INFO)
    await cluster.create(secret(services))
    queues = topology.Queues(pipeline)
    await publish(amqp_connection, pipeline, queues.fetch, [b"{}"] * 1000)
    reports = store.FetcherReports(redis_client, pipeline)
    await reports.report("fetcher-a", LOAD, ttl=60)
    body = pipeline_body("users", pipeline, 50, {
        "replicas": 3, "minReplicas": 0, "maxReplicas": 6, "concurrency": 32,
        "scaleDownStabilizationSeconds": 2}, idleSeconds=1)  # fmt: skip

    async with running_operator():
        await cluster.create(body)
        # 50/s at 0.5 s is 25 requests in flight: one fetcher of 32 spends the limit (the 3
        # it started with go after the window).
        doc = await cluster.until(
            "Pipeline", "users", lambda p: fetchers(p).get("bound") == "rate-limited"
            and fetchers(p).get("desired") == 1, "1 fetcher, rate-limited",
            within=SAMPLED)  # fmt: skip
        assert fetchers(doc)["backlog"] == 1000
        assert fetchers(doc)["latencySeconds"] == 0.5
        assert fetchers(doc)["rateLimit"] == 50
        assert replicas(await cluster.get("Deployment", "users-fetcher") or {}) == 1

        # 2,000/s needs 38 fetchers (1,000 in flight, a fifth more); 6 at most.
        await cluster.patch("Pipeline", "users", {"spec": {"source": {"rateLimit": 2000}}})
        await cluster.until("Deployment", "users-fetcher", lambda d: replicas(d) == 6,
                            "6 fetchers", within=10)  # fmt: skip
        doc = await cluster.until("Pipeline", "users", lambda p: fetchers(p).get(
            "bound") == "max-replicas", "bound max-replicas")  # fmt: skip
        assert fetchers(doc)["rateLimit"] == 2000
        assert "ScaledFetchers" in caplog.text
        assert "fetchers 1 -> 6 (max-replicas: backlog 1000, latency 0.500 s" in caplog.text

        # 64 keys, all of them in a delay queue: two fetchers hold them all, more would idle.
        channel = await amqp_connection.channel()
        await topology.declare(channel, queues, queues.retry(256))
        await channel.close()
        await publish(amqp_connection, pipeline, queues.retry(256), [b"{}"] * 64)
        await cluster.until("Pipeline", "users", lambda p: fetchers(p).get("backlog") == 1064,
                            "the delay queue counted", within=SAMPLED)  # fmt: skip
        await purge(amqp_connection, queues.fetch)
        await cluster.until("Deployment", "users-fetcher", lambda d: replicas(d) == 2,
                            "2 fetchers for 64 keys", within=SAMPLED)  # fmt: skip
        doc = await cluster.get("Pipeline", "users") or {}
        assert (fetchers(doc)["bound"], fetchers(doc)["backlog"]) == ("latency-bound", 64)

        # Nothing queued, the fetchers gone (their reports with them): none at minReplicas 0
        # once every queue has been empty for idleSeconds.
        await purge(amqp_connection, queues.retry(256))
        await reports.withdraw("fetcher-a")
        await cluster.until("Deployment", "users-fetcher", lambda d: replicas(d) == 0,
                            "no fetchers", within=SAMPLED)  # fmt: skip
        doc = await cluster.until("Pipeline", "users", lambda p: fetchers(p).get(
            "bound") == "idle", "bound idle")  # fmt: skip
        assert "latencySeconds" not in fetchers(doc)  # none fetched: unknown
        assert fetchers(doc)["summary"] == "0/0"

        # Paused: keys queued start no fetcher; the condition says what would run.
        await pause(cluster, "true")
        await publish(amqp_connection, pipeline, queues.fetch, [b"{}"] * 10)
        doc = await cluster.until("Pipeline", "users", lambda p: condition(
            p, "FetcherScaling").get("reason") == "Paused" and fetchers(p).get("backlog") == 10,
            "paused with 10 keys", within=SAMPLED)  # fmt: skip
        assert condition(doc, "FetcherScaling")["message"].endswith("would run 1")
        assert replicas(await cluster.get("Deployment", "users-fetcher") or {}) == 0

        # Resumed: one fetcher within a poll, to measure the latency nobody has yet.
        await pause(cluster, None)
        await cluster.until("Deployment", "users-fetcher", lambda d: replicas(d) == 1,
                            "a fetcher back", within=3)  # fmt: skip
        doc = await cluster.until("Pipeline", "users", lambda p: fetchers(p).get(
            "bound") == "latency-bound", "bound latency-bound")  # fmt: skip
        assert condition(doc, "FetcherScaling")["status"] == "True"
    assert_nothing_pruned(cluster.api)


async def test_fixed_fetchers_stay_at_replicas_and_a_missing_metric_keeps_the_count(
    cluster: Cluster,  # noqa: F811 -- the fixture imported above
    services: ServiceUrls, amqp_connection: AbstractConnection, redis_client: aioredis.Redis,
    pipeline: str,
) -> None:  # fmt: skip
    await cluster.create(secret(services))
    queues = topology.Queues(pipeline)
    await publish(amqp_connection, pipeline, queues.fetch, [b"{}"] * 1000)
    await store.FetcherReports(redis_client, pipeline).report("fetcher-a", LOAD, ttl=60)

    async with running_operator():
        # No bounds: replicas is the count, whatever the backlog (as before the policy).
        await cluster.create(pipeline_body("fixed", pipeline, 2000, {"replicas": 3}))
        doc = await cluster.until("Pipeline", "fixed", lambda p: fetchers(p).get(
            "bound") == "fixed", "bound fixed")  # fmt: skip
        assert fetchers(doc) == {"current": 3, "ready": 0, "desired": 3, "summary": "0/3",
                                 "bound": "fixed", "rateLimit": 2000}  # fmt: skip
        assert "FetcherScaling" not in {c["type"] for c in doc["status"]["conditions"]}
        assert replicas(await cluster.get("Deployment", "fixed-fetcher") or {}) == 3

        # Bounds given: the operator's count from now on (2,000/s wants 38; 5 at most).
        await cluster.patch("Pipeline", "fixed", {"spec": {"fetcher": {
            "minReplicas": 1, "maxReplicas": 5, "scaleDownStabilizationSeconds": 1}}})  # fmt: skip
        await cluster.until("Deployment", "fixed-fetcher", lambda d: replicas(d) == 5,
                            "5 fetchers", within=SAMPLED)  # fmt: skip

        # The broker gone (neither the management API nor AMQP answers): a limit of 1/s
        # would want one fetcher, but without a backlog nothing is scaled.
        await cluster.patch("Secret", "conn", {"data": secret(
            services, AMQP_URL="amqp://guest:guest@127.0.0.1:1/",
            MANAGEMENT_URL="http://guest:guest@127.0.0.1:1")["data"]})  # fmt: skip
        await cluster.until("Pipeline", "fixed", lambda p: condition(p, "FetcherScaling").get(
            "reason") == "BrokerUnreachable", "broker unreachable")  # fmt: skip
        await cluster.patch("Pipeline", "fixed", {"spec": {"source": {"rateLimit": 1}}})
        await cluster.until("Pipeline", "fixed", lambda p: p["status"].get(
            "rateLimit") == 1, "the new limit applied")  # fmt: skip
        await asyncio.sleep(3)  # polls without a backlog
        doc = await cluster.get("Pipeline", "fixed") or {}
        assert replicas(await cluster.get("Deployment", "fixed-fetcher") or {}) == 5
        assert fetchers(doc)["desired"] == 5
        assert not {"bound", "backlog"} & set(fetchers(doc))  # unknown, not the last reading
        assert "guest:guest" not in str(doc["status"])

        # The broker back, Redis gone: the reports and the limit cannot be read; still 5.
        await cluster.patch("Secret", "conn", {"data": secret(
            services, REDIS_URL="redis://127.0.0.1:1/0")["data"]})  # fmt: skip
        doc = await cluster.until("Pipeline", "fixed", lambda p: condition(
            p, "FetcherScaling").get("reason") == "RedisUnreachable", "Redis unreachable",
            within=SAMPLED)  # fmt: skip
        assert replicas(await cluster.get("Deployment", "fixed-fetcher") or {}) == 5
        assert "bound" not in fetchers(doc)

        # Both back: one fetcher spends 1/s.
        await cluster.patch("Secret", "conn", {"data": secret(services)["data"]})
        await cluster.until("Deployment", "fixed-fetcher", lambda d: replicas(d) == 1,
                            "1 fetcher for 1/s", within=SAMPLED)  # fmt: skip
    assert_nothing_pruned(cluster.api)


async def test_a_feed_starting_wakes_sleeping_fetchers_at_once_not_a_poll_later(
    cluster: Cluster,  # noqa: F811 -- the fixture imported above
    services: ServiceUrls, redis_client: aioredis.Redis, pipeline: str,
) -> None:  # fmt: skip
    await cluster.create(secret(services))
    body = pipeline_body("users", pipeline, 50, {"replicas": 0, "minReplicas": 0,
                                                 "maxReplicas": 4})  # fmt: skip
    body["spec"]["pollIntervalSeconds"] = 3600  # only a wake can act within the test
    body["spec"]["feeds"] = [{"name": "ids", "stale": {"age": "1h"}}]
    async with running_operator():
        await cluster.create(body)
        await cluster.until("Pipeline", "users", lambda p: fetchers(p).get("bound") == "idle",
                            "asleep: nothing queued", within=SAMPLED)  # fmt: skip
        assert replicas(await cluster.get("Deployment", "users-fetcher") or {}) == 0
        # The feed's Job starts (as `kubectl create job --from=cronjob/…` or its schedule
        # would): no key is queued yet, the next poll is an hour away.
        await cluster.create({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "users-feed-ids-1", "namespace": NAMESPACE,
                         "labels": {"sluiceway.io/pipeline": "users",
                                    "app.kubernetes.io/component": "feed",
                                    "sluiceway.io/feed": "ids"}},
            "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [
                {"name": "enqueue", "image": "registry.example/sluiceway-admin:1.0"}]}}},
            "status": {"active": 1, "startTime": "2026-11-30T00:00:00Z"},
        })  # fmt: skip
        await cluster.until("Deployment", "users-fetcher", lambda d: replicas(d) == 1,
                            "a fetcher awake as the feed starts", within=10)  # fmt: skip
        doc = await cluster.get("Pipeline", "users") or {}
        assert fetchers(doc)["bound"] == "latency-bound"
        del doc
