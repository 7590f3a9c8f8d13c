"""The upstream: building a key's URL and turning one GET into an outcome."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

import httpx
import orjson

from sluiceway_common.codec import key_url
from sluiceway_common.retry import pause_asked
from sluiceway_fetcher.transport import BodyTooLarge

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Fetched:
    body: bytes  # JSON, checked
    status: int = 200
    outcome: str = "ok"


@dataclass(frozen=True, slots=True)
class Failed:
    reason: str
    status: int | None = None
    # A 429 or 503 with a Retry-After: the seconds the upstream asked every request to wait.
    retry_after: float | None = None
    # What went wrong, from a short fixed list (a metric's label): http_error (a status that
    # is not 2xx), bad_body (not JSON), too_large, timeout, connection_error.
    outcome: str = "http_error"


Outcome = Fetched | Failed


def classify(response: httpx.Response, now: datetime | None = None) -> Outcome:
    """The outcome of one response; ``now`` (default: the clock) counts a Retry-After date
    when the response has no ``Date`` of its own."""
    if not response.is_success:
        return Failed(
            f"HTTP {response.status_code} {response.reason_phrase}".strip(),
            response.status_code,
            pause_asked(response.status_code, response.headers, now),
        )
    body = response.content
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return Failed(f"body is not JSON: {exc}", response.status_code, outcome="bad_body")
    return Fetched(body, response.status_code)


async def fetch(client: httpx.AsyncClient, template: str, key: str) -> Outcome:
    """GET ``key`` from the upstream and say what came of it. Whether a failure is tried
    again is the consumer's decision (``retry.retryable``), not this one's."""
    try:
        response = await client.get(key_url(template, key))
    except BodyTooLarge as exc:
        return Failed(str(exc), exc.status, outcome="too_large")
    except httpx.TimeoutException:
        return Failed("timeout", outcome="timeout")
    except httpx.TransportError as exc:
        return Failed(f"connection error: {type(exc).__name__}: {exc}", outcome="connection_error")
    return classify(response)
