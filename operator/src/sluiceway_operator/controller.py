"""One Pipeline's reconcile loop: children, migration gate, writer scaling, rate limit.

Every ``pollIntervalSeconds`` (or at once when the Pipeline changes) :meth:`Controller.tick`
brings the cluster to what the Pipeline asks for and returns its new ``status``:

1. the ConfigMap and the fetcher Deployment;
2. the migration gate: the writer image must have had its Job (``sluiceway migrate``)
   succeed before any writer of that image runs. Until the first success the writers stay
   at 0; after an image change the writers keep their migrated image until the new Job
   succeeded. A failed Job sets phase ``Failed`` and is run again after a backoff;
3. the writer Deployment, its replicas from the records queue's depth (see ``scaling``),
   unless the Pipeline is paused or the depth cannot be read (then they stay as they are);
4. a new ``source.rateLimit`` written to Redis, which every running fetcher reads before
   its next request.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from sluiceway_common import settings, store, topology
from sluiceway_common.settings import mask
from sluiceway_operator import manifests, scaling
from sluiceway_operator.broker import BrokerUnreachable, DepthReader
from sluiceway_operator.kube import Kube
from sluiceway_operator.spec import InvalidSpec, PipelineSpec, parse

log = logging.getLogger(__name__)

PAUSED_ANNOTATION = "sluiceway.io/paused"
CONNECTION_KEYS = ("DATABASE_URL", "AMQP_URL", "REDIS_URL")
# A failed migration Job is run again after this, doubling up to the cap.
MIGRATION_RETRY_FIRST = 30.0
MIGRATION_RETRY_MAX = 600.0

# (type, reason, message): an Event the caller posts on the Pipeline.
Event = tuple[str, str, str]


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def timestamp(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def migration_retry_delay(attempts: int) -> float:
    """Seconds before a migration that failed ``attempts`` times runs again."""
    return min(MIGRATION_RETRY_FIRST * 2.0 ** max(attempts - 1, 0), MIGRATION_RETRY_MAX)


def job_state(job: dict[str, Any] | None) -> tuple[str, str]:
    """(state, reason) of a migration Job: Absent, Running, Succeeded or Failed."""
    if job is None:
        return "Absent", ""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("status") != "True":
            continue
        if condition.get("type") == "Complete":
            return "Succeeded", ""
        if condition.get("type") == "Failed":
            reason = condition.get("reason") or "Failed"
            message = condition.get("message") or ""
            return "Failed", f"{reason}: {message}" if message else reason
    return "Running", ""


def is_paused(annotations: dict[str, str] | None) -> bool:
    return (annotations or {}).get(PAUSED_ANNOTATION, "").lower() == "true"


def condition(status: str, type_: str, reason: str, message: str, previous: list[dict[str, Any]]
              ) -> dict[str, Any]:  # fmt: skip
    """A status condition; its transition time moves only when its status does."""
    before = next((c for c in previous if c.get("type") == type_), None)
    since = (before or {}).get("lastTransitionTime") if (before or {}).get(
        "status") == status else None  # fmt: skip
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": since or timestamp(now_utc())}  # fmt: skip


@dataclass
class Connections:
    database_url: str
    amqp_url: str
    redis_url: str
    management_url: str | None


class SecretProblem(Exception):
    pass


async def read_connections(kube: Kube, spec: PipelineSpec) -> Connections:
    """The URLs in the Pipeline's connections Secret; :class:`SecretProblem` says what is
    wrong with it."""
    secret = await kube.get("Secret", spec.namespace, spec.connections_secret)
    if secret is None:
        raise SecretProblem(f"Secret {spec.connections_secret} not found")
    data = secret.get("data") or {}
    missing = [key for key in CONNECTION_KEYS if key not in data]
    if missing:
        raise SecretProblem(f"Secret {spec.connections_secret} lacks {', '.join(missing)}")
    values = {key: base64.b64decode(value).decode() for key, value in data.items()}
    return Connections(values["DATABASE_URL"], values["AMQP_URL"], values["REDIS_URL"],
                       values.get("MANAGEMENT_URL"))  # fmt: skip


@dataclass
class Controller:
    """The state one Pipeline's loop keeps between ticks (lost on restart, by design:
    status and the cluster hold everything that must survive)."""

    kube: Kube
    post: Callable[[Event], Awaitable[None]]
    clock: Callable[[], float]
    stabilizer: scaling.Stabilizer | None = None
    reader: DepthReader | None = None
    redis: aioredis.Redis | None = None
    connections: Connections | None = None

    async def close(self) -> None:
        if self.reader is not None:
            await self.reader.close()
        if self.redis is not None:
            await self.redis.aclose()

    async def _connections(self, spec: PipelineSpec) -> Connections:
        found = await read_connections(self.kube, spec)
        if found != self.connections:
            await self.close()
            self.reader = DepthReader(found.amqp_url, found.management_url)
            self.redis = aioredis.Redis.from_url(found.redis_url)
            self.connections = found
        return found

    async def tick(self, name: str, namespace: str, raw_spec: dict[str, Any],
                   annotations: dict[str, str], status: dict[str, Any],
                   adopt: Callable[[dict[str, Any]], None]) -> dict[str, Any]:  # fmt: skip
        """Reconcile once; return the status to write."""
        conditions: list[dict[str, Any]] = list(status.get("conditions") or [])
        new: dict[str, Any] = {}
        problems: list[str] = []

        def set_condition(ok: bool, type_: str, reason: str, message: str) -> None:
            nonlocal conditions
            item = condition("True" if ok else "False", type_, reason, message, conditions)
            conditions = [c for c in conditions if c.get("type") != type_] + [item]

        try:
            spec = parse(name, namespace, raw_spec)
        except InvalidSpec as exc:
            set_condition(False, "SpecValid", "InvalidSpec", str(exc))
            if status.get("message") != str(exc):
                await self.post(("Warning", "InvalidSpec", str(exc)))
            return {"phase": "Failed", "message": str(exc), "conditions": conditions}
        set_condition(True, "SpecValid", "Valid", "")

        # 1. What the fetchers need, always in shape.
        config = manifests.config_map(spec)
        adopt(config)
        await self.kube.apply(config)
        fetcher = manifests.fetcher_deployment(spec)
        adopt(fetcher)
        await self.kube.apply(fetcher)

        # 2. The migration gate.
        migration, writer_image = await self._migrate(spec, status, adopt)
        new["migration"] = migration
        if writer_image is not None:
            new["writerImage"] = writer_image
        if migration["state"] == "Failed":
            problems.append(f"migration failed: {migration.get('reason', '')}")
        set_condition(migration["state"] == "Succeeded", "Migrated", migration["state"],
                      migration.get("reason", ""))  # fmt: skip

        # 3. The writers.
        try:
            connections: Connections | None = await self._connections(spec)
            set_condition(True, "ConnectionsFound", "Found", "")
        except SecretProblem as exc:
            connections = None
            problems.append(str(exc))
            set_condition(False, "ConnectionsFound", "SecretProblem", str(exc))
        writer_doc = await self.kube.get("Deployment", namespace, manifests.writer_name(spec))
        current = int(((writer_doc or {}).get("spec") or {}).get("replicas") or 0)
        ready = int(((writer_doc or {}).get("status") or {}).get("readyReplicas") or 0)
        desired = current
        if writer_image is None:
            desired = 0  # nothing migrated yet: no writer may run
        elif connections is not None and self.reader is not None:
            desired = await self._scale(spec, annotations, current, new, set_condition)
        replicas = desired
        writer = manifests.writer_deployment(spec, replicas, image=writer_image)
        adopt(writer)
        await self.kube.apply(writer)
        if replicas != current and writer_doc is not None:
            new["lastScaleTime"] = timestamp(now_utc())
            depth = f"queue depth {new.get('queueDepth', '?')}, {new.get('depthSource', '?')}"
            await self.post(
                ("Normal", "ScaledWriters", f"writers {current} -> {replicas} ({depth})")
            )
        new["writers"] = {"current": replicas, "ready": ready, "desired": desired,
                          "summary": f"{ready}/{desired}"}  # fmt: skip

        # 4. The rate limit, for the running fetchers.
        if connections is not None and status.get("rateLimit") != spec.rate_limit:
            try:
                assert self.redis is not None
                await store.RateKeys(self.redis, spec.pipeline).set_override(spec.rate_limit)
                new["rateLimit"] = spec.rate_limit
                await self.post(("Normal", "RateLimitSet",
                                 f"{settings.plain(spec.rate_limit)} requests/s for every "
                                 "fetcher"))  # fmt: skip
                set_condition(True, "RateLimitApplied", "Applied", "")
            except (redis.exceptions.RedisError, OSError) as exc:
                problems.append(f"Redis: {mask(str(exc))}")
                set_condition(False, "RateLimitApplied", "RedisUnreachable", mask(str(exc)))

        if problems:
            new["phase"], new["message"] = "Failed", "; ".join(problems)
        elif migration["state"] != "Succeeded":
            new["phase"], new["message"] = "Migrating", f"migration Job {migration['job']}"
        else:
            new["phase"], new["message"] = "Running", ""
        new["conditions"] = conditions
        return new

    async def _migrate(self, spec: PipelineSpec, status: dict[str, Any],
                       adopt: Callable[[dict[str, Any]], None]
                       ) -> tuple[dict[str, Any], str | None]:  # fmt: skip
        """The migration's status, and the writer image that may run (None: none yet)."""
        target = spec.writer.image.ref
        before = dict(status.get("migration") or {})
        migrated = status.get("writerImage")
        if before.get("image") == target and before.get("state") == "Succeeded":
            return before, target
        job_name = manifests.migration_name(spec)
        if before.get("image") != target:
            before = {"image": target, "job": job_name, "attempts": 0, "state": "Pending"}
        job = await self.kube.get("Job", spec.namespace, job_name)
        state, reason = job_state(job)
        attempts = int(before.get("attempts") or 0)
        if state == "Absent":
            retry_at = before.get("nextAttemptTime")
            if retry_at and parse_time(retry_at) > now_utc():
                return before, migrated
            body = manifests.migration_job(spec)
            adopt(body)
            await self.kube.create(body)
            attempts += 1
            await self.post(("Normal", "MigrationStarted",
                             f"Job {job_name} runs `alembic upgrade head` for {target} "
                             f"(attempt {attempts})"))  # fmt: skip
            return {"image": target, "job": job_name, "attempts": attempts,
                    "state": "Running"}, migrated  # fmt: skip
        if state == "Succeeded":
            await self.post(("Normal", "MigrationSucceeded",
                             f"Job {job_name} migrated the schema for {target}; writers of "
                             "that image may start"))  # fmt: skip
            return {"image": target, "job": job_name, "attempts": attempts,
                    "state": "Succeeded"}, target  # fmt: skip
        if state == "Failed":
            if before.get("state") != "Failed":
                delay = migration_retry_delay(attempts)
                retry_at = timestamp(now_utc() + dt.timedelta(seconds=delay))
                await self.post(
                    (
                        "Warning",
                        "MigrationFailed",
                        f"Job {job_name} failed ({reason}); run again at {retry_at}",
                    )
                )
                return {"image": target, "job": job_name, "attempts": attempts,
                        "state": "Failed", "reason": reason,
                        "nextAttemptTime": retry_at}, migrated  # fmt: skip
            retry_at = before.get("nextAttemptTime") or timestamp(now_utc())
            if parse_time(retry_at) <= now_utc():
                # The failed Job goes (with its pods); the next tick creates it anew.
                await self.kube.delete("Job", spec.namespace, job_name)
            return before, migrated
        return {**before, "job": job_name, "state": "Running"}, migrated

    async def _scale(self, spec: PipelineSpec, annotations: dict[str, str], current: int,
                     new: dict[str, Any], set_condition: Callable[[bool, str, str, str], None]
                     ) -> int:  # fmt: skip
        assert self.reader is not None
        now = self.clock()
        if self.stabilizer is None:
            self.stabilizer = scaling.Stabilizer(spec.writer.stabilization)
            self.stabilizer.seed(now, current)
        self.stabilizer.window = spec.writer.stabilization
        try:
            depth = await self.reader.read(topology.Queues(spec.pipeline).records)
        except BrokerUnreachable as exc:
            # Never scale on a missing metric: keep what runs.
            set_condition(False, "BrokerReachable", "Unreachable", str(exc))
            return current
        set_condition(True, "BrokerReachable", "Reachable", depth.source)
        new["queueDepth"], new["depthSource"] = depth.messages, depth.source
        wanted = scaling.desired(depth.messages, spec.writer.target_queue_depth,
                                 spec.writer.min_replicas, spec.writer.max_replicas)  # fmt: skip
        recommended = self.stabilizer.recommend(now, wanted, current)
        if is_paused(annotations):
            set_condition(False, "Scaling", "Paused",
                          f"{PAUSED_ANNOTATION} is true; would run {recommended}")  # fmt: skip
            return current
        set_condition(True, "Scaling", "Active", "")
        return recommended
