"""``sink suggest`` on real rows and a real upstream: the CREATE TABLE it prints runs, and every
sample's values, read at the suggested pointers, go into its columns."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from sluiceway_admin.listing import pointer
from tests.conftest import ServiceUrls
from tests.integration.helpers import http_server

pytestmark = pytest.mark.integration

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def sluiceway(
    services: ServiceUrls, database_url: str, pipeline: str, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    environment = {
        "PATH": "/usr/bin:/bin",
        "SLUICEWAY_DATABASE_URL": database_url,
        "SLUICEWAY_REDIS_URL": services.redis,
        "SLUICEWAY_PIPELINE": pipeline,
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "sluiceway_common", *args],
        capture_output=True, env=environment, timeout=60, check=False, text=True,
    )  # fmt: skip


@pytest.fixture
async def scratch(database_url: str) -> AsyncIterator[tuple[asyncpg.Connection, str]]:
    """A connection and a schema of this test's own, dropped afterwards."""
    schema = f"scratch_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(database_url)
    await conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield conn, schema
    finally:
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await conn.close()


def payload(i: int) -> dict[str, Any]:
    """Payloads of every shape the rules tell apart, varying with ``i``."""
    return {
        "login": f"user{i}",
        "id": 10**20 + i if i % 5 == 0 else i,  # some past bigint
        "score": i / 4 if i % 2 else i,  # integers and fractions
        "active": i % 3 == 0,
        "signedUp": f"2024-0{1 + i % 9}-1{i % 10}",
        "seen": f"2024-05-01T10:{i % 60:02d}:00.123456789+0{i % 10}:30",
        "local": f"2024-05-01 10:{i % 60:02d}:00",
        "contact": {"email": f"u{i}@example.com" if i % 4 else None,
                    "phone": {"home": str(i), "deep": {"x": i}}},
        "tags": [i, "t"] if i % 2 else [],
        "mixed": "seven" if i % 2 else 7,
        "a/b": i, "m~n": i, "user": "reserved", "First Name": "A", "firstName": "B",
        "nothing": None,
        "odd\nname": "line",
        "bigint_edge": 2**63 - 1 if i % 2 else -(2**63),
        "unicode": "Zoë ✓",
    }  # fmt: skip


def ddl(output: str) -> str:
    return output.split("\n\n# ", 1)[0]


def env_lines(output: str) -> dict[str, str]:
    found = {}
    for line in output.splitlines():
        if line.startswith("SLUICEWAY_SINK_"):
            name, _, value = line.partition("=")
            (found[name],) = shlex.split(value)
    return found


async def column_types(conn: asyncpg.Connection, schema: str, table: str) -> dict[str, str]:
    rows = await conn.fetch(
        "SELECT attname, format_type(atttypid, atttypmod) AS type FROM pg_attribute "
        "WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        f"{schema}.{table}",
    )
    return {row["attname"]: row["type"] for row in rows}


async def fill(
    conn: asyncpg.Connection, table: str, key_type: str, columns: dict[str, str],
    types: dict[str, str], samples: str,
) -> int:  # fmt: skip
    """Insert each sample's values, read at the pointers and cast to the column types as the
    writer's SQL does, into ``table``; return how many rows went in. ``samples`` is a query
    of (key text, payload jsonb, fetched_at timestamptz)."""
    names, values, args = ['"key"'], [f"s.key::{key_type}"], []
    for column, at in columns.items():
        args.append(list(pointer(at)))
        path = f"${len(args)}::text[]"
        kind = types[column]
        read = f"doc #> {path}" if kind == "jsonb" else f"(doc #>> {path})::{kind}"
        names.append('"' + column.replace('"', '""') + '"')
        values.append(read)
    status = await conn.execute(
        f"INSERT INTO {table} ({', '.join(names)}) SELECT {', '.join(values)} FROM ("
        "  SELECT key, jsonb_build_object('key', key, 'payload', payload,"
        f"                            'fetched_at', fetched_at) AS doc FROM ({samples}) q"
        ") s",
        *args,
    )
    return int(status.split()[-1])


async def test_the_suggested_table_holds_every_sample(
    services: ServiceUrls, database_url: str, pipeline: str,
    scratch: tuple[asyncpg.Connection, str],
) -> None:  # fmt: skip
    conn, schema = scratch
    rows = [(pipeline, str(i), json.dumps(payload(i)), NOW - timedelta(seconds=i))
            for i in range(60)]  # fmt: skip
    # Older than any of those, past --sample: their field must not be suggested.
    rows += [(pipeline, f"old{i}", json.dumps({"only_old": i}), NOW - timedelta(days=1))
             for i in range(5)]  # fmt: skip
    await conn.executemany(
        "INSERT INTO records (pipeline, key, payload, fetched_at) VALUES ($1, $2, $3, $4)", rows
    )
    result = sluiceway(services, database_url, pipeline, "sink", "suggest", "--sample", "60",
                       "--table", f"{schema}.people")  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "from the 60 newest fetched rows of pipeline" in out
    await conn.execute(ddl(out))

    types = await column_types(conn, schema, "people")
    assert types == {
        "key": "bigint", "seen_at": "timestamp with time zone", "login": "text",
        "id": "numeric", "score": "numeric", "active": "boolean", "signed_up": "date",
        "seen": "timestamp with time zone", "local": "timestamp without time zone",
        "contact_email": "text", "contact_phone_home": "text",
        "contact_phone_deep": "jsonb", "tags": "jsonb", "mixed": "jsonb", "a_b": "bigint",
        "m_n": "bigint", "user": "text", "first_name": "text", "first_name_2": "text",
        "nothing": "text", "odd_name": "text", "bigint_edge": "bigint", "unicode": "text",
    }  # fmt: skip
    assert re.search(r'^    "user" +text,', out, re.M)
    primary = await conn.fetchval(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = $1::regclass "
        "AND contype = 'p'", f"{schema}.people",
    )  # fmt: skip
    assert primary == "PRIMARY KEY (key)"

    settings = env_lines(out)
    assert settings["SLUICEWAY_SINK_TABLE"] == f"{schema}.people"
    assert settings["SLUICEWAY_SINK_KEY"] == "key"
    assert settings["SLUICEWAY_SINK_VERSION"] == "seen_at"
    columns = json.loads(settings["SLUICEWAY_SINK_COLUMNS"])
    assert columns["seen_at"] == "/fetched_at"
    assert (columns["a_b"], columns["m_n"], columns["odd_name"]) == (
        "/payload/a~1b", "/payload/m~0n", "/payload/odd\nname")  # fmt: skip
    assert set(columns) == set(types) - {"key"}

    samples = f"SELECT key, payload, fetched_at FROM records WHERE pipeline = '{pipeline}' " \
              "AND key NOT LIKE 'old%'"  # fmt: skip
    assert await fill(conn, f"{schema}.people", "bigint", columns, types, samples) == 60
    back = await conn.fetchrow(f"SELECT * FROM {schema}.people WHERE key = 5")
    assert back is not None
    assert (back["id"], back["contact_email"], back["contact_phone_deep"]) == (
        10**20 + 5, "u5@example.com", '{"x": 5}')  # fmt: skip
    assert back["seen_at"] == NOW - timedelta(seconds=5)


async def test_the_alembic_revision_makes_the_same_table(
    services: ServiceUrls, database_url: str, pipeline: str,
    scratch: tuple[asyncpg.Connection, str],
) -> None:  # fmt: skip
    """``--alembic``: the same table as the ``CREATE TABLE``, by Alembic's own operations on
    the real database, with each column's source as its comment and the settings kept."""
    conn, schema = scratch
    rows = [(pipeline, str(i), json.dumps(payload(i)), NOW - timedelta(seconds=i))
            for i in range(60)]  # fmt: skip
    await conn.executemany(
        "INSERT INTO records (pipeline, key, payload, fetched_at) VALUES ($1, $2, $3, $4)", rows
    )
    by_sql = sluiceway(services, database_url, pipeline, "sink", "suggest", "--table",
                       f"{schema}.people")  # fmt: skip
    await conn.execute(ddl(by_sql.stdout))
    result = sluiceway(services, database_url, pipeline, "sink", "suggest", "--alembic",
                       "--table", f"{schema}.people_a")  # fmt: skip
    assert result.returncode == 0, result.stderr
    revision = result.stdout
    assert re.search(r"^revision = '[0-9a-f]{12}'$", revision, re.M)
    assert "down_revision = None  # your head revision" in revision
    module: dict[str, Any] = {}
    exec(compile(revision, "suggested_revision.py", "exec"), module)

    from alembic.migration import MigrationContext
    from alembic.operations import Operations
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine("postgresql+asyncpg://",
                                 async_creator=lambda: asyncpg.connect(database_url))  # fmt: skip
    try:
        async with engine.begin() as connection:

            def upgrade(sync: Any) -> None:
                with Operations.context(MigrationContext.configure(sync)):
                    module["upgrade"]()

            await connection.run_sync(upgrade)
    finally:
        await engine.dispose()
    assert await column_types(conn, schema, "people_a") == await column_types(
        conn, schema, "people")  # fmt: skip
    comment = await conn.fetchval(
        "SELECT col_description($1::regclass, attnum) FROM pg_attribute "
        "WHERE attrelid = $1::regclass AND attname = 'contact_email'",
        f"{schema}.people_a",
    )
    assert comment.startswith("/payload/contact/email: ")
    sql_settings = env_lines(by_sql.stdout)
    assert env_lines(revision)["SLUICEWAY_SINK_COLUMNS"] == sql_settings["SLUICEWAY_SINK_COLUMNS"]


async def test_every_keyword_postgresql_reserves_is_quoted(
    scratch: tuple[asyncpg.Connection, str],
) -> None:
    from sluiceway_admin.infer import RESERVED

    conn, _ = scratch
    reserved = {row["word"] for row in await conn.fetch(
        "SELECT word FROM pg_get_keywords() WHERE catcode IN ('R', 'T')")}  # fmt: skip
    assert reserved <= RESERVED


async def test_nothing_landed_is_said_and_fails(
    services: ServiceUrls, database_url: str, pipeline: str
) -> None:
    result = sluiceway(services, database_url, pipeline, "sink", "suggest")
    assert result.returncode == 1
    assert result.stdout == ""
    assert f"nothing landed yet for pipeline {pipeline}: run the pipeline, or give --fetch" in (
        result.stderr
    )


async def test_fetch_asks_the_upstream_for_the_first_n_keys(
    services: ServiceUrls, database_url: str, pipeline: str, tmp_path: Path,
    scratch: tuple[asyncpg.Connection, str],
) -> None:  # fmt: skip
    conn, schema = scratch
    asked: list[str] = []

    async def user(request: web.Request) -> web.Response:
        key = request.match_info["key"]
        asked.append(key)
        assert request.headers["Authorization"] == "Bearer t0ken"
        if key == "missing":
            return web.Response(status=404)
        if key == "garbled":
            return web.Response(text="<html>")
        return web.json_response({"id": key, "n": len(key), "at": "2024-05-01T00:00:00Z"})

    app = web.Application()
    app.router.add_get("/users/{key}", user)
    keys = tmp_path / "keys.txt"
    keys.write_text("0f8fad5b-d9cb-469f-a165-70867728950e\nmissing\n\n"
                    "a/b\ngarbled\nnot-asked\n")  # fmt: skip
    async with http_server(app) as base:
        result = await asyncio.to_thread(
            sluiceway,
            services, database_url, pipeline, "sink", "suggest", "--fetch", str(keys),
            "--sample", "4", "--table", f"{schema}.users",
            SLUICEWAY_SOURCE_URL=f"{base}/users/{{key}}",
            SLUICEWAY_SOURCE_HEADERS='{"Authorization": "Bearer t0ken"}',
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert asked == ["0f8fad5b-d9cb-469f-a165-70867728950e", "missing", "a/b", "garbled"]
    assert "key 'missing': HTTP 404 Not Found" in result.stderr
    assert "key 'garbled': body is not JSON" in result.stderr
    assert "t0ken" not in result.stderr + result.stdout
    assert "answers for 2 keys of" in result.stdout
    assert "(2 of 4 keys failed)" in result.stdout
    await conn.execute(ddl(result.stdout))
    assert await column_types(conn, schema, "users") == {
        "key": "text", "seen_at": "timestamp with time zone", "id": "text", "n": "bigint",
        "at": "timestamp with time zone",
    }  # fmt: skip


async def test_fetch_with_no_key_fetched_fails(
    services: ServiceUrls, database_url: str, pipeline: str, tmp_path: Path
) -> None:
    app = web.Application()

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=500)

    app.router.add_get("/users/{key}", broken)
    keys = tmp_path / "keys.txt"
    keys.write_text("a\nb\n")
    async with http_server(app) as base:
        result = await asyncio.to_thread(
            sluiceway, services, database_url, pipeline, "sink", "suggest", "--fetch", str(keys),
            SLUICEWAY_SOURCE_URL=f"{base}/users/{{key}}",
        )  # fmt: skip
    assert result.returncode == 1
    assert "none of the 2 keys tried could be fetched" in result.stderr
    absent = tmp_path / "absent"
    missing = sluiceway(services, database_url, pipeline, "sink", "suggest", "--fetch",
                        str(absent), SLUICEWAY_SOURCE_URL=f"{base}/users/{{key}}")  # fmt: skip
    assert missing.returncode == 1
    assert missing.stderr == (
        f"sluiceway sink suggest: cannot read {absent}: No such file or directory\n"
    )
    unset = sluiceway(services, database_url, pipeline, "sink", "suggest", "--fetch", str(keys))
    assert unset.returncode == 2
    assert "SLUICEWAY_SOURCE_URL is not set" in unset.stderr
