"""A small Kubernetes API client for the objects the operator keeps (httpx).

kopf watches Pipelines, patches their status and posts Events with its own client; the
children (ConfigMaps, Deployments, Jobs) and the connections Secret go through this one,
which logs in with the same credentials kopf found (kubeconfig or the pod's service
account), and logs in again when the API server answers 401 (a service-account token is
rotated under a running pod).
"""

from __future__ import annotations

import base64
import ssl
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import kopf

# The API path of each kind the operator touches.
PATHS = {
    "ConfigMap": ("api/v1", "configmaps"),
    "Secret": ("api/v1", "secrets"),
    "Deployment": ("apis/apps/v1", "deployments"),
    "Job": ("apis/batch/v1", "jobs"),
    "Pipeline": ("apis/sluiceway.io/v1alpha1", "pipelines"),
}
TIMEOUT = 30.0
MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}


class KubeError(Exception):
    """The API server refused a request; ``status`` is its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _data(value: str | bytes) -> bytes:
    return base64.b64decode(value) if isinstance(value, str) else value


def _ssl_context(info: kopf.ConnectionInfo, scratch: Path) -> ssl.SSLContext | bool:
    if info.insecure:
        return False
    context = ssl.create_default_context()
    if info.ca_path:
        context.load_verify_locations(cafile=str(info.ca_path))
    elif info.ca_data:
        context.load_verify_locations(cadata=_data(info.ca_data).decode())
    if info.certificate_path or info.certificate_data:
        # ssl loads client certificates from files only.
        cert, key = info.certificate_path, info.private_key_path
        if info.certificate_data:
            cert = scratch / "client.crt"
            cert.write_bytes(_data(info.certificate_data))
        if info.private_key_data:
            key = scratch / "client.key"
            key.write_bytes(_data(info.private_key_data))
            key.chmod(0o600)
        context.load_cert_chain(str(cert), str(key) if key else None)
    return context


class Kube:
    """Namespaced reads and writes of the operator's objects, as plain dicts."""

    def __init__(self, login: Callable[[], kopf.ConnectionInfo]) -> None:
        self._login = login
        self._scratch = tempfile.TemporaryDirectory(prefix="sluiceway-operator-")
        self._client = self._connect()

    def _connect(self) -> httpx.AsyncClient:
        info = self._login()
        return httpx.AsyncClient(
            base_url=info.server.rstrip("/"),
            headers=info.as_http_headers(),
            verify=_ssl_context(info, Path(self._scratch.name)),
            timeout=TIMEOUT,
            trust_env=info.trust_env,
        )

    async def close(self) -> None:
        await self._client.aclose()
        self._scratch.cleanup()

    @staticmethod
    def path(kind: str, namespace: str, name: str | None = None, sub: str | None = None) -> str:
        prefix, plural = PATHS[kind]
        path = f"/{prefix}/namespaces/{quote(namespace, safe='')}/{plural}"
        if name is not None:
            path += "/" + quote(name, safe="")
        if sub is not None:
            path += "/" + sub
        return path

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = await self._client.request(method, path, **kwargs)
        if response.status_code == 401:
            await self._client.aclose()
            self._client = self._connect()
            response = await self._client.request(method, path, **kwargs)
        return response

    async def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any] | None:
        """The answer's object; None for 404."""
        response = await self._request(method, path, **kwargs)
        if response.status_code == 404:
            return None
        if response.is_error:
            try:
                message = response.json().get("message") or response.text
            except ValueError:
                message = response.text
            raise KubeError(response.status_code, f"{method} {path}: {message[:500]}")
        doc: dict[str, Any] = response.json()
        return doc

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._json("GET", self.path(kind, namespace, name))

    async def list(self, kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
        doc = await self._json("GET", self.path(kind, namespace),
                               params={"labelSelector": selector})  # fmt: skip
        return list((doc or {}).get("items") or [])

    async def create(self, body: dict[str, Any]) -> bool:
        """Create ``body``; False when an object of its name is there already."""
        meta = body["metadata"]
        try:
            doc = await self._json("POST", self.path(body["kind"], meta["namespace"]), json=body)
        except KubeError as exc:
            if exc.status == 409:
                return False
            raise
        if doc is None:
            raise KubeError(404, f"namespace {meta['namespace']} not found")
        return True

    async def patch(self, kind: str, namespace: str, name: str, changes: dict[str, Any],
                    sub: str | None = None) -> dict[str, Any] | None:  # fmt: skip
        return await self._json("PATCH", self.path(kind, namespace, name, sub),
                                json=changes, headers=MERGE_PATCH)  # fmt: skip

    async def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete with its dependents (the Job's pods); False when it was not there."""
        doc = await self._json("DELETE", self.path(kind, namespace, name),
                               json={"propagationPolicy": "Background"})  # fmt: skip
        return doc is not None

    async def apply(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create ``body``, or bring the existing object to it (a JSON merge patch: every
        field the operator sets is set; lists such as containers are replaced whole)."""
        meta = body["metadata"]
        current = await self.get(body["kind"], meta["namespace"], meta["name"])
        if current is None:
            await self.create(body)
            return body
        changes = {key: value for key, value in body.items() if key not in ("apiVersion", "kind")}
        patched = await self.patch(body["kind"], meta["namespace"], meta["name"], changes)
        if patched is None:
            await self.create(body)
            return body
        return patched
