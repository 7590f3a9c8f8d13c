"""An idle Pipeline costs the API server reads only: nothing changed, nothing written (the
children's applies skipped, the status not patched), with the real operator against kmock;
a change is still acted on."""

from __future__ import annotations

import asyncio
import base64
from collections import Counter

import pytest
from aio_pika.abc import AbstractConnection

from sluiceway_common import topology
from sluiceway_operator import crd
from tests.conftest import ServiceUrls
from tests.integration.helpers import publish
from tests.integration.test_operator import (  # noqa: F401 -- cluster is a fixture
    NAMESPACE,
    Cluster,
    cluster,
    method,
    operator_requests,
    replicas,
    running_operator,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def writes(api: Cluster) -> Counter[str]:
    """The operator's writes so far, by resource[/subresource] and method."""
    return Counter(f"{r.resource.plural}{'/' + r.subresource if r.subresource else ''} "
                   f"{method(r)}" for r in operator_requests(api.api)
                   if r.resource is not None and method(r) != "GET")  # fmt: skip


async def test_idle_ticks_write_nothing_and_a_change_is_still_applied(
    cluster: Cluster,  # noqa: F811 -- the fixture imported above
    services: ServiceUrls, amqp_connection: AbstractConnection, pipeline: str,
) -> None:  # fmt: skip
    values = {"DATABASE_URL": services.database, "AMQP_URL": services.amqp,
              "REDIS_URL": services.redis, "MANAGEMENT_URL": services.management_api()}  # fmt: skip
    await cluster.create({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "conn", "namespace": NAMESPACE},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in values.items()},
    })  # fmt: skip
    await publish(amqp_connection, pipeline, topology.Queues(pipeline).records, [])
    async with running_operator():
        await cluster.create({
            "apiVersion": f"{crd.GROUP}/{crd.VERSION}", "kind": "Pipeline",
            "metadata": {"name": "idle", "namespace": NAMESPACE, "uid": "uid-idle",
                         "resourceVersion": "1", "generation": 1},
            "spec": {"pipeline": pipeline, "connectionsSecret": "conn",
                     "image": {"repository": "registry.example/sluiceway", "tag": "1.0"},
                     "source": {"url": "https://api.example.com/users/{key}"},
                     "pollIntervalSeconds": 1},
        })  # fmt: skip
        doc = await cluster.until("Pipeline", "idle", lambda p: p.get("status", {}).get(
            "migration", {}).get("job"), "migration Job started")  # fmt: skip
        await cluster.patch("Job", doc["status"]["migration"]["job"], {"status": {
            "conditions": [{"type": "Complete", "status": "True"}]}})  # fmt: skip
        # Settled: running, one writer, the empty queue read by the management API.
        await cluster.until("Pipeline", "idle", lambda p: p["status"].get("phase") == "Running"
                            and p["status"].get("depthSource") == "management-api"
                            and p["status"].get("writers", {}).get("current") == 1,
                            "running, settled", within=40)  # fmt: skip
        await asyncio.sleep(1.5)  # the last status write seen back through the watch
        before = writes(cluster)
        gets = len(operator_requests(cluster.api))
        await asyncio.sleep(5)  # five polls
        assert len(operator_requests(cluster.api)) > gets + 5  # it did poll
        assert writes(cluster) - before == Counter()

        # A change is applied at once, and only the child it changes.
        await cluster.patch("Pipeline", "idle", {"spec": {"fetcher": {"replicas": 2}}})
        await cluster.until("Deployment", "idle-fetcher", lambda d: replicas(d) == 2,
                            "2 fetchers", within=10)  # fmt: skip
        await asyncio.sleep(2)
        new = writes(cluster) - before
        assert new["deployments PATCH"] == 1, new
        assert new["configmaps PATCH"] == 0, new
