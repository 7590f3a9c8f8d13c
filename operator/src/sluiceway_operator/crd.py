"""The ``Pipeline`` custom resource: its definition, built here and nowhere else.

``charts/sluiceway/templates/crds/pipelines.sluiceway.io.yaml`` is this definition rendered
for the chart (``sluiceway operator crd --chart``; a test keeps the two equal), and
:mod:`sluiceway_operator.spec` reads a Pipeline with the defaults written here, so the API
server and the operator can never disagree on them.
"""

from __future__ import annotations

from typing import Any

from sluiceway_common import settings

GROUP = "sluiceway.io"
VERSION = "v1alpha1"
KIND = "Pipeline"
PLURAL = "pipelines"
SINGULAR = "pipeline"
SHORT_NAMES = ("pl",)

# The names a pipeline's queues, Redis keys and rows go by (sluiceway_common.settings).
PIPELINE_NAME_PATTERN = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
# A Kubernetes object name used inside ours (a Secret, an image pull secret).
OBJECT_NAME_PATTERN = "^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"

QUANTITY: dict[str, Any] = {"x-kubernetes-int-or-string": True, "anyOf": [
    {"type": "integer"}, {"type": "string"}]}  # fmt: skip


def _obj(properties: dict[str, Any], *, required: tuple[str, ...] = (), description: str = "",
         default: Any = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    schema: dict[str, Any] = {"type": "object", "properties": properties, **(extra or {})}
    if required:
        schema["required"] = list(required)
    if description:
        schema["description"] = description
    if default is not None:
        schema["default"] = default
    return schema


def _int(description: str, minimum: int, maximum: int, default: int | None = None
         ) -> dict[str, Any]:  # fmt: skip
    schema: dict[str, Any] = {"type": "integer", "minimum": minimum, "maximum": maximum,
                              "description": description}  # fmt: skip
    if default is not None:
        schema["default"] = default
    return schema


def _setting(option: settings.Option, description: str) -> dict[str, Any]:
    """A field that reaches the pods as ``option``: its type, bounds and default are the
    option's, so a Pipeline the API server accepts never gives a pod a value it refuses."""
    bounds, default = option.bounds, option.default
    if bounds is None or default is None:
        raise TypeError(f"{option.env} has no bounds or no default for a Pipeline field")

    def exact(value: float) -> float:
        return int(value) if float(value).is_integer() else value

    return {"type": "integer" if bounds.integral else "number", "minimum": exact(bounds.low),
            "maximum": exact(bounds.high), "default": exact(bounds(default)),
            "description": description}  # fmt: skip


def _str(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **extra}


def _image(description: str) -> dict[str, Any]:
    return _obj({
        "repository": _str("image repository, e.g. ghcr.io/acme/sluiceway-writer",
                           minLength=1, maxLength=512),
        "tag": _str("image tag; a new tag of the writer runs a new migration Job first",
                    minLength=1, maxLength=128),
    }, required=("repository", "tag"), description=description)  # fmt: skip


RESOURCES = _obj({
    "limits": {"type": "object", "additionalProperties": QUANTITY},
    "requests": {"type": "object", "additionalProperties": QUANTITY},
}, description="the container's resource requests and limits", default={})  # fmt: skip

SPEC = _obj({
    "pipeline": _str(
        "the name the pipeline's queues, Redis keys and rows go by (default: this "
        "resource's name); two Pipelines on one broker must not share it",
        pattern=PIPELINE_NAME_PATTERN, maxLength=63),
    "image": _obj({
        "repository": _str("image repository prefix: the fetcher runs "
                           "<repository>-fetcher, the writer and the migration Job "
                           "<repository>-writer", minLength=1, maxLength=512),
        "tag": _str("image tag for every component", minLength=1, maxLength=128),
        "pullPolicy": {"type": "string", "enum": ["Always", "IfNotPresent", "Never"],
                       "default": "IfNotPresent", "description": "image pull policy"},
        "pullSecrets": {"type": "array", "maxItems": 16, "default": [],
                        "description": "names of image pull Secrets",
                        "items": {"type": "string", "pattern": OBJECT_NAME_PATTERN}},
    }, required=("repository", "tag"), description="the images the pipeline runs"),
    "connectionsSecret": _str(
        "Secret with keys DATABASE_URL, AMQP_URL and REDIS_URL (and optionally "
        "MANAGEMENT_URL, the RabbitMQ management API, when it is not the AMQP host on "
        "port 15672 with the same user)", pattern=OBJECT_NAME_PATTERN),
    "source": _obj({
        "url": _str("the upstream URL with {key} where each key goes, e.g. "
                    "https://api.example.com/users/{key}", minLength=1, maxLength=2048,
                    pattern="\\{key\\}"),
        "rateLimit": _setting(settings.RATE_LIMIT,
                              "requests per second to the upstream for the whole pipeline; "
                              "a change reaches the running fetchers without a restart"),
        "headersSecret": _str("Secret whose key HEADERS holds the request headers as a JSON "
                              "object (tokens)", pattern=OBJECT_NAME_PATTERN),
    }, required=("url",), description="the upstream API"),
    "fetcher": _obj({
        "replicas": _int("fetcher pods", 0, 1000, 1),
        "concurrency": _setting(settings.CONCURRENCY, "requests in flight per fetcher pod"),
        "maxAttempts": _setting(settings.MAX_ATTEMPTS,
                                "attempts per key before it goes to the failed set"),
        "requestTimeoutSeconds": _setting(settings.REQUEST_TIMEOUT,
                                          "timeout of one upstream request"),
        "image": _image("this component's image, instead of spec.image"),
        "resources": RESOURCES,
    }, default={}, description="the fetcher Deployment"),
    "writer": _obj({
        "batchSize": _setting(settings.BATCH_SIZE, "rows per batch"),
        "batchTimeoutSeconds": _setting(settings.BATCH_TIMEOUT,
                                        "the longest a row waits for its batch"),
        "writeMode": {"type": "string", "enum": ["direct", "buffered"], "default": "direct",
                      "description": "direct: each batch upserts into records; buffered: "
                                     "batches append to records_buffer, one merger moves them"},
        "minReplicas": _int("fewest writer pods once migrated (0: none while the records "
                            "queue is empty)", 0, 1000, 1),
        "maxReplicas": _int("most writer pods", 1, 1000, 10),
        "targetQueueDepth": _int("records-queue messages (ready and unacked) per writer pod",
                                 1, 100_000_000, 5000),
        "scaleDownStabilizationSeconds": _int(
            "writers scale down only to the most wanted over this window", 0, 86_400, 120),
        "image": _image("this component's image (and the migration Job's), instead of "
                        "spec.image"),
        "resources": RESOURCES,
    }, default={}, description="the writer Deployment, scaled by the operator",
        extra={"x-kubernetes-validations": [{
            "rule": "!has(self.minReplicas) || !has(self.maxReplicas) || "
                    "self.minReplicas <= self.maxReplicas",
            "message": "writer.minReplicas must not exceed writer.maxReplicas"}]}),
    "pollIntervalSeconds": _int("how often the records queue's depth is read", 1, 3600, 10),
}, required=("image", "connectionsSecret", "source"))  # fmt: skip

CONDITION = _obj({
    "type": {"type": "string"},
    "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
    "reason": {"type": "string"},
    "message": {"type": "string"},
    "lastTransitionTime": {"type": "string", "format": "date-time"},
}, required=("type", "status"))  # fmt: skip

STATUS = _obj({
    "phase": {"type": "string", "enum": ["Migrating", "Running", "Failed"]},
    "message": {"type": "string"},
    "observedGeneration": {"type": "integer"},
    "migration": _obj({
        "state": {"type": "string", "enum": ["Pending", "Running", "Succeeded", "Failed"]},
        "image": {"type": "string"},
        "job": {"type": "string"},
        "attempts": {"type": "integer"},
        "reason": {"type": "string"},
        "nextAttemptTime": {"type": "string", "format": "date-time"},
    }),
    "queueDepth": {"type": "integer"},
    "depthSource": {"type": "string", "enum": ["management-api", "passive-declare"]},
    "writers": _obj({
        "current": {"type": "integer"},
        "desired": {"type": "integer"},
        "summary": {"type": "string"},
    }),
    "lastScaleTime": {"type": "string", "format": "date-time"},
    "rateLimit": {"type": "number"},
    "conditions": {"type": "array", "items": CONDITION,
                   "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
}, extra={"x-kubernetes-preserve-unknown-fields": True})  # fmt: skip
# kopf keeps its own bookkeeping in status (handler progress): preserved, not pruned.

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Depth", "type": "integer", "jsonPath": ".status.queueDepth",
     "description": "records-queue messages, ready and unacked"},
    {"name": "Writers", "type": "string", "jsonPath": ".status.writers.summary",
     "description": "writer pods current/desired"},
    {"name": "Migration", "type": "string", "jsonPath": ".status.migration.state"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]  # fmt: skip


def definition() -> dict[str, Any]:
    """The CustomResourceDefinition of ``pipelines.sluiceway.io``."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": KIND, "plural": PLURAL, "singular": SINGULAR,
                      "shortNames": list(SHORT_NAMES), "categories": ["sluiceway"]},
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": PRINTER_COLUMNS,
                "schema": {"openAPIV3Schema": _obj(
                    {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                     "metadata": {"type": "object"}, "spec": SPEC, "status": STATUS},
                    required=("spec",),
                    description="A pipeline from a rate-limited HTTP API into PostgreSQL.")},
            }],
        },
    }  # fmt: skip


def with_defaults(schema: dict[str, Any], value: Any) -> Any:
    """``value`` with the schema's defaults filled in, as the API server does when it
    stores an object (a default applies where the field is absent, inside objects that are
    present or defaulted themselves)."""
    if schema.get("type") != "object" or not isinstance(value, dict):
        return value
    result = dict(value)
    for name, child in schema.get("properties", {}).items():
        if name not in result and "default" in child:
            result[name] = child["default"]
        if name in result:
            result[name] = with_defaults(child, result[name])
    return result


def chart_template() -> str:
    """The definition as the chart ships it: installed and upgraded with the release behind
    ``crds.install``, and kept when the release is uninstalled (deleting a CRD deletes every
    Pipeline)."""
    import yaml

    doc = definition()
    doc["metadata"]["labels"] = {"app.kubernetes.io/name": "sluiceway",
                                 "app.kubernetes.io/part-of": "sluiceway"}  # fmt: skip
    doc["metadata"]["annotations"] = {"helm.sh/resource-policy": "keep"}
    body = yaml.safe_dump(doc, sort_keys=False, width=100)
    return (
        "{{- if .Values.crds.install }}\n"
        "# Generated by `sluiceway operator crd --chart` from operator/src/sluiceway_operator/"
        "crd.py: edit that, not this.\n"
        f"{body}"
        "{{- end }}\n"
    )
