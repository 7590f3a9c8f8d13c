"""Migrations, stamping tables made by hand, and the writer's refusal to run on a schema that
is not at head."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import asyncpg
import pytest

from sluiceway_writer import schema
from tests.conftest import ServiceUrls
from tests.scratch import execute

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


# sluiceway's tables as a person might create them by hand, with a table of their own beside.
BY_HAND = """
CREATE TABLE records (pipeline text, key text, payload jsonb NOT NULL,
    fetched_at timestamp with time zone NOT NULL,
    written_at timestamp with time zone NOT NULL DEFAULT now(),
    CONSTRAINT records_pkey PRIMARY KEY (pipeline, key));
CREATE INDEX records_pipeline_fetched_at ON records (pipeline, fetched_at);
CREATE TABLE records_buffer (id bigint PRIMARY KEY GENERATED ALWAYS AS IDENTITY,
    pipeline text NOT NULL, key text NOT NULL, payload jsonb NOT NULL,
    fetched_at timestamptz NOT NULL, buffered_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX records_buffer_pipeline_id ON records_buffer (pipeline, id);
COMMENT ON TABLE records IS 'sluiceway: the newest record of each key';
COMMENT ON TABLE records_buffer IS
    'sluiceway: rows of buffered-mode writers waiting to be merged into records';
CREATE TABLE users (id bigint PRIMARY KEY, name text);
"""


def last_line(result: subprocess.CompletedProcess[str]) -> str:
    """What ``sluiceway migrate`` said last on stderr, after Alembic's log lines."""
    return result.stderr.strip().splitlines()[-1]


async def test_stamp_records_head_in_tables_made_by_hand(
    services: ServiceUrls, empty_database: str
) -> None:
    await execute(empty_database, BY_HAND)
    stamped = sluiceway(empty_database, services.amqp, "migrate", "--stamp")
    assert stamped.returncode == 0, stamped.stderr
    assert stamped.stdout == f"database schema stamped at revision {schema.head()}\n"
    conn = await asyncpg.connect(empty_database)
    try:
        assert await schema.check(conn) == schema.head()
    finally:
        await conn.close()
    again = sluiceway(empty_database, services.amqp, "migrate", "--stamp")
    assert again.stdout == f"database schema already at revision {schema.head()}\n"
    assert sluiceway(empty_database, services.amqp, "migrate").returncode == 0


async def test_stamp_refuses_tables_that_differ_and_says_each_difference(
    services: ServiceUrls, empty_database: str
) -> None:
    await execute(
        empty_database,
        BY_HAND
        + """
        ALTER TABLE records ALTER payload TYPE json, ADD note text;
        ALTER TABLE records_buffer ALTER buffered_at DROP DEFAULT, ALTER payload DROP NOT NULL;
        DROP INDEX records_pipeline_fetched_at;
        ALTER TABLE records_buffer DROP CONSTRAINT records_buffer_pkey, ADD PRIMARY KEY (id, key);
        """,
    )
    refused = sluiceway(empty_database, services.amqp, "migrate", "--stamp")
    assert refused.returncode == 3
    said = f"sluiceway migrate: the tables differ from revision {schema.head()}'s, so the "
    said += "database was not stamped: "
    assert last_line(refused).startswith(said)
    assert sorted(last_line(refused).removeprefix(said).split("; ")) == sorted(
        [
            "records.payload: type json where sluiceway has jsonb",
            "records: column note is not sluiceway's",
            "records: no index records_pipeline_fetched_at (pipeline, fetched_at)",
            "records_buffer.buffered_at: default none where sluiceway has now()",
            "records_buffer.payload: nullable where sluiceway has NOT NULL",
            "records_buffer: no primary key records_buffer_pkey (id)",
            "records_buffer: primary key records_buffer_pkey (id, key) is not sluiceway's",
        ]
    )
    conn = await asyncpg.connect(empty_database)
    try:  # nothing was stamped
        assert await schema.current(conn) is None
    finally:
        await conn.close()


async def test_stamp_refuses_an_empty_database_and_one_already_at_a_revision(
    services: ServiceUrls, empty_database: str
) -> None:
    from alembic import command

    empty = sluiceway(empty_database, services.amqp, "migrate", "--stamp")
    assert empty.returncode == 3
    assert last_line(empty) == (
        "sluiceway migrate: the database has none of sluiceway's tables: "
        "`sluiceway migrate` creates them"
    )
    await asyncio.to_thread(command.upgrade, schema.alembic_config(empty_database), "0001")
    behind = sluiceway(empty_database, services.amqp, "migrate", "--stamp")
    assert behind.returncode == 3
    assert last_line(behind) == (
        "sluiceway migrate: the database is at revision 0001 already: `sluiceway migrate` "
        "brings it to head; --stamp is for a database without a revision"
    )


async def test_migrate_on_tables_made_by_hand_points_at_stamp(
    services: ServiceUrls, empty_database: str
) -> None:
    await execute(empty_database, BY_HAND)
    failed = sluiceway(empty_database, services.amqp, "migrate")
    assert failed.returncode == 1
    assert last_line(failed) == (
        'sluiceway migrate: relation "records" already exists, though the database has no '
        "revision: if its tables were made by hand, `sluiceway migrate --stamp` checks them and "
        "records the revision"
    )
