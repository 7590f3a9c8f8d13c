"""The Pipeline definition, the spec reader and every manifest the operator builds,
validated against Kubernetes' own schemas for the oldest and newest supported versions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from sluiceway_common import settings, sink
from sluiceway_operator import crd, manifests
from sluiceway_operator.spec import InvalidSpec, parse

ROOT = Path(__file__).resolve().parents[3]
# The oldest Kubernetes sluiceway supports, and the newest the schemas know.
OLDEST, NEWEST = "1.27.0", kubernetes_validate.latest_version()
EXAMPLE = yaml.safe_load((ROOT / "examples" / "pipeline.yaml").read_text())


def minimal(**changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "image": {"repository": "registry.example/sluiceway", "tag": "1.0"},
        "connectionsSecret": "conn",
        "source": {"url": "https://api.example.com/items/{key}"},
    }
    spec.update(changes)
    return spec


def every_manifest(spec: dict[str, Any]) -> list[dict[str, Any]]:
    pipeline = parse("users", "data", spec)
    return [
        manifests.config_map(pipeline),
        manifests.fetcher_deployment(pipeline),
        manifests.writer_deployment(pipeline, 3),
        manifests.migration_job(pipeline),
        *(manifests.feed_cronjob(pipeline, feed) for feed in pipeline.feeds),
    ]


@pytest.mark.parametrize("version", [OLDEST, NEWEST])
@pytest.mark.parametrize("spec", [minimal(), EXAMPLE["spec"]], ids=["minimal", "example"])
def test_every_manifest_is_valid_kubernetes(spec: dict[str, Any], version: str) -> None:
    for manifest in every_manifest(spec):
        kubernetes_validate.validate(manifest, version, strict=True)


@pytest.mark.parametrize("version", [OLDEST, NEWEST])
def test_the_crd_is_valid_kubernetes(version: str) -> None:
    kubernetes_validate.validate(crd.definition(), version, strict=True)


def test_the_chart_carries_the_crd_the_code_defines() -> None:
    # Regenerate with: sluiceway operator crd --chart > charts/sluiceway/templates/crds/…
    shipped = ROOT / "charts" / "sluiceway" / "templates" / "crds" / "pipelines.sluiceway.io.yaml"
    assert shipped.read_text() == crd.chart_template()
    body = "\n".join(line for line in shipped.read_text().splitlines()
                     if not line.startswith("{{"))  # fmt: skip
    definition = yaml.safe_load(body)
    for key in ("labels", "annotations"):
        definition["metadata"].pop(key)
    assert definition == crd.definition()


def schema() -> dict[str, Any]:
    found: dict[str, Any] = crd.definition()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return found


def test_the_example_pipeline_matches_the_crd_schema() -> None:
    jsonschema.validate(EXAMPLE, schema())


@pytest.mark.parametrize(
    "spec",
    [
        {k: v for k, v in minimal().items() if k != "connectionsSecret"},
        minimal(source={"url": "https://api.example.com/items"}),  # no {key}
        minimal(source={"url": "https://x/{key}", "rateLimit": 0}),
        minimal(writer={"maxReplicas": 0}),
        minimal(writer={"batchSize": "500"}),
        minimal(pipeline="Users_1"),
        minimal(fetcher={"minReplicas": 0, "maxReplicas": 0}),
        minimal(fetcher={"minReplicas": -1, "maxReplicas": 2}),
    ],
    ids=[
        "no-secret",
        "no-key",
        "zero-rate",
        "no-writers",
        "string-batch",
        "bad-name",
        "no-fetchers",
        "negative-fetchers",
    ],
)
def test_the_schema_refuses_bad_pipelines(spec: dict[str, Any]) -> None:
    doc = {"apiVersion": "sluiceway.io/v1alpha1", "kind": "Pipeline",
           "metadata": {"name": "p"}, "spec": spec}  # fmt: skip
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, schema())


def test_defaults_come_from_the_definition() -> None:
    pipeline = parse("users", "data", minimal())
    assert pipeline.pipeline == "users"
    assert pipeline.rate_limit == 10
    assert pipeline.fetcher.image.ref == "registry.example/sluiceway-fetcher:1.0"
    assert pipeline.writer.image.ref == "registry.example/sluiceway-writer:1.0"
    assert (pipeline.writer.batch_size, pipeline.writer.min_replicas,
            pipeline.writer.max_replicas, pipeline.writer.target_queue_depth,
            pipeline.writer.stabilization, pipeline.poll_interval) == (
        500, 1, 10, 5000, 120, 10)  # fmt: skip


@pytest.mark.parametrize(
    ("name", "spec", "message"),
    [
        ("users", minimal(writer={"minReplicas": 5, "maxReplicas": 2}), "exceeds"),
        (
            "users",
            minimal(fetcher={"minReplicas": 5, "maxReplicas": 2}),
            r"fetcher.minReplicas \(5\) exceeds fetcher.maxReplicas \(2\)",
        ),
        ("users", minimal(fetcher={"maxReplicas": 4}), "go together"),
        ("users", minimal(fetcher={"minReplicas": 0}), "go together"),
        ("users.v2", minimal(), "must be 1 to 63"),
        ("users", minimal(source={"url": "https://x/items"}), "{key}"),
        ("users", {"image": {"repository": "r", "tag": "t"}}, "missing"),
    ],
)
def test_what_the_schema_cannot_check_is_refused_with_the_reason(
    name: str, spec: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidSpec, match=message.replace("{", r"\{").replace("}", r"\}")):
        parse(name, "data", spec)


def test_fetchers_are_a_fixed_count_unless_both_bounds_are_given() -> None:
    fixed = parse("users", "data", minimal(fetcher={"replicas": 3}))
    assert not fixed.fetcher.scaled
    assert (fixed.fetcher.min_replicas, fixed.fetcher.max_replicas) == (None, None)
    assert fixed.fetcher.stabilization == 120  # the writers' default
    assert manifests.fetcher_deployment(fixed)["spec"]["replicas"] == 3
    scaled = parse("users", "data", minimal(fetcher={
        "replicas": 2, "minReplicas": 0, "maxReplicas": 6,
        "scaleDownStabilizationSeconds": 30}))  # fmt: skip
    assert scaled.fetcher.scaled
    assert (scaled.fetcher.min_replicas, scaled.fetcher.max_replicas,
            scaled.fetcher.stabilization) == (0, 6, 30)  # fmt: skip
    # The operator's count, where it scales them; the rest of the Deployment is the same.
    six = manifests.fetcher_deployment(scaled, 6)
    assert six["spec"]["replicas"] == 6
    assert manifests.fetcher_deployment(scaled, 0)["spec"]["replicas"] == 0
    assert six["spec"]["template"] == manifests.fetcher_deployment(scaled)["spec"]["template"]


def test_the_fetchers_bounds_are_checked_by_cel_rules_too() -> None:
    fetcher = crd.SPEC["properties"]["fetcher"]
    assert "default" not in fetcher["properties"]["minReplicas"]  # none: replicas is fixed
    assert "default" not in fetcher["properties"]["maxReplicas"]
    rules = [rule["rule"] for rule in fetcher["x-kubernetes-validations"]]
    assert rules == [
        "has(self.minReplicas) == has(self.maxReplicas)",
        "!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas",
    ]


def test_the_writers_get_a_grace_period_longer_than_their_flush() -> None:
    pipeline = parse("users", "data", minimal(writer={"batchTimeoutSeconds": 45}))
    pod = manifests.writer_deployment(pipeline, 2)["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > 45 + manifests.FLUSH_MARGIN_SECONDS - 1
    assert manifests.writer_deployment(pipeline, 0, image="old:1")["spec"]["template"]["spec"][
        "containers"][0]["image"] == "old:1"  # fmt: skip


def test_pods_run_unprivileged_and_read_secrets_only_by_reference() -> None:
    for manifest in every_manifest(minimal(source={"url": "https://x/{key}",
                                                   "headersSecret": "token"})):  # fmt: skip
        if manifest["kind"] == "ConfigMap":
            assert set(manifest["data"]) == {"SLUICEWAY_RATE_LIMIT"}
            continue
        pod = manifest["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
            for var in container["env"]:
                if var["name"].endswith(("_URL", "HEADERS")) and var["name"] != (
                        "SLUICEWAY_SOURCE_URL"):  # fmt: skip
                    assert "secretKeyRef" in var["valueFrom"], var


@pytest.mark.parametrize("limit", [2.345678, 40.0, 0.01, 1_000_000.0, 123456.789])
def test_new_fetchers_start_with_the_limit_the_running_ones_get_from_redis(limit: float) -> None:
    # The ConfigMap and the Redis override are one number in one text form: a new pod and
    # a running one never disagree on the limit by a rounding.
    data = manifests.config_map(parse("users", "data", minimal(source={
        "url": "https://x/{key}", "rateLimit": limit})))["data"]  # fmt: skip
    assert data["SLUICEWAY_RATE_LIMIT"] == settings.plain(limit)
    assert float(data["SLUICEWAY_RATE_LIMIT"]) == limit


def test_a_new_writer_image_gets_its_own_migration_job_and_long_names_are_cut() -> None:
    one = parse("users", "data", minimal())
    two = parse("users", "data", minimal(image={"repository": "registry.example/sluiceway",
                                                 "tag": "2.0"}))  # fmt: skip
    assert manifests.migration_name(one) != manifests.migration_name(two)
    long = parse("a" * 63, "data", minimal())
    for name in (manifests.migration_name(long), manifests.writer_name(long),
                 manifests.fetcher_name(long)):  # fmt: skip
        assert len(name) <= 63
        assert name.endswith(("-writer", "-fetcher")) or "-migrate-" in name


def test_fetchers_and_writers_serve_metrics_and_probes_the_migration_does_not() -> None:
    for manifest in every_manifest(minimal()):
        if manifest["kind"] == "ConfigMap":
            continue
        container = manifest["spec"]["template"]["spec"]["containers"][0]
        env = {var["name"]: var.get("value") for var in container["env"]}
        if manifest["kind"] == "Job":
            assert "livenessProbe" not in container
            assert "SLUICEWAY_METRICS_PORT" not in env
            continue
        assert env["SLUICEWAY_METRICS_PORT"] == str(manifests.METRICS_PORT)
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


SINK = {"table": '"Analytics Data".users', "key": "id",
        "columns": {"login": "/payload/login", "a~b": "/payload/a~0b", "seen_at": "/fetched_at"},
        "version": "seen_at"}  # fmt: skip


def test_a_sink_reaches_the_writers_as_their_sink_settings_and_nothing_else() -> None:
    plain = parse("users", "data", minimal())
    assert plain.sink is None
    assert not [e for e in manifests.writer_deployment(plain, 1)["spec"]["template"]["spec"]
                ["containers"][0]["env"] if e["name"].startswith("SLUICEWAY_SINK_")]  # fmt: skip
    pipeline = parse("users", "data", minimal(sink=SINK))
    writer = manifests.writer_deployment(pipeline, 2)
    env = {
        e["name"]: e.get("value")
        for e in writer["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["SLUICEWAY_SINK_TABLE"] == '"Analytics Data".users'
    assert env["SLUICEWAY_SINK_KEY"] == "id"
    assert json.loads(env["SLUICEWAY_SINK_COLUMNS"]) == SINK["columns"]
    assert env["SLUICEWAY_SINK_VERSION"] == "seen_at"
    # The sink's own parsers (the writer's and the admin's) take them as the spec meant them.
    values = settings.resolve(None, sink.OPTIONS, environ={k: v for k, v in env.items() if v})
    assert values["sink_columns"] == {"login": ("payload", "login"), "a~b": ("payload", "a~b"),
                                      "seen_at": ("fetched_at",)}  # fmt: skip
    assert (values["sink_key"], values["sink_version"]) == ("id", "seen_at")
    for manifest in every_manifest(minimal(sink=SINK)):
        kubernetes_validate.validate(manifest, NEWEST, strict=True)
    doc = {"apiVersion": "sluiceway.io/v1alpha1", "kind": "Pipeline",
           "metadata": {"name": "p"}, "spec": minimal(sink=SINK)}  # fmt: skip
    jsonschema.validate(doc, schema())
    key_only = parse("users", "data", minimal(sink={"table": "users"})).sink
    assert key_only is not None
    assert (key_only.key, key_only.columns) == ("key", ())


@pytest.mark.parametrize(
    ("sink", "message"),
    [
        (
            {"table": "users", "version": "seen_at"},
            "one of the columns .* with pointer /fetched_at",
        ),
        (
            {"table": "users", "columns": {"seen_at": "/payload/at"}, "version": "seen_at"},
            "maps it to '/payload/at'; the version is /fetched_at",
        ),
        ({"table": "users", "columns": {"login": "payload/login"}}, "JSON pointer"),
        ({"table": "users", "columns": {"key": "/payload/id"}}, "the key column"),
        ({"table": "users", "colums": {}}, "unknown fields: colums"),
    ],
    ids=["version-unmapped", "version-not-fetched-at", "bad-pointer", "key-mapped", "typo"],
)
def test_a_sink_the_writer_would_refuse_is_refused_with_the_reason(
    sink: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidSpec, match=message):
        parse("users", "data", minimal(sink=sink))
    if "login" in sink.get("columns", {}):  # a bad pointer: the schema refuses it too
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"apiVersion": "sluiceway.io/v1alpha1", "kind": "Pipeline",
                                 "metadata": {"name": "p"}, "spec": minimal(sink=sink)},
                                schema())  # fmt: skip


def migration_resources(spec: dict[str, Any]) -> dict[str, Any]:
    job = manifests.migration_job(parse("users", "data", spec))
    found: dict[str, Any] = job["spec"]["template"]["spec"]["containers"][0]["resources"]
    return found


def test_the_migration_job_has_resources_a_resource_quota_admits() -> None:
    # Nothing set anywhere: requests and limits of CPU and memory all the same.
    assert migration_resources(minimal()) == {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"cpu": "500m", "memory": "256Mi"}}  # fmt: skip
    # The writer's, as it gives them: the Job runs the writer's image on the same database.
    writer = {"requests": {"cpu": "250m", "memory": "512Mi"},
              "limits": {"cpu": "2", "memory": "1Gi", "ephemeral-storage": "1Gi"}}  # fmt: skip
    assert migration_resources(minimal(writer={"resources": writer})) == writer
    # A resource the writer names at all is the writer's alone (a default limit under its
    # request would be refused); one it does not name gets both defaults.
    assert migration_resources(minimal(writer={"resources": {
        "requests": {"memory": "1Gi"}}})) == {
        "requests": {"cpu": "100m", "memory": "1Gi"}, "limits": {"cpu": "500m"}}  # fmt: skip


def test_a_stale_feed_over_a_sink_needs_its_version_column() -> None:
    feeds = [{"name": "nightly", "schedule": "0 3 * * *", "stale": {"age": "24h"}}]
    with pytest.raises(InvalidSpec, match=r"feed nightly .* needs spec.sink.version"):
        parse("users", "data", minimal(sink={"table": "users", "columns": {"at": "/fetched_at"}},
                                       feeds=feeds))  # fmt: skip
    with_version = {"table": "users", "columns": {"at": "/fetched_at"}, "version": "at"}
    assert parse("users", "data", minimal(sink=with_version, feeds=feeds)).sink is not None
    assert parse("users", "data", minimal(feeds=feeds)).sink is None  # records: fetched_at
