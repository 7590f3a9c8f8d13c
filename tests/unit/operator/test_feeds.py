"""``spec.feeds``: the schema and spec.py refuse a bad feed with its reason; each feed's
CronJob runs the right enqueue, hardened like every pod, with secrets by reference; a failed
run is told once, and status.feeds says what the CronJob and the last run did."""

from __future__ import annotations

import re
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from sluiceway_common import settings, sink
from sluiceway_operator import crd, feeds, manifests
from sluiceway_operator.spec import InvalidSpec, parse
from tests.unit.operator.test_manifests import NEWEST, OLDEST, SINK, minimal, schema

# The issue's example, one feed of each source.
FEEDS: list[dict[str, Any]] = [
    {"name": "ids", "schedule": "*/15 * * * *",
     "sql": {"query": "SELECT id FROM users", "connectionsSecretKey": "USERS_DATABASE_URL"}},
    {"name": "refresh", "schedule": "0 3 * * *", "stale": {"age": "24h", "limit": 100000}},
    {"name": "listing", "http": {"url": "https://api.example.com/users", "items": "/data",
                                 "key": "/id", "next": "/next", "cursorParam": "cursor"}},
    {"name": "seed", "keys": {"configMap": "user-ids", "key": "ids.txt"}},
]  # fmt: skip


def pipeline(feed_list: list[dict[str, Any]] = FEEDS, **changes: Any) -> dict[str, Any]:
    return minimal(feeds=feed_list, source={"url": "https://x/{key}", "headersSecret": "token"},
                   **changes)  # fmt: skip


def document(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "sluiceway.io/v1alpha1", "kind": "Pipeline",
            "metadata": {"name": "users"}, "spec": spec}  # fmt: skip


def cronjobs(spec: dict[str, Any], name: str = "users") -> dict[str, dict[str, Any]]:
    parsed = parse(name, "data", spec)
    return {feed.name: manifests.feed_cronjob(parsed, feed) for feed in parsed.feeds}


def container(cronjob: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"][
        "containers"][0]  # fmt: skip
    return found


def env(cronjob: dict[str, Any]) -> dict[str, Any]:
    return {var["name"]: var.get("value", var.get("valueFrom")) for var in
            container(cronjob)["env"]}  # fmt: skip


# --- the schema ----------------------------------------------------------------------------


def test_the_issues_feeds_match_the_schema() -> None:
    jsonschema.validate(document(pipeline()), schema())


@pytest.mark.parametrize("schedule", ["*/15 * * * *", "0 3 * * *", "0 0 1,15 * MON-FRI",
                                      "30 2 * JAN,jul ?", "5-10/2 */6 1-31 1-12 0-6", "@daily",
                                      "@hourly", "0 0 * * sun"])  # fmt: skip
def test_cron_schedules_a_cronjob_takes_are_accepted(schedule: str) -> None:
    feed = {"name": "f", "schedule": schedule, "stale": {"age": "1d"}}
    jsonschema.validate(document(pipeline([feed])), schema())
    parse("users", "data", pipeline([feed]))


@pytest.mark.parametrize("schedule", ["* * * *", "* * * * * *", "60 * * * *", "0 24 * * *",
                                      "0 0 0 * *", "0 0 * 13 *", "0 0 * * 7", "@every 1h",
                                      "TZ=UTC 0 0 * * *", "*/0 * * * *", "0 0 * * FOO",
                                      ""])  # fmt: skip
def test_bad_cron_schedules_are_refused_by_the_schema_and_the_operator(schedule: str) -> None:
    feed = {"name": "f", "schedule": schedule, "stale": {"age": "1d"}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document(pipeline([feed])), schema())
    with pytest.raises(InvalidSpec, match="not a cron schedule"):
        parse("users", "data", pipeline([feed]))


def test_a_backwards_range_passes_the_pattern_but_not_the_operator() -> None:
    feed = {"name": "f", "schedule": "0 10-2 * * *", "stale": {"age": "1d"}}
    with pytest.raises(InvalidSpec, match="'10-2' is outside 0-23 or runs backwards"):
        parse("users", "data", pipeline([feed]))


@pytest.mark.parametrize(
    "feed",
    [
        {"name": "Ids", "stale": {"age": "1d"}},
        {"name": "a" * (crd.FEED_NAME_MAX + 1), "stale": {"age": "1d"}},
        {"name": "f", "stale": {"age": "0s"}},
        {"name": "f", "stale": {"age": "24"}},
        {"name": "f", "stale": {"age": "1w"}},
        {"name": "f", "stale": {"age": "1d", "limit": 0}},
        {"name": "f", "http": {"url": "ftp://x/users"}},
        {"name": "f", "http": {"url": "https://x/users", "items": "data"}},
        {"name": "f", "http": {"url": "https://x/users", "key": "/a~2b"}},
        {"name": "f", "keys": {"configMap": "ids"}},
        {"name": "f", "sql": {"query": "SELECT 1", "connectionsSecretKey": "a/b"}},
        {"schedule": "@daily", "stale": {"age": "1d"}},
    ],
    ids=["upper-name", "long-name", "zero-age", "no-unit", "week", "zero-limit", "ftp",
         "pointer-no-slash", "bad-escape", "keys-no-key", "secret-key", "no-name"],
)  # fmt: skip
def test_the_schema_refuses_bad_feeds(feed: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document(pipeline([feed])), schema())


def test_what_only_cel_checks_is_stated_as_rules_and_names_are_a_list_map() -> None:
    # CEL is the API server's to evaluate: here, that the rules are there, and say it.
    feeds_schema = crd.SPEC["properties"]["feeds"]
    assert (feeds_schema["x-kubernetes-list-type"],
            feeds_schema["x-kubernetes-list-map-keys"]) == ("map", ["name"])  # fmt: skip
    assert feeds_schema["items"]["required"] == ["name"]
    (one,) = feeds_schema["items"]["x-kubernetes-validations"]
    assert one["rule"] == ("[has(self.sql), has(self.stale), has(self.http), has(self.keys)]"
                           ".filter(x, x).size() == 1")  # fmt: skip
    assert "exactly one source" in one["message"]
    (cursor,) = feeds_schema["items"]["properties"]["http"]["x-kubernetes-validations"]
    assert cursor["rule"] == "!has(self.cursorParam) || has(self.next)"
    # What those rules refuse on the API server, spec.py refuses too (an older CRD, or a
    # server without CEL).
    jsonschema.validate(document(pipeline([{"name": "f"}])), schema())  # no CEL here


@pytest.mark.parametrize(
    ("feed_list", "message"),
    [
        ([{"name": "f"}], "feed f must have exactly one source of sql, stale, http or keys$"),
        ([{"name": "f", "stale": {"age": "1d"}, "sql": {"query": "SELECT 1"}}],
         r"exactly one source .* \(it has sql and stale\)"),
        ([{"name": "f", "schedule": "every day", "stale": {"age": "1d"}}],
         "feed f: schedule 'every day' is not a cron schedule: 5 fields"),
        ([{"name": "f", "stale": {"age": "1y"}}],
         r"feed f: stale.age='1y' is not allowed: a number above 0 and s, m, h or d"),
        ([{"name": "f", "stale": {"age": "1d", "limit": 0}}], "stale.limit=0 is not allowed"),
        ([{"name": "f", "stale": {"age": "1d"}}, {"name": "f", "stale": {"age": "2d"}}],
         "feed names must be unique: f given twice"),
        ([{"name": "f", "stale": {"age": "1d"}, "scheduel": "@daily"}],
         r"spec.feeds\[0\] has unknown fields: scheduel"),
        ([{"name": "f", "http": {"url": "https://x", "cursorParam": "c"}}],
         "http.cursorParam needs http.next"),
        ([{"name": "f", "http": {"url": "https://x", "itmes": "/data"}}],
         "feed f: http has unknown fields: itmes"),
        ([{"name": "F", "stale": {"age": "1d"}}], r"spec.feeds\[0\].name='F' is not allowed"),
        ([{"name": "a" * 37, "stale": {"age": "1d"}}], "longer than 36 characters"),
        ([{"name": "f", "keys": {"configMap": "ids", "key": ".."}}], "not a ConfigMap key"),
        ([{"name": "f", "sql": {"query": " "}}], "sql.query is empty"),
    ],
    ids=["no-source", "two-sources", "bad-cron", "bad-age", "zero-limit", "twice", "unknown",
         "cursor-without-next", "unknown-in-source", "bad-name", "long-name", "dotdot",
         "empty-query"],
)  # fmt: skip
def test_a_bad_feed_is_invalid_with_a_clear_reason(feed_list: list[dict[str, Any]],
                                                   message: str) -> None:  # fmt: skip
    with pytest.raises(InvalidSpec, match=message):
        parse("users", "data", pipeline(feed_list))


# --- the CronJobs --------------------------------------------------------------------------


@pytest.mark.parametrize("version", [OLDEST, NEWEST])
def test_each_feeds_cronjob_is_valid_kubernetes(version: str) -> None:
    for cronjob in cronjobs(pipeline()).values():
        kubernetes_validate.validate(cronjob, version, strict=True)


def test_each_source_runs_its_enqueue_as_arguments_never_a_shell() -> None:
    made = cronjobs(pipeline())
    args = {name: container(cronjob)["args"] for name, cronjob in made.items()}
    assert args == {
        "ids": ["enqueue", "--sql=SELECT id FROM users"],
        "refresh": ["enqueue", "--stale=24h", "--limit=100000"],
        "listing": ["enqueue", "--http=https://api.example.com/users", "--items=/data",
                    "--key=/id", "--next=/next", "--cursor-param=cursor"],
        "seed": ["enqueue", "/var/run/sluiceway/feed/keys"],
    }  # fmt: skip
    assert "command" not in container(made["ids"])  # the image's entrypoint, sluiceway
    # A query starting with a dash is still one value.
    (odd,) = cronjobs(pipeline([{"name": "q", "sql": {"query": "-- ids\nSELECT 1"}}])).values()
    assert container(odd)["args"] == ["enqueue", "--sql=-- ids\nSELECT 1"]


def test_the_cronjob_schedule_suspension_and_job_limits() -> None:
    made = cronjobs(pipeline([
        {"name": "ids", "schedule": "*/15 * * * *", "stale": {"age": "1d"}},
        {"name": "paused", "schedule": "@daily", "suspend": True, "stale": {"age": "1d"}},
        {"name": "manual", "stale": {"age": "1d"}},
    ]))  # fmt: skip
    ids = made["ids"]
    assert ids["metadata"]["name"] == "users-feed-ids"
    assert (ids["spec"]["schedule"], ids["spec"]["suspend"]) == ("*/15 * * * *", False)
    assert ids["spec"]["concurrencyPolicy"] == "Forbid"
    assert ids["spec"]["startingDeadlineSeconds"] > 0
    assert ids["spec"]["successfulJobsHistoryLimit"] >= 1
    assert ids["spec"]["failedJobsHistoryLimit"] >= 1
    job = ids["spec"]["jobTemplate"]["spec"]
    assert job["backoffLimit"] == manifests.FEED_BACKOFF_LIMIT <= 2
    assert job["activeDeadlineSeconds"] == manifests.FEED_DEADLINE_SECONDS
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    assert made["paused"]["spec"]["suspend"] is True
    # No schedule: suspended for good, run by `kubectl create job --from=cronjob/…`.
    assert made["manual"]["spec"]["suspend"] is True
    assert re.fullmatch(crd.CRON_PATTERN, made["manual"]["spec"]["schedule"])


def test_feed_pods_are_hardened_and_get_connections_by_reference() -> None:
    made = cronjobs(pipeline())
    for name, cronjob in made.items():
        labels = cronjob["metadata"]["labels"]
        assert labels.items() >= {"sluiceway.io/pipeline": "users", "sluiceway.io/feed": name,
                                  "app.kubernetes.io/component": "feed"}.items()  # fmt: skip
        template = cronjob["spec"]["jobTemplate"]
        assert template["metadata"]["labels"] == labels == template["spec"]["template"][
            "metadata"]["labels"]  # fmt: skip
        pod = template["spec"]["template"]["spec"]
        assert pod["securityContext"] == {
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        assert pod["enableServiceLinks"] is False
        (box,) = pod["containers"]
        assert box["image"] == "registry.example/sluiceway-admin:1.0"
        assert box["securityContext"]["readOnlyRootFilesystem"] is True
        assert box["securityContext"]["allowPrivilegeEscalation"] is False
        assert box["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        variables = env(cronjob)
        assert variables["SLUICEWAY_PIPELINE"] == "users"
        assert variables["SLUICEWAY_FEED"] == name
        for key in ("AMQP_URL", "REDIS_URL"):
            assert variables[f"SLUICEWAY_{key}"] == {"secretKeyRef": {"name": "conn",
                                                                      "key": key}}  # fmt: skip
        for var in box["env"]:
            if var["name"].endswith(("_URL", "HEADERS")):
                assert "secretKeyRef" in var["valueFrom"], var
    # The database only where the source reads it; sql's own key when it names one.
    assert env(made["ids"])["SLUICEWAY_SQL_URL"] == {"secretKeyRef": {
        "name": "conn", "key": "USERS_DATABASE_URL"}}  # fmt: skip
    assert "SLUICEWAY_DATABASE_URL" not in env(made["ids"])
    assert env(made["refresh"])["SLUICEWAY_DATABASE_URL"]["secretKeyRef"]["key"] == (
        "DATABASE_URL")  # fmt: skip
    assert "SLUICEWAY_DATABASE_URL" not in env(made["listing"])
    assert "SLUICEWAY_DATABASE_URL" not in env(made["seed"])
    # http: the fetchers' headers, rate limit, attempts and timeout.
    listing = env(made["listing"])
    assert listing["SLUICEWAY_SOURCE_HEADERS"] == {
        "secretKeyRef": {"name": "token", "key": "HEADERS"}
    }
    assert listing["SLUICEWAY_RATE_LIMIT"] == {"configMapKeyRef": {
        "name": "users-config", "key": "SLUICEWAY_RATE_LIMIT"}}  # fmt: skip
    assert (listing["SLUICEWAY_MAX_ATTEMPTS"], listing["SLUICEWAY_REQUEST_TIMEOUT"]) == (
        "5", "30")  # fmt: skip


def test_a_keys_feed_mounts_its_configmap_key_read_only() -> None:
    seed = cronjobs(pipeline())["seed"]
    pod = seed["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == manifests.KEYS_VOLUME)
    assert volume["configMap"] == {"name": "user-ids",
                                   "items": [{"key": "ids.txt", "path": "keys"}]}  # fmt: skip
    mount = next(m for m in container(seed)["volumeMounts"]
                 if m["name"] == manifests.KEYS_VOLUME)  # fmt: skip
    assert mount == {"name": "keys", "mountPath": manifests.KEYS_DIR, "readOnly": True}
    assert container(seed)["args"][-1] == f"{manifests.KEYS_DIR}/keys"


def test_a_stale_feed_over_a_sink_reads_the_sink_settings_the_writers_get() -> None:
    def sink_env(variables: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in variables.items() if k.startswith("SLUICEWAY_SINK_")}

    jobs = cronjobs(pipeline(sink=SINK))
    writer = manifests.writer_deployment(parse("users", "data", pipeline(sink=SINK)), 1)
    writer_env = {e["name"]: e.get("value") for e in
                  writer["spec"]["template"]["spec"]["containers"][0]["env"]}  # fmt: skip
    refresh = sink_env(env(jobs["refresh"]))
    assert refresh == sink_env(writer_env)
    assert set(refresh) == {option.env for option in sink.OPTIONS}
    # enqueue --stale takes them as the spec meant them: the table, its key and version.
    values = settings.resolve(None, sink.OPTIONS, environ={k: v for k, v in refresh.items() if v})
    found = sink.configured(values)
    assert found is not None
    assert (found.table.quoted, found.key, found.version) == ('"Analytics Data"."users"', "id",
                                                              "seen_at")  # fmt: skip
    # The other sources read no sink, and without one a stale feed reads records.
    assert not [name for name, job in jobs.items() if name != "refresh" and sink_env(env(job))]
    assert not sink_env(env(cronjobs(pipeline())["refresh"]))


def test_the_admin_image_can_be_given_and_long_names_fit_a_cronjob() -> None:
    spec = pipeline(admin={"image": {"repository": "other/admin", "tag": "9"}})
    assert container(cronjobs(spec)["ids"])["image"] == "other/admin:9"
    feed = {"name": "f" * crd.FEED_NAME_MAX, "stale": {"age": "1d"}}
    for name in ("a" * 63, "b" * 253, "users"):
        (cronjob,) = cronjobs(pipeline([feed], pipeline="users"), name).values()
        cut = cronjob["metadata"]["name"]
        assert len(cut) <= crd.CRONJOB_NAME_MAX
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", cut), cut
        assert cut.endswith("-feed-" + "f" * crd.FEED_NAME_MAX)


# --- status and failures ------------------------------------------------------------------

RUN_FAILED: dict[str, Any] = {"started": "2026-03-01T03:00:01.250000+00:00",
              "finished": "2026-03-01T03:00:09.500000+00:00", "ok": False, "queued": 1200,
              "in_flight": 3, "skipped": 0, "error": "--sql: the query failed: boom"}  # fmt: skip


def failed_job(name: str, started: str, failed: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"sluiceway.io/feed": "ids"}},
            "status": {"startTime": started, "conditions": [
                {"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                 "message": "Job was active longer than specified deadline",
                 "lastTransitionTime": failed}]}}  # fmt: skip


def test_a_failed_run_is_told_once() -> None:
    events, reported = feeds.failures("ids", RUN_FAILED, [], None)
    assert events == [
        ("Warning", "FeedRunFailed", "feed ids: --sql: the query failed: boom (1,200 keys queued)")
    ]
    assert reported == RUN_FAILED["finished"]
    assert feeds.failures("ids", RUN_FAILED, [], reported) == ([], reported)
    # Its Job failing afterwards is the same failure: recorded already, not told again.
    job = failed_job("users-feed-ids-1", "2026-03-01T03:00:00Z", "2026-03-01T03:00:30Z")
    events, later = feeds.failures("ids", RUN_FAILED, [job], reported)
    assert events == []
    assert feeds.when(later) == feeds.when("2026-03-01T03:00:30Z")
    assert feeds.failures("ids", RUN_FAILED, [job], later) == ([], later)
    # A success is no failure.
    assert feeds.failures("ids", {**RUN_FAILED, "ok": True}, [], None) == ([], None)


def test_a_job_killed_before_its_run_could_record_is_told_by_the_job() -> None:
    job = failed_job("users-feed-ids-2", "2026-03-02T03:00:00Z", "2026-03-02T09:00:00Z")
    events, reported = feeds.failures("ids", RUN_FAILED, [job], RUN_FAILED["finished"])
    assert events == [("Warning", "FeedJobFailed",
                       "feed ids: Job users-feed-ids-2 failed (DeadlineExceeded: Job was "
                       "active longer than specified deadline) and its run recorded no "
                       "outcome")]  # fmt: skip
    assert feeds.failures("ids", RUN_FAILED, [job], reported)[0] == []


def test_the_feeds_status_comes_from_its_cronjob_and_its_last_run() -> None:
    (feed,) = parse("users", "data", pipeline([FEEDS[0]])).feeds
    cronjob = {"spec": {"suspend": False}, "status": {
        "lastScheduleTime": "2026-03-01T03:00:00Z",
        "lastSuccessfulTime": "2026-02-28T03:00:00Z"}}  # fmt: skip
    ok = {**RUN_FAILED, "ok": True, "error": None}
    assert feeds.feed_status(feed, cronjob, ok, None) == {
        "name": "ids", "schedule": "*/15 * * * *", "suspended": False,
        "lastScheduleTime": "2026-03-01T03:00:00Z",
        "lastSuccessfulTime": "2026-02-28T03:00:00Z",
        "lastRun": {"started": ok["started"], "finished": ok["finished"], "ok": True,
                    "queued": 1200, "inFlight": 3, "skipped": 0},
    }  # fmt: skip
    assert feeds.feed_status(feed, None, None, "x") == {
        "name": "ids", "schedule": "*/15 * * * *", "suspended": False,
        "lastFailureReported": "x"}  # fmt: skip
    status_item = crd.STATUS["properties"]["feeds"]["items"]
    jsonschema.validate(feeds.feed_status(feed, cronjob, RUN_FAILED, "x"), status_item)
