"""A Pipeline's feeds: one CronJob each, and ``status.feeds``, what they did.

A *feed* (``spec.feeds[]``) is a source of keys that a CronJob ``<name>-feed-<feed>`` runs
``sluiceway enqueue --feed <feed>`` on, on its schedule (or, without one, when someone runs
``kubectl create job --from=cronjob/…``). A *run* is one such enqueue: it keeps its outcome in
Redis (:class:`sluiceway_common.store.FeedRuns`), where :func:`step` reads it back.

A run that fails is told once, as a Warning Event: a run record with ``ok`` false finished
after ``lastFailureReported`` (``FeedRunFailed``, with enqueue's error line), or a Job of the
feed that failed with no such record since it started (``FeedJobFailed``: a run killed before
it could write, by its deadline, the OOM killer, a missing Secret key, Redis away).
``lastFailureReported`` in the feed's status is when the last one told of failed.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from sluiceway_common import store
from sluiceway_common.settings import mask
from sluiceway_operator import manifests
from sluiceway_operator.kube import Applied
from sluiceway_operator.migration import Event, job_state
from sluiceway_operator.spec import Feed, PipelineSpec

log = logging.getLogger(__name__)

# The run record's fields as status.feeds[].lastRun names them.
RUN_FIELDS = {"started": "started", "finished": "finished", "ok": "ok", "queued": "queued",
              "in_flight": "inFlight", "skipped": "skipped", "error": "error"}  # fmt: skip


def when(text: Any) -> dt.datetime | None:
    """A time as a run record or the API server writes it; None when there is none."""
    if not isinstance(text, str) or not text:
        return None
    try:
        found = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return found if found.tzinfo else found.replace(tzinfo=dt.UTC)


def last_run(run: dict[str, Any]) -> dict[str, Any]:
    """A run record as ``lastRun`` (absent fields left out: the schema has no nulls)."""
    return {name: run[key] for key, name in RUN_FIELDS.items() if run.get(key) is not None}


def failed_jobs(jobs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The failed Jobs among ``jobs``, by feed, oldest failure first."""
    found: dict[str, list[dict[str, Any]]] = {}
    for job in jobs:
        feed = ((job.get("metadata") or {}).get("labels") or {}).get(manifests.FEED_LABEL)
        if feed and job_state(job)[0] == "Failed" and failed_at(job) is not None:
            found.setdefault(feed, []).append(job)
    for each in found.values():
        each.sort(key=lambda job: failed_at(job) or dt.datetime.min.replace(tzinfo=dt.UTC))
    return found


def failed_at(job: dict[str, Any]) -> dt.datetime | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Failed" and condition.get("status") == "True":
            return when(condition.get("lastTransitionTime")) or when(
                (job.get("status") or {}).get("startTime"))  # fmt: skip
    return None


def failures(feed: str, run: dict[str, Any] | None, jobs: list[dict[str, Any]],
             reported: str | None) -> tuple[list[Event], str | None]:  # fmt: skip
    """The Warning Events for ``feed``'s failures since ``reported`` (the last one told), and
    the new ``reported``. A failed Job whose run recorded its own failure is told once, by
    the record."""
    events: list[Event] = []
    since = when(reported)
    told: list[tuple[dt.datetime, str]] = []
    finished = when((run or {}).get("finished"))
    if run is not None and run.get("ok") is False and finished is not None and (
            since is None or finished > since):  # fmt: skip
        error = run.get("error") or "no reason recorded"
        events.append(("Warning", "FeedRunFailed",
                       f"feed {feed}: {error} ({run.get('queued', 0):,} keys queued)"))  # fmt: skip
        told.append((finished, str(run["finished"])))
    for job in jobs:
        at = failed_at(job)
        assert at is not None
        if since is not None and at <= since:
            continue
        told.append((at, at.isoformat()))
        started = when((job.get("status") or {}).get("startTime"))
        recorded = (run is not None and run.get("ok") is False and finished is not None
                    and (started is None or finished >= started))  # fmt: skip
        if not recorded:
            reason = job_state(job)[1]
            name = job["metadata"]["name"]
            events.append(("Warning", "FeedJobFailed",
                           f"feed {feed}: Job {name} failed ({reason}) and its run recorded "
                           "no outcome"))  # fmt: skip
    if not told:
        return events, reported
    return events, max(told)[1]


def feed_status(feed: Feed, cronjob: dict[str, Any] | None, run: dict[str, Any] | None,
                reported: str | None) -> dict[str, Any]:  # fmt: skip
    """``status.feeds[]`` of ``feed``: its CronJob's state and its last run."""
    spec = (cronjob or {}).get("spec") or {}
    status = (cronjob or {}).get("status") or {}
    item: dict[str, Any] = {"name": feed.name,
                            "suspended": bool(spec.get("suspend", feed.suspend))}  # fmt: skip
    if feed.schedule is not None:
        item["schedule"] = feed.schedule
    for key in ("lastScheduleTime", "lastSuccessfulTime"):
        if status.get(key):
            item[key] = status[key]
    if run is not None:
        item["lastRun"] = last_run(run)
    if reported is not None:
        item["lastFailureReported"] = reported
    return item


@dataclass
class Outcome:
    """``status.feeds``, the Events to post, and a problem reading the runs (or None)."""

    status: list[dict[str, Any]]
    events: list[Event] = field(default_factory=list)
    runs_problem: str | None = None
    running: bool = False  # a feed's Job is running: its keys are on their way


async def read_runs(client: aioredis.Redis | None, spec: PipelineSpec
                    ) -> tuple[dict[str, dict[str, Any]], str | None]:  # fmt: skip
    """Every feed's last run, the runs of feeds no longer in the spec forgotten; and what
    went wrong with Redis, if it did."""
    if client is None:
        return {}, None
    runs = store.FeedRuns(client, spec.pipeline)
    try:
        found = await runs.read()
        gone = set(found) - {feed.name for feed in spec.feeds}
        await runs.forget(sorted(gone))
    except (redis.exceptions.RedisError, OSError, ValueError) as exc:
        return {}, f"Redis: {mask(str(exc))}"
    return {name: run for name, run in found.items() if name not in gone}, None


async def step(children: Applied, client: aioredis.Redis | None, spec: PipelineSpec,
               before: list[dict[str, Any]], adopt: Callable[[dict[str, Any]], None]
               ) -> Outcome:  # fmt: skip
    """Apply each feed's CronJob, delete those of feeds gone from the spec, and read back
    what they did (``before``: ``status.feeds`` as last written)."""
    kube = children.kube
    for feed in spec.feeds:
        cronjob = manifests.feed_cronjob(spec, feed)
        adopt(cronjob)
        await children.apply(cronjob)
    events: list[Event] = []
    wanted = {manifests.feed_cronjob_name(spec, feed.name): feed for feed in spec.feeds}
    found: dict[str, dict[str, Any]] = {}
    for cronjob in await kube.list("CronJob", spec.namespace, manifests.feed_selector(spec)):
        name = cronjob["metadata"]["name"]
        if name in wanted:
            found[wanted[name].name] = cronjob
        elif await children.delete("CronJob", spec.namespace, name):
            events.append(("Normal", "FeedRemoved", f"CronJob {name} deleted: its feed left "
                                                    "the spec"))  # fmt: skip
    runs, problem = await read_runs(client, spec)
    every_job = (await kube.list("Job", spec.namespace, manifests.feed_selector(spec))
                 if spec.feeds else [])  # fmt: skip
    jobs = failed_jobs(every_job)
    reported = {item.get("name"): item.get("lastFailureReported") for item in before}
    status = []
    for feed in spec.feeds:
        told, last = failures(feed.name, runs.get(feed.name), jobs.get(feed.name, []),
                              reported.get(feed.name))  # fmt: skip
        events.extend(told)
        status.append(feed_status(feed, found.get(feed.name), runs.get(feed.name), last))
    feed_jobs = [
        job
        for job in every_job  # (a selector the API server applies, checked)
        if ((job.get("metadata") or {}).get("labels") or {}).get(manifests.FEED_LABEL)
    ]
    running = any(job_state(job)[0] == "Running" for job in feed_jobs)
    return Outcome(status, events, problem, running)
