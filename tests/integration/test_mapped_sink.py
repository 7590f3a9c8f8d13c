"""A sink table of the user's own, on real PostgreSQL and RabbitMQ: typed values from JSON
pointers, newest-wins and last-written-wins, redelivery, refused values dead-lettered alone,
buffered mode, and every start check (exit 3) and bad setting (exit 2) from the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from aio_pika.abc import AbstractConnection

from sluiceway_common import sink as sink_settings
from sluiceway_common import topology
from sluiceway_common.codec import Record
from sluiceway_writer import schema
from sluiceway_writer.sink import SERVER_SETTINGS, Sink, prepare_connection, sink_target
from tests.conftest import ServiceUrls
from tests.integration.helpers import drain, eventually, publish, record, running_writer

pytestmark = pytest.mark.integration
T0 = datetime(2026, 11, 1, tzinfo=UTC)

COLUMNS = {
    "login": "/payload/login",
    "Email": "/payload/contact/email",
    "age": "/payload/age",
    "score": "/payload/score",
    "active": "/payload/active",
    "seen_at": "/fetched_at",
    "raw": "/payload",
    "contact": "/payload/contact",
    "first_tag": "/payload/tags/0",
    "odd": "/payload/a~1b",
}
TABLE_DDL = """
CREATE TABLE {table} (
    id         bigint PRIMARY KEY,
    login      text NOT NULL,
    "Email"    text,
    age        integer CHECK (age >= 0),
    score      numeric(8, 2),
    active     boolean,
    seen_at    timestamptz,
    raw        jsonb,
    contact    text,
    first_tag  text,
    odd        text,
    untouched  text DEFAULT 'mine'
)
"""


@pytest.fixture
async def sink_schema(db: asyncpg.Connection, pipeline: str) -> AsyncIterator[str]:
    """A schema of this test's own whose name needs quotes; the name as SQL writes it."""
    quoted = sink_settings.quote(f"Analytics Data {pipeline}")
    await db.execute(f"CREATE SCHEMA {quoted}")
    try:
        yield quoted
    finally:
        await db.execute(f"DROP SCHEMA {quoted} CASCADE")


@pytest.fixture
async def users(db: asyncpg.Connection, sink_schema: str) -> str:
    """The typed users table, as ``SLUICEWAY_SINK_TABLE`` names it."""
    table = f"{sink_schema}.users"
    await db.execute(TABLE_DDL.format(table=table))
    return table


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(
        database_url, min_size=1, max_size=2, init=prepare_connection,
        server_settings=SERVER_SETTINGS,
    ) as opened:  # fmt: skip
        yield opened


async def mapped_sink(
    pool: asyncpg.Pool,
    pipeline: str,
    table: str,
    columns: dict[str, str] = COLUMNS,
    version: str | None = "seen_at",
    key: str = "id",
) -> Sink:
    sink = sink_settings.spec(
        sink_settings.table_name(table), key, sink_settings.column_map(json.dumps(columns)), version
    )
    assert sink is not None
    async with pool.acquire() as conn:
        checked = await schema.check_sink(conn, sink)
    return Sink(pool, pipeline, "direct", sink_target(checked))


def user(login: str | None, **more: Any) -> str:
    return json.dumps({"login": login, **more})


async def table_rows(db: asyncpg.Connection, table: str) -> dict[int, dict[str, Any]]:
    found = await db.fetch(f"SELECT * FROM {table}")
    return {row["id"]: dict(row) for row in found}


async def test_typed_columns_from_nested_pointers_missing_ones_null(
    pool: asyncpg.Pool, pipeline: str, db: asyncpg.Connection, users: str
) -> None:
    sink = await mapped_sink(pool, pipeline, users)
    full = {
        "login": "ada", "age": 36, "score": 12.5, "active": True,
        "contact": {"email": "ada@example.org", "phone": None}, "tags": ["x", "y"],
        "a/b": "escaped",
    }  # fmt: skip
    refused = await sink.write([
        Record("1", json.dumps(full), T0),
        Record("2", user("bob"), T0 + timedelta(seconds=1)),  # every other pointer finds nothing
        Record("3", user("cy", age="41", active="false", score="7", contact=None), T0),
    ])  # fmt: skip
    assert refused == []
    rows = await table_rows(db, users)
    assert rows[1] == {
        "id": 1, "login": "ada", "Email": "ada@example.org", "age": 36,
        "score": Decimal("12.50"), "active": True, "seen_at": T0, "raw": json.dumps(full),
        "contact": '{"email": "ada@example.org", "phone": null}', "first_tag": "x",
        "odd": "escaped", "untouched": "mine",
    } | {"raw": rows[1]["raw"]}  # fmt: skip
    assert json.loads(rows[1]["raw"]) == full  # the object into jsonb, as JSON
    assert rows[2] == {
        "id": 2, "login": "bob", "Email": None, "age": None, "score": None, "active": None,
        "seen_at": T0 + timedelta(seconds=1), "raw": rows[2]["raw"], "contact": None,
        "first_tag": None, "odd": None, "untouched": "mine",
    }  # fmt: skip
    # Strings PostgreSQL casts; a JSON null is NULL.
    assert (rows[3]["age"], rows[3]["active"], rows[3]["score"], rows[3]["contact"]) == (
        41, False, Decimal("7.00"), None)  # fmt: skip


async def test_newest_wins_with_a_version_column_and_redelivery_changes_nothing(
    pool: asyncpg.Pool, pipeline: str, db: asyncpg.Connection, users: str
) -> None:
    sink = await mapped_sink(pool, pipeline, users)
    batch = [
        Record("1", user("v5"), T0 + timedelta(seconds=5)),
        Record("1", user("v9"), T0 + timedelta(seconds=9)),  # several of a key: the newest
        Record("1", user("v7"), T0 + timedelta(seconds=7)),
        Record("2", user("b1"), T0 + timedelta(seconds=1)),
    ]
    assert await sink.write(batch) == []
    landed = await table_rows(db, users)
    assert {k: (r["login"], r["seen_at"]) for k, r in landed.items()} == {
        1: ("v9", T0 + timedelta(seconds=9)), 2: ("b1", T0 + timedelta(seconds=1))}  # fmt: skip
    versions = await db.fetch(f"SELECT id, xmin::text FROM {users} ORDER BY id")
    assert await sink.write(batch) == []  # redelivered: not even a row version changes
    assert await sink.write([Record("1", user("older"), T0 + timedelta(seconds=8))]) == []
    assert await table_rows(db, users) == landed
    assert await db.fetch(f"SELECT id, xmin::text FROM {users} ORDER BY id") == versions
    assert await sink.write([Record("1", user("newer"), T0 + timedelta(seconds=10))]) == []
    assert (await table_rows(db, users))[1]["login"] == "newer"


async def test_without_a_version_the_last_record_written_wins(
    pool: asyncpg.Pool, pipeline: str, db: asyncpg.Connection, users: str
) -> None:
    sink = await mapped_sink(pool, pipeline, users, version=None)
    batch = [Record("1", user("new"), T0 + timedelta(seconds=9))]
    assert await sink.write(batch) == []
    assert await sink.write([Record("1", user("old"), T0)]) == []
    assert (await table_rows(db, users))[1]["login"] == "old"
    assert await sink.write(batch) == []
    assert await sink.write(batch) == []  # redelivered: the same row
    rows = await table_rows(db, users)
    assert (rows[1]["login"], rows[1]["seen_at"]) == ("new", T0 + timedelta(seconds=9))


async def test_two_texts_of_one_key_land_as_one_row(
    pool: asyncpg.Pool, pipeline: str, db: asyncpg.Connection, users: str
) -> None:
    """``7`` and ``07`` are one bigint: the newest lands, and the statement does not fail."""
    sink = await mapped_sink(pool, pipeline, users)
    records = [Record("07", user("zero-seven"), T0 + timedelta(seconds=2)),
               Record("7", user("seven"), T0)]  # fmt: skip
    assert await sink.write(records) == []
    assert {k: r["login"] for k, r in (await table_rows(db, users)).items()} == {7: "zero-seven"}


def writer(
    services: ServiceUrls, database_url: str, pipeline: str, table: str, **options: Any
) -> AbstractAsyncContextManager[object]:
    return running_writer(
        database_url, services.amqp, pipeline, batch_size=50, batch_timeout=0.1,
        sink_table=table, sink_key="id", sink_columns=COLUMNS, sink_version="seen_at",
        **options,
    )  # fmt: skip


REFUSED = {
    "101": (user("x", age="abc"), 'invalid input syntax for type integer: "abc"'),
    "102": (user(None), 'null value in column "login"'),
    "103": (user("x", age=-1), 'violates check constraint "users_age_check"'),
    "not-a-number": (user("x"), 'invalid input syntax for type bigint: "not-a-number"'),
}


@pytest.mark.parametrize("mode", ["direct", "buffered"])
async def test_refused_values_are_dead_lettered_alone_and_their_neighbours_land(
    services: ServiceUrls,
    database_url: str,
    pipeline: str,
    db: asyncpg.Connection,
    amqp_connection: AbstractConnection,
    users: str,
    mode: str,
) -> None:
    queues = topology.Queues(pipeline)
    good = {str(k): user(f"u{k}", age=k) for k in range(1, 31)}
    bodies = [record(k, p.encode(), T0) for k, p in good.items()]
    bodies[7:7] = [record(k, p.encode(), T0) for k, (p, _) in REFUSED.items()]
    await publish(amqp_connection, pipeline, queues.records, bodies)
    async with writer(services, database_url, pipeline, users, write_mode=mode):

        async def landed() -> bool:
            n: int = await db.fetchval(f"SELECT count(*) FROM {users}")
            return n == len(good)

        await eventually(landed, what="every good record in the sink table")

        async def dead_lettered() -> bool:
            depth = await amqp_connection.channel()
            try:
                q = await depth.declare_queue(queues.dead, passive=True)
                return q.declaration_result.message_count == len(REFUSED)
            finally:
                await depth.close()

        await eventually(dead_lettered, what="the refused records dead-lettered")
    rows = await table_rows(db, users)
    assert {str(k): r["login"] for k, r in rows.items()} == {k: f"u{k}" for k in good}
    dead = await drain(amqp_connection, queues.dead)
    reasons = {
        json.loads(m.body)["key"]: str((m.headers or {})["x-sluiceway-reason"]) for m in dead
    }
    assert set(reasons) == set(REFUSED)
    for key, (_, reason) in REFUSED.items():
        assert reason in reasons[key], (key, reasons[key])
    buffered = await db.fetchval(
        "SELECT count(*) FROM records_buffer WHERE pipeline = $1", pipeline
    )
    assert buffered == 0
    assert await db.fetchval("SELECT count(*) FROM records WHERE pipeline = $1", pipeline) == 0


async def test_buffered_mode_merges_into_the_sink_table_newest_winning(
    services: ServiceUrls,
    database_url: str,
    pipeline: str,
    db: asyncpg.Connection,
    amqp_connection: AbstractConnection,
    users: str,
) -> None:
    queues = topology.Queues(pipeline)
    bodies = [
        record(str(k), user(f"v{v}").encode(), T0 + timedelta(seconds=v))
        for v in (2, 0, 3, 1)
        for k in range(1, 41)
    ]
    await publish(amqp_connection, pipeline, queues.records, bodies)
    async with writer(services, database_url, pipeline, users, write_mode="buffered"):

        async def merged() -> bool:
            rows = await table_rows(db, users)
            return len(rows) == 40 and all(r["login"] == "v3" for r in rows.values())

        await eventually(merged, what="every key merged at its newest")
    buffered = await db.fetchval(
        "SELECT count(*) FROM records_buffer WHERE pipeline = $1", pipeline
    )
    assert buffered == 0
    assert all(
        r["seen_at"] == T0 + timedelta(seconds=3) for r in (await table_rows(db, users)).values()
    )


# --- start checks and settings, from the CLI --------------------------------------------


def sluiceway_writer(
    database_url: str, amqp_url: str, **env: str
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEWAY_")}
    return subprocess.run(
        [sys.executable, "-m", "sluiceway_common", "writer"],
        env={**clean, "SLUICEWAY_DATABASE_URL": database_url, "SLUICEWAY_AMQP_URL": amqp_url,
             **env},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def sink_env(table: str, **more: str) -> dict[str, str]:
    """The sink settings of :data:`COLUMNS` on ``table``, with ``more`` in place."""
    return {
        "SLUICEWAY_SINK_TABLE": table,
        "SLUICEWAY_SINK_KEY": "id",
        "SLUICEWAY_SINK_COLUMNS": json.dumps(COLUMNS),
        "SLUICEWAY_SINK_VERSION": "seen_at",
        **more,
    }


@pytest.mark.parametrize(
    ("ddl", "env", "said"),
    [
        ("", {}, "does not exist (create it with your own migrations)"),
        (
            "CREATE TABLE {table} (ident bigint PRIMARY KEY, login text)",
            {"SLUICEWAY_SINK_COLUMNS": '{"login": "/payload/login"}',
             "SLUICEWAY_SINK_VERSION": ""},
            'no key column "id" (SLUICEWAY_SINK_KEY)',
        ),
        (
            "CREATE TABLE {table} (id bigint, login text, seen_at timestamptz)",
            {"SLUICEWAY_SINK_COLUMNS": '{"login": "/payload/login", "seen_at": "/fetched_at"}'},
            'the key column "id" has no unique index or primary key of its own',
        ),
        (
            "CREATE TABLE {table} (id bigint, login text, UNIQUE (id, login))",
            {"SLUICEWAY_SINK_COLUMNS": '{"login": "/payload/login"}',
             "SLUICEWAY_SINK_VERSION": ""},
            'the key column "id" has no unique index or primary key of its own',
        ),
        (
            "CREATE TABLE {table} (id bigint PRIMARY KEY, login text, seen_at timestamptz)",
            {"SLUICEWAY_SINK_COLUMNS":
                '{"login": "/payload/login", "Mail": "/payload/m", "seen_at": "/fetched_at"}'},
            'no column "Mail" (mapped in SLUICEWAY_SINK_COLUMNS)',
        ),
        (
            "CREATE TABLE {table} (id bigint PRIMARY KEY, seen_at bigint)",
            {"SLUICEWAY_SINK_COLUMNS": '{"seen_at": "/fetched_at"}'},
            'the version column "seen_at" is bigint, not a timestamp or timestamptz',
        ),
    ],
    ids=["no table", "no key column", "key not unique", "key unique with another",
         "no mapped column", "version not a timestamp"],
)  # fmt: skip
async def test_each_start_check_refuses_in_one_line_with_exit_3(
    services: ServiceUrls,
    database_url: str,
    db: asyncpg.Connection,
    sink_schema: str,
    ddl: str,
    env: dict[str, str],
    said: str,
) -> None:
    table = f"{sink_schema}.users"
    if ddl:
        await db.execute(ddl.format(table=table))
    result = sluiceway_writer(database_url, services.amqp, **sink_env(table, **env))
    assert result.returncode == 3, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"sluiceway writer: sink table {table}"), line
    assert said in line, line


@pytest.fixture
async def admin(services: ServiceUrls) -> AsyncIterator[asyncpg.Connection]:
    """PostgreSQL's superuser, which may create roles; skipped without it."""
    url = os.environ.get("SLUICEWAY_TEST_PG_ADMIN_URL")
    if not url:
        pytest.skip("SLUICEWAY_TEST_PG_ADMIN_URL is not set: no role may be created")
    conn = await asyncpg.connect(url)
    try:
        yield conn
    finally:
        await conn.close()


async def test_a_role_that_may_not_write_the_table_is_refused_with_exit_3(
    services: ServiceUrls,
    database_url: str,
    db: asyncpg.Connection,
    admin: asyncpg.Connection,
    users: str,
    sink_schema: str,
) -> None:
    role = f"sluiceway_reader_{uuid.uuid4().hex[:8]}"
    await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'reader'")
    try:
        # It may read the schema's revision and the table, and write nothing.
        await db.execute(f"GRANT SELECT ON alembic_version TO {role}")
        await db.execute(f"GRANT USAGE ON SCHEMA {sink_schema} TO {role}")
        await db.execute(f"GRANT SELECT ON {users} TO {role}")
        parts = urlsplit(database_url)
        as_role = urlunsplit(parts._replace(
            netloc=f"{role}:reader@{parts.hostname}:{parts.port or 5432}"))  # fmt: skip
        result = sluiceway_writer(as_role, services.amqp, **sink_env(users))
        assert result.returncode == 3, result.stderr
        [line] = result.stderr.strip().splitlines()
        assert line.startswith(f"sluiceway writer: sink table {users}: role {role} may not "
                               'INSERT "id", "login"'), line  # fmt: skip
        assert '; UPDATE "login", "Email"' in line, line
        assert 'SELECT "' not in line, line
        await db.execute(f"REVOKE USAGE ON SCHEMA {sink_schema} FROM {role}")
        result = sluiceway_writer(as_role, services.amqp, **sink_env(users))
        assert result.returncode == 3, result.stderr
        assert f"role {role} has no USAGE on schema" in result.stderr, result.stderr
    finally:
        await db.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA {sink_schema} FROM {role}")
        await db.execute(f"REVOKE ALL ON alembic_version FROM {role}")
        await admin.execute(f"DROP ROLE {role}")


@pytest.mark.parametrize(
    ("env", "said"),
    [
        ({"SLUICEWAY_SINK_COLUMNS": '{"login": '}, "SLUICEWAY_SINK_COLUMNS="),
        ({"SLUICEWAY_SINK_COLUMNS": '{"login": "payload/login"}'},
         "a JSON pointer starts with /"),
        ({"SLUICEWAY_SINK_COLUMNS": '{"login": "/payload/a~2"}'}, "~ is written ~0"),
        ({"SLUICEWAY_SINK_COLUMNS": '{"login": "/body/login"}'}, "is outside the record"),
        ({"SLUICEWAY_SINK_VERSION": "login"},
         "SLUICEWAY_SINK_VERSION='login' is not allowed: SLUICEWAY_SINK_COLUMNS maps it to"),
        ({"SLUICEWAY_SINK_VERSION": "nope"},
         "SLUICEWAY_SINK_VERSION='nope' is not allowed: expected one of the columns"),
        ({"SLUICEWAY_SINK_TABLE": "a.b.c"}, "SLUICEWAY_SINK_TABLE='a.b.c' is not allowed"),
    ],
    ids=["bad JSON", "pointer without /", "bad escape", "outside the record",
         "version not fetched_at", "version not mapped", "three-part table"],
)  # fmt: skip
def test_bad_sink_settings_exit_2_naming_the_variable(
    services: ServiceUrls, env: dict[str, str], said: str
) -> None:
    result = sluiceway_writer(
        "postgresql://nobody@127.0.0.1:1/none", services.amqp, **sink_env("t", **env)
    )
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert said in line, line


async def test_names_and_pointers_with_quotes_and_a_uuid_key(
    pool: asyncpg.Pool, pipeline: str, db: asyncpg.Connection, sink_schema: str
) -> None:
    odd = 'It\'s "odd"'
    table = f"{sink_schema}.{sink_settings.quote(odd)}"
    await db.execute(
        f"CREATE TABLE {table} (id uuid PRIMARY KEY, {sink_settings.quote(odd)} text, whole json)"
    )
    sink = await mapped_sink(pool, pipeline, table, {odd: "/payload/it's", "whole": ""}, None)
    key = "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"
    assert await sink.write([Record(key, json.dumps({"it's": "quoted"}), T0)]) == []
    [row] = await db.fetch(f"SELECT * FROM {table}")
    assert (str(row["id"]), row[odd]) == (key.lower(), "quoted")
    whole = {"key": key, "payload": {"it's": "quoted"}, "fetched_at": "2026-11-01T00:00:00+00:00"}
    assert json.loads(row["whole"]) == whole
