"""The Helm chart, checked with a real helm (``scripts/bootstrap-helm.sh``): ``helm lint
--strict``, every rendering (default values and each ``ci/*-values.yaml``) validated against
Kubernetes' own schemas for the oldest and newest supported versions, Pipelines against the
CRD's schema, pod security and least-privilege RBAC, and bad values refused."""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from sluiceway_operator import crd

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "sluiceway"
HELM = ROOT / ".tools" / "bin" / "helm"
VERSIONS = ("1.27.0", kubernetes_validate.latest_version())
VALUE_FILES = [None, *sorted(CHART.glob("ci/*-values.yaml"))]
BAD_VALUES = sorted((Path(__file__).parent / "bad-values").glob("*.yaml"))
# Kinds outside Kubernetes' own schemas: checked otherwise below.
NOT_CORE = {"Pipeline", "ServiceMonitor", "PodMonitor"}


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    if not HELM.exists():
        pytest.fail("no helm at .tools/bin/helm: run `make chart-lint` (or "
                    "scripts/bootstrap-helm.sh)", pytrace=False)  # fmt: skip
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, check=False)


@cache
def render(values: Path | None) -> list[dict[str, Any]]:
    args = ["template", "release", str(CHART), "--namespace", "sluiceway"]
    if values is not None:
        args += ["-f", str(values)]
    result = helm(*args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def ids(path: Path | None) -> str:
    return "default" if path is None else path.name


@pytest.mark.parametrize("values", VALUE_FILES, ids=ids)
def test_helm_lint_strict_passes(values: Path | None) -> None:
    result = helm("lint", "--strict", str(CHART), *(["-f", str(values)] if values else []))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("values", VALUE_FILES, ids=ids)
def test_every_rendered_document_is_valid_kubernetes(values: Path | None,
                                                     version: str) -> None:  # fmt: skip
    for doc in render(values):
        if doc["kind"] in NOT_CORE:
            continue
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("values", VALUE_FILES, ids=ids)
def test_pipelines_match_the_crd_and_other_kinds_are_known(values: Path | None) -> None:
    schema = crd.definition()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for doc in render(values):
        if doc["kind"] == "Pipeline":
            jsonschema.validate(doc, schema)
        elif doc["kind"] in ("ServiceMonitor", "PodMonitor"):
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"


def test_the_example_pipelines_match_the_crd() -> None:
    schema = crd.definition()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path in [*sorted((ROOT / "examples").glob("*.yaml")), ROOT / ".github/kind/pipeline.yaml"]:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "Pipeline":
                jsonschema.validate(doc, schema)


@pytest.mark.parametrize("version", VERSIONS)
def test_the_kind_workflows_services_are_valid_kubernetes(version: str) -> None:
    for doc in yaml.safe_load_all((ROOT / ".github/kind/services.yaml").read_text()):
        kubernetes_validate.validate(doc, version, strict=True)


def kinds(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def test_the_crds_are_installed_behind_their_value_and_kept_on_uninstall() -> None:
    definitions = kinds(render(None), "CustomResourceDefinition")
    # The Pipeline's, and kopf's two peering kinds (either serves, as watchNamespaces says).
    assert {(d["spec"]["names"]["kind"], d["spec"]["scope"]) for d in definitions} == {
        ("Pipeline", "Namespaced"), ("KopfPeering", "Namespaced"),
        ("ClusterKopfPeering", "Cluster")}  # fmt: skip
    for definition in definitions:
        assert definition["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        if definition["spec"]["group"] == "kopf.dev":
            # kopf writes its records into the object's status: no status subresource.
            (version,) = definition["spec"]["versions"]
            assert version["name"] == "v1"
            assert "subresources" not in version
            status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
            assert status["x-kubernetes-preserve-unknown-fields"] is True
    assert not kinds(render(CHART / "ci" / "no-crds-values.yaml"), "CustomResourceDefinition")


@pytest.mark.parametrize("values", VALUE_FILES, ids=ids)
def test_the_operator_runs_unprivileged_with_a_standby(values: Path | None) -> None:
    (deployment,) = kinds(render(values), "Deployment")
    assert deployment["spec"]["replicas"] == 2
    # A new pod is a standby until an old one stops: never fewer than the replicas.
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}  # fmt: skip
    (budget,) = kinds(render(values), "PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"] == deployment["spec"]["selector"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    labels = deployment["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "sluiceway"
    assert labels["app.kubernetes.io/instance"] == "release"


NAMESPACED = {
    ("sluiceway.io", "pipelines"): {"list", "watch", "patch"},
    ("sluiceway.io", "pipelines/status"): {"patch"},
    ("apps", "deployments"): {"get", "create", "patch", "delete"},
    ("batch", "jobs"): {"get", "list", "watch", "create", "delete"},  # watch: feeds starting
    # The feeds': applied (create and patch), listed by the Pipeline's label (their state and
    # strays), deleted; never read one by one.
    ("batch", "cronjobs"): {"list", "create", "patch", "delete"},
    ("", "configmaps"): {"create", "patch", "delete"},
    ("", "secrets"): {"get"},
    ("", "events"): {"create"},
}
CLUSTER_READ = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"},
    ("", "namespaces"): {"list", "watch"},
}
# The peering objects: created when absent, listed and watched; the operator's own patched.
PEERING_VERBS = {"list", "watch", "create", "patch"}


def grants(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    found: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "*" not in rule["verbs"], rule
        assert "*" not in rule["resources"], rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                found.setdefault((group, resource), set()).update(rule["verbs"])
    return found


def patched_by_name(role: dict[str, Any]) -> dict[str, list[str]]:
    """The resources whose patch a rule limits to named objects: resource -> the names."""
    return {resource: rule["resourceNames"] for rule in role["rules"] if "resourceNames" in rule
            for resource in rule["resources"]}  # fmt: skip


def test_rbac_grants_only_what_the_operator_uses() -> None:
    docs = render(None)
    (cluster_role,) = kinds(docs, "ClusterRole")
    assert grants(cluster_role) == CLUSTER_READ | NAMESPACED | {
        ("kopf.dev", "clusterkopfpeerings"): PEERING_VERBS}  # fmt: skip
    assert not kinds(docs, "Role")
    # The one peering object it may patch is the one it is told to use.
    peering = operator_env(docs)["SLUICEWAY_OPERATOR_PEERING"]
    assert patched_by_name(cluster_role) == {"clusterkopfpeerings": [peering]}
    for rule in cluster_role["rules"]:
        assert "resourceNames" not in rule or rule["verbs"] == ["patch"]

    namespaced = render(CHART / "ci" / "namespaced-values.yaml")
    (cluster_role,) = kinds(namespaced, "ClusterRole")
    assert grants(cluster_role) == CLUSTER_READ
    roles = kinds(namespaced, "Role")
    assert sorted(role["metadata"]["namespace"] for role in roles) == ["team-a", "team-b"]
    for role in roles:
        assert grants(role) == NAMESPACED | {("kopf.dev", "kopfpeerings"): PEERING_VERBS}
        assert patched_by_name(role) == {"kopfpeerings": [peering]}
    bindings = kinds(namespaced, "RoleBinding")
    assert {b["subjects"][0]["namespace"] for b in bindings} == {"sluiceway"}


@pytest.mark.parametrize("values", BAD_VALUES, ids=lambda path: path.stem)
def test_bad_values_are_refused(values: Path) -> None:
    result = helm("template", "release", str(CHART), "-f", str(values))
    assert result.returncode != 0, f"{values.name} was accepted"
    assert "values don't meet the specifications" in result.stderr or "required" in (
        result.stderr)  # fmt: skip


def test_every_value_is_documented() -> None:
    # helm-docs' convention: a `# --` comment above each value (or above the map holding it).
    undocumented, documented_above = [], False
    stack: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    for line in (CHART / "values.yaml").read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            documented_above = True
            continue
        if not stripped or stripped.startswith("#"):
            continue
        match = re.match(r"^( *)([A-Za-z][\w-]*):", line)
        if match is None:
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        documented = documented_above or any(doc for _, doc in stack)
        if not documented and line.rstrip().endswith(":") is False:
            undocumented.append(match.group(2))
        stack.append((indent, documented))
        documented_above = False
    assert not undocumented, undocumented


def metric_names_in_code() -> set[str]:
    names: set[str] = set()
    for source in [*ROOT.glob("services/*/src/**/*.py"), *ROOT.glob("operator/src/**/*.py")]:
        names |= set(re.findall(r'"(sluiceway_[a-z_]+)"', source.read_text()))
    return names


def test_the_dashboard_queries_only_metrics_the_code_exports() -> None:
    dashboard = (CHART / "dashboards" / "sluiceway.json").read_text()
    queried = set(re.findall(r"\b(sluiceway_[a-z_]+?)(?:_bucket|_sum|_count|_total)?\b",
                             dashboard))  # fmt: skip
    assert queried, "the dashboard queries nothing"
    assert queried <= metric_names_in_code(), queried - metric_names_in_code()
    (config_map,) = [doc for doc in render(CHART / "ci" / "full-values.yaml")
                     if doc["kind"] == "ConfigMap"]  # fmt: skip
    assert config_map["data"]["sluiceway.json"].strip() == dashboard.strip()


def test_the_network_policy_and_pod_monitor_select_the_pods_the_operator_makes() -> None:
    from sluiceway_operator import manifests
    from sluiceway_operator.spec import parse

    pipeline = parse("users", "data", {"image": {"repository": "r", "tag": "1"},
                                        "connectionsSecret": "c",
                                        "source": {"url": "https://x/{key}"}})  # fmt: skip
    pod_labels = manifests.writer_deployment(pipeline, 1)["spec"]["template"]["metadata"][
        "labels"]  # fmt: skip
    policies = kinds(render(CHART / "ci" / "full-values.yaml"), "NetworkPolicy")
    (pipelines,) = [p for p in policies if p["metadata"].get("namespace") == "data"]
    assert pipelines["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    (monitor,) = kinds(render(CHART / "ci" / "full-values.yaml"), "PodMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    container = manifests.writer_deployment(pipeline, 1)["spec"]["template"]["spec"][
        "containers"][0]  # fmt: skip
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == container["ports"][0]["name"]
    assert not kinds(render(None), "NetworkPolicy")


def operator_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    """The operator's environment variables given as values (not those from a field)."""
    (deployment,) = kinds(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {env["name"]: env["value"] for env in container["env"] if "value" in env}


def pipeline_images(values: Path | None) -> tuple[str, str]:
    env = operator_env(render(values))
    return env["SLUICEWAY_OPERATOR_IMAGE_REPOSITORY"], env["SLUICEWAY_OPERATOR_IMAGE_TAG"]


def test_the_operator_gives_pipelines_its_own_releases_images(tmp_path: Path) -> None:
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert pipeline_images(None) == ("ghcr.io/sluiceway/sluiceway", app_version)
    # The operator's tag set (0.1.0-rc1): the pipelines' follows.
    assert pipeline_images(CHART / "ci" / "full-values.yaml") == (
        "ghcr.io/sluiceway/sluiceway", "0.1.0-rc1")  # fmt: skip
    given = tmp_path / "given-values.yaml"
    given.write_text(yaml.safe_dump({"pipelineImages": {
        "repository": "registry.example:5000/data/pipelines", "tag": "2.0"}}))  # fmt: skip
    assert pipeline_images(given) == ("registry.example:5000/data/pipelines", "2.0")
    # An operator image named otherwise: no guess, so no default (and never half of one).
    unsuffixed = tmp_path / "unsuffixed-values.yaml"
    operator = {"repository": "registry.example/ops/controller", "pullPolicy": "Always"}
    unsuffixed.write_text(yaml.safe_dump({"operator": {"image": operator}}))
    assert pipeline_images(unsuffixed) == ("", "")


def test_the_replicas_share_one_peering_object_per_release(tmp_path: Path) -> None:
    docs = render(None)
    env = operator_env(docs)
    # The release's name: two releases in one cluster never pause each other.
    assert env["SLUICEWAY_OPERATOR_PEERING"] == "release-sluiceway"
    assert env["SLUICEWAY_OPERATOR_PEERING_LIFETIME"] == "30"
    (deployment,) = kinds(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    (pod_id,) = [e for e in container["env"] if e["name"] == "POD_ID"]
    assert pod_id["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}

    # One replica: no budget (it would block every drain), still peering and rolling.
    alone = tmp_path / "alone-values.yaml"
    operator = {"replicas": 1, "peering": {"lifetimeSeconds": 60}}
    alone.write_text(yaml.safe_dump({"operator": operator}))
    docs = render(alone)
    (deployment,) = kinds(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert not kinds(docs, "PodDisruptionBudget")
    assert operator_env(docs)["SLUICEWAY_OPERATOR_PEERING_LIFETIME"] == "60"
