"""The operator's metrics follow the status: a depth that cannot be read is no series, not
the last reading."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from sluiceway_operator import metrics


def test_an_unknown_depth_removes_the_series_instead_of_keeping_the_last_reading() -> None:
    registry = CollectorRegistry()
    recorder = metrics.register(registry)
    labels = {"namespace": "data", "pipeline": "users"}
    recorder.record("data", "users", {}, {"queueDepth": 40, "depthSource": "management-api"})
    assert registry.get_sample_value("sluiceway_queue_depth_messages", labels) == 40
    recorder.record("data", "users", {}, {"phase": "Running"})  # says nothing of the depth
    assert registry.get_sample_value("sluiceway_queue_depth_messages", labels) == 40
    recorder.record("data", "users", {}, {"queueDepth": None, "depthSource": None})
    assert registry.get_sample_value("sluiceway_queue_depth_messages", labels) is None
    recorder.record("data", "users", {}, {"queueDepth": None})  # and again: still none
    assert registry.get_sample_value("sluiceway_queue_depth_messages", labels) is None
