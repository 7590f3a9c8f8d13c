"""The fetcher's GET over aiohttp, against real HTTP servers on loopback."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version

import pytest
from aiohttp import web

from sluiceway_fetcher.source import Failed, fetch
from sluiceway_fetcher.transport import BodyTooLarge, Upstream, UpstreamError
from tests.integration.helpers import http_server

pytestmark = pytest.mark.integration


async def echo(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "raw_path": request.raw_path,
            "ua": request.headers.getall("User-Agent", []),
            "token": request.headers.get("X-Token"),
        }
    )


async def zipped(_: web.Request) -> web.Response:
    return web.Response(
        body=gzip.compress(b'{"zipped": true}'),
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )


async def slow(_: web.Request) -> web.Response:
    await asyncio.sleep(5)
    return web.json_response({})


async def drip(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    for byte in b'{"drip": "' + b"x" * 50 + b'"}':
        await response.write(bytes([byte]))
        await asyncio.sleep(0.1)  # each read well inside the timeout; the whole far outside
    return response


def app() -> web.Application:
    application = web.Application()
    application.router.add_get("/drip", drip)
    application.router.add_get("/zipped", zipped)
    application.router.add_get("/slow", slow)
    application.router.add_get("/{tail:.*}", echo)
    return application


@asynccontextmanager
async def client(request_timeout: float = 5.0, **headers: str) -> AsyncIterator[Upstream]:
    async with Upstream(headers, 4, request_timeout) as http:
        yield http


async def test_encoded_key_reaches_the_server_unchanged_with_the_fetchers_headers() -> None:
    async with http_server(app()) as base, client(5.0, **{"X-Token": "t1"}) as http:
        answer = await http.get(base + "/users/a%2Fb%20c%3F")
    assert (answer.status, answer.reason, answer.is_success) == (200, "OK", True)
    assert json.loads(answer.body) == {
        "raw_path": "/users/a%2Fb%20c%3F",
        "ua": [f"sluiceway/{version('sluiceway-fetcher')}"],
        "token": "t1",
    }


async def test_gzip_is_decoded_once() -> None:
    async with http_server(app()) as base, client() as http:
        answer = await http.get(base + "/zipped")
    assert json.loads(answer.body) == {"zipped": True}


async def test_a_body_that_does_not_decode_fails_its_key_as_a_bad_body() -> None:
    async def garbled(_: web.Request) -> web.Response:
        return web.Response(body=b"not gzip", headers={"Content-Encoding": "gzip"})

    application = web.Application()
    application.router.add_get("/users/{key}", garbled)
    async with http_server(application) as base, client() as http:
        outcome = await fetch(http, base + "/users/{key}", "k")
    assert isinstance(outcome, Failed)
    assert (outcome.outcome, outcome.status) == ("bad_body", 200)
    assert outcome.reason.startswith("body does not decode")


async def test_a_slow_answer_is_a_timeout() -> None:
    async with http_server(app()) as base, client(request_timeout=0.2) as http:
        with pytest.raises(UpstreamError) as caught:
            await http.get(base + "/slow")
    assert caught.value.outcome == "timeout"


async def test_a_body_dripped_slowly_is_cut_off_at_the_deadline() -> None:
    async with http_server(app()) as base, client(request_timeout=0.5) as http:
        started = asyncio.get_running_loop().time()
        with pytest.raises(UpstreamError) as caught:
            await http.get(base + "/drip")
        assert asyncio.get_running_loop().time() - started < 2
    assert caught.value.outcome == "timeout"


async def test_nothing_listening_is_a_connect_error() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with client() as http:
        outcome = await fetch(http, f"http://127.0.0.1:{port}/{{key}}", "x")
    assert isinstance(outcome, Failed)
    assert outcome.outcome == "connection_error"
    assert outcome.reason.startswith("connection error: ConnectError: ")


async def test_a_connection_cut_mid_body_is_a_transport_error() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{"partial":')
        await writer.drain()
        writer.close()

    tcp = await asyncio.start_server(cut, "127.0.0.1", 0)
    port = tcp.sockets[0].getsockname()[1]
    try:
        async with client() as http:
            with pytest.raises(UpstreamError) as caught:
                await http.get(f"http://127.0.0.1:{port}/x")
        assert caught.value.outcome == "connection_error"
    finally:
        tcp.close()
        await tcp.wait_closed()


async def test_a_body_over_the_limit_is_refused_with_or_without_a_length() -> None:
    big = b'"' + b"x" * 5000 + b'"'

    async def sized(_: web.Request) -> web.Response:
        return web.Response(body=big, content_type="application/json")

    async def streamed(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()  # chunked: no Content-Length to go by
        await response.prepare(request)
        for _ in range(10):
            await response.write(b"x" * 1000)
        await response.write_eof()
        return response

    application = web.Application()
    application.router.add_get("/sized", sized)
    application.router.add_get("/streamed", streamed)
    async with http_server(application) as base, Upstream({}, 4, 5.0, 4096) as http:
        for path in ("/sized", "/streamed"):
            with pytest.raises(BodyTooLarge, match="body larger than 4096 bytes") as caught:
                await http.get(base + path)
            assert (caught.value.status, caught.value.outcome) == (200, "too_large")
    async with http_server(application) as base, Upstream({}, 4, 5.0, 8192) as http:
        assert len((await http.get(base + "/sized")).body) == len(big)
