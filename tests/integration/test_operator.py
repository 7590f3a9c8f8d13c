"""The real operator, in-process, against kmock (an in-memory Kubernetes API) and the real
RabbitMQ and Redis: a Pipeline is deployed, gated on its migration Job, scaled by its
records queue, paused, given a new rate limit, and deleted with its children.

kmock runs no controllers: no pods start, Jobs finish only when the test says so, and
owner references collect nothing, which is why the operator deletes a Pipeline's children
itself. Nor does it know server-side apply: :class:`ApplyingEmulator` adds what the operator
relies on.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp.web
import httpx
import kmock
import kopf
import pytest
import redis.asyncio as aioredis
import yaml
from aio_pika.abc import AbstractConnection
from prometheus_client import CollectorRegistry

from sluiceway_common import store, topology
from sluiceway_operator import crd, metrics, peering
from sluiceway_operator.kube import FIELD_MANAGER
from sluiceway_operator.peering import Peering
from sluiceway_operator.spec import NO_DEFAULTS, Defaults, Image
from tests.chart.test_chart import grants, kinds, render
from tests.conftest import ServiceUrls
from tests.integration.helpers import eventually, free_port, get, publish, until_ready
from tests.pruning import pruned

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

NAMESPACE = "data"
TEST_AGENT = "sluiceway-tests"
VERBS = {"get", "list", "watch", "create", "update", "patch", "delete"}
RESOURCES = {
    "sluiceway.io/v1alpha1/pipelines": ("Pipeline", True),
    "apiextensions.k8s.io/v1/customresourcedefinitions": ("CustomResourceDefinition", False),
    "v1/namespaces": ("Namespace", False),
    "v1/secrets": ("Secret", True),
    "v1/configmaps": ("ConfigMap", True),
    "v1/events": ("Event", True),
    "apps/v1/deployments": ("Deployment", True),
    "batch/v1/jobs": ("Job", True),
    "batch/v1/cronjobs": ("CronJob", True),
    "kopf.dev/v1/kopfpeerings": ("KopfPeering", True),
    "kopf.dev/v1/clusterkopfpeerings": ("ClusterKopfPeering", False),
}
APPLY_PATCH = "application/apply-patch+yaml"


class ApplyingEmulator(kmock.KubernetesEmulator):
    """kmock's in-memory API server, with two things of the real one that the operator's
    client (lightkube) relies on.

    A server-side apply (``PATCH`` as ``application/apply-patch+yaml``) of an object that is
    not there creates it, where kmock answers any ``PATCH`` of a missing object with 404; the
    API server authorizes such a request as ``create`` as well as ``patch``, so the requests
    that created are kept (``created_by_apply``). An apply to an existing object is merged as
    kmock merges every patch. Not emulated: field ownership (a field left out of the next
    apply stays, where the API server would remove it), conflicts with other field managers,
    and so what ``force`` overrides.

    Errors are ``application/json`` exactly, as the API server sends them (kmock adds a
    charset): lightkube raises its ``ApiError``, with the status code, only then.
    """

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.created_by_apply: set[int] = set()

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        content_type = request.headers.get("Content-Type", "")
        if request.resource is not None and request.name is not None and (
                content_type.startswith(APPLY_PATCH)):  # fmt: skip
            key = (request.resource, request.namespace, request.name)
            async with self._lock:
                if key not in self._objects or self._objects[key].deleted:
                    if key in self._objects:
                        self._objects[key].create(request.data)
                    else:
                        self._objects[key] = request.data
                    self.created_by_apply.add(request.id)
                    added = {"type": "ADDED", "object": self._objects[key].last.raw}
                    await self._buses[request.resource].put(added)
        return await super()._handle(request)

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        response = await super()._render_error(exc)
        response.charset = None
        return response


class Cluster:
    """The test's side of the API: plain HTTP, as kubectl would send it."""

    def __init__(self, url: str, api: ApplyingEmulator) -> None:
        # Marked, so that what the operator sent can be told from what the test did.
        self.http = httpx.AsyncClient(base_url=url, headers={"User-Agent": TEST_AGENT})
        self.api = api

    @staticmethod
    def path(kind: str, name: str | None = None) -> str:
        prefix, plural = {
            "Pipeline": ("apis/sluiceway.io/v1alpha1", "pipelines"),
            "Secret": ("api/v1", "secrets"),
            "ConfigMap": ("api/v1", "configmaps"),
            "Deployment": ("apis/apps/v1", "deployments"),
            "Job": ("apis/batch/v1", "jobs"),
            "CronJob": ("apis/batch/v1", "cronjobs"),
            "KopfPeering": ("apis/kopf.dev/v1", "kopfpeerings"),
        }[kind]
        return f"/{prefix}/namespaces/{NAMESPACE}/{plural}" + (f"/{name}" if name else "")

    async def get(self, kind: str, name: str) -> dict[str, Any] | None:
        response = await self.http.get(self.path(kind, name))
        return None if response.status_code == 404 else response.raise_for_status().json()

    async def create(self, body: dict[str, Any]) -> None:
        (await self.http.post(self.path(body["kind"]), json=body)).raise_for_status()

    async def patch(self, kind: str, name: str, changes: dict[str, Any]) -> None:
        response = await self.http.patch(
            self.path(kind, name),
            json=changes,
            headers={"Content-Type": "application/merge-patch+json"},
        )
        response.raise_for_status()

    async def connections(self, services: ServiceUrls) -> None:
        """The connections Secret ``conn``, with the URLs of the real services."""
        urls = {"DATABASE_URL": services.database, "AMQP_URL": services.amqp,
                "REDIS_URL": services.redis,
                "MANAGEMENT_URL": services.management_api()}  # fmt: skip
        await self.create({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "conn", "namespace": NAMESPACE},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in urls.items()},
        })  # fmt: skip

    async def delete(self, kind: str, name: str) -> None:
        (await self.http.delete(self.path(kind, name))).raise_for_status()

    async def until(self, kind: str, name: str, check: Callable[[dict[str, Any]], bool],
                    what: str, within: float = 30) -> dict[str, Any]:  # fmt: skip
        seen: dict[str, Any] = {}

        async def holds() -> bool:
            nonlocal seen
            seen = await self.get(kind, name) or {}
            return bool(seen) and check(seen)

        try:
            await eventually(holds, within=within, what=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last seen: {seen.get('spec')}, "
                                 f"{seen.get('status')}") from None  # fmt: skip
        return seen


def operator_requests(api: ApplyingEmulator) -> list[kmock.Request]:
    """The requests the operator made of the API (kopf's and its own client's)."""
    return [request for request in api if request.headers.get("User-Agent") != TEST_AGENT]


def method(request: kmock.Request) -> str:
    return str(request.method.value if hasattr(request.method, "value") else
               request.method).upper()  # fmt: skip


def operator_access(api: ApplyingEmulator) -> set[tuple[str, str, str]]:
    """(API group, resource[/subresource], verb) of every request the operator made, as the
    API server authorizes them."""
    used = set()
    for request in operator_requests(api):
        if request.resource is None or request.resource.plural is None:
            continue  # API discovery, which every authenticated user may read
        resource = request.resource.plural
        if request.subresource:
            resource += "/" + request.subresource
        if method(request) == "GET":
            watching = request.params.get("watch") in ("true", "1")
            verb = "get" if request.name else "watch" if watching else "list"
        else:
            verb = {"POST": "create", "PATCH": "patch", "PUT": "update",
                    "DELETE": "delete"}[method(request)]  # fmt: skip
        used.add((request.resource.group or "", resource, verb))
        if request.id in api.created_by_apply:
            used.add((request.resource.group or "", resource, "create"))
    return used


# What kopf's scanning reads cluster-wide (CRDs and namespaces), which the in-process tests
# turn off, and what kopf's peering uses, which they leave off (standalone).
SCANNING = {("apiextensions.k8s.io", "customresourcedefinitions", verb)
            for verb in ("get", "list", "watch")} | {
            ("", "namespaces", "list"), ("", "namespaces", "watch")}  # fmt: skip
PEERING_GROUP = "kopf.dev"


def chart_access(values: Path | None = None) -> set[tuple[str, str, str]]:
    """(API group, resource, verb) the chart grants the operator: its ClusterRole's, and with
    ``values`` naming namespaces, their Roles' (each has the same rules)."""
    docs = render(values)
    roles = [*kinds(docs, "ClusterRole"), *kinds(docs, "Role")[:1]]
    return {(group, resource, verb) for role in roles
            for (group, resource), verbs in grants(role).items() for verb in verbs}  # fmt: skip


def granted_access() -> set[tuple[str, str, str]]:
    """(API group, resource, verb) the chart's ClusterRole grants in the namespaces to a
    standalone operator without kopf's scanning (the in-process tests' operator)."""
    return {access for access in chart_access() - SCANNING if access[0] != PEERING_GROUP}


def status_writes(api: ApplyingEmulator) -> list[dict[str, Any]]:
    """The ``status`` of every Pipeline patch the operator sent."""
    return [request.data["status"] for request in operator_requests(api)
            if request.resource is not None and request.resource.plural == "pipelines"
            and method(request) == "PATCH" and isinstance(request.data, dict)
            and request.data.get("status")]  # fmt: skip


def assert_nothing_pruned(api: ApplyingEmulator) -> None:
    """Every status field the operator wrote is one the CRD declares: an API server would
    prune any other (kmock keeps them), and ``preserve=False`` holds even the fields that
    the status' own ``x-kubernetes-preserve-unknown-fields`` (kopf's, if it had any) would
    keep to the schema."""
    writes = status_writes(api)
    assert writes
    for status in writes:
        assert pruned(crd.STATUS, status, preserve=False) == [], status


def replicas(doc: dict[str, Any]) -> int:
    return int(doc["spec"]["replicas"])


@pytest.fixture
async def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Cluster]:
    async with ApplyingEmulator() as api, kmock.Server(api) as server:
        for resource, (kind, namespaced) in RESOURCES.items():
            api.resources[resource] = kmock.ResourceInfo(
                kind=kind, namespaced=namespaced, verbs=VERBS,
                subresources={"status"} if kind == "Pipeline" else set())  # fmt: skip
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
            "clusters": [{"name": "kmock", "cluster": {"server": str(server.url).rstrip("/")}}],
            "users": [{"name": "kmock", "user": {"token": "test"}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock",
                                                      "namespace": NAMESPACE}}],
        }))  # fmt: skip
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        client = Cluster(str(server.url).rstrip("/"), api)
        try:
            yield client
        finally:
            await client.http.aclose()


@contextlib.asynccontextmanager
async def running_operator(defaults: Defaults = NO_DEFAULTS, sharing: Peering | None = None
                           ) -> AsyncIterator[CollectorRegistry]:  # fmt: skip
    """The operator's handlers under kopf, as ``sluiceway operator`` runs them (with
    ``defaults`` and ``sharing``, its peering, from its settings: by default standalone);
    yields the registry its metrics go to."""
    import sluiceway_operator.handlers  # noqa: F401 -- registers the handlers

    registry = CollectorRegistry()
    memo = kopf.Memo(metrics=metrics.register(registry), defaults=defaults, peering=sharing)
    settings = kopf.OperatorSettings()
    peering.configure(settings, sharing, time.time())
    settings.scanning.disabled = True  # kmock serves no cluster-wide resource scanning
    stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(kopf.operator(
        namespaces=[NAMESPACE], settings=settings, stop_flag=stop, memo=memo))  # fmt: skip
    try:
        yield registry
    finally:
        stop.set_result(None)
        await asyncio.wait_for(task, timeout=30)


async def test_a_pipeline_is_deployed_migrated_scaled_paused_and_deleted(
    cluster: Cluster, services: ServiceUrls, amqp_connection: AbstractConnection,
    redis_client: aioredis.Redis, pipeline: str, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.INFO)
    secret = {
        "DATABASE_URL": services.database,
        "AMQP_URL": services.amqp,
        "REDIS_URL": services.redis,
        "MANAGEMENT_URL": services.management_api(),
    }
    await cluster.create({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "conn", "namespace": NAMESPACE},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in secret.items()},
    })  # fmt: skip
    queues = topology.Queues(pipeline)
    # The records queue exists before the first writer (the fetchers declare it too).
    await publish(amqp_connection, pipeline, queues.records, [])
    body = {
        "apiVersion": f"{crd.GROUP}/{crd.VERSION}", "kind": "Pipeline",
        # kmock sets neither uid nor resourceVersion (kopf tests the latter when it patches).
        "metadata": {"name": "users", "namespace": NAMESPACE, "uid": "uid-users-1",
                     "resourceVersion": "1", "generation": 1},
        "spec": {
            "pipeline": pipeline,
            "image": {"repository": "registry.example/sluiceway", "tag": "1.0"},
            "connectionsSecret": "conn",
            "source": {"url": "https://api.example.com/users/{key}", "rateLimit": 25},
            "writer": {"minReplicas": 1, "maxReplicas": 4, "targetQueueDepth": 5,
                       "scaleDownStabilizationSeconds": 4},
            "pollIntervalSeconds": 1,
        },
    }  # fmt: skip
    async with running_operator() as registry:
        await cluster.create(body)

        # Deployed, writers held at 0 while the migration Job runs.
        fetcher = await cluster.until("Deployment", "users-fetcher", lambda d: True, "fetcher")
        container = fetcher["spec"]["template"]["spec"]["containers"][0]
        assert container["image"] == "registry.example/sluiceway-fetcher:1.0"
        assert fetcher["metadata"]["ownerReferences"][0]["uid"] == "uid-users-1"
        writer = await cluster.until("Deployment", "users-writer", lambda d: True, "writer")
        assert replicas(writer) == 0
        pipeline_doc = await cluster.until(
            "Pipeline", "users", lambda p: p.get("status", {}).get("phase") == "Migrating",
            "phase Migrating")  # fmt: skip
        job_name = pipeline_doc["status"]["migration"]["job"]
        job = await cluster.get("Job", job_name)
        assert job is not None
        job_container = job["spec"]["template"]["spec"]["containers"][0]
        assert (job_container["image"], job_container["args"]) == (
            "registry.example/sluiceway-writer:1.0", ["migrate"])  # fmt: skip
        config = await cluster.get("ConfigMap", "users-config")
        assert config is not None
        assert config["data"] == {"SLUICEWAY_RATE_LIMIT": "25"}
        await asyncio.sleep(2.5)  # two polls more: still gated
        assert replicas(await cluster.get("Deployment", "users-writer") or {}) == 0

        # The Job succeeds: writers go to the minimum.
        await cluster.patch(
            "Job",
            job_name,
            {"status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}},
        )
        await cluster.until("Deployment", "users-writer", lambda d: replicas(d) == 1,
                            "writers at the minimum after the migration")  # fmt: skip
        status = (await cluster.until("Pipeline", "users",
                                      lambda p: p["status"].get("phase") == "Running",
                                      "phase Running"))["status"]  # fmt: skip
        assert status["migration"]["state"] == "Succeeded"
        assert status["observedGeneration"] == 1
        assert await redis_client.get(store.rate_limit(pipeline)) == b"25"

        # A backlog of 12 messages at 5 a writer: 3 writers.
        await publish(amqp_connection, pipeline, queues.records, [b"{}"] * 12)
        await cluster.until("Deployment", "users-writer", lambda d: replicas(d) == 3,
                            "3 writers for 12 messages", within=40)  # fmt: skip
        # The status follows when the tick that scaled returns. (The management API's counts
        # of a queue this young come with its first statistics sample; until then the depth
        # is the passive declare's.)
        status = (await cluster.until("Pipeline", "users",
                                      lambda p: p["status"]["writers"]["desired"] == 3
                                      and p["status"]["depthSource"] == "management-api",
                                      "status: 3 writers desired, by the management API",
                                      within=40))["status"]  # fmt: skip
        assert status["lastScaleTime"]
        labels = {"namespace": NAMESPACE, "pipeline": "users"}
        assert registry.get_sample_value("sluiceway_writers_desired", labels) == 3
        assert registry.get_sample_value("sluiceway_writers_current", labels) == 3
        assert registry.get_sample_value("sluiceway_queue_depth_messages", labels) == 12
        # 0 -> 1 after the migration, 1 -> 3 now.
        assert registry.get_sample_value("sluiceway_scale_events_total", labels) == 2

        # Drained: back to the minimum, but only after the stabilization window.
        channel = await amqp_connection.channel()
        await (await channel.get_queue(queues.records, ensure=False)).purge()
        await channel.close()
        await cluster.until("Deployment", "users-writer", lambda d: replicas(d) == 1,
                            "back to 1 writer after the window", within=40)  # fmt: skip

        # Paused: a new backlog changes nothing, and the status says why.
        await cluster.patch(
            "Pipeline", "users", {"metadata": {"annotations": {"sluiceway.io/paused": "true"}}}
        )
        await cluster.until("Pipeline", "users", lambda p: any(
            c["type"] == "Scaling" and c["reason"] == "Paused"
            for c in p["status"].get("conditions", [])), "paused condition")  # fmt: skip
        await publish(amqp_connection, pipeline, queues.records, [b"{}"] * 20)
        await cluster.until("Pipeline", "users",
                            lambda p: p["status"].get("queueDepth") == 20, "depth 20",
                            within=40)  # fmt: skip
        assert replicas(await cluster.get("Deployment", "users-writer") or {}) == 1
        await cluster.patch(
            "Pipeline", "users", {"metadata": {"annotations": {"sluiceway.io/paused": None}}}
        )
        await cluster.until("Deployment", "users-writer", lambda d: replicas(d) == 4,
                            "4 writers once unpaused (20 messages, at most 4)")  # fmt: skip

        # A new rate limit reaches Redis (the running fetchers) and the ConfigMap.
        await cluster.patch("Pipeline", "users", {"spec": {"source": {"rateLimit": 7.5}}})

        async def rate_in_redis() -> bool:
            return await redis_client.get(store.rate_limit(pipeline)) == b"7.5"

        await eventually(rate_in_redis, what="the new rate limit in Redis")
        await cluster.until(
            "ConfigMap",
            "users-config",
            lambda c: c["data"]["SLUICEWAY_RATE_LIMIT"] == "7.5",
            "configmap",
        )
        fetcher_after = await cluster.get("Deployment", "users-fetcher") or {}
        assert fetcher_after["spec"]["template"] == fetcher["spec"]["template"]  # no restart

        # Deleted: the children and the override go.
        await cluster.delete("Pipeline", "users")

        async def children_gone() -> bool:
            return all([await cluster.get("Deployment", "users-writer") is None,
                        await cluster.get("Deployment", "users-fetcher") is None,
                        await cluster.get("ConfigMap", "users-config") is None,
                        await cluster.get("Job", job_name) is None])  # fmt: skip

        await eventually(children_gone, what="the children deleted")

        async def override_gone() -> bool:
            return await redis_client.get(store.rate_limit(pipeline)) is None

        await eventually(override_gone, what="the rate-limit override removed")

        async def pipeline_gone() -> bool:
            return await cluster.get("Pipeline", "users") is None

        await eventually(pipeline_gone, what="its finalizer released")

    # The chart's RBAC grants what the operator asked of the API, and nothing more in the
    # namespaces (cluster-wide it also reads CRDs and namespaces, which kopf's scanning uses
    # and this test turns off; a Pipeline without feeds only lists CronJobs: the feeds' test
    # holds the rest of their grant to what the operator asked).
    granted = granted_access()
    unused = {("batch", "cronjobs", verb) for verb in ("create", "patch", "delete")}
    assert operator_access(cluster.api) == granted - unused

    # The children are applied server-side, by the operator's field manager and forced (only
    # Jobs are created); the Pipeline and its status are written by kopf alone.
    requests = operator_requests(cluster.api)
    children = [r for r in requests if r.resource is not None and method(r) != "GET"
                and r.resource.plural in ("configmaps", "deployments")]  # fmt: skip
    applies = [r for r in children if method(r) == "PATCH"]
    assert applies
    for request in applies:
        assert request.headers["Content-Type"].startswith(APPLY_PATCH)
        assert (request.params["fieldManager"], request.params["force"]) == (
            FIELD_MANAGER, "true")  # fmt: skip
    assert [method(r) for r in children if method(r) != "DELETE"] == ["PATCH"] * len(applies)
    writes = [r for r in requests if r.resource is not None and method(r) != "GET"
              and r.resource.plural == "pipelines"]  # fmt: skip
    assert any(r.subresource == "status" for r in writes)
    assert {r.headers["User-Agent"].split("/")[0] for r in writes} == {"kopf"}

    assert_nothing_pruned(cluster.api)

    messages = caplog.text
    for reason in ("MigrationStarted", "MigrationSucceeded", "ScaledWriters", "RateLimitSet"):
        assert reason in messages
    for secret_value in ("sluiceway:sluiceway@", "guest:guest@"):
        assert secret_value not in messages


async def test_a_failed_migration_is_reported_and_run_again_and_a_lost_broker_freezes_scaling(
    cluster: Cluster, services: ServiceUrls, amqp_connection: AbstractConnection,
    pipeline: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    monkeypatch.setattr("sluiceway_operator.migration.MIGRATION_RETRY_FIRST", 1.0)

    def secret(amqp: str, management: str) -> dict[str, Any]:
        values = {
            "DATABASE_URL": services.database,
            "AMQP_URL": amqp,
            "REDIS_URL": services.redis,
            "MANAGEMENT_URL": management,
        }
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "conn", "namespace": NAMESPACE},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in values.items()},
        }

    await cluster.create(secret(services.amqp, services.management_api()))
    queues = topology.Queues(pipeline)
    await publish(amqp_connection, pipeline, queues.records, [b"{}"] * 10)
    spec = {
        "pipeline": pipeline,
        "image": {"repository": "registry.example/sluiceway", "tag": "2.0"},
        "connectionsSecret": "conn",
        "source": {"url": "https://api.example.com/users/{key}"},
        "writer": {"minReplicas": 0, "maxReplicas": 5, "targetQueueDepth": 5},
        "pollIntervalSeconds": 1,
    }
    async with running_operator():
        # What the schema cannot refuse is refused with its reason.
        await cluster.create({
            "apiVersion": f"{crd.GROUP}/{crd.VERSION}", "kind": "Pipeline",
            "metadata": {"name": "bad", "namespace": NAMESPACE, "uid": "uid-bad",
                         "resourceVersion": "1"},
            "spec": {**spec, "pipeline": "bad-" + pipeline,
                     "writer": {"minReplicas": 3, "maxReplicas": 2}},
        })  # fmt: skip
        bad = await cluster.until("Pipeline", "bad",
                                  lambda p: p.get("status", {}).get("phase") == "Failed",
                                  "invalid spec reported")  # fmt: skip
        assert "exceeds writer.maxReplicas" in bad["status"]["message"]
        assert await cluster.get("Deployment", "bad-writer") is None

        await cluster.create({
            "apiVersion": f"{crd.GROUP}/{crd.VERSION}", "kind": "Pipeline",
            "metadata": {"name": "orders", "namespace": NAMESPACE, "uid": "uid-orders",
                         "resourceVersion": "1"},
            "spec": spec,
        })  # fmt: skip
        doc = await cluster.until("Pipeline", "orders",
                                  lambda p: p.get("status", {}).get("migration", {}).get("job"),
                                  "migration Job started")  # fmt: skip
        job = doc["status"]["migration"]["job"]
        await cluster.patch("Job", job, {"status": {"failed": 3, "conditions": [{
            "type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
            "message": "Job has reached the specified backoff limit"}]}})  # fmt: skip
        failed = await cluster.until(
            "Pipeline", "orders", lambda p: p["status"].get("phase") == "Failed",
            "phase Failed")  # fmt: skip
        assert "BackoffLimitExceeded" in failed["status"]["message"]
        retry_at = failed["status"]["migration"]["nextAttemptTime"]
        assert replicas(await cluster.get("Deployment", "orders-writer") or {}) == 0
        # After the backoff the failed Job is replaced by a fresh one (attempt 2).
        await cluster.until("Pipeline", "orders",
                            lambda p: p["status"]["migration"].get("attempts") == 2
                            and p["status"]["migration"]["state"] == "Running",
                            "second attempt")  # fmt: skip
        fresh = await cluster.get("Job", job)
        assert fresh is not None
        assert not fresh.get("status")
        # kopf ran the migration again, after the delay its TemporaryError named.
        assert (f"Timer 'migrate' failed temporarily: migration Job {job} failed "
                f"(BackoffLimitExceeded: Job has reached the specified backoff limit); run "
                f"again at {retry_at}") in caplog.text  # fmt: skip
        await cluster.patch("Job", job, {"status": {"conditions": [
            {"type": "Complete", "status": "True"}]}})  # fmt: skip
        await cluster.until("Deployment", "orders-writer", lambda d: replicas(d) == 2,
                            "2 writers for 10 messages", within=40)  # fmt: skip
        # Succeeded: nothing of the failure is left behind (the status is merge-patched).
        done = await cluster.until("Pipeline", "orders", lambda p: p["status"].get(
            "phase") == "Running", "phase Running after the retry")  # fmt: skip
        assert done["status"]["migration"] == {
            "image": "registry.example/sluiceway-writer:2.0", "job": job, "attempts": 2,
            "state": "Succeeded"}  # fmt: skip
        assert done["status"]["message"] == ""

        # A new image: its migration runs first, while the writers keep the migrated image.
        await cluster.patch("Pipeline", "orders", {"spec": {"image": {"tag": "3.0"}}})
        doc = await cluster.until(
            "Pipeline",
            "orders",
            lambda p: p["status"]["migration"]["image"].endswith(":3.0"),
            "new migration",
        )
        new_job = doc["status"]["migration"]["job"]
        assert new_job != job
        assert await cluster.get("Job", new_job) is not None
        await asyncio.sleep(2.5)
        writer = await cluster.get("Deployment", "orders-writer") or {}
        assert writer["spec"]["template"]["spec"]["containers"][0]["image"] == (
            "registry.example/sluiceway-writer:2.0")  # fmt: skip
        assert replicas(writer) == 2
        await cluster.patch("Job", new_job, {"status": {"conditions": [
            {"type": "Complete", "status": "True"}]}})  # fmt: skip
        await cluster.until("Deployment", "orders-writer", lambda d: d["spec"]["template"][
            "spec"]["containers"][0]["image"] == "registry.example/sluiceway-writer:3.0",
            "writers rolled to the migrated image")  # fmt: skip

        # The broker goes away (the Secret now points nowhere): the writers stay as they are.
        await cluster.patch(
            "Secret",
            "conn",
            {
                "data": secret("amqp://guest:guest@127.0.0.1:1/", "http://guest:guest@127.0.0.1:1")[
                    "data"
                ]
            },
        )
        lost = await cluster.until(
            "Pipeline",
            "orders",
            lambda p: any(
                c["type"] == "BrokerReachable" and c["status"] == "False"
                for c in p["status"].get("conditions", [])
            ),
            "broker unreachable condition",
        )
        assert "guest:guest" not in str(lost["status"])
        # The depth is unknown now, not the last reading (10) shown as if current.
        assert "queueDepth" not in lost["status"]
        assert "depthSource" not in lost["status"]
        await asyncio.sleep(2.5)  # more polls without a reading
        assert replicas(await cluster.get("Deployment", "orders-writer") or {}) == 2
        assert "queueDepth" not in (await cluster.get("Pipeline", "orders") or {})["status"]
    assert_nothing_pruned(cluster.api)


async def test_a_change_to_a_pipeline_is_acted_on_at_once_not_at_its_next_poll(
    cluster: Cluster, services: ServiceUrls, redis_client: aioredis.Redis, pipeline: str,
) -> None:  # fmt: skip
    values = {"DATABASE_URL": services.database, "AMQP_URL": services.amqp,
              "REDIS_URL": services.redis, "MANAGEMENT_URL": services.management_api()}  # fmt: skip
    await cluster.create({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "conn", "namespace": NAMESPACE},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in values.items()},
    })  # fmt: skip
    async with running_operator():
        await cluster.create({
            "apiVersion": f"{crd.GROUP}/{crd.VERSION}", "kind": "Pipeline",
            "metadata": {"name": "slow", "namespace": NAMESPACE, "uid": "uid-slow",
                         "resourceVersion": "1"},
            "spec": {"pipeline": pipeline, "connectionsSecret": "conn",
                     "image": {"repository": "registry.example/sluiceway", "tag": "1.0"},
                     "source": {"url": "https://api.example.com/users/{key}", "rateLimit": 5},
                     "pollIntervalSeconds": 3600},
        })  # fmt: skip
        # Both timers run at once the first time...
        await cluster.until("Pipeline", "slow", lambda p: p.get("status", {}).get("phase")
                            == "Migrating", "migration started")  # fmt: skip

        async def rate_in_redis(value: bytes) -> bool:
            return await redis_client.get(store.rate_limit(pipeline)) == value

        await eventually(lambda: rate_in_redis(b"5"), what="the first rate limit in Redis")

        # ... and again as soon as the Pipeline changes, an hour before their next poll.
        await cluster.patch("Pipeline", "slow", {"spec": {"source": {"rateLimit": 8}}})
        await eventually(lambda: rate_in_redis(b"8"), within=10, what="the new rate limit")
        await cluster.patch("Pipeline", "slow", {"spec": {"image": {"tag": "2.0"}}})
        await cluster.until("Pipeline", "slow", lambda p: p["status"]["migration"][
            "image"].endswith(":2.0"), "the new image's migration", within=10)  # fmt: skip


async def test_a_pipeline_without_an_image_runs_the_operators_images(
    cluster: Cluster, services: ServiceUrls, pipeline: str,
) -> None:  # fmt: skip
    await cluster.create({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "conn", "namespace": NAMESPACE},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in {
            "DATABASE_URL": services.database, "AMQP_URL": services.amqp,
            "REDIS_URL": services.redis}.items()},
    })  # fmt: skip
    release = Defaults(Image("registry.example/release/sluiceway", "0.9.0"))
    async with running_operator(release):
        await cluster.create({
            "apiVersion": f"{crd.GROUP}/{crd.VERSION}", "kind": "Pipeline",
            "metadata": {"name": "plain", "namespace": NAMESPACE, "uid": "uid-plain",
                         "resourceVersion": "1"},
            "spec": {"pipeline": pipeline, "connectionsSecret": "conn",
                     "source": {"url": "https://api.example.com/users/{key}"}},
        })  # fmt: skip
        fetcher = await cluster.until("Deployment", "plain-fetcher", lambda d: True, "fetcher")
        assert fetcher["spec"]["template"]["spec"]["containers"][0]["image"] == (
            "registry.example/release/sluiceway-fetcher:0.9.0")  # fmt: skip
        migrating = await cluster.until("Pipeline", "plain", lambda p: p.get("status", {}).get(
            "phase") == "Migrating", "its migration Job")  # fmt: skip
        assert migrating["status"]["migration"]["image"] == (
            "registry.example/release/sluiceway-writer:0.9.0")  # fmt: skip


async def test_the_operator_command_serves_its_metrics_and_probes(
    cluster: Cluster, tmp_path: Path
) -> None:
    # `sluiceway operator` as a process, against kmock through the kubeconfig the fixture
    # wrote: ready once kopf watches Pipelines, with its metrics on /metrics.
    import os
    import sys

    port = free_port()
    env = {**os.environ, "SLUICEWAY_METRICS_PORT": str(port),
           "SLUICEWAY_OPERATOR_NAMESPACES": NAMESPACE}  # fmt: skip
    log = (tmp_path / "operator.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sluiceway_common", "operator", env=env, stdout=log, stderr=log
    )
    try:
        await until_ready(port)
        status, health = await get(port, "/healthz")
        assert status == 200, health
        page = await get(port, "/metrics")
        assert "sluiceway_writers_desired" in page[1]
        assert "sluiceway_scale_events_total" in page[1]
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), timeout=30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()
