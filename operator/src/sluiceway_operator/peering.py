"""Peering: several replicas of the operator, of which one acts and the others stand by.

kopf's peering does the work. Every replica keeps a *record* in a shared *peering object*: its
identity (the pod's name, from ``POD_ID``), its *priority* and a *lifetime*, renewed 5-10 s
before the lifetime runs out. A replica that sees a live record of a higher priority than its
own is paused: its watches are closed and its timers stopped, so it neither reconciles nor
scales. The one of the highest priority is the *active* replica; the others are *standbys*. A
replica stopped (SIGTERM) removes its record as it exits, and a standby resumes as it sees
that; a replica lost without exiting (SIGKILL, its node gone) leaves its record to lapse, and
a standby resumes when it has (at most a lifetime after the last renewal). Equal priorities
would pause every replica, so each has its own: the older replica ranks higher.

The peering object is a ``ClusterKopfPeering`` when the operator serves every namespace,
else a ``KopfPeering`` in each namespace it serves, all of one name. Peering is mandatory
here: without the object kopf keeps the replica paused rather than run it alone, so the
operator creates what is missing as it starts (:meth:`Peering.objects`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import kopf

GROUP_VERSION = "kopf.dev/v1"


@dataclass(frozen=True)
class Peering:
    """What the replicas share: the peering objects' name, the records' lifetime in seconds,
    and the namespaces served (empty: every namespace, one cluster-wide object)."""

    name: str
    lifetime: int
    namespaces: tuple[str, ...] = ()

    def objects(self) -> list[dict[str, Any]]:
        """The peering objects kopf will look for, as the operator creates them."""
        if not self.namespaces:
            return [{"apiVersion": GROUP_VERSION, "kind": "ClusterKopfPeering",
                     "metadata": {"name": self.name}}]  # fmt: skip
        return [{"apiVersion": GROUP_VERSION, "kind": "KopfPeering",
                 "metadata": {"name": self.name, "namespace": namespace}}
                for namespace in self.namespaces]  # fmt: skip


def priority(started: float) -> int:
    """The priority of a replica started at ``started`` (seconds since the epoch)."""
    # Oldest first, to the microsecond: a starting replica never pre-empts the acting one.
    return -round(started * 1_000_000)


def configure(settings: kopf.OperatorSettings, peering: Peering | None, started: float) -> None:
    """Turn kopf's peering on, as ``peering`` says, for a replica started at ``started``; or
    off (``None``): the operator then runs standalone, as the only one."""
    if peering is None:
        settings.peering.standalone = True
        return
    settings.peering.standalone = False
    # Mandatory: with no peering object kopf waits; optional, it would act alone, beside
    # any other replica.
    settings.peering.mandatory = True
    settings.peering.name = peering.name
    settings.peering.lifetime = peering.lifetime
    settings.peering.priority = priority(started)
