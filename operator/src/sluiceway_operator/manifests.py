"""The objects the operator keeps for a Pipeline, built as plain manifests, pure.

For a Pipeline ``p``: the ConfigMap ``p-config`` (the rate limit new fetcher pods start
with; a change reaches running fetchers through Redis, without a restart), the fetcher
Deployment ``p-fetcher``, the writer Deployment ``p-writer`` (its replica count is the
operator's) and one migration Job ``p-migrate-<digest of the writer image>`` for each writer
image; and for each of ``spec.feeds`` a CronJob ``p-feed-<feed>`` that runs ``sluiceway
enqueue`` from the admin image. Each gets the Pipeline as its owner when it is adopted (see
``handlers``).
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

from sluiceway_common.settings import plain
from sluiceway_operator import crd
from sluiceway_operator.spec import Feed, Http, Image, Keys, PipelineSpec, Resources, Sql, Stale

# The labels Kubernetes limits names in (a Job's name becomes its pods' job-name label).
NAME_MAX = 63
MANAGED_BY = "sluiceway-operator"
# Mounted at /tmp: the root filesystem is read-only, and Python and the libraries want a
# writable temporary directory.
TMP_VOLUME = "tmp"
# The writer's flush on SIGTERM: the batch timeout, then one database round trip, which the
# writer bounds itself; the grace period leaves this much on top.
FLUSH_MARGIN_SECONDS = 30
# Where fetchers and writers serve /metrics, /healthz and /readyz (SLUICEWAY_METRICS_PORT).
METRICS_PORT = 9090
FEED_LABEL = "sluiceway.io/feed"
# Where a keys feed's ConfigMap key is mounted, as one file.
KEYS_DIR = "/var/run/sluiceway/feed"
KEYS_VOLUME = "keys"
# A feed run's Job: one retry (a rerun skips the keys the first run queued: they are in
# flight), at most 6 hours, started at most 5 minutes late (else it waits for the next time).
FEED_BACKOFF_LIMIT = 1
FEED_DEADLINE_SECONDS = 21_600
FEED_STARTING_DEADLINE_SECONDS = 300
# A CronJob needs a schedule even while suspended: a feed without one is suspended for good
# and run by hand; this one only names a time.
MANUAL_SCHEDULE = "0 0 1 1 *"


# The migration Job's CPU and memory where writer.resources names neither (a namespace with a
# ResourceQuota refuses a pod without them): `sluiceway migrate` on an empty database peaks at
# ~80 MiB RSS and ~1.6 s of CPU (measured), so there is room for heavier revisions.
MIGRATION_RESOURCES = Resources(limits={"cpu": "500m", "memory": "256Mi"},
                                requests={"cpu": "100m", "memory": "128Mi"})  # fmt: skip


def child_name(name: str, suffix: str, limit: int = NAME_MAX) -> str:
    """``name-suffix``, shortened with a digest of ``name`` when it would pass ``limit``
    chars."""
    full = f"{name}-{suffix}"
    if len(full) <= limit:
        return full
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    keep = limit - len(suffix) - len(digest) - 2
    return f"{name[:keep].rstrip('-')}-{digest}-{suffix}"


def config_name(spec: PipelineSpec) -> str:
    return child_name(spec.name, "config")


def fetcher_name(spec: PipelineSpec) -> str:
    return child_name(spec.name, "fetcher")


def writer_name(spec: PipelineSpec) -> str:
    return child_name(spec.name, "writer")


def migration_name(spec: PipelineSpec) -> str:
    """One Job per writer image: a new image (a new schema revision) runs a new Job."""
    digest = hashlib.sha256(spec.writer.image.ref.encode()).hexdigest()[:10]
    return child_name(spec.name, f"migrate-{digest}")


def feed_cronjob_name(spec: PipelineSpec, feed: str) -> str:
    return child_name(spec.name, f"feed-{feed}", crd.CRONJOB_NAME_MAX)


def feed_selector(spec: PipelineSpec) -> dict[str, str]:
    """The labels every CronJob of the Pipeline's feeds, and every Job they run, carry."""
    return {"sluiceway.io/pipeline": spec.name, "app.kubernetes.io/component": "feed"}


def labels(spec: PipelineSpec, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "sluiceway",
        "app.kubernetes.io/instance": spec.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "sluiceway.io/pipeline": spec.name,
    }


def selector(spec: PipelineSpec, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/instance": spec.name,
        "app.kubernetes.io/component": component,
    }


def _connections(spec: PipelineSpec, *keys: str) -> list[dict[str, Any]]:
    return [{"name": f"SLUICEWAY_{key}",
             "valueFrom": {"secretKeyRef": {"name": spec.connections_secret, "key": key}}}
            for key in keys]  # fmt: skip


def _env(**values: object) -> list[dict[str, Any]]:
    return [{"name": f"SLUICEWAY_{key}", "value": str(value)} for key, value in values.items()]


def _sink_env(spec: PipelineSpec) -> list[dict[str, Any]]:
    """The sink's SLUICEWAY_SINK_* settings, for the writers and the stale feeds; none
    without a sink."""
    if spec.sink is None:
        return []
    return [{"name": name, "value": value} for name, value in spec.sink.settings().items()]


def _container(spec: PipelineSpec, name: str, image: Image, args: list[str],
               env: list[dict[str, Any]], resources: Resources) -> dict[str, Any]:  # fmt: skip
    container: dict[str, Any] = {
        "name": name,
        "image": image.ref,
        "imagePullPolicy": spec.pull_policy,
        "args": args,
        "env": env,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": TMP_VOLUME, "mountPath": "/tmp"}],
    }
    if resources.manifest():
        container["resources"] = resources.manifest()
    return container


def _served(container: dict[str, Any]) -> dict[str, Any]:
    """A long-running component: its metrics port and the probes on it."""
    container["env"] = [*container["env"], *_env(METRICS_PORT=METRICS_PORT)]
    container["ports"] = [{"name": "metrics", "containerPort": METRICS_PORT}]
    # Alive while the event loop turns; ready while connected (and, for a writer, while the
    # schema is the one it started on). A broker outage makes pods unready, not restarted.
    container["livenessProbe"] = {"httpGet": {"path": "/healthz", "port": "metrics"},
                                  "periodSeconds": 10, "timeoutSeconds": 5,
                                  "failureThreshold": 3}  # fmt: skip
    container["readinessProbe"] = {"httpGet": {"path": "/readyz", "port": "metrics"},
                                   "periodSeconds": 5, "timeoutSeconds": 5}  # fmt: skip
    return container


def _pod(spec: PipelineSpec, component: str, container: dict[str, Any], *,
         restart: str = "Always", grace: int | None = None,
         volumes: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:  # fmt: skip
    pod: dict[str, Any] = {
        "restartPolicy": restart,
        "enableServiceLinks": False,
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": [{"name": TMP_VOLUME, "emptyDir": {"sizeLimit": "64Mi"}}, *volumes],
    }
    if spec.pull_secrets:
        pod["imagePullSecrets"] = [{"name": name} for name in spec.pull_secrets]
    if grace is not None:
        pod["terminationGracePeriodSeconds"] = grace
    return {"metadata": {"labels": labels(spec, component)}, "spec": pod}


def _deployment(spec: PipelineSpec, component: str, name: str, replicas: int,
                pod: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": spec.namespace,
                     "labels": labels(spec, component)},
        "spec": {"replicas": replicas, "selector": {"matchLabels": selector(spec, component)},
                 **extra, "template": pod},
    }  # fmt: skip


def config_map(spec: PipelineSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": config_name(spec), "namespace": spec.namespace,
                     "labels": labels(spec, "config")},
        "data": {"SLUICEWAY_RATE_LIMIT": plain(spec.rate_limit)},
    }  # fmt: skip


def fetcher_deployment(spec: PipelineSpec, replicas: int | None = None) -> dict[str, Any]:
    """The fetchers, ``replicas`` of them (the operator's count when it scales them; by
    default ``fetcher.replicas``)."""
    env = [
        *_connections(spec, "AMQP_URL", "REDIS_URL"),
        *_env(PIPELINE=spec.pipeline, SOURCE_URL=spec.source_url,
              CONCURRENCY=spec.fetcher.concurrency, MAX_ATTEMPTS=spec.fetcher.max_attempts,
              REQUEST_TIMEOUT=plain(spec.fetcher.request_timeout)),
        # Read once at start-up; the running fetchers follow the limit in Redis.
        {"name": "SLUICEWAY_RATE_LIMIT", "valueFrom": {"configMapKeyRef": {
            "name": config_name(spec), "key": "SLUICEWAY_RATE_LIMIT"}}},
    ]  # fmt: skip
    if spec.headers_secret:
        env.append({"name": "SLUICEWAY_SOURCE_HEADERS", "valueFrom": {
            "secretKeyRef": {"name": spec.headers_secret, "key": "HEADERS"}}})  # fmt: skip
    container = _served(_container(spec, "fetcher", spec.fetcher.image, ["fetcher"], env,
                                   spec.fetcher.resources))  # fmt: skip
    # What a fetcher holds is unacked and goes back to the queue when it stops; in-flight
    # requests finish within the request timeout.
    pod = _pod(spec, "fetcher", container, grace=math.ceil(spec.fetcher.request_timeout) + 10)
    count = spec.fetcher.replicas if replicas is None else replicas
    return _deployment(spec, "fetcher", fetcher_name(spec), count, pod, {})


def writer_grace_seconds(spec: PipelineSpec) -> int:
    """Longer than a writer's flush on SIGTERM, so that scaling down never cuts a batch."""
    return math.ceil(spec.writer.batch_timeout) + FLUSH_MARGIN_SECONDS


def writer_deployment(spec: PipelineSpec, replicas: int, image: str | None = None
                      ) -> dict[str, Any]:  # fmt: skip
    """The writers, running ``image`` (the last one migrated; by default the spec's)."""
    env = [
        *_connections(spec, "AMQP_URL", "DATABASE_URL"),
        *_env(PIPELINE=spec.pipeline, BATCH_SIZE=spec.writer.batch_size,
              BATCH_TIMEOUT=plain(spec.writer.batch_timeout), WRITE_MODE=spec.writer.write_mode),
        *_sink_env(spec),
    ]  # fmt: skip
    container = _served(_container(spec, "writer", spec.writer.image, ["writer"], env,
                                   spec.writer.resources))  # fmt: skip
    if image is not None:
        container["image"] = image
    pod = _pod(spec, "writer", container, grace=writer_grace_seconds(spec))
    # A new writer starts before an old one stops: a rollout never leaves the records queue
    # without a consumer.
    strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    return _deployment(spec, "writer", writer_name(spec), replicas, pod, {"strategy": strategy})


def migration_resources(spec: PipelineSpec) -> Resources:
    """The writer's resources, with :data:`MIGRATION_RESOURCES` for each of CPU and memory
    that they do not name at all (one they name, by request or limit, is theirs alone: a
    default limit might fall under their request)."""
    own = spec.writer.resources
    named = set(own.limits) | set(own.requests)

    def fill(default: dict[str, str | int], given: dict[str, str | int]) -> dict[str, str | int]:
        return {**{key: value for key, value in default.items() if key not in named}, **given}

    return Resources(fill(MIGRATION_RESOURCES.limits, own.limits),
                     fill(MIGRATION_RESOURCES.requests, own.requests))  # fmt: skip


def migration_job(spec: PipelineSpec) -> dict[str, Any]:
    """``sluiceway migrate`` (alembic upgrade head) in the writer's image: the schema a
    writer checks at start-up is the one its own image carries."""
    env = _connections(spec, "DATABASE_URL")
    container = _container(spec, "migrate", spec.writer.image, ["migrate"], env,
                           migration_resources(spec))  # fmt: skip
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": migration_name(spec), "namespace": spec.namespace,
                     "labels": labels(spec, "migration"),
                     "annotations": {"sluiceway.io/image": spec.writer.image.ref}},
        "spec": {
            # Retried by the operator, with its own backoff, once this Job has failed.
            "backoffLimit": 2,
            "activeDeadlineSeconds": 1800,
            # Its result is kept in the Pipeline's status; the Job can go a day later.
            "ttlSecondsAfterFinished": 86_400,
            "template": _pod(spec, "migration", container, restart="Never"),
        },
    }  # fmt: skip


Volumes = tuple[dict[str, Any], ...]


def _feed_source(spec: PipelineSpec, feed: Feed
                 ) -> tuple[list[str], list[dict[str, Any]], Volumes]:  # fmt: skip
    """The enqueue arguments of ``feed``'s source, the environment it reads besides, and the
    volume it mounts. Values go as ``--flag=value``: one argument each, whatever they hold
    (a query may start with ``-``), and never through a shell."""
    source = feed.source
    if isinstance(source, Sql):
        env = ([{"name": "SLUICEWAY_SQL_URL", "valueFrom": {"secretKeyRef": {
                   "name": spec.connections_secret, "key": source.secret_key}}}]
               if source.secret_key else _connections(spec, "DATABASE_URL"))  # fmt: skip
        return [f"--sql={source.query}"], env, ()
    if isinstance(source, Stale):
        limit = [] if source.limit is None else [f"--limit={source.limit}"]
        # With a sink the stale rows are the sink table's: the run reads its settings.
        env = [*_connections(spec, "DATABASE_URL"), *_sink_env(spec)]
        return [f"--stale={source.age}", *limit], env, ()
    if isinstance(source, Http):
        flags = (("--items", source.items), ("--key", source.key), ("--next", source.next),
                 ("--cursor-param", source.cursor_param))  # fmt: skip
        args = [f"--http={source.url}",
                *(f"{flag}={value}" for flag, value in flags if value is not None)]  # fmt: skip
        # The fetchers' own headers, limit, attempts and timeout: a listing's requests are
        # the same upstream's, on the same shared limit.
        env = [
            *_env(MAX_ATTEMPTS=spec.fetcher.max_attempts,
                  REQUEST_TIMEOUT=plain(spec.fetcher.request_timeout)),
            {"name": "SLUICEWAY_RATE_LIMIT", "valueFrom": {"configMapKeyRef": {
                "name": config_name(spec), "key": "SLUICEWAY_RATE_LIMIT"}}},
        ]  # fmt: skip
        if spec.headers_secret:
            env.append({"name": "SLUICEWAY_SOURCE_HEADERS", "valueFrom": {
                "secretKeyRef": {"name": spec.headers_secret, "key": "HEADERS"}}})  # fmt: skip
        return args, env, ()
    assert isinstance(source, Keys)
    volume = {"name": KEYS_VOLUME, "configMap": {
        "name": source.config_map, "items": [{"key": source.key, "path": "keys"}]}}  # fmt: skip
    return [f"{KEYS_DIR}/keys"], [], (volume,)


def feed_cronjob(spec: PipelineSpec, feed: Feed) -> dict[str, Any]:
    """``sluiceway enqueue`` of ``feed``'s source on its schedule, one run at a time; the run
    records its outcome in Redis under the feed's name (``SLUICEWAY_FEED``)."""
    args, source_env, volumes = _feed_source(spec, feed)
    env = [
        *_connections(spec, "AMQP_URL", "REDIS_URL"),
        *_env(PIPELINE=spec.pipeline, FEED=feed.name),
        *source_env,
    ]
    assert spec.admin.image is not None  # parse gives one to every Pipeline with feeds
    container = _container(spec, "enqueue", spec.admin.image, ["enqueue", *args], env,
                           spec.admin.resources)  # fmt: skip
    if volumes:
        container["volumeMounts"].append(
            {"name": KEYS_VOLUME, "mountPath": KEYS_DIR, "readOnly": True}
        )
    pod = _pod(spec, "feed", container, restart="Never", volumes=volumes)
    feed_labels = {**labels(spec, "feed"), FEED_LABEL: feed.name}
    pod["metadata"]["labels"] = feed_labels
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": feed_cronjob_name(spec, feed.name), "namespace": spec.namespace,
                     "labels": feed_labels},
        "spec": {
            "schedule": feed.schedule or MANUAL_SCHEDULE,
            "suspend": feed.suspend or feed.schedule is None,
            # A run still going when the next is due: the next is skipped, not doubled.
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": FEED_STARTING_DEADLINE_SECONDS,
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {
                "metadata": {"labels": feed_labels},
                "spec": {
                    "backoffLimit": FEED_BACKOFF_LIMIT,
                    "activeDeadlineSeconds": FEED_DEADLINE_SECONDS,
                    "template": pod,
                },
            },
        },
    }  # fmt: skip
