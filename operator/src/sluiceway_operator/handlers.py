"""The kopf handlers: thin; the work is in :mod:`~sluiceway_operator.controller` and
:mod:`~sluiceway_operator.migration`.

Two timers run for each Pipeline, each every ``pollIntervalSeconds`` and at once when the
Pipeline changes (see :mod:`~sluiceway_operator.poll`): ``reconcile`` (children, writers,
rate limit, phase and conditions) and ``migrate`` (the migration gate, ``status.migration``
and ``status.writerImage``). Each leaves its part of the status on kopf's ``patch``, which
kopf applies as the timer returns; a failed migration is run again by kopf, after the delay
its ``kopf.TemporaryError`` names. Deleting a Pipeline deletes its children (owner references
would too, but not before the garbage collector gets to them), the rate-limit override it
wrote to Redis and its feeds' run records.

Per Pipeline, kopf's memo keeps a :class:`Kept`; the operator-wide memo keeps the
Kubernetes client (``kube``), the metrics (``metrics``, when ``sluiceway operator`` passes
them), what a Pipeline may leave out (``defaults``: the images of the operator's release,
from its settings), the peering objects to create when absent (``peering``, when the
operator's replicas share them: see :mod:`~sluiceway_operator.peering`) and every Kept by uid
(``pipelines``), to close their connections at exit.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf
import redis.asyncio as aioredis
import redis.exceptions
from lightkube import ApiError

from sluiceway_common import store
from sluiceway_operator import crd, manifests, migration
from sluiceway_operator.controller import Controller, SecretProblem, read_connections
from sluiceway_operator.kube import Kube
from sluiceway_operator.metrics import OperatorMetrics
from sluiceway_operator.migration import Event
from sluiceway_operator.peering import Peering
from sluiceway_operator.poll import Poll
from sluiceway_operator.spec import NO_DEFAULTS, InvalidSpec, parse

RESOURCE = (crd.GROUP, crd.VERSION, crd.PLURAL)
DEFAULT_POLL = float(crd.SPEC["properties"]["pollIntervalSeconds"]["default"])
PEERING_RETRY = 10.0  # seconds between attempts to create a missing peering object
# How long a Pipeline's clients stay open, at its deletion or the operator's exit, for its
# timers' cancelled runs to unwind (a run is cancelled mid-call, so it takes milliseconds).
UNWIND_SECONDS = 10.0

log = logging.getLogger(__name__)


@dataclass
class Kept:
    """What the operator keeps in memory for one Pipeline, between its timers' runs."""

    controller: Controller
    reconcile: Poll = field(default_factory=Poll)
    migrate: Poll = field(default_factory=Poll)
    # The status as this operator last wrote it: the body's, seen through the watch, can lag
    # behind, and a stale one would repeat the steps it records (an Event, a Redis write).
    written: dict[str, Any] = field(default_factory=dict)

    async def close(self) -> None:
        """Close the controller's clients, once the runs that a stop cancelled are done with
        them: a run still unwinding would otherwise use a closed client, or open anew one
        that nobody closes."""
        for poll in (self.reconcile, self.migrate):
            await poll.unwound(UNWIND_SECONDS)
        await self.controller.close()

    def status(self, body: kopf.Body) -> dict[str, Any]:
        return {**dict(body.status), **self.written}

    def write(self, patch: kopf.Patch, body: kopf.Body, status: dict[str, Any]) -> bool:
        """Put on kopf's ``patch`` the fields of ``status`` that the Pipeline, as last seen,
        does not have already (a field written but not seen yet is written again: the same
        value, harmless, where a patch kopf could not apply would otherwise stay lost).
        Each field *replaces* the one before: what the new value of an object lacks goes on
        the patch as null (kopf's patch is a merge patch, which would keep it). True when
        ``status`` says something new."""
        seen, known = body.status, self.status(body)
        patch.status.update({key: replacing(value, seen.get(key), self.written.get(key))
                             for key, value in status.items()
                             if seen.get(key) != value})  # fmt: skip
        self.written.update(status)
        return any(known.get(key) != value for key, value in status.items())


def replacing(new: Any, *before: Any) -> Any:
    """``new`` as a merge patch over any of ``before``: the keys of an object that ``new``
    lacks, at any depth, set to null (a failed migration's ``reason`` gone once it
    succeeded)."""
    if not isinstance(new, Mapping):
        return new
    olds = [old for old in before if isinstance(old, Mapping)]
    gone = {key: None for old in olds for key in old if key not in new}
    return {**gone, **{key: replacing(value, *(old.get(key) for old in olds))
                       for key, value in new.items()}}  # fmt: skip


def poster(body: kopf.Body, logger: kopf.Logger) -> Callable[[Event], None]:
    def post(event: Event) -> None:
        kind, reason, message = event
        kopf.event(body, type=kind, reason=reason, message=message)
        logger.info("%s: %s", reason, message)

    return post


def kept(memo: kopf.Memo, uid: str, body: kopf.Body, logger: kopf.Logger) -> Kept:
    """The Pipeline's :class:`Kept`, made on first use."""
    if "kept" not in memo:
        controller = Controller(kube=memo["kube"], post=poster(body, logger),
                                clock=time.monotonic, defaults=memo["defaults"])  # fmt: skip
        memo["kept"] = memo["pipelines"][uid] = Kept(controller)
        memo["named"][body.metadata.namespace, body.metadata.name] = memo["kept"]
    found: Kept = memo["kept"]
    return found


def timer_kwargs(kwargs: dict[str, Any]) -> tuple[int, kopf.DaemonStopped]:
    """``retry`` (0, or how many times kopf ran the timer again after an error) and
    ``stopped``: kopf passes both to timers, but its TimerFn type does not name them."""
    return int(kwargs["retry"]), kwargs["stopped"]


def interval(spec: kopf.Spec) -> float:
    return float(spec.get("pollIntervalSeconds") or DEFAULT_POLL)


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """kopf's own credentials, looked for when it logs in: the pod's service account, else
    kubeconfig. (kopf's fallback login is chosen when its registry is built, at the first
    import of these handlers, and is none when no kubeconfig was there yet.)"""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = "sluiceway.io/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="sluiceway.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="sluiceway.io", key="last-handled-configuration")  # fmt: skip
    settings.posting.level = logging.INFO  # scale events are Normal events
    if "kube" not in memo:
        memo["kube"] = Kube()
    memo.setdefault("pipelines", {})
    memo.setdefault("named", {})  # (namespace, name) -> Kept, for the feeds' Jobs to find
    memo.setdefault("defaults", NO_DEFAULTS)


# After startup (kopf runs a module's startup handlers in order), which made memo["kube"];
# before kopf's peering begins, which waits for the objects. Retried until made.
@kopf.on.startup(backoff=PEERING_RETRY)
async def peering_objects(memo: kopf.Memo, **_: Any) -> None:
    """Create the peering objects that are not there (see :mod:`~sluiceway_operator.peering`):
    without them kopf would keep every replica paused, and say nothing."""
    if not isinstance(peering := memo.get("peering"), Peering):
        return  # standalone
    kube: Kube = memo["kube"]
    for body in peering.objects():
        meta = body["metadata"]
        where = f"{body['kind']} {meta['name']}" + (
            f" in {meta['namespace']}" if "namespace" in meta else "")  # fmt: skip
        try:
            if await kube.create(body):
                log.info("created the peering object %s", where)
        except ApiError as exc:
            raise kopf.TemporaryError(
                f"cannot create the peering object {where}: {exc} (the kopf.dev peering CRDs "
                "are installed with the chart's crds.install; the operator waits for them)",
                delay=PEERING_RETRY) from exc  # fmt: skip


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    for each in memo.get("pipelines", {}).values():
        await each.close()
    if isinstance(kube := memo.get("kube"), Kube):
        await kube.close()


# interval 0: each Pipeline's own interval is waited out in the handler (see poll); an
# unexpected error is logged by kopf with its traceback and retried after its backoff.
@kopf.timer(*RESOURCE, interval=0, backoff=DEFAULT_POLL)
async def reconcile(name: str, namespace: str | None, uid: str, body: kopf.Body,
                    patch: kopf.Patch, memo: kopf.Memo, logger: kopf.Logger,
                    **kwargs: Any) -> None:  # fmt: skip
    assert namespace is not None  # Pipelines are namespaced
    retry, stopped = timer_kwargs(kwargs)
    pipeline = kept(memo, uid, body, logger)
    every = interval(body.spec)
    if retry == 0 and not await pipeline.reconcile.due(every, stopped):
        return
    before = pipeline.status(body)
    recorder: OperatorMetrics | None = memo.get("metrics")
    try:
        status = await pipeline.reconcile.run(pipeline.controller.tick(
            name, namespace, dict(body.spec), dict(body.metadata.annotations), before,
            lambda child: kopf.adopt(child, owner=body)), stopped)  # fmt: skip
    except Exception as exc:
        if recorder is not None:
            recorder.reconcile_errors.labels(namespace, name).inc()
        if isinstance(exc, ApiError):
            raise kopf.TemporaryError(f"the API server refused: {exc}", delay=every) from exc
        raise
    if status is None:
        return  # stopped
    if (generation := body.metadata.get("generation")) is not None:
        status["observedGeneration"] = generation  # the spec this status answers
    pipeline.write(patch, body, status)
    if recorder is not None:
        recorder.record(namespace, name, before, status)


@kopf.timer(*RESOURCE, interval=0, backoff=DEFAULT_POLL)
async def migrate(name: str, namespace: str | None, uid: str, body: kopf.Body,
                  patch: kopf.Patch, memo: kopf.Memo, logger: kopf.Logger,
                  **kwargs: Any) -> None:  # fmt: skip
    assert namespace is not None
    retry, stopped = timer_kwargs(kwargs)
    pipeline = kept(memo, uid, body, logger)
    if retry == 0 and not await pipeline.migrate.due(interval(body.spec), stopped):
        return
    try:
        spec = parse(name, namespace, dict(body.spec), memo["defaults"])
    except InvalidSpec:
        return  # the reconcile reports it
    every = interval(body.spec)
    try:
        outcome = await pipeline.migrate.run(migration.step(
            memo["kube"], spec, pipeline.status(body),
            lambda child: kopf.adopt(child, owner=body), dt.datetime.now(dt.UTC)),
            stopped)  # fmt: skip
    except ApiError as exc:
        raise kopf.TemporaryError(f"the API server refused: {exc}", delay=every) from exc
    if outcome is None:
        return  # stopped
    for event in outcome.events:
        pipeline.controller.post(event)
    if pipeline.write(patch, body, outcome.status):
        pipeline.reconcile.changed.set()  # the phase, and the writers' image, follow at once
    if outcome.retry_in is not None:
        raise kopf.TemporaryError(outcome.message, delay=outcome.retry_in)


@kopf.on.event("batch", "v1", "jobs", labels={"app.kubernetes.io/component": "feed"})
def feed_job(event: kopf.RawEvent, namespace: str | None, labels: kopf.Labels,
             memo: kopf.Memo, **_: Any) -> None:  # fmt: skip
    """A feed's Job appeared: its Pipeline reconciles now, so sleeping fetchers wake as the
    feed starts rather than a poll after its keys are queued. (A raw watch event: nothing is
    written on the Job.)"""
    if event.get("type") != "ADDED":
        return
    owner = labels.get("sluiceway.io/pipeline")
    if isinstance(pipeline := memo.get("named", {}).get((namespace, owner)), Kept):
        pipeline.reconcile.changed.set()


@kopf.on.update(*RESOURCE)
def changed(memo: kopf.Memo, **_: Any) -> None:
    """A change to the spec or the annotations: both timers run now, not at their next poll."""
    if isinstance(pipeline := memo.get("kept"), Kept):
        pipeline.reconcile.changed.set()
        pipeline.migrate.changed.set()


@kopf.on.delete(*RESOURCE)
async def deleted(name: str, namespace: str | None, uid: str, spec: kopf.Spec, memo: kopf.Memo,
                  logger: kopf.Logger, **_: Any) -> None:  # fmt: skip
    assert namespace is not None
    kube: Kube = memo["kube"]
    if isinstance(recorder := memo.get("metrics"), OperatorMetrics):
        recorder.forget(namespace, name)
    memo.get("named", {}).pop((namespace, name), None)
    if isinstance(pipeline := memo["pipelines"].pop(uid, None), Kept):
        await pipeline.close()
    try:
        pipeline_spec = parse(name, namespace, dict(spec), memo["defaults"])
    except InvalidSpec:
        return  # nothing was ever created for it
    for kind, child in (("Deployment", manifests.writer_name(pipeline_spec)),
                        ("Deployment", manifests.fetcher_name(pipeline_spec)),
                        ("ConfigMap", manifests.config_name(pipeline_spec))):  # fmt: skip
        await kube.delete(kind, namespace, child)
    selector = {"sluiceway.io/pipeline": name, "app.kubernetes.io/component": "migration"}
    for job in await kube.list("Job", namespace, selector):
        await kube.delete("Job", namespace, job["metadata"]["name"])
    # The feeds' CronJobs, with their Jobs and pods.
    for cronjob in await kube.list("CronJob", namespace, manifests.feed_selector(pipeline_spec)):
        await kube.delete("CronJob", namespace, cronjob["metadata"]["name"])
    # The override the operator wrote; best effort, a stale one is harmless until reused.
    try:
        connections = await read_connections(kube, pipeline_spec)
    except SecretProblem:
        return
    client = aioredis.Redis.from_url(connections.redis_url)
    try:
        runs = store.FeedRuns(client, pipeline_spec.pipeline)
        await runs.forget(await runs.read())
        await store.RateKeys(client, pipeline_spec.pipeline).clear_override()
    except (redis.exceptions.RedisError, OSError) as exc:
        logger.warning("could not remove the rate-limit override and the feeds' runs from "
                       "Redis: %s", exc)  # fmt: skip
    finally:
        await client.aclose()
