"""Migrations and the writer's refusal to run on a schema that is not at head."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import asyncpg
import pytest

from sluiceway_writer import schema
from tests.conftest import ServiceUrls

pytestmark = pytest.mark.integration


def sluiceway(database_url: str, amqp_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "SLUICEWAY_DATABASE_URL": database_url,
        "SLUICEWAY_AMQP_URL": amqp_url,
    }
    return subprocess.run(
        [sys.executable, "-m", "sluiceway_common", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_writer_refuses_an_empty_database_until_migrated(
    services: ServiceUrls, empty_database: str
) -> None:
    refused = sluiceway(empty_database, services.amqp, "writer")
    assert refused.returncode == 3
    assert refused.stderr.strip().splitlines() == [
        f"sluiceway writer: the database has no sluiceway schema; this writer needs revision "
        f"{schema.head()}: run `sluiceway migrate`"
    ]
    migrated = sluiceway(empty_database, services.amqp, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert f"at revision {schema.head()}" in migrated.stdout
    conn = await asyncpg.connect(empty_database)
    try:
        assert await schema.check(conn) == schema.head()
        columns = await conn.fetch(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'records' ORDER BY ordinal_position"
        )
        assert [(c["column_name"], c["data_type"]) for c in columns] == [
            ("pipeline", "text"),
            ("key", "text"),
            ("payload", "jsonb"),
            ("fetched_at", "timestamp with time zone"),
            ("written_at", "timestamp with time zone"),
        ]
    finally:
        await conn.close()
    # Running it again is a no-op.
    assert sluiceway(empty_database, services.amqp, "migrate").returncode == 0


async def test_writer_refuses_a_revision_it_does_not_know(
    services: ServiceUrls, empty_database: str
) -> None:
    await asyncio.to_thread(schema.upgrade, empty_database)
    conn = await asyncpg.connect(empty_database)
    try:
        await conn.execute("UPDATE alembic_version SET version_num = 'f00d'")
        with pytest.raises(schema.SchemaError, match="at revision f00d, which this writer"):
            await schema.check(conn)
    finally:
        await conn.close()


def test_migrate_reports_an_unreachable_database_in_one_line(services: ServiceUrls) -> None:
    result = sluiceway("postgresql://nobody@127.0.0.1:1/none", services.amqp, "migrate")
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "cannot reach the database" in result.stderr


async def test_writer_refuses_a_schema_behind_its_head(
    services: ServiceUrls, empty_database: str
) -> None:
    from alembic import command

    await asyncio.to_thread(command.upgrade, schema.alembic_config(empty_database), "0001")
    refused = sluiceway(empty_database, services.amqp, "writer")
    assert refused.returncode == 3
    assert refused.stderr.strip() == (
        f"sluiceway writer: the database schema is at revision 0001, behind this writer's "
        f"{schema.head()}: run `sluiceway migrate`"
    )


async def test_migrators_started_together_apply_each_revision_once(
    services: ServiceUrls, empty_database: str
) -> None:
    # Two Jobs at once: one waits for the other's lock, held across the revision that builds
    # its index outside a transaction.
    env = {"PATH": "/usr/bin:/bin", "SLUICEWAY_DATABASE_URL": empty_database}
    runs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sluiceway_common",
            "migrate",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(3)
    ]
    results = [await asyncio.wait_for(run.communicate(), 60) for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], results
    conn = await asyncpg.connect(empty_database)
    try:
        assert await schema.check(conn) == schema.head()
        indexes = await conn.fetch(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'records' "
            "AND indexname = 'records_pipeline_fetched_at'"
        )
        assert [i["indexdef"] for i in indexes] == [
            "CREATE INDEX records_pipeline_fetched_at ON public.records "
            "USING btree (pipeline, fetched_at)"
        ]
        assert not await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
    finally:
        await conn.close()
