"""The kopf handlers: thin; the work is in :mod:`sluiceway_operator.controller`.

A daemon per Pipeline runs its reconcile loop for as long as the Pipeline exists; a change
to the Pipeline (spec or annotations) wakes the loop at once instead of at its next poll;
deleting the Pipeline deletes its children (owner references would too, but not before
the garbage collector gets to them) and the rate-limit override it wrote to Redis.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import kopf
import redis.asyncio as aioredis
import redis.exceptions

from sluiceway_common import store
from sluiceway_operator import crd, manifests
from sluiceway_operator.controller import Controller, Event, SecretProblem, read_connections
from sluiceway_operator.kube import Kube, KubeError
from sluiceway_operator.metrics import OperatorMetrics
from sluiceway_operator.spec import InvalidSpec, parse

RESOURCE = (crd.GROUP, crd.VERSION, crd.PLURAL)
# Wakes a Pipeline's loop when the Pipeline changes (keyed by uid).
_wake: dict[str, asyncio.Event] = {}


def login(settings: kopf.OperatorSettings) -> kopf.ConnectionInfo:
    """The credentials kopf itself would find: the pod's service account, else kubeconfig."""
    info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(
        settings=settings)  # fmt: skip
    if info is None:
        raise kopf.PermanentError("no Kubernetes credentials: not in a pod, no kubeconfig")
    return info


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = "sluiceway.io/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="sluiceway.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="sluiceway.io", key="last-handled-configuration")  # fmt: skip
    settings.posting.level = 20  # INFO: scale events are Normal events
    if "kube" not in memo:
        memo["kube"] = Kube(lambda: login(settings))


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    kube = memo.get("kube")
    if isinstance(kube, Kube):
        await kube.close()


@kopf.daemon(*RESOURCE, cancellation_timeout=10.0)
async def pipeline_loop(name: str, namespace: str | None, uid: str, body: kopf.Body,
                        stopped: kopf.DaemonStopped, memo: Any, logger: kopf.Logger,
                        **_: Any) -> None:  # fmt: skip
    assert namespace is not None  # Pipelines are namespaced
    kube: Kube = memo["kube"]

    async def post(event: Event) -> None:
        kind, reason, message = event
        kopf.event(body, type=kind, reason=reason, message=message)
        logger.info("%s: %s", reason, message)

    controller = Controller(kube=kube, post=post, clock=time.monotonic)
    recorder: OperatorMetrics | None = memo.get("metrics")
    wake = _wake.setdefault(uid, asyncio.Event())
    # What this loop last wrote: the body's status, seen through the watch, can lag behind
    # it, and a stale status would repeat the steps it records (an Event, a Redis write).
    written: dict[str, Any] = {}
    try:
        while not stopped:
            wake.clear()
            previous = {**dict(body.status), **written}
            try:
                status = await controller.tick(
                    name, namespace, dict(body.spec), dict(body.metadata.annotations),
                    previous, lambda child: kopf.adopt(child, owner=body))  # fmt: skip
                generation = body.metadata.get("generation")
                if generation is not None:
                    status["observedGeneration"] = generation  # the spec this status answers
                await kube.patch("Pipeline", namespace, name, {"status": status}, sub="status")
                if recorder is not None:
                    recorder.record(namespace, name, previous, status)
                written = status
            except Exception as exc:
                if recorder is not None:
                    recorder.reconcile_errors.labels(namespace, name).inc()
                if isinstance(exc, KubeError):
                    logger.warning("reconcile: the API server refused: %s", exc)
                else:
                    # Keep the loop alive: one bad tick must not leave the writers unscaled.
                    logger.exception("reconcile failed; trying again at the next poll")
            interval = float(body.spec.get("pollIntervalSeconds") or 10)
            # Until the next poll, a change to the Pipeline, or the daemon being stopped.
            waits = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stopped.wait())]
            await asyncio.wait(waits, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
            for waiting in waits:
                waiting.cancel()
    finally:
        _wake.pop(uid, None)
        await controller.close()


@kopf.on.update(*RESOURCE)
def changed(uid: str, **_: Any) -> None:
    if uid in _wake:
        _wake[uid].set()


@kopf.on.delete(*RESOURCE)
async def deleted(name: str, namespace: str | None, spec: kopf.Spec, memo: Any,
                  logger: kopf.Logger, **_: Any) -> None:  # fmt: skip
    assert namespace is not None
    kube: Kube = memo["kube"]
    if isinstance(recorder := memo.get("metrics"), OperatorMetrics):
        recorder.forget(namespace, name)
    try:
        pipeline = parse(name, namespace, dict(spec))
    except InvalidSpec:
        return  # nothing was ever created for it
    for kind, child in (("Deployment", manifests.writer_name(pipeline)),
                        ("Deployment", manifests.fetcher_name(pipeline)),
                        ("ConfigMap", manifests.config_name(pipeline))):  # fmt: skip
        await kube.delete(kind, namespace, child)
    selector = f"sluiceway.io/pipeline={name},app.kubernetes.io/component=migration"
    for job in await kube.list("Job", namespace, selector):
        await kube.delete("Job", namespace, job["metadata"]["name"])
    # The override the operator wrote; best effort, a stale one is harmless until reused.
    try:
        connections = await read_connections(kube, pipeline)
    except SecretProblem:
        return
    client = aioredis.Redis.from_url(connections.redis_url)
    try:
        await store.RateKeys(client, pipeline.pipeline).clear_override()
    except (redis.exceptions.RedisError, OSError) as exc:
        logger.warning("could not remove the rate-limit override from Redis: %s", exc)
    finally:
        await client.aclose()
