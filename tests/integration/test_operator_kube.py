"""The operator's own Kubernetes client (lightkube) against kmock: server-side apply under its
field manager, and a new login when the API server stops taking the token (the kubelet
rotates a service-account token under a running pod; lightkube reads it once)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp.web
import kmock
import pytest
import yaml
from lightkube import ApiError

from sluiceway_operator.kube import FIELD_MANAGER, Kube
from tests.integration.test_operator import APPLY_PATCH, RESOURCES, VERBS, ApplyingEmulator

NAMESPACE = "data"
CONFIG_MAP = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "users-config", "namespace": NAMESPACE},
    "data": {"SLUICEWAY_RATE_LIMIT": "25"},
}


class TokenChecking(ApplyingEmulator):
    """Answers 401 to any token but ``token``, as an API server does to an expired one."""

    token = "first"

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            raise kmock.KubernetesError(status=401, reason="Unauthorized",
                                        message="Unauthorized")  # fmt: skip
        return await super()._handle(request)


def login(kubeconfig: Path, server: str, token: str) -> None:
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": server}}],
        "users": [{"name": "kmock", "user": {"token": token}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}],
    }))  # fmt: skip


@pytest.fixture
async def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
              ) -> AsyncIterator[tuple[TokenChecking, Path, str]]:  # fmt: skip
    async with TokenChecking() as emulator, kmock.Server(emulator) as server:
        for resource, (kind, namespaced) in RESOURCES.items():
            emulator.resources[resource] = kmock.ResourceInfo(
                kind=kind, namespaced=namespaced, verbs=VERBS)  # fmt: skip
        kubeconfig, url = tmp_path / "kubeconfig", str(server.url).rstrip("/")
        login(kubeconfig, url, "first")
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        yield emulator, kubeconfig, url


async def test_children_are_applied_server_side_by_the_operators_field_manager(
    api: tuple[TokenChecking, Path, str],
) -> None:
    emulator, _, _ = api
    kube = Kube()
    try:
        assert await kube.get("ConfigMap", NAMESPACE, "users-config") is None
        created = await kube.apply(CONFIG_MAP)
        assert created["data"] == {"SLUICEWAY_RATE_LIMIT": "25"}
        changed = await kube.apply({**CONFIG_MAP, "data": {"SLUICEWAY_RATE_LIMIT": "7.5"}})
        assert changed["data"] == {"SLUICEWAY_RATE_LIMIT": "7.5"}
        assert await kube.delete("ConfigMap", NAMESPACE, "users-config")
        assert not await kube.delete("ConfigMap", NAMESPACE, "users-config")
    finally:
        await kube.close()
    applies = [r for r in emulator if r.headers.get("Content-Type", "").startswith(APPLY_PATCH)]
    assert len(applies) == 2
    for request in applies:
        assert (request.params["fieldManager"], request.params["force"]) == (
            FIELD_MANAGER, "true")  # fmt: skip


async def test_a_refused_token_makes_the_client_log_in_again_and_repeat_the_request(
    api: tuple[TokenChecking, Path, str],
) -> None:
    emulator, kubeconfig, url = api
    kube = Kube()
    try:
        await kube.apply(CONFIG_MAP)
        # The token is rotated: the API server takes only the new one, now in the config.
        emulator.token = "second"
        login(kubeconfig, url, "second")
        found = await kube.get("ConfigMap", NAMESPACE, "users-config")
        assert found is not None
        tokens = [r.headers.get("Authorization") for r in emulator]
        assert tokens[-2:] == ["Bearer first", "Bearer second"]

        # A token refused after the new login too is the API server's answer, not a loop.
        emulator.token = "third"
        with pytest.raises(ApiError) as refused:
            await kube.get("ConfigMap", NAMESPACE, "users-config")
        assert refused.value.status.code == 401
    finally:
        await kube.close()
