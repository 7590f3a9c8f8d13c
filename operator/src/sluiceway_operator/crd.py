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

# A CronJob's name is at most 52 characters (its Jobs add 11). ``<name>-feed-<feed>`` fits:
# a long resource name is cut to one character and an 8-character digest at worst (see
# manifests.child_name), which leaves a feed 52 - 1 - 8 - 2 - len("feed-") characters.
CRONJOB_NAME_MAX = 52
FEED_NAME_MAX = CRONJOB_NAME_MAX - 1 - 8 - 2 - len("feed-")
FEED_NAME_PATTERN = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
CONFIG_MAP_KEY_PATTERN = "^[-._a-zA-Z0-9]+$"
# ``enqueue --stale AGE``: a number above 0 and a unit (sluiceway_admin.sources.AGE).
AGE_PATTERN = "^([0-9]*[1-9][0-9]*(\\.[0-9]+)?|[0-9]+\\.[0-9]*[1-9][0-9]*)[smhd]$"
# A JSON pointer (RFC 6901): empty, or /-separated tokens with ~ written ~0 and / as ~1.
POINTER_PATTERN = "^(/([^~]|~[01])*)?$"


def _cron_field(number: str, names: tuple[str, ...] = (), any_day: bool = False) -> str:
    value = "|".join((number, *names, *(name.lower() for name in names)))
    item = f"(\\*{'|[?]' if any_day else ''}|({value})(-({value}))?)(/[1-9][0-9]*)?"
    return f"{item}(,{item})*"


MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
WEEKDAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
CRON_MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
# Five fields, as a CronJob's schedule takes them (minute hour day-of-month month weekday),
# each value within its field's range; or one of the macros. No time zone prefix (a
# CronJob refuses TZ= in its schedule).
CRON_PATTERN = "^(({})|{})$".format("|".join(CRON_MACROS), " +".join((
    _cron_field("[0-5]?[0-9]"),
    _cron_field("[01]?[0-9]|2[0-3]"),
    _cron_field("0?[1-9]|[12][0-9]|3[01]", any_day=True),
    _cron_field("0?[1-9]|1[0-2]", MONTHS),
    _cron_field("[0-6]", WEEKDAYS, any_day=True),
)))  # fmt: skip

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

FEED_SOURCES = ("sql", "stale", "http", "keys")
FEED = _obj({
    "name": _str(f"the feed's name, unique in the Pipeline: its CronJob is "
                 f"<name>-feed-<feed> (a-z 0-9 -, at most {FEED_NAME_MAX})",
                 pattern=FEED_NAME_PATTERN, maxLength=FEED_NAME_MAX),
    "schedule": _str("when it runs, as a CronJob's schedule (5 fields, or @hourly, @daily, "
                     "...; UTC unless the cluster says otherwise); none: only when asked, "
                     "with kubectl create job --from=cronjob/<name>-feed-<feed>",
                     pattern=CRON_PATTERN, maxLength=256),
    "suspend": {"type": "boolean", "default": False,
                "description": "no scheduled runs until false again"},
    "sql": _obj({
        "query": _str("each row's first column is a key (enqueue --sql)", minLength=1,
                      maxLength=65_536),
        "connectionsSecretKey": _str(
            "the key of the connections Secret holding the URL of the database the query "
            "runs on (default: DATABASE_URL)", pattern=CONFIG_MAP_KEY_PATTERN, maxLength=253),
    }, required=("query",), description="keys from a SQL query"),
    "stale": _obj({
        "age": _str("keys whose row was fetched longer ago than this: 90s, 30m, 24h, 7d",
                    pattern=AGE_PATTERN, maxLength=32),
        "limit": _int("the stalest this many only", 1, 2**53, None),
    }, required=("age",), description="the pipeline's stale keys (enqueue --stale)"),
    "http": _obj({
        "url": _str("the listing endpoint", pattern="^https?://", maxLength=2048),
        "items": _str("JSON pointer of a page's array of items (default: the page)",
                      pattern=POINTER_PATTERN, maxLength=1024),
        "key": _str("JSON pointer of the key in an item (default: the item)",
                    pattern=POINTER_PATTERN, maxLength=1024),
        "next": _str("JSON pointer of the next page's URL, or cursor (default: the Link "
                     "header)", pattern=POINTER_PATTERN, maxLength=1024),
        "cursorParam": _str("the value at next is a cursor, sent as this query parameter",
                            minLength=1, maxLength=256),
    }, required=("url",), description="the upstream's listing, page after page "
       "(enqueue --http), with the pipeline's headers, rate limit and retries",
       extra={"x-kubernetes-validations": [{
           "rule": "!has(self.cursorParam) || has(self.next)",
           "message": "http.cursorParam needs http.next: the cursor is the value there"}]}),
    "keys": _obj({
        "configMap": _str("the ConfigMap", pattern=OBJECT_NAME_PATTERN, maxLength=253),
        "key": _str("its key holding the keys, one a line", pattern=CONFIG_MAP_KEY_PATTERN,
                    maxLength=253),
    }, required=("configMap", "key"), description="keys from a ConfigMap, one a line"),
}, required=("name",), description="a source of keys, enqueued by a CronJob",
   extra={"x-kubernetes-validations": [{
       "rule": "[{}].filter(x, x).size() == 1".format(
           ", ".join(f"has(self.{source})" for source in FEED_SOURCES)),
       "message": "a feed has exactly one source: sql, stale, http or keys"}]})  # fmt: skip

# The writers' SLUICEWAY_SINK_* settings (the writer checks them in full at start-up).
SINK = _obj({
    "table": _str("the table of yours the writers land records in, as SQL names it (users, "
                  'analytics.users, "Analytics Data".users); it must exist', minLength=1,
                  maxLength=300),
    "key": _str("the table's column the record's key goes to; unique on its own",
                minLength=1, maxLength=63, default="key"),
    "columns": {"type": "object", "maxProperties": 1600, "default": {},
                "additionalProperties": {"type": "string", "pattern": POINTER_PATTERN,
                                         "maxLength": 2048},
                "description": "column -> JSON pointer into the record {key, payload, "
                               "fetched_at}, e.g. login: /payload/login"},
    "version": _str("a column that columns maps to /fetched_at: a row is updated only by a "
                    "newer fetch (else the last record written wins)", minLength=1,
                    maxLength=63),
}, required=("table",), description="land records in a table of yours instead of records "
   "(the README's Sinks)")  # fmt: skip

SCALE_DOWN_POLICY = _obj({
    "type": {"type": "string", "enum": ["Pods", "Percent"],
             "description": "Pods: at most value pods fewer per period; Percent: at most value "
                            "percent of the pods running at the period's start"},
    "value": _int("pods, or percent (at most 100)", 1, 1000),
    "periodSeconds": _int("the period the step is counted over", 1, 3600),
}, required=("type", "value", "periodSeconds"), extra={"x-kubernetes-validations": [{
    "rule": "self.type != 'Percent' || self.value <= 100",
    "message": "a Percent policy's value is at most 100"}]})  # fmt: skip


def _scale_down(component: str) -> dict[str, Any]:
    """A component's scale-down step policies, as an HPA's ``behavior.scaleDown``."""
    return {
        "scaleDownPolicies": {"type": "array", "maxItems": 10, "items": SCALE_DOWN_POLICY,
                              "description": f"{component} scale down by at most these steps "
                                             "(none: any step the window allows)"},
        "scaleDownSelectPolicy": {"type": "string", "enum": ["Max", "Min", "Disabled"],
                                  "default": "Max",
                                  "description": "Max: the policy allowing the biggest step "
                                                 "holds; Min: the smallest; Disabled: "
                                                 f"{component} never scale down"},
    }  # fmt: skip


SPEC = _obj({
    "pipeline": _str(
        "the name the pipeline's queues, Redis keys and rows go by (default: this "
        "resource's name); two Pipelines on one broker must not share it",
        pattern=PIPELINE_NAME_PATTERN, maxLength=63),
    "image": _obj({
        "repository": _str("image repository prefix: the fetcher runs "
                           "<repository>-fetcher, the writer and the migration Job "
                           "<repository>-writer, feeds <repository>-admin",
                           minLength=1, maxLength=512),
        "tag": _str("image tag for every component", minLength=1, maxLength=128),
        "pullPolicy": {"type": "string", "enum": ["Always", "IfNotPresent", "Never"],
                       "default": "IfNotPresent", "description": "image pull policy"},
        "pullSecrets": {"type": "array", "maxItems": 16, "default": [],
                        "description": "names of image pull Secrets",
                        "items": {"type": "string", "pattern": OBJECT_NAME_PATTERN}},
    }, required=("repository", "tag"), description="the images the pipeline runs; without "
       "it, the operator's own release's (the chart's pipelineImages), under the same names"),
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
        "replicas": _int("fetcher pods: a fixed count, or with minReplicas and maxReplicas "
                         "the count they start with (the operator's thereafter)", 0, 1000, 1),
        "minReplicas": _int("fewest fetcher pods when the operator scales them (0: none once "
                            "the pipeline is idle, see idleSeconds); give it with maxReplicas",
                            0, 1000),
        "maxReplicas": _int("most fetcher pods when the operator scales them to spend the rate "
                            "limit; give it with minReplicas", 1, 1000),
        "scaleDownStabilizationSeconds": _int(
            "fetchers scale down only to the most wanted over this window", 0, 86_400, 120),
        **_scale_down("fetchers"),
        "activationBacklog": _int("with minReplicas 0: fetchers asleep wake when the fetch "
                                  "and delay queues hold more keys than this (a feed starting "
                                  "wakes them at once)", 0, 1_000_000_000, 0),
        "concurrency": _setting(settings.CONCURRENCY, "requests in flight per fetcher pod"),
        "maxAttempts": _setting(settings.MAX_ATTEMPTS,
                                "attempts per key before it goes to the failed set"),
        "requestTimeoutSeconds": _setting(settings.REQUEST_TIMEOUT,
                                          "timeout of one upstream request"),
        "image": _image("this component's image, instead of spec.image"),
        "resources": RESOURCES,
    }, default={}, description="the fetcher Deployment, scaled by the operator when "
       "minReplicas and maxReplicas are given",
        extra={"x-kubernetes-validations": [{
            "rule": "has(self.minReplicas) == has(self.maxReplicas)",
            "message": "fetcher.minReplicas and fetcher.maxReplicas go together: both "
                       "(the operator scales the fetchers) or neither (replicas is fixed)"}, {
            "rule": "!has(self.minReplicas) || !has(self.maxReplicas) || "
                    "self.minReplicas <= self.maxReplicas",
            "message": "fetcher.minReplicas must not exceed fetcher.maxReplicas"}]}),
    "writer": _obj({
        "batchSize": _setting(settings.BATCH_SIZE, "rows per batch"),
        "batchTimeoutSeconds": _setting(settings.BATCH_TIMEOUT,
                                        "the longest a row waits for its batch"),
        "writeMode": {"type": "string", "enum": ["direct", "buffered"], "default": "direct",
                      "description": "direct: each batch upserts into records; buffered: "
                                     "batches append to records_buffer, one merger moves them"},
        "minReplicas": _int("fewest writer pods once migrated (0: none once the pipeline is "
                            "idle, see idleSeconds)", 0, 1000, 1),
        "maxReplicas": _int("most writer pods", 1, 1000, 10),
        "targetQueueDepth": _int("records-queue messages (ready and unacked) per writer pod",
                                 1, 100_000_000, 5000),
        "scaleDownStabilizationSeconds": _int(
            "writers scale down only to the most wanted over this window", 0, 86_400, 120),
        **_scale_down("writers"),
        "activationQueueDepth": _int("with minReplicas 0: writers asleep wake when the records "
                                     "queue holds more messages than this", 0, 1_000_000_000,
                                     0),
        "image": _image("this component's image (and the migration Job's), instead of "
                        "spec.image"),
        "resources": RESOURCES,
    }, default={}, description="the writer Deployment, scaled by the operator",
        extra={"x-kubernetes-validations": [{
            "rule": "!has(self.minReplicas) || !has(self.maxReplicas) || "
                    "self.minReplicas <= self.maxReplicas",
            "message": "writer.minReplicas must not exceed writer.maxReplicas"}]}),
    "admin": _obj({
        "image": _image("the image feeds run `sluiceway enqueue` from, instead of "
                        "<spec.image.repository>-admin"),
        "resources": RESOURCES,
    }, default={}, description="the feeds' Jobs"),
    "feeds": {"type": "array", "maxItems": 64, "items": FEED,
              "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
              "description": "sources of keys, each enqueued by a CronJob on its schedule"},
    "sink": SINK,
    "pollIntervalSeconds": _int("how often the records queue's depth is read", 1, 3600, 10),
    "idleSeconds": _int("fetchers and writers with minReplicas 0 go to zero once every queue "
                        "of the pipeline (fetch, delay, records) has been empty this long",
                        0, 604_800, 300),
}, required=("connectionsSecret", "source"))  # fmt: skip

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
    "writerImage": {"type": "string",
                    "description": "the last writer image migrated: the one writers run"},
    "queueDepth": {"type": "integer"},
    "depthSource": {"type": "string", "enum": ["management-api", "passive-declare"]},
    "writers": _obj({
        "current": {"type": "integer", "description": "replicas the Deployment is set to"},
        "ready": {"type": "integer", "description": "writer pods ready"},
        "desired": {"type": "integer", "description": "writer pods the policy asks for"},
        "summary": {"type": "string"},
    }),
    "fetchers": _obj({
        "current": {"type": "integer", "description": "replicas the Deployment is set to"},
        "ready": {"type": "integer", "description": "fetcher pods ready"},
        "desired": {"type": "integer", "description": "fetcher pods the policy asks for"},
        "summary": {"type": "string"},
        "bound": {"type": "string", "enum": ["idle", "rate-limited", "latency-bound",
                                             "max-replicas", "fixed"],
                  "description": "what holds the fetching back (fixed: fetcher.replicas, "
                                 "not scaled); absent while a metric cannot be read"},
        "backlog": {"type": "integer",
                    "description": "keys in the fetch and delay queues at the last poll"},
        "latencySeconds": {"type": "number",
                           "description": "the fetchers' mean upstream latency, as they "
                                          "report it; absent until one has fetched"},
        "rateLimit": {"type": "number",
                      "description": "the limit the fetchers follow: the override in Redis "
                                     "(sluiceway rate set), else source.rateLimit"},
    }),
    "lastScaleTime": {"type": "string", "format": "date-time"},
    "idleSince": {"type": "string", "format": "date-time",
                  "description": "since when every queue of the pipeline has been empty; "
                                 "absent while one holds work or cannot be read"},
    "rateLimit": {"type": "number"},
    "feeds": {"type": "array", "x-kubernetes-list-type": "map",
              "x-kubernetes-list-map-keys": ["name"], "items": _obj({
        "name": {"type": "string"},
        "schedule": {"type": "string"},
        "suspended": {"type": "boolean"},
        "lastScheduleTime": {"type": "string", "format": "date-time"},
        "lastSuccessfulTime": {"type": "string", "format": "date-time"},
        "lastRun": _obj({
            "started": {"type": "string"},
            "finished": {"type": "string"},
            "ok": {"type": "boolean"},
            "queued": {"type": "integer"},
            "inFlight": {"type": "integer"},
            "skipped": {"type": "integer"},
            "error": {"type": "string"},
        }),
        # The last failure a Warning Event told of (a run's finish, a Job's failure time).
        "lastFailureReported": {"type": "string"},
    }, required=("name",))},
    "conditions": {"type": "array", "items": CONDITION,
                   "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
}, extra={"x-kubernetes-preserve-unknown-fields": True})  # fmt: skip
# kopf keeps its own bookkeeping in status (handler progress): preserved, not pruned.

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Depth", "type": "integer", "jsonPath": ".status.queueDepth",
     "description": "records-queue messages, ready and unacked, at the last poll; "
                    "none while the broker cannot be read"},
    {"name": "Writers", "type": "string", "jsonPath": ".status.writers.summary",
     "description": "writer pods ready/desired, as a Deployment's READY column"},
    {"name": "Fetchers", "type": "string", "jsonPath": ".status.fetchers.summary",
     "description": "fetcher pods ready/desired, as a Deployment's READY column"},
    {"name": "Migration", "type": "string", "jsonPath": ".status.migration.state"},
    {"name": "Rate", "type": "number", "jsonPath": ".status.fetchers.rateLimit", "priority": 1,
     "description": "requests/s the fetchers follow (the Redis override, else "
                    "source.rateLimit), as the last poll read it"},
    {"name": "Bound", "type": "string", "jsonPath": ".status.fetchers.bound", "priority": 1,
     "description": "what holds the fetching back: idle, rate-limited, latency-bound, "
                    "max-replicas, or fixed (fetcher.replicas, not scaled)"},
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
