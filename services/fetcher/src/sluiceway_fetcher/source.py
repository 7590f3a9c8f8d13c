"""The upstream: building a key's URL and turning one GET into an outcome."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

import orjson

from sluiceway_common.codec import key_url
from sluiceway_common.retry import pause_asked
from sluiceway_fetcher.transport import Answer, Upstream, UpstreamError

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


def classify(answer: Answer, now: datetime | None = None) -> Outcome:
    """The outcome of one answer; ``now`` (default: the clock) counts a Retry-After date
    when the answer has no ``Date`` of its own."""
    if not answer.is_success:
        return Failed(
            f"HTTP {answer.status} {answer.reason}".strip(),
            answer.status,
            pause_asked(answer.status, answer.headers, now),
        )
    try:
        orjson.loads(answer.body)
    except orjson.JSONDecodeError as exc:
        return Failed(f"body is not JSON: {exc}", answer.status, outcome="bad_body")
    return Fetched(answer.body, answer.status)


async def fetch(upstream: Upstream, template: str, key: str) -> Outcome:
    """GET ``key`` from the upstream and say what came of it. Whether a failure is tried
    again is the consumer's decision (``retry.retryable``), not this one's."""
    try:
        answer = await upstream.get(key_url(template, key))
    except UpstreamError as exc:
        return Failed(str(exc), exc.status, outcome=exc.outcome)
    return classify(answer)
