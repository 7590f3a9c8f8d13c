"""The fetcher's GET to the upstream, done with aiohttp alone.

Hand-written rather than httpx's client: a fetcher needs one GET with fixed headers, and
httpx's client around the I/O (building and merging each request, extracting cookies, its
response model) took 38% of a fetcher's CPU, 190 µs a key, on top of aiohttp's own 19%
(``benchmarks/fetcher_profile.py``; its own transport cost 2.5 ms a request, see the README).
What httpx still does here is decode a ``Content-Encoding``, when an answer has one.

Bodies are read whole: the fetcher needs all of one before it can check it is JSON. The body
limit counts bytes as sent, before decoding, and a body is decoded once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import version
from types import TracebackType

import aiohttp
import httpx
import yarl
from multidict import CIMultiDict, CIMultiDictProxy

# What the fetcher asks for: JSON, in any encoding httpx decodes here.
ACCEPT_ENCODING = "gzip, deflate, zstd"
PLAIN = frozenset({"", "identity"})


class UpstreamError(Exception):
    """A GET that got no usable answer. ``outcome`` is the fetch outcome it counts as
    (``timeout``, ``connection_error``, ``too_large`` or ``bad_body``); ``status`` is the
    answer's, when one came."""

    def __init__(self, outcome: str, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.status = status


class BodyTooLarge(UpstreamError):
    """The upstream's body is over the fetcher's limit; reading stopped there."""

    def __init__(self, limit: int, status: int) -> None:
        super().__init__("too_large", f"body larger than {limit} bytes", status)
        self.limit = limit


@dataclass(frozen=True, slots=True)
class Answer:
    """One answer of the upstream, its body read whole and decoded."""

    status: int
    reason: str
    headers: Mapping[str, str]
    body: bytes

    @property
    def is_success(self) -> bool:
        return 200 <= self.status < 300


def _failure(exc: Exception) -> UpstreamError:
    """What an aiohttp error means, named as httpx names it (the failed set keeps the name)."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, TimeoutError):  # aiohttp's connect and read timeouts are TimeoutErrors
        return UpstreamError("timeout", "timeout")
    name = "TransportError"
    if isinstance(exc, aiohttp.ClientConnectorError):
        name = "ConnectError"
    elif isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ClientResponseError):
        name = "RemoteProtocolError"
    elif isinstance(exc, aiohttp.InvalidURL):
        name = "UnsupportedProtocol"
    elif isinstance(exc, aiohttp.ServerDisconnectedError | OSError):
        name = "ReadError"
    return UpstreamError("connection_error", f"connection error: {name}: {message}")


class Upstream:
    """GETs through one aiohttp session with at most ``max_connections`` open, each sending
    ``headers`` (over the fetcher's own). ``timeout`` bounds connecting, each read, and a
    whole request, answer and body: an upstream dripping a byte a second would otherwise hold
    a fetch for as long as it likes. A body over ``max_body_bytes`` (as sent) is not read
    further. An async context manager: leaving it closes the session."""

    def __init__(
        self,
        headers: Mapping[str, str],
        max_connections: int,
        timeout: float,
        max_body_bytes: int = 1 << 30,
    ) -> None:
        self._max_body_bytes = max_body_bytes
        defaults = CIMultiDict(
            {
                "Accept": "*/*",
                "Accept-Encoding": ACCEPT_ENCODING,
                "User-Agent": f"sluiceway/{version('sluiceway-fetcher')}",
            }
        )
        defaults.update(headers)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections, limit_per_host=0),
            headers=defaults,
            timeout=aiohttp.ClientTimeout(
                total=timeout, connect=timeout, sock_connect=timeout, sock_read=timeout
            ),
            auto_decompress=False,
            raise_for_status=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def __aenter__(self) -> Upstream:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._session.close()

    async def get(self, url: str) -> Answer:
        """The answer to a GET of ``url`` (percent-encoded already: a %2F in a key stays one);
        raises :class:`UpstreamError` when there is none to use."""
        try:
            async with self._session.get(
                yarl.URL(url, encoded=True), allow_redirects=False
            ) as response:
                raw = await self._read(response)
                headers = response.headers
                reason = response.reason or ""
                status = response.status
        except UpstreamError:
            raise
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _failure(exc) from exc
        return Answer(status, reason, headers, _decoded(status, headers, raw))

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        limit = self._max_body_bytes
        if response.content_length is not None and response.content_length > limit:
            raise BodyTooLarge(limit, response.status)
        chunks, size = [], 0
        async for chunk in response.content.iter_chunked(64 << 10):
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(limit, response.status)
            chunks.append(chunk)
        return b"".join(chunks)


def _decoded(status: int, headers: CIMultiDictProxy[str], raw: bytes) -> bytes:
    """``raw`` decoded per its ``Content-Encoding`` (by httpx, as the fetcher always has)."""
    if headers.get("Content-Encoding", "").strip().lower() in PLAIN:
        return raw
    try:
        return httpx.Response(status, headers=list(headers.items()), content=raw).content
    except httpx.DecodingError as exc:
        raise UpstreamError("bad_body", f"body does not decode: {exc}", status) from None
