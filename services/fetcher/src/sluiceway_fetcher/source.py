"""The upstream: building a key's URL and turning one GET into an outcome."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import quote

import httpx
import orjson

log = logging.getLogger(__name__)


def key_url(template: str, key: str) -> str:
    """The URL of ``key``: every character outside the unreserved set is percent-encoded,
    so a key stays one path segment or query value (``a/b`` becomes ``a%2Fb``)."""
    return template.replace("{key}", quote(key, safe=""))


@dataclass(frozen=True, slots=True)
class Fetched:
    body: bytes  # JSON, checked


@dataclass(frozen=True, slots=True)
class Failed:
    reason: str
    status: int | None = None


Outcome = Fetched | Failed


def classify(response: httpx.Response) -> Outcome:
    if not response.is_success:
        return Failed(
            f"HTTP {response.status_code} {response.reason_phrase}".strip(), response.status_code
        )
    body = response.content
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return Failed(f"body is not JSON: {exc}", response.status_code)
    return Fetched(body)


async def fetch(client: httpx.AsyncClient, template: str, key: str) -> Outcome:
    """GET ``key`` from the upstream. In this first cut every failure is final: retries with
    backoff are the fetcher's next step, until then ``sluiceway failed retry`` resends."""
    try:
        response = await client.get(key_url(template, key))
    except httpx.TimeoutException:
        return Failed("timeout")
    except httpx.TransportError as exc:
        return Failed(f"connection error: {type(exc).__name__}: {exc}")
    return classify(response)
