"""One fixture layer for the real services the integration and end-to-end tests use.

Where a Docker engine answers, PostgreSQL, RabbitMQ and Redis run in throwaway containers
(testcontainers). Otherwise the tests use the services at ``SLUICEWAY_TEST_DATABASE_URL``,
``SLUICEWAY_TEST_AMQP_URL`` and ``SLUICEWAY_TEST_REDIS_URL``, which ``make test`` and
``.ci/run`` point at the local ones. Never mocks.

Isolation: the session gets its own database, migrated to head and dropped at the end; each
test gets its own pipeline name, so its queues, Redis keys and rows are its own, and they are
deleted after it.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from urllib.parse import urlsplit

import aio_pika
import asyncpg
import pytest
import redis.asyncio as aioredis

from sluiceway_common import store, topology
from tests.scratch import at_head, create_database, drop_database, new_name


@dataclass(frozen=True)
class ServiceUrls:
    database: str  # a database the tests may create other databases from
    amqp: str
    redis: str
    management: str = ""  # RabbitMQ's management API (the operator reads depths from it)

    def management_api(self) -> str:
        """The management API: as given, else the AMQP host on 15672 with the same user."""
        if self.management:
            return self.management
        parts = urlsplit(self.amqp)
        return f"http://{parts.netloc.rsplit('@', 1)[0]}@{parts.hostname}:15672"


def _docker_answers() -> bool:
    """Whether a Docker engine answers on DOCKER_HOST or the default socket.

    Asked over a plain socket: the docker client leaks its socket when the engine is absent.
    """
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        if host.startswith("unix://"):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(3)
                sock.connect(host.removeprefix("unix://"))
                sock.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
                return sock.recv(64).startswith(b"HTTP/1.")
        parts = urlsplit(host)
        with socket.create_connection((parts.hostname or "", parts.port or 2375), timeout=3):
            return True
    except OSError:
        return False


def _containers(stack: ExitStack) -> ServiceUrls:
    from testcontainers.postgres import PostgresContainer
    from testcontainers.rabbitmq import RabbitMqContainer
    from testcontainers.redis import RedisContainer

    pg = stack.enter_context(PostgresContainer("postgres:16-alpine", driver=None))
    mq = stack.enter_context(
        RabbitMqContainer("rabbitmq:3.13-management-alpine").with_exposed_ports(5672, 15672)
    )
    rd = stack.enter_context(RedisContainer("redis:7-alpine"))
    return ServiceUrls(
        database=f"postgresql://{pg.username}:{pg.password}@{pg.get_container_host_ip()}:"
        f"{pg.get_exposed_port(5432)}/{pg.dbname}",
        amqp=f"amqp://{mq.username}:{mq.password}@{mq.get_container_host_ip()}:"
        f"{mq.get_exposed_port(5672)}/",
        redis=f"redis://{rd.get_container_host_ip()}:{rd.get_exposed_port(6379)}/0",
        management=f"http://{mq.username}:{mq.password}@{mq.get_container_host_ip()}:"
        f"{mq.get_exposed_port(15672)}",
    )


@pytest.fixture(scope="session")
def services() -> Iterator[ServiceUrls]:
    with ExitStack() as stack:
        if _docker_answers():
            yield _containers(stack)
            return
        names = (
            "SLUICEWAY_TEST_DATABASE_URL",
            "SLUICEWAY_TEST_AMQP_URL",
            "SLUICEWAY_TEST_REDIS_URL",
        )
        missing = [name for name in names if not os.environ.get(name)]
        if missing:
            pytest.fail(
                f"no Docker engine for testcontainers and {', '.join(missing)} not set: "
                "run the tests with `make test`, or set the URLs of real services",
                pytrace=False,
            )
        database, amqp, redis = (os.environ[name] for name in names)
        yield ServiceUrls(
            database,
            amqp,
            redis,
            management=os.environ.get("SLUICEWAY_TEST_MANAGEMENT_URL", ""),
        )


@pytest.fixture(scope="session")
def database_url(services: ServiceUrls) -> Iterator[str]:
    """A database of this test session's own, migrated to head."""
    with at_head(services.database) as url:
        yield url


@pytest.fixture
async def empty_database(services: ServiceUrls) -> AsyncIterator[str]:
    """A database of this test's own with no schema at all."""
    name = new_name()
    url = await create_database(services.database, name)
    try:
        yield url
    finally:
        await drop_database(services.database, name)


@pytest.fixture
async def pipeline(services: ServiceUrls, database_url: str) -> AsyncIterator[str]:
    """A pipeline name of this test's own; its queues, Redis keys and rows go afterwards."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    yield name
    connection = await aio_pika.connect(services.amqp)
    try:
        queues = topology.Queues(name)
        for queue in (*queues.owned(), *map(queues.holding, queues.owned())):
            channel = await connection.channel()
            await channel.queue_delete(queue)
            await channel.close()
    finally:
        await connection.close()
    client = aioredis.Redis.from_url(services.redis)
    try:
        await client.delete(*store.owned(name))
    finally:
        await client.aclose()
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("DELETE FROM records WHERE pipeline = $1", name)
    finally:
        await conn.close()


@pytest.fixture
async def amqp_connection(services: ServiceUrls) -> AsyncIterator[aio_pika.abc.AbstractConnection]:
    connection = await aio_pika.connect(services.amqp)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def redis_client(services: ServiceUrls) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(services.redis)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    try:
        yield conn
    finally:
        await conn.close()
