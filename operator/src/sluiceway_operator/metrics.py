"""The operator's Prometheus metrics: per Pipeline, what its last reconcile saw and did.

Labelled by ``namespace`` and ``pipeline`` (the Pipeline resource's name): a cluster has few
of either. ``sluiceway operator`` registers them on its
:class:`sluiceway_common.observe.Observer` registry and hands them to the handlers in kopf's
memo (``metrics``); without them (kopf run directly) nothing is recorded.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

LABELS = ("namespace", "pipeline")


@dataclass(frozen=True)
class OperatorMetrics:
    queue_depth: Gauge
    writers_desired: Gauge
    writers_current: Gauge
    scale_events: Counter
    reconcile_errors: Counter

    def record(self, namespace: str, name: str, before: dict[str, Any],
               status: dict[str, Any]) -> None:  # fmt: skip
        """Note a reconcile's new ``status`` (``before``: the one it replaced)."""
        labels = {"namespace": namespace, "pipeline": name}
        if status.get("queueDepth") is not None:
            self.queue_depth.labels(**labels).set(status["queueDepth"])
        elif "queueDepth" in status:
            # Unknown: no series, rather than the last reading gone stale.
            with contextlib.suppress(KeyError):
                self.queue_depth.remove(namespace, name)
        writers = status.get("writers") or {}
        if writers:
            self.writers_desired.labels(**labels).set(writers.get("desired", 0))
            self.writers_current.labels(**labels).set(writers.get("current", 0))
        if status.get("lastScaleTime") and status.get("lastScaleTime") != before.get(
            "lastScaleTime"
        ):
            self.scale_events.labels(**labels).inc()

    def forget(self, namespace: str, name: str) -> None:
        """Drop a deleted Pipeline's series."""
        for metric in (self.queue_depth, self.writers_desired, self.writers_current,
                       self.scale_events, self.reconcile_errors):  # fmt: skip
            with contextlib.suppress(KeyError):  # never recorded
                metric.remove(namespace, name)


def register(registry: CollectorRegistry) -> OperatorMetrics:
    """Create the metrics on ``registry``."""
    return OperatorMetrics(
        queue_depth=Gauge("sluiceway_queue_depth_messages",
                          "records-queue messages at the last reading (ready and unacked from "
                          "the management API; ready only from the fallback)", LABELS,
                          registry=registry),
        writers_desired=Gauge("sluiceway_writers_desired", "writers the policy asks for",
                              LABELS, registry=registry),
        writers_current=Gauge("sluiceway_writers_current",
                              "writers the Deployment is set to", LABELS, registry=registry),
        scale_events=Counter("sluiceway_scale_events", "times the writers were scaled",
                             LABELS, registry=registry),
        reconcile_errors=Counter("sluiceway_reconcile_errors",
                                 "reconciles that failed with an error", LABELS,
                                 registry=registry),
    )  # fmt: skip
