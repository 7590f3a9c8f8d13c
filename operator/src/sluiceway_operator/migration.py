"""The migration gate: no writer runs an image before that image's migration succeeded.

A *migration* is one Job, ``<name>-migrate-<digest of the writer image>``, running
``sluiceway migrate`` (``alembic upgrade head``) from the writer image. ``status.migration``
says where the current image's migration is (``Pending``, ``Running``, ``Succeeded``,
``Failed``, with its ``attempts``); ``status.writerImage`` is the last image whose migration
succeeded, the only one writers may run.

A failed Job is kept, with its pods' logs, until the next attempt: :func:`step` answers how
long to wait (:func:`retry_delay`, doubling from 30 s up to 10 minutes), the caller has kopf
run it again then (``kopf.TemporaryError``), and :func:`step` replaces the failed Job with a
fresh one. ``status.migration.nextAttemptTime`` is when, so an operator restarted meanwhile
waits out the same delay.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sluiceway_operator import manifests
from sluiceway_operator.kube import Kube
from sluiceway_operator.spec import PipelineSpec

# A failed migration Job is run again after this, doubling up to the cap.
MIGRATION_RETRY_FIRST = 30.0
MIGRATION_RETRY_MAX = 600.0

# (type, reason, message): an Event the caller posts on the Pipeline.
Event = tuple[str, str, str]


def timestamp(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def retry_delay(attempts: int) -> float:
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


def waiting(migration: dict[str, Any], now: dt.datetime) -> float:
    """Seconds until a failed migration's next attempt (0: due, or not failed)."""
    retry_at = migration.get("nextAttemptTime")
    if migration.get("state") != "Failed" or not retry_at:
        return 0.0
    return max((parse_time(retry_at) - now).total_seconds(), 0.0)


@dataclass(frozen=True)
class Outcome:
    """What one step found: ``status`` (``migration`` and ``writerImage``) to write, and, for
    a failed migration, the seconds until the next attempt and why."""

    status: dict[str, Any]
    retry_in: float | None = None
    message: str = ""
    events: list[Event] = field(default_factory=list)


def _status(migration: dict[str, Any], writer_image: str | None) -> dict[str, Any]:
    return {"migration": migration, **({"writerImage": writer_image} if writer_image else {})}


def _failed(before: dict[str, Any], reason: str, migrated: str | None, now: dt.datetime
            ) -> Outcome:  # fmt: skip
    """A Job just seen failed: report it and wait before the next attempt."""
    delay = retry_delay(int(before.get("attempts") or 0))
    retry_at = timestamp(now + dt.timedelta(seconds=delay))
    job = before["job"]
    failed = {**before, "state": "Failed", "reason": reason, "nextAttemptTime": retry_at}
    return Outcome(_status(failed, migrated), delay,
                   f"migration Job {job} failed ({reason}); run again at {retry_at}",
                   [("Warning", "MigrationFailed",
                     f"Job {job} failed ({reason}); run again at {retry_at}")])  # fmt: skip


async def _start(kube: Kube, spec: PipelineSpec, before: dict[str, Any], migrated: str | None,
                 adopt: Callable[[dict[str, Any]], None]) -> Outcome:  # fmt: skip
    body = manifests.migration_job(spec)
    adopt(body)
    if not await kube.create(body):
        # The failed Job of the last attempt is still being deleted: the next poll.
        return Outcome(_status(before, migrated))
    attempts = int(before.get("attempts") or 0) + 1
    job, target = before["job"], before["image"]
    running = {"image": target, "job": job, "attempts": attempts, "state": "Running"}
    return Outcome(_status(running, migrated), events=[
        ("Normal", "MigrationStarted",
         f"Job {job} runs `alembic upgrade head` for {target} (attempt {attempts})")])  # fmt: skip


async def step(kube: Kube, spec: PipelineSpec, status: dict[str, Any],
               adopt: Callable[[dict[str, Any]], None], now: dt.datetime) -> Outcome:  # fmt: skip
    """Move the migration of ``spec``'s writer image on by one step, from ``status`` (the
    Pipeline's): start its Job, see it end, or run it again once a failure's delay is over."""
    target = spec.writer.image.ref
    before = dict(status.get("migration") or {})
    migrated = status.get("writerImage")
    if before.get("image") == target and before.get("state") == "Succeeded":
        return Outcome(_status(before, target))
    job = manifests.migration_name(spec)
    if before.get("image") != target:
        before = {"image": target, "job": job, "attempts": 0, "state": "Pending"}
    state, reason = job_state(await kube.get("Job", spec.namespace, job))
    if state == "Succeeded":
        done = {"image": target, "job": job, "attempts": before.get("attempts", 0),
                "state": "Succeeded"}  # fmt: skip
        return Outcome(_status(done, target), events=[
            ("Normal", "MigrationSucceeded",
             f"Job {job} migrated the schema for {target}; writers of that image may "
             "start")])  # fmt: skip
    if state == "Running":
        return Outcome(_status({**before, "job": job, "state": "Running"}, migrated))
    if state == "Failed" and before.get("state") != "Failed":
        return _failed({**before, "job": job}, reason, migrated, now)
    if (wait := waiting(before, now)) > 0:
        # Failed before this operator started: the same delay, not a new one.
        return Outcome(_status(before, migrated), wait,
                       f"migration Job {job} failed ({before.get('reason', '')}); run again "
                       f"at {before['nextAttemptTime']}")  # fmt: skip
    if state == "Failed":
        await kube.delete("Job", spec.namespace, job)  # with its pods
    return await _start(kube, spec, {**before, "job": job}, migrated, adopt)
