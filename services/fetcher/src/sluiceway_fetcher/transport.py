"""An httpx transport that does its I/O with aiohttp.

The fetcher speaks httpx (requests, responses, timeouts, error classes), but httpx's own
transport costs about 2.3 ms of CPU per request here, most of it spent checking every pooled
connection on each request; over aiohttp the same request costs about 0.3 ms (see the README's
measurements). Bodies are read whole: the fetcher needs all of one before it can check it is
JSON. aiohttp's decompression is off so that httpx decodes ``Content-Encoding`` itself, once.
"""

from __future__ import annotations

import aiohttp
import httpx
import yarl


def _timeout(request: httpx.Request, deadline: float | None) -> aiohttp.ClientTimeout:
    timeouts = request.extensions.get("timeout", {})
    return aiohttp.ClientTimeout(
        total=deadline,
        connect=timeouts.get("pool"),
        sock_connect=timeouts.get("connect"),
        sock_read=timeouts.get("read"),
    )


def _translate(exc: Exception, request: httpx.Request) -> httpx.TransportError:
    """The httpx error that says what the aiohttp one means."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message, request=request)
    if isinstance(exc, TimeoutError):
        return httpx.ReadTimeout(message, request=request)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(message, request=request)
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ClientResponseError):
        return httpx.RemoteProtocolError(message, request=request)
    if isinstance(exc, aiohttp.InvalidURL):
        return httpx.UnsupportedProtocol(message, request=request)
    if isinstance(exc, aiohttp.ServerDisconnectedError | OSError):
        return httpx.ReadError(message, request=request)
    return httpx.TransportError(message, request=request)


class BodyTooLarge(httpx.TransportError):
    """The upstream's body is over the fetcher's limit; reading stopped there."""

    def __init__(self, limit: int, status: int, request: httpx.Request) -> None:
        super().__init__(f"body larger than {limit} bytes", request=request)
        self.limit = limit
        self.status = status


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Sends httpx requests through one aiohttp session with at most ``max_connections``;
    a response body over ``max_body_bytes`` (as sent, before any decoding) raises
    :class:`BodyTooLarge` without being read further. ``deadline`` bounds a whole request,
    answer and body: httpx's timeouts bound each read alone, so an upstream dripping a byte a
    second would otherwise hold a fetch for as long as it likes."""

    def __init__(
        self, max_connections: int, max_body_bytes: int = 1 << 30, deadline: float | None = None
    ) -> None:
        self._max_body_bytes = max_body_bytes
        self._deadline = deadline
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections, limit_per_host=0),
            auto_decompress=False,
            # httpx has set the headers it wants; aiohttp adds none of its own.
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
            raise_for_status=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
        body = await request.aread()
        try:
            async with self._session.request(
                request.method,
                # Already encoded by httpx: a %2F inside a key must stay one.
                yarl.URL(str(request.url), encoded=True),
                headers=headers,
                data=body or None,
                timeout=_timeout(request, self._deadline),
                allow_redirects=False,
            ) as response:
                content = await self._read(response, request)
                return httpx.Response(
                    status_code=response.status,
                    headers=[(k.decode("latin-1"), v.decode("latin-1"))
                             for k, v in response.raw_headers],
                    content=content,
                    request=request,
                    extensions={"http_version": b"HTTP/1.1",
                                "reason_phrase": (response.reason or "").encode("latin-1")},
                )  # fmt: skip
        except BodyTooLarge:
            raise
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _translate(exc, request) from exc

    async def _read(self, response: aiohttp.ClientResponse, request: httpx.Request) -> bytes:
        limit = self._max_body_bytes
        if response.content_length is not None and response.content_length > limit:
            raise BodyTooLarge(limit, response.status, request)
        chunks, size = [], 0
        async for chunk in response.content.iter_chunked(64 << 10):
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(limit, response.status, request)
            chunks.append(chunk)
        return b"".join(chunks)

    async def aclose(self) -> None:
        await self._session.close()
