"""The peering's pure parts: the replicas' priorities, the objects the operator creates, kopf's
settings, and the operator's peering settings (a bad one exits 2, as every setting does)."""

from __future__ import annotations

import kopf
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluiceway_common import settings
from sluiceway_common.settings import ConfigError
from sluiceway_operator import peering
from sluiceway_operator.main import OPTIONS, PEERING, PEERING_LIFETIME, peering_of
from sluiceway_operator.peering import Peering

# Start times from 2001 to 2100, as seconds since the epoch.
STARTS = st.floats(min_value=1e9, max_value=4.1e9)


@given(STARTS, STARTS)
def test_the_older_replica_has_the_higher_priority(first: float, second: float) -> None:
    if second - first >= 1e-6:  # a microsecond apart or more
        assert peering.priority(first) > peering.priority(second)


def test_priorities_are_integers_a_json_number_holds_exactly() -> None:
    latest = peering.priority(4.1e9)  # 2100
    assert isinstance(latest, int)
    assert abs(latest) < 2**53


def test_the_peering_objects_are_one_cluster_wide_or_one_per_namespace() -> None:
    assert Peering("sluiceway", 30).objects() == [{
        "apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering",
        "metadata": {"name": "sluiceway"}}]  # fmt: skip
    assert Peering("sluiceway", 30, ("team-a", "team-b")).objects() == [
        {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering",
         "metadata": {"name": "sluiceway", "namespace": namespace}}
        for namespace in ("team-a", "team-b")]  # fmt: skip


def test_kopf_is_told_to_peer_mandatorily_or_to_run_alone() -> None:
    shared = kopf.OperatorSettings()
    peering.configure(shared, Peering("sluiceway", 15), started=1_700_000_000.5)
    assert not shared.peering.standalone
    assert shared.peering.mandatory  # no object: wait, never act alone beside a replica
    assert (shared.peering.name, shared.peering.lifetime) == ("sluiceway", 15)
    assert shared.peering.priority == -1_700_000_000_500_000

    alone = kopf.OperatorSettings()
    peering.configure(alone, None, started=1_700_000_000.0)
    assert alone.peering.standalone


def resolve(**environ: str) -> Peering | None:
    return peering_of(settings.resolve(None, OPTIONS, environ))


def test_the_peering_comes_from_the_operators_settings() -> None:
    assert resolve() is None  # by hand, as before: no peering
    assert resolve(SLUICEWAY_OPERATOR_PEERING="sluiceway") == Peering("sluiceway", 30)
    assert resolve(SLUICEWAY_OPERATOR_PEERING="release-sluiceway",
                   SLUICEWAY_OPERATOR_PEERING_LIFETIME="12",
                   SLUICEWAY_OPERATOR_NAMESPACES="team-a, team-b") == Peering(
        "release-sluiceway", 12, ("team-a", "team-b"))  # fmt: skip


def test_with_peering_namespaces_are_names_not_patterns() -> None:
    with pytest.raises(ConfigError, match=r"^SLUICEWAY_OPERATOR_NAMESPACES has 'team-\*', not "
                       r"a namespace's name: with SLUICEWAY_OPERATOR_PEERING set"):  # fmt: skip
        resolve(SLUICEWAY_OPERATOR_PEERING="sluiceway",
                SLUICEWAY_OPERATOR_NAMESPACES="data,team-*")  # fmt: skip
    # Without peering, kopf's patterns are the operator's business as before.
    assert resolve(SLUICEWAY_OPERATOR_NAMESPACES="team-*") is None


@pytest.mark.parametrize(("option", "value"), [
    (PEERING, "Sluiceway"),
    (PEERING, "sluiceway_peering"),
    (PEERING, "sluiceway..peering"),
    (PEERING, "-sluiceway"),
    (PEERING, "s" * 254),
    (PEERING_LIFETIME, "4"),
    (PEERING_LIFETIME, "3601"),
    (PEERING_LIFETIME, "30.5"),
])  # fmt: skip
def test_a_bad_peering_setting_is_refused(option: settings.Option, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^{option.env}="):
        settings.resolve(None, OPTIONS, {option.env: value})


def test_a_peering_name_may_be_any_object_name() -> None:
    for name in ("sluiceway", "release-sluiceway", "ops.sluiceway", "a" * 253):
        assert PEERING.parse(name) == name
