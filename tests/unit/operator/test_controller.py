"""The reconcile's status: conditions that keep their transition time, and the phase, which
waits for the migration gate to report before it says anything."""

from __future__ import annotations

from sluiceway_operator.controller import Report, phase


def test_a_condition_moves_its_transition_time_only_when_its_status_changes() -> None:
    report = Report([{"type": "Scaling", "status": "True", "reason": "Active", "message": "",
                      "lastTransitionTime": "2026-01-01T00:00:00Z"}])  # fmt: skip
    report.set(True, "Scaling", "Active", "")
    assert report.conditions[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    report.set(False, "Scaling", "Paused", "sluiceway.io/paused is true; would run 3")
    (scaling,) = report.conditions
    assert (scaling["status"], scaling["reason"]) == ("False", "Paused")
    assert scaling["lastTransitionTime"] != "2026-01-01T00:00:00Z"
    report.set(True, "BrokerReachable", "Reachable", "management-api")
    assert [c["type"] for c in report.conditions] == ["Scaling", "BrokerReachable"]


def test_the_phase_follows_the_migration_and_the_problems() -> None:
    assert phase({}, []) == {}  # the migration gate has not reported yet
    assert phase({"state": "Running", "job": "users-migrate-1"}, []) == {
        "phase": "Migrating", "message": "migration Job users-migrate-1"}  # fmt: skip
    assert phase({"state": "Succeeded"}, []) == {"phase": "Running", "message": ""}
    assert phase({"state": "Succeeded"}, ["Secret conn not found", "Redis: down"]) == {
        "phase": "Failed", "message": "Secret conn not found; Redis: down"}  # fmt: skip
    assert phase({}, ["Secret conn not found"])["phase"] == "Failed"


def test_a_condition_that_no_longer_applies_is_dropped() -> None:
    report = Report([{"type": "FetcherScaling", "status": "False", "reason": "Paused"},
                     {"type": "Scaling", "status": "True"}])  # fmt: skip
    report.drop("FetcherScaling")
    assert [c["type"] for c in report.conditions] == ["Scaling"]


def test_a_fetchers_scale_event_names_the_bound_and_what_it_was_made_of() -> None:
    from sluiceway_operator.controller import describe

    assert describe({"bound": "max-replicas", "backlog": 1000, "latency": 0.5,
                     "rate": 2000.0}) == (
        "max-replicas: backlog 1000, latency 0.500 s, rate limit 2000/s")  # fmt: skip
    assert describe({"bound": "latency-bound", "backlog": 64, "latency": None, "rate": 2.5}) == (
        "latency-bound: backlog 64, latency unknown, rate limit 2.5/s")  # fmt: skip
