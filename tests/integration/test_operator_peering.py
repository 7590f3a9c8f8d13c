"""Replicas of the operator sharing a kopf peering object, as the chart runs them: one acts,
the others stand by, and a standby takes over when the active one is stopped (SIGTERM: at
once) or lost (SIGKILL: when its record lapses), and goes on reconciling.

Each replica is a ``sluiceway operator`` process, as in a pod: its own signals, exit and
login (kopf's login and the operator's client read the kubeconfig of the process, so two
operators in one process could not be told apart). Each has a kubeconfig of its own whose
token is the replica's name, so the requests kmock keeps say which replica sent them. They
serve every namespace (a ``ClusterKopfPeering``): serving listed namespaces, kopf lists the
cluster's namespaces first, a path kmock cannot parse; that mode's ``KopfPeering`` is
checked with the operator in-process, its scanning off. The real RabbitMQ and Redis serve
the Pipeline.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp.web
import kmock
import pytest
import redis.asyncio as aioredis
import yaml
from aio_pika.abc import AbstractConnection

from sluiceway_common import store, topology
from sluiceway_operator import crd
from sluiceway_operator.peering import GROUP_VERSION, Peering
from tests.chart.test_chart import CHART
from tests.conftest import ServiceUrls
from tests.integration.helpers import eventually, free_port, get, publish
from tests.integration.test_operator import (  # noqa: F401 -- cluster is a fixture
    NAMESPACE,
    PEERING_GROUP,
    ApplyingEmulator,
    Cluster,
    chart_access,
    cluster,
    method,
    operator_access,
    running_operator,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PEERING = "sluiceway"
LIFETIME = 5  # seconds: the SIGKILL takeover waits this long
# What a replica touches only while it acts: Pipelines and what it makes of them.
ACTING = {"pipelines", "deployments", "configmaps", "jobs", "cronjobs", "secrets", "events"}


@dataclass
class Replica:
    """One ``sluiceway operator`` process; ``name`` is its kopf identity (``POD_ID``, as the
    chart sets it) and the token of its kubeconfig."""

    name: str
    port: int
    process: asyncio.subprocess.Process
    log: Path

    def acting(self, api: ApplyingEmulator, writes: bool = False) -> list[int]:
        """The ids of its requests about Pipelines and their children (only those that
        write, with ``writes``), in order."""
        return [request.id for request in api
                if request.headers.get("Authorization") == f"Bearer {self.name}"
                and request.resource is not None and request.resource.plural in ACTING
                and not (writes and method(request) == "GET")]  # fmt: skip


def users(pipeline: str) -> dict[str, Any]:
    """The Pipeline the replicas serve, polled every second."""
    return {
        "apiVersion": f"{crd.GROUP}/{crd.VERSION}", "kind": "Pipeline",
        "metadata": {"name": "users", "namespace": NAMESPACE, "uid": "uid-users",
                     "resourceVersion": "1", "generation": 1},
        "spec": {"pipeline": pipeline, "connectionsSecret": "conn",
                 "image": {"repository": "registry.example/sluiceway", "tag": "1.0"},
                 "source": {"url": "https://api.example.com/users/{key}", "rateLimit": 5},
                 "pollIntervalSeconds": 1},
    }  # fmt: skip


async def ready_within(port: int, seconds: float) -> None:
    async def ready() -> bool:
        return (await get(port, "/readyz"))[0] == 200

    await eventually(ready, within=seconds, what=f"/readyz 200 on port {port}")


def login(tmp_path: Path, token: str) -> Path:
    """A copy of the fixture's kubeconfig that logs in with ``token``."""
    config = yaml.safe_load(Path(os.environ["KUBECONFIG"]).read_text())
    config["users"][0]["user"]["token"] = token
    path = tmp_path / f"kubeconfig-{token}"
    path.write_text(yaml.safe_dump(config))
    return path


@asynccontextmanager
async def replicas(tmp_path: Path) -> AsyncIterator[Any]:
    """Start replicas with ``await start(name)`` (ready, unless ``ready=False``); all are
    killed at the end, and their logs printed (pytest shows them when the test fails)."""
    started: list[Replica] = []

    async def start(name: str, ready: bool = True) -> Replica:
        kubeconfig = login(tmp_path, name)
        port, log = free_port(), tmp_path / f"{name}.log"
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "POD_ID": name,
               "SLUICEWAY_METRICS_PORT": str(port), "SLUICEWAY_OPERATOR_NAMESPACES": "",
               "SLUICEWAY_OPERATOR_PEERING": PEERING,
               "SLUICEWAY_OPERATOR_PEERING_LIFETIME": str(LIFETIME)}  # fmt: skip
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "sluiceway_common", "operator", env=env, stdout=out,
                stderr=out)  # fmt: skip
        replica = Replica(name, port, process, log)
        started.append(replica)
        if ready:
            await ready_within(port, 60)  # a start slowed by a busy machine
        return replica

    try:
        yield start
    finally:
        for replica in started:
            if replica.process.returncode is None:
                replica.process.kill()
                await replica.process.wait()
            print(f"--- {replica.name} (exit {replica.process.returncode})")
            print("\n".join(replica.log.read_text().splitlines()[-40:]))


async def records(k8s: Cluster) -> dict[str, Any]:
    """The cluster-wide peering object's records, by replica (none without the object)."""
    response = await k8s.http.get(f"/apis/{GROUP_VERSION}/clusterkopfpeerings/{PEERING}")
    if response.status_code == 404:
        return {}
    return dict(response.raise_for_status().json().get("status") or {})


async def recorded(k8s: Cluster, name: str, present: bool = True) -> dict[str, Any]:
    """The records, once ``name``'s is there (or gone)."""
    seen: dict[str, Any] = {}

    async def holds() -> bool:
        nonlocal seen
        seen = await records(k8s)
        return (name in seen) == present

    await eventually(holds, what=f"{name}'s record {'there' if present else 'gone'}")
    return seen


async def takeover(k8s: Cluster, gone: Replica, standby: Replica, within: float) -> float:
    """Seconds from now until ``standby`` acts; ``gone`` wrote its last before that."""
    began = time.monotonic()

    async def acting() -> bool:
        return bool(standby.acting(k8s.api))

    await eventually(acting, within=within, what=f"{standby.name} acting")
    took = time.monotonic() - began
    # Never both: the one gone made its last write before the other began (reads of a
    # stopping replica may come later, harmlessly).
    assert max(gone.acting(k8s.api, writes=True)) < min(standby.acting(k8s.api))
    return took


async def rate_limit_applied(k8s: Cluster, redis_client: aioredis.Redis, pipeline: str,
                             rate: int) -> None:  # fmt: skip
    """A new rate limit is acted on: in the ConfigMap and in Redis."""
    await k8s.patch("Pipeline", "users", {"spec": {"source": {"rateLimit": rate}}})
    await k8s.until("ConfigMap", "users-config",
                    lambda c: c["data"]["SLUICEWAY_RATE_LIMIT"] == str(rate),
                    f"rate limit {rate} in the ConfigMap", within=10)  # fmt: skip

    async def in_redis() -> bool:
        return await redis_client.get(store.rate_limit(pipeline)) == str(rate).encode()

    await eventually(in_redis, within=10, what=f"rate limit {rate} in Redis")


async def test_one_replica_acts_and_a_standby_takes_over_when_it_stops_or_is_lost(
    cluster: Cluster,  # noqa: F811 -- the fixture imported above
    services: ServiceUrls, amqp_connection: AbstractConnection,
    redis_client: aioredis.Redis, pipeline: str, tmp_path: Path,
) -> None:  # fmt: skip
    await cluster.connections(services)
    await publish(amqp_connection, pipeline, topology.Queues(pipeline).records, [])
    async with replicas(tmp_path) as start:
        # The first replica makes the peering object (there is none yet) and acts; the
        # second, younger, stands by.
        first = await start("operator-a")
        await recorded(cluster, "operator-a")
        second = await start("operator-b")
        peers = await recorded(cluster, "operator-b")
        assert peers["operator-a"]["priority"] > peers["operator-b"]["priority"]
        assert {peer["lifetime"] for peer in peers.values()} == {LIFETIME}

        await cluster.create(users(pipeline))
        await cluster.until("Pipeline", "users", lambda p: p.get("status", {}).get(
            "phase") == "Migrating", "the Pipeline reconciled")  # fmt: skip
        await rate_limit_applied(cluster, redis_client, pipeline, 6)
        await asyncio.sleep(2)  # two polls more
        assert first.acting(cluster.api)
        assert not second.acting(cluster.api)

        # Stopped: its record goes as it exits, and the standby acts within a watch event.
        first.process.send_signal(signal.SIGTERM)
        took = await takeover(cluster, first, second, within=15)
        assert await asyncio.wait_for(first.process.wait(), timeout=30) == 0
        assert "operator-a" not in await records(cluster)
        await rate_limit_applied(cluster, redis_client, pipeline, 7)
        print(f"takeover after SIGTERM: {took:.2f} s")

        # Lost: a third replica stands by; the active one is killed, and its record has to
        # lapse (it was renewed every second) before the standby acts.
        third = await start("operator-c")
        await recorded(cluster, "operator-c")
        await asyncio.sleep(1)
        assert not third.acting(cluster.api)
        second.process.send_signal(signal.SIGKILL)
        took = await takeover(cluster, second, third, within=LIFETIME + 15)
        assert LIFETIME / 2 < took < LIFETIME + 10, took  # not at once: after the lapse
        await rate_limit_applied(cluster, redis_client, pipeline, 8)
        await recorded(cluster, "operator-b", present=False)  # lapsed, and cleaned up
        print(f"takeover after SIGKILL (lifetime {LIFETIME} s): {took:.2f} s")
        third.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(third.process.wait(), timeout=30) == 0

    # The chart's ClusterRole grants the peering verbs the replicas used, and no other; and
    # everything else they asked for.
    granted, used = chart_access(), operator_access(cluster.api)
    assert {a for a in used if a[0] == PEERING_GROUP} == {
        a for a in granted if a[0] == PEERING_GROUP}  # fmt: skip
    assert used <= granted


async def test_a_replica_serving_listed_namespaces_makes_a_peering_object_in_each_and_acts(
    cluster: Cluster,  # noqa: F811 -- the fixture imported above
    services: ServiceUrls, pipeline: str,
) -> None:  # fmt: skip
    await cluster.connections(services)
    async with running_operator(sharing=Peering(PEERING, LIFETIME, (NAMESPACE,))):
        doc = await cluster.until("KopfPeering", PEERING, lambda p: bool(p.get("status")),
                                  "its record in the KopfPeering")  # fmt: skip
        # Alone, it acts: a Pipeline is reconciled.
        await cluster.create(users(pipeline))
        await cluster.until("Deployment", "users-fetcher", lambda d: True, "its fetchers")
    ((record,),) = [doc["status"].values()]
    assert record["lifetime"] == LIFETIME
    assert not await records(cluster)  # no cluster-wide object: none is needed

    # Each namespace's Role grants the peering verbs it used, and no other.
    granted = chart_access(CHART / "ci" / "namespaced-values.yaml")
    used = {a for a in operator_access(cluster.api) if a[0] == PEERING_GROUP}
    assert used == {a for a in granted if a[0] == PEERING_GROUP}


async def test_without_the_peering_crd_a_replica_waits_unready_and_says_why(
    cluster: Cluster,  # noqa: F811 -- the fixture imported above
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # crds.install false, and none installed: kmock, which serves what it is sent, is made
    # to answer for kopf.dev as an API server without the CRD would.
    served = cluster.api.resources.pop("kopf.dev/v1/clusterkopfpeerings")
    handle = cluster.api._handle

    async def without_peering(request: kmock.Request) -> aiohttp.web.StreamResponse:
        if request.resource is not None and request.resource.group == PEERING_GROUP and (
                "kopf.dev/v1/clusterkopfpeerings" not in cluster.api.resources):  # fmt: skip
            raise kmock.KubernetesError(status=404, reason="NotFound",
                                        message="the server could not find the requested "
                                        "resource")  # fmt: skip
        return await handle(request)

    monkeypatch.setattr(cluster.api, "_handle", without_peering)
    async with replicas(tmp_path) as start:
        replica = await start("operator-a", ready=False)

        async def said() -> bool:
            return "cannot create the peering object ClusterKopfPeering sluiceway" in (
                replica.log.read_text())  # fmt: skip

        await eventually(said, what="the reason logged")
        assert (await get(replica.port, "/readyz"))[0] != 200
        assert not replica.acting(cluster.api)
        # Installed: the next attempt (every 10 s) makes the object, and the replica acts.
        cluster.api.resources["kopf.dev/v1/clusterkopfpeerings"] = served
        await ready_within(replica.port, 60)
        await recorded(cluster, "operator-a")
