"""TLS end to end: the real fetcher, writer, enqueue, status and migrate, each talking TLS to
RabbitMQ (``amqps://`` with ``cafile``), Redis (``rediss://`` with ``ssl_ca_certs``) and
PostgreSQL (``sslmode=verify-full`` with ``sslrootcert``), every certificate checked against a
CA made for the test.

RabbitMQ and Redis are reached through TLS-terminating proxies in the test; PostgreSQL
negotiates TLS inside its own protocol, so the test turns on the server's own TLS for its
duration (as its superuser, ``SLUICEWAY_TEST_PG_ADMIN_URL``) and turns it off again.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import ssl
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from sluiceway_common import store
from sluiceway_sample_api.data import user
from tests.conftest import ServiceUrls
from tests.e2e.conftest import Processes, sample_api
from tests.integration.helpers import TcpProxy, eventually

pytestmark = pytest.mark.e2e


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own CA) and its key."""
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def install_for_postgres(certificate: tuple[Path, Path]) -> Path:
    """A copy of the certificate and key that the server, running as the postgres OS user,
    can read: in a folder of its own under /tmp, owned by it, the key private (0600)."""
    owner = pwd.getpwnam("postgres")
    folder = Path(tempfile.mkdtemp(prefix="sluiceway-pg-tls-"))
    for source, name in zip(certificate, ("server.crt", "server.key"), strict=True):
        shutil.copy(source, folder / name)
        os.chown(folder / name, owner.pw_uid, owner.pw_gid)
    (folder / "server.key").chmod(0o600)
    os.chown(folder, owner.pw_uid, owner.pw_gid)
    return folder


@pytest.fixture
async def postgres_tls(certificate: tuple[Path, Path]) -> AsyncIterator[Path | None]:
    """PostgreSQL's TLS on for the test; yields the CA to verify it by (None when TLS was on
    already, with a certificate this test did not make)."""
    admin_url = os.environ.get("SLUICEWAY_TEST_PG_ADMIN_URL", "")
    if not admin_url:
        pytest.skip("SLUICEWAY_TEST_PG_ADMIN_URL not set: cannot turn on PostgreSQL's TLS")
    try:
        admin = await asyncpg.connect(admin_url)
    except (asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidPasswordError) as exc:
        pytest.skip(f"SLUICEWAY_TEST_PG_ADMIN_URL refused ({exc}): cannot turn on its TLS")
    if await admin.fetchval("SHOW ssl") == "on":
        await admin.close()
        yield None
        return
    folder = install_for_postgres(certificate)
    try:
        await admin.execute(f"ALTER SYSTEM SET ssl_cert_file = '{folder}/server.crt'")
        await admin.execute(f"ALTER SYSTEM SET ssl_key_file = '{folder}/server.key'")
        await admin.execute("ALTER SYSTEM SET ssl = on")
        await admin.execute("SELECT pg_reload_conf()")

        async def on() -> bool:
            probe = await asyncpg.connect(admin_url)
            try:
                return bool(await probe.fetchval("SHOW ssl") == "on")
            finally:
                await probe.close()

        await eventually(on, within=10, what="PostgreSQL's TLS on")
        yield certificate[0]
    finally:
        for setting in ("ssl", "ssl_cert_file", "ssl_key_file"):
            await admin.execute(f"ALTER SYSTEM RESET {setting}")
        await admin.execute("SELECT pg_reload_conf()")
        await admin.close()
        shutil.rmtree(folder, ignore_errors=True)


async def test_every_component_speaks_tls_with_verified_certificates(
    processes: Processes, services: ServiceUrls, database_url: str, pipeline: str,
    certificate: tuple[Path, Path], postgres_tls: Path | None, db: asyncpg.Connection,
    redis_client: aioredis.Redis,
) -> None:  # fmt: skip
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    broker = await TcpProxy(services.amqp, tls=context).start()
    cache = await TcpProxy(services.redis, tls=context).start()
    try:
        amqps = broker.url.replace("amqp://", "amqps://", 1).rstrip("/") + f"/?cafile={cert}"
        rediss = cache.url.replace("redis://", "rediss://", 1) + f"?ssl_ca_certs={cert}"
        separator = "&" if "?" in database_url else "?"
        postgres = (
            database_url
            + separator
            + (
                f"sslmode=verify-full&sslrootcert={postgres_tls}"
                if postgres_tls
                else "sslmode=require"
            )
        )
        processes.env |= {"SLUICEWAY_AMQP_URL": amqps, "SLUICEWAY_REDIS_URL": rediss,
                          "SLUICEWAY_DATABASE_URL": postgres}  # fmt: skip

        # Run in a thread: the proxies serve from this event loop, which must keep turning.
        migrated = await asyncio.to_thread(processes.run, "migrate")
        assert migrated.returncode == 0, migrated.stderr
        keys = [f"tls-{i}" for i in range(40)]
        api, base = sample_api(processes)
        writer = processes.start("writer", "writer", SLUICEWAY_BATCH_TIMEOUT="0.2")
        fetcher = processes.start("fetcher", "fetcher", SLUICEWAY_SOURCE_URL=base + "/users/{key}",
                                  SLUICEWAY_RATE_LIMIT="1000")  # fmt: skip
        enqueued = await asyncio.to_thread(
            processes.run, "enqueue", "-", stdin="\n".join(keys).encode()
        )
        assert enqueued.returncode == 0, enqueued.stderr

        async def all_landed() -> bool:
            for name, process in (("writer", writer), ("fetcher", fetcher)):
                assert process.poll() is None, processes.log(name)
            count: int = await db.fetchval(
                "SELECT count(*) FROM records WHERE pipeline = $1", pipeline
            )
            return count == len(keys)

        await eventually(all_landed, within=60, what="every key landed over TLS")
        # The writer's own connection to PostgreSQL is encrypted.
        encrypted = await db.fetchval(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
            "WHERE s.ssl AND a.datname = current_database() AND a.pid <> pg_backend_pid()"
        )
        assert encrypted >= 1
        status = await asyncio.to_thread(processes.run, "status", "--json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["rows"] == len(keys)
        for process in (fetcher, writer, api):
            assert await asyncio.to_thread(processes.terminate, process) == 0
        rows = await db.fetch("SELECT key, payload FROM records WHERE pipeline = $1", pipeline)
        assert {r["key"]: json.loads(r["payload"]) for r in rows} == {k: user(k) for k in keys}
        assert not await redis_client.scard(store.failed_set(pipeline))
        # Both proxies carried TLS connections (the handshake is done before one is counted).
        assert broker.accepted >= 3  # fetcher, writer, enqueue (and status)
        assert cache.accepted >= 1

        # A certificate the client does not trust is refused, not used.
        processes.env["SLUICEWAY_AMQP_URL"] = broker.url.replace("amqp://", "amqps://", 1)
        untrusted = await asyncio.to_thread(processes.run, "status", "--json")
        assert untrusted.returncode != 0
    finally:
        await broker.close()
        await cache.close()
