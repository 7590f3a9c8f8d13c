"""``spec.feeds`` with the real operator, in-process, against kmock and the real Redis: each
feed's CronJob appears, follows the spec (schedule, source, suspension), goes when its feed
goes (its run record with it); status.feeds reads the CronJobs and the runs in Redis, and a
failed run is told once by a Warning Event."""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any

import pytest
import redis.asyncio as aioredis

from sluiceway_common import store
from sluiceway_operator import crd
from tests.conftest import ServiceUrls
from tests.integration.helpers import eventually
from tests.integration.test_operator import (  # noqa: F401 -- cluster is a fixture
    NAMESPACE,
    Cluster,
    assert_nothing_pruned,
    cluster,
    granted_access,
    operator_access,
    running_operator,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def container(cronjob: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"][
        "containers"][0]  # fmt: skip
    return found


def feed_status(pipeline_doc: dict[str, Any], name: str) -> dict[str, Any]:
    found = [f for f in pipeline_doc.get("status", {}).get("feeds") or [] if f["name"] == name]
    return found[0] if found else {}


def run(ok: bool, finished: str, error: str | None = None) -> dict[str, Any]:
    return {"started": "2026-03-01T03:00:00+00:00", "finished": finished, "ok": ok,
            "queued": 40, "in_flight": 2, "skipped": 1, "error": error}  # fmt: skip


async def test_feeds_become_cronjobs_that_follow_the_spec_and_report_their_runs(
    cluster: Cluster,  # noqa: F811 -- the fixture imported above
    services: ServiceUrls, redis_client: aioredis.Redis, pipeline: str,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.INFO)
    values = {"DATABASE_URL": services.database, "AMQP_URL": services.amqp,
              "REDIS_URL": services.redis, "MANAGEMENT_URL": services.management_api()}  # fmt: skip
    await cluster.create({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "conn", "namespace": NAMESPACE},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in values.items()},
    })  # fmt: skip
    runs = store.FeedRuns(redis_client, pipeline)
    await runs.record("old", run(True, "2026-01-01T00:00:00+00:00"))  # a feed long gone
    feeds: list[dict[str, Any]] = [
        {"name": "ids", "schedule": "*/15 * * * *",
         "sql": {"query": "SELECT id FROM users", "connectionsSecretKey": "USERS_DATABASE_URL"}},
        {"name": "refresh", "schedule": "0 3 * * *", "stale": {"age": "24h", "limit": 1000}},
        {"name": "seed", "keys": {"configMap": "user-ids", "key": "ids.txt"}},
    ]  # fmt: skip
    spec = {"pipeline": pipeline, "connectionsSecret": "conn",
            "image": {"repository": "registry.example/sluiceway", "tag": "1.0"},
            "source": {"url": "https://api.example.com/users/{key}"},
            "feeds": feeds, "pollIntervalSeconds": 1}  # fmt: skip
    async with running_operator():
        await cluster.create({
            "apiVersion": f"{crd.GROUP}/{crd.VERSION}", "kind": "Pipeline",
            "metadata": {"name": "users", "namespace": NAMESPACE, "uid": "uid-feeds",
                         "resourceVersion": "1", "generation": 1},
            "spec": spec,
        })  # fmt: skip

        # Added: a CronJob each, owned by the Pipeline.
        ids = await cluster.until("CronJob", "users-feed-ids", lambda c: True, "ids CronJob")
        assert ids["metadata"]["ownerReferences"][0]["uid"] == "uid-feeds"
        assert ids["metadata"]["labels"]["sluiceway.io/feed"] == "ids"
        assert (ids["spec"]["schedule"], ids["spec"]["suspend"],
                ids["spec"]["concurrencyPolicy"]) == ("*/15 * * * *", False, "Forbid")  # fmt: skip
        box = container(ids)
        assert box["image"] == "registry.example/sluiceway-admin:1.0"
        assert box["args"] == ["enqueue", "--sql=SELECT id FROM users"]
        assert box["securityContext"]["readOnlyRootFilesystem"] is True
        env = {var["name"]: var for var in box["env"]}
        assert env["SLUICEWAY_FEED"]["value"] == "ids"
        assert env["SLUICEWAY_PIPELINE"]["value"] == pipeline
        assert env["SLUICEWAY_SQL_URL"]["valueFrom"] == {"secretKeyRef": {
            "name": "conn", "key": "USERS_DATABASE_URL"}}  # fmt: skip
        seed = await cluster.until("CronJob", "users-feed-seed", lambda c: True, "seed CronJob")
        assert seed["spec"]["suspend"] is True  # no schedule: run by hand
        assert container(seed)["args"] == ["enqueue", "/var/run/sluiceway/feed/keys"]
        pod = seed["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        assert {"name": "keys", "configMap": {"name": "user-ids", "items": [
            {"key": "ids.txt", "path": "keys"}]}} in pod["volumes"]  # fmt: skip
        await cluster.until("CronJob", "users-feed-refresh", lambda c: True, "refresh CronJob")

        # status.feeds: the CronJob's times and the last run from Redis; the run of a feed
        # no longer in the spec forgotten.
        await cluster.patch("CronJob", "users-feed-refresh", {"status": {
            "lastScheduleTime": "2026-03-01T03:00:00Z",
            "lastSuccessfulTime": "2026-03-01T03:00:00Z"}})  # fmt: skip
        await runs.record("refresh", run(True, "2026-03-01T03:01:00+00:00"))
        await runs.record("seed", run(True, "2026-03-01T03:02:00+00:00"))
        doc = await cluster.until(
            "Pipeline", "users", lambda p: feed_status(p, "refresh").get("lastRun", {}).get(
                "ok") is True and "lastScheduleTime" in feed_status(p, "refresh"),
            "status.feeds from the CronJob and Redis")  # fmt: skip
        assert feed_status(doc, "refresh") == {
            "name": "refresh", "schedule": "0 3 * * *", "suspended": False,
            "lastScheduleTime": "2026-03-01T03:00:00Z",
            "lastSuccessfulTime": "2026-03-01T03:00:00Z",
            "lastRun": {"started": "2026-03-01T03:00:00+00:00",
                        "finished": "2026-03-01T03:01:00+00:00", "ok": True, "queued": 40,
                        "inFlight": 2, "skipped": 1},
        }  # fmt: skip
        assert feed_status(doc, "seed")["suspended"] is True
        assert "schedule" not in feed_status(doc, "seed")
        assert "old" not in await runs.read()

        # A failed run: one Warning Event, however many polls see it.
        await runs.record(
            "ids",
            run(
                False,
                "2026-03-01T03:15:09+00:00",
                '--sql: the query failed: relation "users" does not exist',
            ),
        )
        await cluster.until("Pipeline", "users", lambda p: feed_status(p, "ids").get(
            "lastFailureReported") == "2026-03-01T03:15:09+00:00", "failure reported")  # fmt: skip
        # A Job killed before its run could record anything: told by the Job.
        await cluster.create({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "users-feed-ids-29000000", "namespace": NAMESPACE,
                         "labels": ids["spec"]["jobTemplate"]["metadata"]["labels"]},
            "spec": {"template": {"spec": {"containers": [], "restartPolicy": "Never"}}},
            "status": {"startTime": "2026-03-01T03:30:00Z", "conditions": [
                {"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                 "message": "Job was active longer than specified deadline",
                 "lastTransitionTime": "2026-03-01T09:30:00Z"}]},
        })  # fmt: skip
        await cluster.until("Pipeline", "users", lambda p: feed_status(p, "ids").get(
            "lastFailureReported", "").startswith("2026-03-01T09:30:00"),
            "Job failure")  # fmt: skip
        await asyncio.sleep(2.5)  # more polls: nothing told again
        assert caplog.text.count("FeedRunFailed: feed ids: --sql: the query failed") == 1
        assert caplog.text.count("FeedJobFailed: feed ids: Job users-feed-ids-29000000 "
                                 "failed (DeadlineExceeded") == 1  # fmt: skip

        # Changed: a new schedule and source, a suspension, a feed removed.
        changed = [
            {"name": "ids", "schedule": "0 * * * *", "stale": {"age": "1h"}},
            {"name": "refresh", "schedule": "0 3 * * *", "suspend": True,
             "stale": {"age": "24h", "limit": 1000}},
        ]  # fmt: skip
        await cluster.patch("Pipeline", "users", {"spec": {"feeds": changed}})
        ids = await cluster.until("CronJob", "users-feed-ids",
                                  lambda c: c["spec"]["schedule"] == "0 * * * *",
                                  "new schedule")  # fmt: skip
        assert container(ids)["args"] == ["enqueue", "--stale=1h"]
        await cluster.until("CronJob", "users-feed-refresh",
                            lambda c: c["spec"]["suspend"] is True, "suspended")  # fmt: skip

        async def seed_gone() -> bool:
            return await cluster.get("CronJob", "users-feed-seed") is None and (
                "seed" not in await runs.read())  # fmt: skip

        await eventually(seed_gone, what="the seed CronJob deleted, its run forgotten")
        doc = await cluster.until("Pipeline", "users", lambda p: [
            f["name"] for f in p["status"].get("feeds", [])] == ["ids", "refresh"],
            "status.feeds without seed")  # fmt: skip
        assert feed_status(doc, "refresh")["suspended"] is True

        # Deleted: the CronJobs and the runs go with the Pipeline.
        await cluster.delete("Pipeline", "users")

        async def all_gone() -> bool:
            return (await cluster.get("CronJob", "users-feed-ids") is None
                    and await cluster.get("CronJob", "users-feed-refresh") is None
                    and not await runs.read())  # fmt: skip

        await eventually(all_gone, what="the CronJobs and the feeds' runs deleted")

    # Every CronJob verb the chart grants, the operator used, and no other.
    cronjob_access = {a for a in operator_access(cluster.api) if a[1] == "cronjobs"}
    assert cronjob_access == {a for a in granted_access() if a[1] == "cronjobs"}
    assert operator_access(cluster.api) <= granted_access()
    assert_nothing_pruned(cluster.api)  # status.feeds with its runs
