"""A Pipeline's spec, read into typed values with the definition's defaults.

The API server validates a Pipeline against its schema before the operator sees it; what
it cannot check (one field against another) and what an older definition may let through
is checked here, and a Pipeline that fails gets phase ``Failed`` with the reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from sluiceway_operator import crd


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
    poll_interval: float


def _image(own: dict[str, Any] | None, shared: dict[str, Any], component: str) -> Image:
    if own:
        return Image(own["repository"], own["tag"])
    return Image(f"{shared['repository']}-{component}", shared["tag"])


def _resources(value: dict[str, Any] | None) -> Resources:
    value = value or {}
    return Resources(dict(value.get("limits") or {}), dict(value.get("requests") or {}))


def parse(name: str, namespace: str, spec: dict[str, Any]) -> PipelineSpec:
    """Read a Pipeline's ``spec``; raise :class:`InvalidSpec` naming the field at fault."""
    spec = crd.with_defaults(crd.SPEC, spec)
    try:
        image, source = spec["image"], spec["source"]
        fetcher, writer = spec["fetcher"], spec["writer"]
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
            ),
            poll_interval=float(spec["pollIntervalSeconds"]),
        )
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
    if "{key}" not in parsed.source_url:
        raise InvalidSpec("source.url must contain {key}, where each key goes")
    return parsed
