"""The operator's client for the objects it keeps: its children and the connections Secret.

kopf watches Pipelines, patches their status and posts Events with its own client; the
ConfigMaps, Deployments, Jobs and CronJobs of a Pipeline, its connections Secret, and the
peering objects the operator creates when absent, go through this one. Children are
*applied* server-side (``PATCH`` as ``application/apply-patch+yaml``) under the field manager
``sluiceway-operator``, forced: the operator owns every field it sets, and takes one back
from any other manager that changed it.

It logs in as kopf does, with the pod's service account, else kubeconfig. lightkube reads the
service-account token once, so a 401 (the kubelet rotated the token under the running pod)
makes this client log in again and repeat the request once.
"""

# lightkube: async, typed, server-side apply built in (field manager, force); kr8s has no SSA.

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from lightkube import ApiError, AsyncClient, KubeConfig, codecs
from lightkube.core.client import LabelSelector
from lightkube.generic_resource import create_global_resource, create_namespaced_resource
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.batch_v1 import CronJob, Job
from lightkube.resources.core_v1 import ConfigMap, Secret
from lightkube.types import CascadeType, PatchType

FIELD_MANAGER = "sluiceway-operator"
# An unchanged child is applied again after this long, so that another manager's change to
# it (or a child deleted by hand) is taken back without a write every poll.
REAPPLY_SECONDS = 300.0
# The kinds the operator reads or writes, by ``kind``.
KINDS: dict[str, type[ConfigMap | Secret | Deployment | Job | CronJob]] = {
    "ConfigMap": ConfigMap,
    "Secret": Secret,
    "Deployment": Deployment,
    "Job": Job,
    "CronJob": CronJob,
}

# kopf's peering objects, which the operator creates when absent (see peering): made known
# to lightkube's codecs, so that :meth:`Kube.create` takes them.
create_namespaced_resource("kopf.dev", "v1", "KopfPeering", "kopfpeerings")
create_global_resource("kopf.dev", "v1", "ClusterKopfPeering", "clusterkopfpeerings")

T = TypeVar("T")


def code(exc: ApiError) -> int | None:
    """The HTTP status the API server answered with."""
    return exc.status.code


class Kube:
    """Namespaced reads and writes of the operator's objects, as plain dicts; a refusal is
    lightkube's :class:`~lightkube.ApiError`."""

    def __init__(self, config: Callable[[], KubeConfig] = KubeConfig.from_env) -> None:
        self._config = config
        self._client = self._connect()

    def _connect(self) -> AsyncClient:
        return AsyncClient(self._config(), field_manager=FIELD_MANAGER)

    async def close(self) -> None:
        await self._client.close()

    async def _call(self, request: Callable[[AsyncClient], Awaitable[T]]) -> T:
        try:
            return await request(self._client)
        except ApiError as exc:
            if code(exc) != 401:
                raise
        await self._client.close()
        self._client = self._connect()
        return await request(self._client)

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object; None when there is none."""
        try:
            found = await self._call(lambda c: c.get(KINDS[kind], name, namespace=namespace))
        except ApiError as exc:
            if code(exc) == 404:
                return None
            raise
        return found.to_dict()

    async def list(self, kind: str, namespace: str, labels: dict[str, str]
                   ) -> list[dict[str, Any]]:  # fmt: skip
        """The objects with all of ``labels``."""
        selector: LabelSelector = {**labels}

        async def listed(client: AsyncClient) -> list[dict[str, Any]]:
            return [item.to_dict() async for item in
                    client.list(KINDS[kind], namespace=namespace, labels=selector)]  # fmt: skip

        return await self._call(listed)

    async def create(self, body: dict[str, Any]) -> bool:
        """Create ``body``; False when an object of its name is there already."""
        made = codecs.from_dict(body)
        try:
            await self._call(lambda c: c.create(made))
        except ApiError as exc:
            if code(exc) == 409:
                return False
            raise
        return True

    async def apply(self, body: dict[str, Any]) -> dict[str, Any]:
        """Bring ``body``'s object to it, creating it if absent (server-side apply)."""
        meta = body["metadata"]
        applied = await self._call(lambda c: c.patch(
            KINDS[body["kind"]], meta["name"], body, namespace=meta["namespace"],
            patch_type=PatchType.APPLY, field_manager=FIELD_MANAGER, force=True))  # fmt: skip
        return applied.to_dict()

    async def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete with its dependents (the Job's pods); False when it was not there."""
        try:
            await self._call(lambda c: c.delete(KINDS[kind], name, namespace=namespace,
                                                cascade=CascadeType.BACKGROUND))  # fmt: skip
        except ApiError as exc:
            if code(exc) == 404:
                return False
            raise
        return True


@dataclass
class Applied:
    """One Pipeline's children as this operator last applied them, by kind and name: an
    apply of the very manifest applied last, less than ``reapply`` seconds ago, is skipped
    (an idle Pipeline writes nothing). In memory only: an operator restarted applies
    everything once; an apply that fails is forgotten, and so is a child deleted."""

    kube: Kube
    clock: Callable[[], float]
    reapply: float = REAPPLY_SECONDS
    _last: dict[tuple[str, str], tuple[dict[str, Any], float]] = field(default_factory=dict)

    async def apply(self, body: dict[str, Any]) -> bool:
        """Apply ``body`` unless it is what was applied last; True when it was sent."""
        key = (body["kind"], body["metadata"]["name"])
        now = self.clock()
        last = self._last.pop(key, None)
        if last is not None and last[0] == body and now - last[1] < self.reapply:
            self._last[key] = last
            return False
        await self.kube.apply(body)
        self._last[key] = (copy.deepcopy(body), now)
        return True

    async def delete(self, kind: str, namespace: str, name: str) -> bool:
        """:meth:`Kube.delete`, and forget the child."""
        self.forget(kind, name)
        return await self.kube.delete(kind, namespace, name)

    def forget(self, kind: str | None = None, name: str | None = None) -> None:
        """Apply this child (by default: every child) at its next apply, changed or not."""
        if kind is None:
            self._last.clear()
        else:
            self._last.pop((kind, name or ""), None)
