"""The migration gate, step by step, against a fake of the operator's Kubernetes client: a
Job per writer image, the writers' image only once it succeeded, and a failed Job run again
after a growing delay that an operator restart does not cut short."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from sluiceway_operator import manifests
from sluiceway_operator.kube import Kube
from sluiceway_operator.migration import Outcome, job_state, retry_delay, step
from sluiceway_operator.spec import PipelineSpec, parse

NOW = dt.datetime(2026, 11, 30, 12, 0, 0, tzinfo=dt.UTC)
FAILED = {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
          "message": "Job has reached the specified backoff limit"}  # fmt: skip
REASON = "BackoffLimitExceeded: Job has reached the specified backoff limit"


class Jobs(Kube):
    """The Jobs of one namespace, in memory; what was created and deleted."""

    def __init__(self, *, conflict: bool = False) -> None:  # no API server behind it
        self.jobs: dict[str, dict[str, Any]] = {}
        self.created: list[str] = []
        self.deleted: list[str] = []
        self.conflict = conflict

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        assert kind == "Job"
        return self.jobs.get(name)

    async def create(self, body: dict[str, Any]) -> bool:
        if self.conflict:
            return False
        self.jobs[body["metadata"]["name"]] = body
        self.created.append(body["metadata"]["name"])
        return True

    async def delete(self, kind: str, namespace: str, name: str) -> bool:
        self.deleted.append(name)
        return self.jobs.pop(name, None) is not None

    def finish(self, name: str, condition: dict[str, Any]) -> None:
        self.jobs[name] = {**self.jobs[name], "status": {"conditions": [condition]}}


def spec(tag: str = "1.0") -> PipelineSpec:
    return parse("users", "data", {
        "image": {"repository": "registry.example/sluiceway", "tag": tag},
        "connectionsSecret": "conn",
        "source": {"url": "https://api.example.com/{key}"}})  # fmt: skip


async def run(jobs: Jobs, status: dict[str, Any], tag: str = "1.0",
              now: dt.datetime = NOW) -> Outcome:  # fmt: skip
    def adopt(child: dict[str, Any]) -> None:
        child["metadata"]["ownerReferences"] = [{"uid": "uid-users"}]

    outcome = await step(jobs, spec(tag), status, adopt, now)
    assert all(job["metadata"]["ownerReferences"] for job in jobs.jobs.values())
    return outcome


def test_job_state_reads_the_jobs_conditions() -> None:
    assert job_state(None) == ("Absent", "")
    assert job_state({"status": {"active": 1}}) == ("Running", "")
    assert job_state({"status": {"conditions": [{"type": "Complete", "status": "True"}]}}) == (
        "Succeeded", "")  # fmt: skip
    assert job_state({"status": {"conditions": [FAILED]}}) == ("Failed", REASON)


def test_a_failed_migration_is_retried_with_a_growing_capped_backoff() -> None:
    delays = [retry_delay(n) for n in range(1, 10)]
    assert delays[:3] == [30, 60, 120]
    assert delays == sorted(delays)
    assert delays[-1] == 600


async def test_a_new_image_runs_its_job_and_writers_get_it_once_it_succeeded() -> None:
    jobs = Jobs()
    job = manifests.migration_name(spec())
    started = await run(jobs, {})
    assert jobs.created == [job]
    assert started.status == {"migration": {
        "image": "registry.example/sluiceway-writer:1.0", "job": job, "attempts": 1,
        "state": "Running"}}  # fmt: skip
    assert [e[1] for e in started.events] == ["MigrationStarted"]
    assert started.retry_in is None

    running = await run(jobs, started.status)
    assert running.status == started.status
    assert not running.events

    jobs.finish(job, {"type": "Complete", "status": "True"})
    done = await run(jobs, running.status)
    assert done.status["migration"]["state"] == "Succeeded"
    assert done.status["writerImage"] == "registry.example/sluiceway-writer:1.0"
    assert [e[1] for e in done.events] == ["MigrationSucceeded"]

    jobs.jobs.clear()  # the Job's TTL: the status remembers
    assert (await run(jobs, done.status)).status == done.status
    assert jobs.created == [job]


async def test_a_failed_job_is_kept_for_the_delay_then_replaced_by_a_fresh_one() -> None:
    jobs = Jobs()
    job = manifests.migration_name(spec())
    started = await run(jobs, {"writerImage": "registry.example/sluiceway-writer:0.9"})
    jobs.finish(job, FAILED)

    failed = await run(jobs, started.status)
    migration = failed.status["migration"]
    assert (migration["state"], migration["reason"]) == ("Failed", REASON)
    assert migration["nextAttemptTime"] == "2026-11-30T12:00:30Z"
    assert failed.status["writerImage"] == "registry.example/sluiceway-writer:0.9"
    assert failed.retry_in == 30
    assert failed.message == (f"migration Job {job} failed ({REASON}); run again at "
                              "2026-11-30T12:00:30Z")  # fmt: skip
    assert [e[:2] for e in failed.events] == [("Warning", "MigrationFailed")]
    assert jobs.jobs[job]["status"]  # kept, with its pods' logs

    later = NOW + dt.timedelta(seconds=30)
    again = await run(jobs, failed.status, now=later)
    assert jobs.deleted == [job]
    assert jobs.created == [job, job]
    assert not jobs.jobs[job].get("status")
    assert again.status["migration"]["attempts"] == 2
    assert again.status["migration"]["state"] == "Running"

    jobs.finish(job, FAILED)
    second = await run(jobs, again.status, now=later)
    assert second.retry_in == 60


async def test_an_operator_restarted_during_the_delay_waits_out_the_rest_of_it() -> None:
    jobs = Jobs()
    job = manifests.migration_name(spec())
    await run(jobs, {})
    jobs.finish(job, FAILED)
    failed = await run(jobs, {"migration": {
        "image": "registry.example/sluiceway-writer:1.0", "job": job, "attempts": 1,
        "state": "Running"}})  # fmt: skip
    # A new operator knows only the status: 20 s of the 30 are left.
    waiting = await run(jobs, failed.status, now=NOW + dt.timedelta(seconds=10))
    assert waiting.retry_in == pytest.approx(20)
    assert waiting.status == failed.status
    assert not waiting.events
    assert jobs.deleted == []
    assert jobs.created == [job]


async def test_a_new_image_starts_over_while_the_writers_keep_the_one_migrated() -> None:
    jobs = Jobs()
    old = {"migration": {"image": "registry.example/sluiceway-writer:1.0", "job": "x",
                         "attempts": 3, "state": "Failed", "reason": REASON,
                         "nextAttemptTime": "2026-11-30T12:10:00Z"},
           "writerImage": "registry.example/sluiceway-writer:0.9"}  # fmt: skip
    started = await run(jobs, old, tag="2.0")
    assert started.status["migration"]["attempts"] == 1
    assert started.status["migration"]["image"] == "registry.example/sluiceway-writer:2.0"
    assert started.status["writerImage"] == "registry.example/sluiceway-writer:0.9"
    assert started.retry_in is None


async def test_a_job_still_being_deleted_is_left_for_the_next_poll() -> None:
    jobs = Jobs(conflict=True)
    outcome = await run(jobs, {})
    assert outcome.status["migration"]["state"] == "Pending"
    assert not outcome.events
    assert outcome.retry_in is None
