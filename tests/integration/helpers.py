"""Small tools shared by the integration tests."""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import aio_pika.exceptions
import aiohttp
import redis.asyncio as aioredis
from aio_pika.abc import AbstractChannel, AbstractConnection
from aiohttp import web
from aiormq.abc import DeliveredMessage
from prometheus_client.parser import text_string_to_metric_families

from sluiceway_common import amqp, codec, sink, store, topology
from sluiceway_fetcher.config import FetcherSettings
from sluiceway_fetcher.main import serve as serve_fetcher
from sluiceway_writer.config import WriterSettings
from sluiceway_writer.main import serve as serve_writer


async def eventually(
    check: Callable[[], Awaitable[bool]], within: float = 20.0, what: str = "condition"
) -> None:
    """Poll ``check`` until it holds; fail after ``within`` seconds (a hang guard, not a
    speed target)."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {within}s")
        await asyncio.sleep(0.05)


async def publish(
    connection: AbstractConnection,
    pipeline: str,
    queue: str,
    bodies: list[bytes],
    **properties: object,
) -> None:
    channel = await connection.channel(publisher_confirms=True)
    try:
        await topology.declare(channel, topology.Queues(pipeline))
        for body in bodies:
            await channel.default_exchange.publish(
                topology.persistent(body, **properties), routing_key=queue
            )
    finally:
        await channel.close()


def record(key: str, payload: bytes, at: datetime) -> bytes:
    return codec.encode_record(key, payload, at)


async def depth(connection: AbstractConnection, queue: str) -> int:
    channel = await connection.channel()
    try:
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)
    finally:
        await channel.close()


async def depth_is(connection: AbstractConnection, queue: str, n: int) -> bool:
    """Whether ``queue`` holds exactly ``n`` ready messages (for :func:`eventually`)."""
    return await depth(connection, queue) == n


async def drain(
    connection: AbstractConnection, queue: str
) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Take every message now on ``queue`` (acking them)."""
    channel = await connection.channel()
    taken = []
    try:
        q = await channel.declare_queue(queue, passive=True)
        while (message := await q.get(no_ack=True, fail=False)) is not None:
            taken.append(message)
    finally:
        await channel.close()
    return taken


def _text(raw: bytes | str) -> str:
    assert isinstance(raw, bytes)  # the tests' Redis clients leave decode_responses off
    return raw.decode()


async def failed_keys(client: aioredis.Redis, pipeline: str) -> set[str]:
    """The pipeline's failed keys, read from Redis itself."""
    return {_text(key) for key in await client.smembers(store.failed_set(pipeline))}


async def failed_infos(client: aioredis.Redis, pipeline: str) -> dict[str, Any]:
    """Each failed key's recorded reason, read from Redis itself."""
    found = await client.hgetall(store.failed_info(pipeline))
    return {_text(key): json.loads(info) for key, info in found.items()}


async def failed_info(client: aioredis.Redis, pipeline: str, key: str) -> dict[str, Any]:
    """The reason recorded for the failed ``key``."""
    raw = await client.hget(store.failed_info(pipeline), key)
    assert raw is not None, f"no reason recorded for {key}"
    info: dict[str, Any] = json.loads(raw)
    return info


class TcpProxy:
    """A loopback TCP proxy to a service, which a test can cut and restore.

    Cutting closes every connection through it and stops listening, so the client sees
    what it would see if the service went away; restoring listens again on the same port.
    Holding one direction keeps its bytes back (a request sent but not yet answered, or a
    commit or publish whose confirmation has not come back) until it is released.
    """

    def __init__(self, target: str, tls: ssl.SSLContext | None = None) -> None:
        self._tls = tls  # given: clients speak TLS to the proxy, which speaks plain onwards
        self.accepted = 0  # connections taken (past the TLS handshake, with ``tls``)
        parts = urlsplit(target)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 0)
        self._url = parts
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._upstream: set[asyncio.StreamWriter] = set()  # of _writers, those to the service
        self._cuts = 0  # a connection accepted before a cut is dropped when it is set up after
        # Per direction, set while bytes flow: "service" (client to service) and "client".
        self._flowing = {"service": asyncio.Event(), "client": asyncio.Event()}
        self.taken = {"service": 0, "client": 0}  # bytes read on their way there, held or not
        for flowing in self._flowing.values():
            flowing.set()
        self.port = 0

    @property
    def url(self) -> str:
        """The target URL with the proxy's address in place of the service's."""
        netloc = self._url.netloc.rsplit("@", 1)
        address = f"127.0.0.1:{self.port}"
        return urlunsplit(self._url._replace(
            netloc=f"{netloc[0]}@{address}" if len(netloc) == 2 else address))  # fmt: skip

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, ssl=self._tls
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        cuts = self._cuts
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        if cuts != self._cuts:
            writer.transport.abort()
            up_writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        self._upstream.add(up_writer)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, towards: str) -> None:
            flowing = self._flowing[towards]
            try:
                while data := await src.read(65536):
                    self.taken[towards] += len(data)
                    await flowing.wait()
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()

        await asyncio.gather(
            pipe(reader, up_writer, "service"),
            pipe(up_reader, writer, "client"),
        )
        self._writers -= {writer, up_writer}
        self._upstream.discard(up_writer)

    async def cut(self) -> None:
        self._cuts += 1
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        self._upstream.clear()

    def end(self) -> None:
        """End every connection as a service closing its socket would: what the service had
        sent, held or not, reaches the client, then the end of the stream; what the client
        sent and was held is dropped. The proxy still listens."""
        for up_writer in list(self._upstream):
            up_writer.transport.abort()  # the client's pipe reads what is left, then closes
        self.release()

    async def restore(self) -> None:
        await self.start()

    def hold(self, towards: str) -> None:
        """Keep back what flows ``towards`` "service" or "client" until :meth:`release`."""
        self._flowing[towards].clear()

    def release(self) -> None:
        for flowing in self._flowing.values():
            flowing.set()

    async def close(self) -> None:
        self.release()
        await self.cut()


async def consumers(connection: AbstractConnection, queue: str) -> int:
    """How many consumers ``queue`` has; 0 while it does not exist yet."""
    channel = await connection.channel()
    try:
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.consumer_count or 0)
    except aio_pika.exceptions.ChannelNotFoundEntity:
        return 0
    finally:
        if not channel.is_closed:
            await channel.close()


@asynccontextmanager
async def through_proxy(url: str) -> AsyncIterator[tuple[TcpProxy, AbstractChannel]]:
    """A publishing channel on a connection of its own to the broker at ``url``, through a
    proxy the test can hold, cut or end."""
    proxy = await TcpProxy(url).start()
    connection = await amqp.connect(proxy.url, "test")
    try:
        yield proxy, await amqp.publishing_channel(connection)
    finally:
        await connection.close()
        await proxy.close()


@asynccontextmanager
async def ending_between_frames(
    proxy: TcpProxy, channel: AbstractChannel, observer: AbstractConnection
) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """Within the block, :meth:`TcpProxy.end` ends ``channel``'s connection (through
    ``proxy``) the way aiormq reads as a close with no reason: its reader finds the end of
    the stream only after the frames before it, being busy with them, and fails the futures
    still open with the bare ``Exception`` class. Busy with 300 deliveries to a consumer on
    another channel of the connection, held back until the end; nothing sent within the
    block reaches the broker, so what it sends is still unconfirmed then; the block is given
    a wait for the first bytes it sends to reach the proxy. ``observer``, a connection of its
    own, sees the consumer start."""
    backlog = f"t-backlog-{secrets.token_hex(6)}"
    setup = await observer.channel()
    await setup.declare_queue(backlog, auto_delete=True)
    for i in range(300):
        await setup.default_exchange.publish(aio_pika.Message(b"%d" % i), backlog)
    underlay = await channel.get_underlay_channel()
    consuming = await underlay.connection.channel()  # its own: a consume holds the lock
    proxy.hold("client")
    consume = asyncio.ensure_future(consuming.basic_consume(backlog, _ignore))

    async def subscribed() -> bool:  # the broker has the consumer: its deliveries are on their way
        return await consumers(observer, backlog) == 1

    try:
        await eventually(subscribed, within=30, what="a consumer on the backlog")
        proxy.hold("service")
        before = proxy.taken["service"]

        async def taken() -> bool:
            return proxy.taken["service"] > before

        async def sent_within() -> None:
            await eventually(taken, within=30, what="bytes sent within the block")

        yield sent_within
    finally:
        await asyncio.gather(consume, return_exceptions=True)
        await setup.queue_delete(backlog)
        await setup.close()


async def _ignore(message: DeliveredMessage) -> None:
    pass


@asynccontextmanager
async def http_server(app: web.Application) -> AsyncIterator[str]:
    """Serve ``app`` on a free loopback port; yield its base URL."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def running_fetcher(
    amqp_url: str,
    redis_url: str,
    pipeline: str,
    source_url: str,
    *,
    rate_limit: float = 1000,
    linger_ms: float = 0,
    max_body_bytes: int = 1 << 20,
    source_headers: dict[str, str] | None = None,
    max_attempts: int = 1,
    metrics_port: int = 0,
    concurrency: int = 8,
    pack_max_records: int = 100,
) -> AsyncIterator[asyncio.Task[int]]:
    """A fetcher served in-process until the block ends; it must then stop with status 0.

    ``linger_ms`` 0 (the default here) publishes one record a message, which tests that
    count messages rely on; ``max_attempts`` 1 fails a key at its first failure."""
    config = FetcherSettings(
        amqp_url,
        redis_url,
        pipeline,
        source_url,
        source_headers=source_headers or {},
        rate_limit=rate_limit,
        concurrency=concurrency,
        request_timeout=5,
        max_attempts=max_attempts,
        max_body_bytes=max_body_bytes,
        publish_linger_ms=linger_ms,
        pack_max_records=pack_max_records,
        pack_max_bytes=1 << 20,
        compress_min_bytes=1024,
        metrics_port=metrics_port,
        log_level="INFO",
    )
    async with _serving(serve_fetcher(config, stop := asyncio.Event()), stop) as task:
        yield task


@asynccontextmanager
async def running_writer(
    database_url: str,
    amqp_url: str,
    pipeline: str,
    *,
    batch_size: int,
    batch_timeout: float,
    batch_max_bytes: int = 16 << 20,
    write_mode: str = "direct",
    metrics_port: int = 0,
    sink_table: str = "",
    sink_key: str = "key",
    sink_columns: dict[str, str] | None = None,
    sink_version: str = "",
) -> AsyncIterator[asyncio.Task[int]]:
    """A writer served in-process until the block ends; it must then stop with status 0.
    The ``sink_*`` arguments are the settings' text (``sink_columns`` before its JSON)."""
    config = WriterSettings(
        database_url, amqp_url, pipeline, batch_size, batch_timeout, batch_max_bytes,
        write_mode, merge_interval=0.1, metrics_port=metrics_port, log_level="INFO",
        sink_table=sink.table_name(sink_table), sink_key=sink_key,
        sink_columns=sink.column_map(json.dumps(sink_columns or {})),
        sink_version=sink_version or None,
    )  # fmt: skip
    async with _serving(serve_writer(config, stop := asyncio.Event()), stop) as task:
        yield task


@asynccontextmanager
async def _serving(
    serving: Coroutine[object, object, int], stop: asyncio.Event
) -> AsyncIterator[asyncio.Task[int]]:
    """Run a service's ``serve`` until the block ends, then stop it; it must return 0."""
    task = asyncio.create_task(serving)
    try:
        yield task
    finally:
        stop.set()
        assert await asyncio.wait_for(task, timeout=30) == 0


def free_port() -> int:
    """A loopback port nothing listens on now (for a server a test starts next)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Scrape:
    """One scrape of a ``/metrics`` page: each sample's value by its name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.samples[sample.name, frozenset(sample.labels.items())] = sample.value

    def value(self, name: str, **labels: str) -> float:
        """The sample's value; 0 while the series does not exist yet."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def names(self) -> set[str]:
        return {name for name, _ in self.samples}


async def get(port: int, path: str) -> tuple[int, str]:
    """GET ``path`` from a server on a loopback ``port``: its status and body; status 0 and
    the reason when nothing answers (yet)."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.get(f"http://127.0.0.1:{port}{path}") as response,
        ):
            return response.status, await response.text()
    except aiohttp.ClientConnectionError as exc:
        return 0, str(exc)


async def until_ready(*ports: int) -> None:
    """Wait until the components serving on ``ports`` answer ``/readyz`` with 200."""
    for port in ports:

        async def ready(port: int = port) -> bool:
            return (await get(port, "/readyz"))[0] == 200

        await eventually(ready, what=f"/readyz 200 on port {port}")


async def scrape(port: int) -> Scrape:
    status, text = await get(port, "/metrics")
    assert status == 200, text
    return Scrape(text)
