"""``enqueue --http URL``: the keys of an upstream's listing endpoint, page by page.

A *listing* is a run of *pages*. A page is a JSON document holding an array of *items*: the
document itself, or the array at a JSON pointer (``--items``, RFC 6901). An item is a key (a
string, or a number, taken as the text the page wrote it in), or an object holding its key at
``--key``. The *next page* is named by the page's body at ``--next`` — a URL (a relative one
resolved against the page's), or with ``--cursor-param NAME`` a cursor sent back as that
query parameter of the listing's URL — or, without ``--next``, by the page's ``Link`` header
with ``rel="next"``. The listing ends on a page that names none (absent, null or empty); a
page naming one already listed is a loop, and stops it.

Listing requests go to the upstream the fetchers fetch from, so they are the fetchers' kind:
they send ``SLUICEWAY_SOURCE_HEADERS``, take their slots from the pipeline's shared limiter
(:mod:`sluiceway_common.limiter`), pause the whole pipeline when answered 429 or 503 with a
Retry-After, and are tried again on the fetcher's terms (:mod:`sluiceway_common.retry`). A
page that still fails, or is not what the flags say, raises :class:`PageFailed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import redis.asyncio as aioredis

from sluiceway_admin.sources import BadInput, Chunk, Skipped, check_key
from sluiceway_common.lifecycle import reach
from sluiceway_common.limiter import SharedLimiter
from sluiceway_common.logs import error_text
from sluiceway_common.pointer import Pointer, parse
from sluiceway_common.pointer import spelled as spelled
from sluiceway_common.ratelimit import MAX_PAUSE, pause_seconds
from sluiceway_common.retry import delay, pause_asked, retryable
from sluiceway_common.settings import mask

log = logging.getLogger(__name__)

# A Link header's links: <URI-reference> then its ;-separated parameters (RFC 8288).
QUOTED = r'"(?:[^"\\]|\\.)*"'
LINK_PARAM = re.compile(rf'\s*;\s*([^=;,"\s]+)\s*(?:=\s*({QUOTED}|[^;,"]*))?')
LINK = re.compile(rf"<([^>]*)>((?:{LINK_PARAM.pattern})*)")
MISSING = object()
pointer = parse  # enqueue's --items, --key and --next


class PageFailed(BadInput):
    """A page of the listing could not be had or read; the listing stops there."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{mask(url)}: {reason}")
        self.url = url
        self.reason = reason


def resolve(doc: Any, tokens: Pointer) -> Any:
    """The value at ``tokens`` in ``doc``, or :data:`MISSING`."""
    for token in tokens:
        if isinstance(doc, dict):
            doc = doc.get(token, MISSING)
        elif isinstance(doc, list) and re.fullmatch(r"0|[1-9][0-9]*", token):
            doc = doc[int(token)] if int(token) < len(doc) else MISSING
        else:
            return MISSING
        if doc is MISSING:
            return MISSING
    return doc


def next_link(values: list[str]) -> str | None:
    """The target of the first link with relation type ``next`` in ``Link`` header values."""
    for value in values:
        for found in LINK.finditer(value):
            for param in LINK_PARAM.finditer(found.group(2)):
                name, raw = param.group(1).lower(), (param.group(2) or "").strip()
                if raw.startswith('"'):
                    raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
                if name == "rel" and "next" in raw.lower().split():
                    return found.group(1).strip()
    return None


def parse_page(body: bytes) -> Any:
    """A page's JSON; numbers stay the text they were written in (keys are text)."""
    return json.loads(body, parse_int=str, parse_float=str, parse_constant=_no_constant)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


@dataclass(frozen=True)
class Listing:
    """What ``--http``, ``--items``, ``--key``, ``--next`` and ``--cursor-param`` said."""

    url: str
    items: Pointer | None = None
    key: Pointer | None = None
    next: Pointer | None = None
    cursor_param: str | None = None

    def keys(self, doc: Any, first: int, skipped: Skipped) -> Chunk:
        """The keys of a page, numbered on from ``first``; BadInput says why a page has
        none where they should be."""
        items = doc if self.items is None else resolve(doc, self.items)
        if not isinstance(items, list):
            if self.items is None:
                raise BadInput(f"the page is a JSON {kind(doc)}, not an array: give --items")
            if items is MISSING:
                raise BadInput(f"no items at --items {spelled(self.items)}")
            raise BadInput(f"--items {spelled(self.items)} is a JSON {kind(items)}, not an array")
        keys: Chunk = []
        for index, item in enumerate(items):
            where = f"item {index}"
            value = item if self.key is None else resolve(item, self.key)
            if self.key is not None and value is MISSING:
                raise BadInput(f"{where}: no key at --key {spelled(self.key)}")
            if value is None or value == "":
                skipped.blank += 1
            elif isinstance(value, str):
                keys.append((first + len(keys), check_key(value, where)))
            elif self.key is None and isinstance(value, dict):
                raise BadInput(f"{where} is an object: give --key, e.g. --key /id")
            else:
                raise BadInput(f"{where}: the key is a JSON {kind(value)}, not a string or number")
        return keys

    def next_url(self, doc: Any, page_url: str, links: list[str]) -> str | None:
        """The next page's URL, or None at the end of the listing."""
        if self.next is None:
            link = next_link(links)
            return urljoin(page_url, link) if link else None
        value = resolve(doc, self.next)
        if value is MISSING or value is None or value == "":
            return None
        if not isinstance(value, str):
            raise BadInput(f"--next {spelled(self.next)} is a JSON {kind(value)}, not a "
                           + ("cursor" if self.cursor_param else "URL"))  # fmt: skip
        if self.cursor_param is not None:
            return str(httpx.URL(self.url).copy_set_param(self.cursor_param, value))
        return urljoin(page_url, value)


def kind(value: Any) -> str:
    """A parsed value's JSON type (numbers were parsed as text)."""
    names = {dict: "object", list: "array", str: "string or number", bool: "boolean"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


@dataclass(frozen=True)
class Requests:
    """How listing requests go to the upstream: the fetchers' settings."""

    redis_url: str
    pipeline: str
    headers: Mapping[str, str]
    rate: float
    max_attempts: int
    timeout: float


@contextlib.asynccontextmanager
async def upstream(
    redis_url: str, pipeline: str, headers: Mapping[str, str], rate: float, seconds: float
) -> AsyncIterator[tuple[httpx.AsyncClient, SharedLimiter]]:
    """An HTTP client sending the pipeline's ``headers``, and the pipeline's shared limiter
    on Redis (reached first), for requests to the upstream the fetchers fetch from."""
    client = aioredis.Redis.from_url(redis_url)
    limiter = SharedLimiter(client, pipeline, rate)
    try:
        await reach("Redis", redis_url, client.ping())
        async with httpx.AsyncClient(headers=dict(headers), timeout=seconds) as http:
            yield http, limiter
    finally:
        limiter.close()
        await client.aclose()


@dataclass(frozen=True)
class Answer:
    """One request's outcome: the response when it succeeded, else why not, the status
    when there was one, and the seconds of a Retry-After that asks every request to wait."""

    response: httpx.Response | None
    reason: str = ""
    status: int | None = None
    asked: float | None = None


async def get_once(
    http: httpx.AsyncClient, limiter: SharedLimiter, url: str, seconds: float
) -> Answer:
    """GET ``url`` once, as the fetcher does: a slot from the shared limiter first, and the
    whole answer bounded by ``seconds`` (httpx's own timeouts bound each read only)."""
    await limiter.acquire()
    try:
        async with asyncio.timeout(seconds):
            response = await http.get(url)
    except (httpx.TimeoutException, TimeoutError):
        return Answer(None, "timeout")
    except httpx.TransportError as exc:
        return Answer(None, f"connection error: {error_text(exc)}")
    if response.is_success:
        return Answer(response)
    status = response.status_code
    return Answer(None, f"HTTP {status} {response.reason_phrase}".strip(), status,
                  pause_asked(status, response.headers))  # fmt: skip


async def http_keys(
    listing: Listing, requests: Requests, skipped: Skipped | None = None
) -> AsyncIterator[Chunk]:
    """Yield each page's keys as it comes, numbered in listing order; raise
    :class:`PageFailed` for the first page that cannot be listed."""
    skipped = skipped or Skipped()
    async with upstream(requests.redis_url, requests.pipeline, requests.headers, requests.rate,
                        requests.timeout) as (http, limiter):  # fmt: skip
        page = Page(http, limiter, requests)
        url: str | None = str(httpx.URL(listing.url))
        seen: set[str] = set()
        listed = 0
        while url is not None:
            seen.add(url)
            doc, links = await page.get(url)
            try:
                keys = listing.keys(doc, listed + 1, skipped)
                following = listing.next_url(doc, url, links)
            except BadInput as exc:
                raise PageFailed(url, str(exc)) from None
            listed += len(keys)
            log.debug("%s: %d keys", mask(url), len(keys))
            if keys:
                yield keys
            if following is not None:
                following = str(httpx.URL(following))
                if urlsplit(following).scheme not in ("http", "https"):
                    raise PageFailed(url, f"the next page {mask(following)} is not http(s)")
                if following in seen:
                    raise PageFailed(url, f"the next page {mask(following)} was listed "
                                         "already: the listing loops")  # fmt: skip
            url = following


class Page:
    """Gets a listing's pages the way the fetcher gets a key."""

    def __init__(self, http: httpx.AsyncClient, limiter: SharedLimiter, requests: Requests) -> None:
        self._http = http
        self._limiter = limiter
        self._requests = requests
        self._rng = random.Random()

    async def get(self, url: str) -> tuple[Any, list[str]]:
        """The page at ``url`` (its JSON and its ``Link`` header values), after as many
        attempts as a fetch gets."""
        attempt = 0
        while True:
            attempt += 1
            answer = await get_once(self._http, self._limiter, url, self._requests.timeout)
            if answer.response is not None:
                try:
                    return (parse_page(answer.response.content),
                            answer.response.headers.get_list("Link"))  # fmt: skip
                except (ValueError, RecursionError) as exc:
                    raise PageFailed(url, f"body is not JSON: {exc}") from None
            reason = answer.reason
            if answer.asked:
                await self._pause(url, reason, answer.asked)
            attempts = self._requests.max_attempts
            if not retryable(answer.status) or attempt >= attempts:
                more = f" ({attempt} attempts)" if attempt > 1 else ""
                raise PageFailed(url, reason + more)
            seconds = delay(attempt, self._rng)
            log.info("%s: %s; attempt %d of %d, next in %d s",
                     mask(url), reason, attempt, attempts, seconds)  # fmt: skip
            await asyncio.sleep(seconds)

    async def _pause(self, url: str, reason: str, asked: float) -> None:
        """Pause the pipeline, the fetchers with the listing, for as long as the upstream
        asked; the page's next attempt waits for it in the limiter."""
        seconds = pause_seconds(asked)
        await self._limiter.pause(seconds)
        capped = f"the cap, {MAX_PAUSE:g} s" if seconds < asked else "that long"
        log.warning("%s: %s with Retry-After %g s; pausing the pipeline for %s",
                    mask(url), reason, asked, capped)  # fmt: skip
