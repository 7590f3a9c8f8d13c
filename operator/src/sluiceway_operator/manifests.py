"""The objects the operator keeps for a Pipeline, built as plain manifests, pure.

For a Pipeline ``p``: the ConfigMap ``p-config`` (the rate limit new fetcher pods start
with; a change reaches running fetchers through Redis, without a restart), the fetcher
Deployment ``p-fetcher``, the writer Deployment ``p-writer`` (its replica count is the
operator's) and one migration Job ``p-migrate-<digest of the writer image>`` for each writer
image. Each gets the Pipeline as its owner when it is adopted (see ``handlers``).
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

from sluiceway_common.settings import plain
from sluiceway_operator.spec import Image, PipelineSpec, Resources

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


def child_name(name: str, suffix: str) -> str:
    """``name-suffix``, shortened with a digest of ``name`` when it would pass 63 chars."""
    full = f"{name}-{suffix}"
    if len(full) <= NAME_MAX:
        return full
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    keep = NAME_MAX - len(suffix) - len(digest) - 2
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
         restart: str = "Always", grace: int | None = None) -> dict[str, Any]:  # fmt: skip
    pod: dict[str, Any] = {
        "restartPolicy": restart,
        "enableServiceLinks": False,
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": [{"name": TMP_VOLUME, "emptyDir": {"sizeLimit": "64Mi"}}],
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


def fetcher_deployment(spec: PipelineSpec) -> dict[str, Any]:
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
    return _deployment(spec, "fetcher", fetcher_name(spec), spec.fetcher.replicas, pod, {})


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


def migration_job(spec: PipelineSpec) -> dict[str, Any]:
    """``sluiceway migrate`` (alembic upgrade head) in the writer's image: the schema a
    writer checks at start-up is the one its own image carries."""
    env = _connections(spec, "DATABASE_URL")
    container = _container(spec, "migrate", spec.writer.image, ["migrate"], env, Resources())
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
