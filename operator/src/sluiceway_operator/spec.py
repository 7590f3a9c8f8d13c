"""A Pipeline's spec, read into typed values with the definition's defaults.

The API server validates a Pipeline against its schema before the operator sees it; what
it cannot check (one field against another) and what an older definition may let through
is checked here, and a Pipeline that fails gets phase ``Failed`` with the reason.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from sluiceway_common import settings, sink
from sluiceway_common.settings import ConfigError
from sluiceway_operator import crd, scaling


class InvalidSpec(ValueError):
    """The Pipeline cannot be deployed as written; the message says why."""


@dataclass(frozen=True)
class Image:
    repository: str
    tag: str

    @property
    def ref(self) -> str:
        return f"{self.repository}:{self.tag}"


@dataclass(frozen=True)
class Defaults:
    """What the operator gives a Pipeline that leaves it out: ``images``, the prefix and tag
    of its own release's images (``<repository>-fetcher``, ``-writer``, ``-admin``), from
    the operator's settings; None: every Pipeline names its own."""

    images: Image | None = None


NO_DEFAULTS = Defaults()


@dataclass(frozen=True)
class Resources:
    limits: dict[str, str | int] = field(default_factory=dict)
    requests: dict[str, str | int] = field(default_factory=dict)

    def manifest(self) -> dict[str, Any]:
        return {key: dict(value) for key, value in
                (("limits", self.limits), ("requests", self.requests)) if value}  # fmt: skip


@dataclass(frozen=True)
class Fetcher:
    image: Image
    replicas: int
    concurrency: int
    max_attempts: int
    request_timeout: float
    resources: Resources
    # Both or neither: with them the operator scales the fetchers and ``replicas`` is only
    # the count they start with; without, ``replicas`` is fixed.
    min_replicas: int | None
    max_replicas: int | None
    stabilization: float
    # Asleep at 0 (minReplicas 0), they wake when the fetch and delay queues hold more keys.
    activation: int = 0
    scale_down: scaling.StepLimits = scaling.NO_STEP_LIMITS

    @property
    def scaled(self) -> bool:
        return self.min_replicas is not None and self.max_replicas is not None


@dataclass(frozen=True)
class Writer:
    image: Image
    batch_size: int
    batch_timeout: float
    write_mode: str
    min_replicas: int
    max_replicas: int
    target_queue_depth: int
    stabilization: float
    resources: Resources
    # Asleep at 0 (minReplicas 0), they wake when the records queue holds more messages.
    activation: int = 0
    scale_down: scaling.StepLimits = scaling.NO_STEP_LIMITS


@dataclass(frozen=True)
class Sql:
    query: str
    secret_key: str | None  # of the connections Secret; None: DATABASE_URL


@dataclass(frozen=True)
class Stale:
    age: str
    limit: int | None


@dataclass(frozen=True)
class Http:
    url: str
    items: str | None
    key: str | None
    next: str | None
    cursor_param: str | None


@dataclass(frozen=True)
class Keys:
    config_map: str
    key: str


Source = Sql | Stale | Http | Keys


@dataclass(frozen=True)
class Feed:
    """A source of keys that a CronJob enqueues (``sluiceway enqueue --feed NAME``) on its
    schedule; without one, only when asked."""

    name: str
    schedule: str | None
    suspend: bool
    source: Source


@dataclass(frozen=True)
class Admin:
    image: Image | None  # None only without feeds, which are all it runs
    resources: Resources


@dataclass(frozen=True)
class Sink:
    """The user's table the writers land in, and its columns' JSON pointers (as written)."""

    table: str
    key: str
    columns: tuple[tuple[str, str], ...]
    version: str | None

    def settings(self) -> dict[str, str]:
        """The writers' settings it stands for (``SLUICEWAY_SINK_*``), as their env."""
        return {
            sink.SINK_TABLE.env: self.table,
            sink.SINK_KEY.env: self.key,
            sink.SINK_COLUMNS.env: json.dumps(dict(self.columns), sort_keys=True),
            sink.SINK_VERSION.env: self.version or "",
        }


@dataclass(frozen=True)
class PipelineSpec:
    name: str  # the resource's name
    namespace: str
    pipeline: str  # the name queues, Redis keys and rows go by
    connections_secret: str
    source_url: str
    rate_limit: float
    headers_secret: str | None
    pull_policy: str
    pull_secrets: tuple[str, ...]
    fetcher: Fetcher
    writer: Writer
    admin: Admin
    feeds: tuple[Feed, ...]
    poll_interval: float
    sink: Sink | None = None
    # With minReplicas 0, fetchers and writers sleep once every queue is empty this long.
    idle_seconds: float = 300.0


def _shared(spec: dict[str, Any], defaults: Defaults) -> dict[str, Any]:
    """spec.image, else the operator's default images (none when it has none) with the
    schema's pull policy and secrets."""
    if spec.get("image"):
        return dict(spec["image"])
    image: dict[str, Any] = crd.with_defaults(crd.SPEC["properties"]["image"], {})
    if defaults.images is not None:
        image.update(repository=defaults.images.repository, tag=defaults.images.tag)
    return image


def _image(own: dict[str, Any] | None, shared: dict[str, Any], component: str) -> Image:
    if own:
        return Image(own["repository"], own["tag"])
    if "repository" not in shared:
        raise InvalidSpec(
            f"no image for the {component}: set spec.image (repository and tag) or "
            f"spec.{component}.image, or give the operator default images "
            "(SLUICEWAY_OPERATOR_IMAGE_REPOSITORY and SLUICEWAY_OPERATOR_IMAGE_TAG, which the "
            "chart sets from pipelineImages)"
        )
    return Image(f"{shared['repository']}-{component}", shared["tag"])


def _resources(value: dict[str, Any] | None) -> Resources:
    value = value or {}
    return Resources(dict(value.get("limits") or {}), dict(value.get("requests") or {}))


def _count(value: Any) -> int | None:
    return None if value is None else int(value)


def _step_limits(where: str, component: dict[str, Any]) -> scaling.StepLimits:
    """``scaleDownPolicies`` and ``scaleDownSelectPolicy``, checked as the schema's CEL rule
    does (a percentage above 100), for a server without CEL."""
    policies = []
    for index, raw in enumerate(component.get("scaleDownPolicies") or []):
        policy = scaling.StepPolicy(raw["type"], int(raw["value"]), float(raw["periodSeconds"]))
        if policy.kind not in (scaling.PODS, scaling.PERCENT):
            raise InvalidSpec(f"{where}.scaleDownPolicies[{index}].type={policy.kind!r} is "
                              "not allowed: Pods or Percent")  # fmt: skip
        if policy.value < 1 or (policy.kind == scaling.PERCENT and policy.value > 100):
            raise InvalidSpec(f"{where}.scaleDownPolicies[{index}].value={policy.value} is "
                              "not allowed: at least 1, and at most 100 for Percent")  # fmt: skip
        policies.append(policy)
    select = component["scaleDownSelectPolicy"]
    if select not in scaling.SELECT_POLICIES:
        raise InvalidSpec(f"{where}.scaleDownSelectPolicy={select!r} is not allowed: "
                          f"{', '.join(scaling.SELECT_POLICIES)}")  # fmt: skip
    return scaling.StepLimits(tuple(policies), select)


def parse(name: str, namespace: str, spec: dict[str, Any],
          defaults: Defaults = NO_DEFAULTS) -> PipelineSpec:  # fmt: skip
    """Read a Pipeline's ``spec``, with ``defaults`` for what it leaves out; raise
    :class:`InvalidSpec` naming the field at fault."""
    spec = crd.with_defaults(crd.SPEC, spec)
    try:
        image, source = _shared(spec, defaults), spec["source"]
        fetcher, writer, admin = spec["fetcher"], spec["writer"], spec["admin"]
        parsed = PipelineSpec(
            name=name,
            namespace=namespace,
            pipeline=spec.get("pipeline") or name,
            connections_secret=spec["connectionsSecret"],
            source_url=source["url"],
            rate_limit=float(source["rateLimit"]),
            headers_secret=source.get("headersSecret"),
            pull_policy=image["pullPolicy"],
            pull_secrets=tuple(image["pullSecrets"]),
            fetcher=Fetcher(
                image=_image(fetcher.get("image"), image, "fetcher"),
                replicas=int(fetcher["replicas"]),
                concurrency=int(fetcher["concurrency"]),
                max_attempts=int(fetcher["maxAttempts"]),
                request_timeout=float(fetcher["requestTimeoutSeconds"]),
                resources=_resources(fetcher.get("resources")),
                min_replicas=_count(fetcher.get("minReplicas")),
                max_replicas=_count(fetcher.get("maxReplicas")),
                stabilization=float(fetcher["scaleDownStabilizationSeconds"]),
                activation=int(fetcher["activationBacklog"]),
                scale_down=_step_limits("spec.fetcher", fetcher),
            ),
            writer=Writer(
                image=_image(writer.get("image"), image, "writer"),
                batch_size=int(writer["batchSize"]),
                batch_timeout=float(writer["batchTimeoutSeconds"]),
                write_mode=writer["writeMode"],
                min_replicas=int(writer["minReplicas"]),
                max_replicas=int(writer["maxReplicas"]),
                target_queue_depth=int(writer["targetQueueDepth"]),
                stabilization=float(writer["scaleDownStabilizationSeconds"]),
                resources=_resources(writer.get("resources")),
                activation=int(writer["activationQueueDepth"]),
                scale_down=_step_limits("spec.writer", writer),
            ),
            # Feeds are all the admin image runs: a Pipeline without them needs none.
            admin=Admin(
                _image(admin.get("image"), image, "admin")
                if admin.get("image") or "repository" in image or spec.get("feeds")
                else None,
                _resources(admin.get("resources")),
            ),
            feeds=tuple(_feed(index, raw) for index, raw in enumerate(spec.get("feeds") or [])),
            poll_interval=float(spec["pollIntervalSeconds"]),
            idle_seconds=float(spec["idleSeconds"]),
            sink=_sink(spec["sink"]) if spec.get("sink") is not None else None,
        )
    except InvalidSpec:
        raise
    except KeyError as exc:
        raise InvalidSpec(f"spec is missing {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise InvalidSpec(f"spec has a value of the wrong type: {exc}") from None
    if not re.fullmatch(crd.PIPELINE_NAME_PATTERN, parsed.pipeline):
        raise InvalidSpec(
            f"pipeline name {parsed.pipeline!r} (spec.pipeline, else the resource's name) "
            "must be 1 to 63 lowercase letters, digits or '-', starting and ending with a "
            "letter or digit; set spec.pipeline to such a name"
        )
    if parsed.writer.min_replicas > parsed.writer.max_replicas:
        raise InvalidSpec(
            f"writer.minReplicas ({parsed.writer.min_replicas}) exceeds writer.maxReplicas "
            f"({parsed.writer.max_replicas})"
        )
    low, high = parsed.fetcher.min_replicas, parsed.fetcher.max_replicas
    if (low is None) != (high is None):
        raise InvalidSpec(
            "fetcher.minReplicas and fetcher.maxReplicas go together: give both (the operator "
            "scales the fetchers) or neither (fetcher.replicas is fixed)"
        )
    if low is not None and high is not None and low > high:
        raise InvalidSpec(f"fetcher.minReplicas ({low}) exceeds fetcher.maxReplicas ({high})")
    if "{key}" not in parsed.source_url:
        raise InvalidSpec("source.url must contain {key}, where each key goes")
    stale = [feed.name for feed in parsed.feeds if isinstance(feed.source, Stale)]
    if stale and parsed.sink is not None and parsed.sink.version is None:
        raise InvalidSpec(
            f"feed {stale[0]} is a stale refresh of spec.sink's table, which needs "
            "spec.sink.version: without it the table does not say when a row was fetched"
        )
    names = [feed.name for feed in parsed.feeds]
    if doubled := sorted({name for name in names if names.count(name) > 1}):
        raise InvalidSpec(f"feed names must be unique: {', '.join(doubled)} given twice")
    return parsed


def _fields(where: str, raw: Any, schema: dict[str, Any]) -> dict[str, Any]:
    """``raw``, an object with only the fields ``schema`` knows (an API server prunes the
    others, or refuses them with strict field validation; an older definition kept them)."""
    if not isinstance(raw, dict):
        raise InvalidSpec(f"{where} must be an object")
    if unknown := sorted(set(raw) - set(schema["properties"])):
        raise InvalidSpec(f"{where} has unknown fields: {', '.join(unknown)}; allowed: "
                          f"{', '.join(schema['properties'])}")  # fmt: skip
    missing = [name for name in schema.get("required", ()) if raw.get(name) is None]
    if missing:
        raise InvalidSpec(f"{where} lacks {', '.join(missing)}")
    return raw


def _text(where: str, value: Any, pattern: str | None = None, allowed: str = "") -> str:
    if not isinstance(value, str) or (pattern is not None and not re.fullmatch(pattern, value)):
        raise InvalidSpec(f"{where}={value!r} is not allowed" + (f": {allowed}" if allowed else ""))
    return value


def _optional(where: str, value: Any, pattern: str, allowed: str) -> str | None:
    return None if value is None else _text(where, value, pattern, allowed)


def _sink(raw: Any) -> Sink:
    """``spec.sink``, checked by the writers' own parsers of their ``SLUICEWAY_SINK_*``
    settings (what the schema cannot say: a pointer outside the record, a version column not
    mapped to /fetched_at, the key column mapped again); the writer checks the table itself
    at start-up."""
    raw = _fields("spec.sink", raw, crd.SINK)
    columns = raw.get("columns") or {}
    if not isinstance(columns, dict):
        raise InvalidSpec("spec.sink.columns must be an object of column names to JSON pointers")
    found = Sink(_text("spec.sink.table", raw["table"]).strip(),
                 _text("spec.sink.key", raw.get("key", "key")), tuple(columns.items()),
                 raw.get("version"))  # fmt: skip
    try:
        sink.configured(settings.resolve(None, sink.OPTIONS, environ=found.settings()))
    except ConfigError as exc:
        raise InvalidSpec(f"spec.sink (the writers' SLUICEWAY_SINK_* settings): {exc}") from None
    return found


def _feed(index: int, raw: Any) -> Feed:
    """One of ``spec.feeds``, checked as the schema would (and its CEL rules)."""
    where = f"spec.feeds[{index}]"
    raw = _fields(where, raw, crd.FEED)
    name = _text(f"{where}.name", raw["name"], crd.FEED_NAME_PATTERN,
                 "a-z 0-9 -, starting and ending alphanumeric")  # fmt: skip
    if len(name) > crd.FEED_NAME_MAX:
        raise InvalidSpec(f"{where}.name={name!r} is longer than {crd.FEED_NAME_MAX} "
                          "characters (its CronJob's name must fit in 52)")  # fmt: skip
    where = f"feed {name}"
    given = [source for source in crd.FEED_SOURCES if raw.get(source) is not None]
    if len(given) != 1:
        raise InvalidSpec(f"{where} must have exactly one source of sql, stale, http or keys"
                          + (f" (it has {' and '.join(given)})" if given else ""))  # fmt: skip
    schedule = raw.get("schedule")
    if schedule is not None:
        check_schedule(f"{where}: schedule", _text(f"{where}: schedule", schedule))
    suspend = raw.get("suspend", False)
    if not isinstance(suspend, bool):
        raise InvalidSpec(f"{where}: suspend must be true or false")
    kind = given[0]
    body = _fields(f"{where}: {kind}", raw[kind], crd.FEED["properties"][kind])
    source: Source
    if kind == "sql":
        query = _text(f"{where}: sql.query", body["query"])
        if not query.strip():
            raise InvalidSpec(f"{where}: sql.query is empty")
        source = Sql(query, _optional(f"{where}: sql.connectionsSecretKey",
                                      body.get("connectionsSecretKey"),
                                      crd.CONFIG_MAP_KEY_PATTERN, "a Secret key"))  # fmt: skip
    elif kind == "stale":
        age = _text(f"{where}: stale.age", body["age"], crd.AGE_PATTERN,
                    "a number above 0 and s, m, h or d (90s, 30m, 24h, 7d)")  # fmt: skip
        limit = body.get("limit")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                  or limit < 1):  # fmt: skip
            raise InvalidSpec(f"{where}: stale.limit={limit!r} is not allowed: a whole "
                              "number from 1")  # fmt: skip
        source = Stale(age, limit)
    elif kind == "http":
        pointer = "a JSON pointer: empty or /tokens, ~ written ~0 and / as ~1"
        items, key, next_ = (
            _optional(f"{where}: http.{field}", body.get(field), crd.POINTER_PATTERN, pointer)
            for field in ("items", "key", "next"))  # fmt: skip
        cursor = body.get("cursorParam")
        if cursor is not None and not _text(f"{where}: http.cursorParam", cursor).strip():
            raise InvalidSpec(f"{where}: http.cursorParam is empty")
        if cursor is not None and next_ is None:
            raise InvalidSpec(f"{where}: http.cursorParam needs http.next: the cursor is the "
                              "value there")  # fmt: skip
        url = _text(f"{where}: http.url", body["url"], "https?://[^\\s]+", "an http(s) URL")
        source = Http(url, items, key, next_, cursor)
    else:
        source = Keys(
            _text(f"{where}: keys.configMap", body["configMap"], crd.OBJECT_NAME_PATTERN,
                  "a ConfigMap's name"),
            _text(f"{where}: keys.key", body["key"], crd.CONFIG_MAP_KEY_PATTERN,
                  "a ConfigMap key: letters, digits, -, _ and ."))  # fmt: skip
        if source.key in (".", "..") or source.key.startswith(".."):
            raise InvalidSpec(f"{where}: keys.key={source.key!r} is not a ConfigMap key")
    return Feed(name, schedule, suspend, source)


# Each field's range, for what the schema's pattern cannot see: a range running backwards.
CRON_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 6))
CRON_NAMES = {name: number for names, first in ((crd.MONTHS, 1), (crd.WEEKDAYS, 0))
              for number, name in enumerate(names, first)}  # fmt: skip


def check_schedule(where: str, schedule: str) -> None:
    """Refuse a schedule a CronJob would not take: not 5 fields (or a macro), a value out of
    its field's range, a range running backwards."""
    allowed = ("5 fields (minute hour day-of-month month weekday, e.g. */15 * * * *) or "
               f"one of {', '.join(crd.CRON_MACROS)}")  # fmt: skip
    if not re.fullmatch(crd.CRON_PATTERN, schedule):
        raise InvalidSpec(f"{where} {schedule!r} is not a cron schedule: {allowed}")
    if schedule.startswith("@"):
        return
    for part, (low, high) in zip(schedule.split(), CRON_RANGES, strict=True):
        for item in part.split(","):
            span = item.split("/")[0]
            if span in ("*", "?"):
                continue
            first, _, last = span.partition("-")
            values = [CRON_NAMES.get(part.upper()) if part.isalpha() else int(part)
                      for part in (first, last or first)]  # fmt: skip
            if values[0] is None or values[1] is None or not (
                    low <= values[0] <= values[1] <= high):  # fmt: skip
                raise InvalidSpec(f"{where} {schedule!r}: {item!r} is outside {low}-{high} or "
                                  "runs backwards")  # fmt: skip
