"""``enqueue``'s database sources against the real services, through the CLI: a SQL query's
rows (read-only, NULLs skipped and counted), the pipeline's stale rows, and ``--dry-run``."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aio_pika.abc import AbstractConnection

from sluiceway_common import codec, topology
from tests.conftest import ServiceUrls
from tests.integration.helpers import depth, drain
from tests.integration.test_admin import sluiceway

pytestmark = pytest.mark.integration


@pytest.fixture
async def users_table(db: Any) -> AsyncIterator[str]:
    """A table of the user's own: ids, some NULL, and a uuid column."""
    name = f"users_{uuid.uuid4().hex[:8]}"
    await db.execute(f"CREATE TABLE {name} (id bigint, ref uuid, note text)")
    await db.executemany(
        f"INSERT INTO {name} VALUES ($1, $2, $3)",
        [(i if i % 10 else None, uuid.UUID(int=i), f"n{i}") for i in range(1, 101)],
    )
    yield name
    await db.execute(f"DROP TABLE {name}")


async def queued(connection: AbstractConnection, pipeline: str) -> list[str]:
    tasks = await drain(connection, topology.Queues(pipeline).fetch)
    return [codec.decode_task(m.body) for m in tasks]


async def test_sql_queues_the_first_column_as_text_and_counts_nulls(
    services: ServiceUrls, database_url: str, pipeline: str, users_table: str,
    amqp_connection: AbstractConnection,
) -> None:  # fmt: skip
    query = f"SELECT id, note FROM {users_table} ORDER BY ref;"
    result = sluiceway(services, database_url, pipeline, "enqueue", "--sql", query)
    assert result.returncode == 0, result.stderr
    assert await queued(amqp_connection, pipeline) == [str(i) for i in range(1, 101) if i % 10]
    assert "enqueued 90 keys to" in result.stderr
    assert "10 blank or NULL skipped" in result.stderr
    result = sluiceway(services, database_url, pipeline, "enqueue", "--sql",
                       f"SELECT ref FROM {users_table} WHERE id < 3")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert await queued(amqp_connection, pipeline) == [str(uuid.UUID(int=i)) for i in (1, 2)]


async def test_sql_runs_read_only_and_says_why_a_query_fails(
    services: ServiceUrls, database_url: str, pipeline: str, users_table: str, db: Any,
    amqp_connection: AbstractConnection,
) -> None:  # fmt: skip
    delete = f"DELETE FROM {users_table} RETURNING id"
    result = sluiceway(services, database_url, pipeline, "enqueue", "--sql", delete)
    assert result.returncode == 1
    assert "read-only transaction" in result.stderr
    assert await db.fetchval(f"SELECT count(*) FROM {users_table}") == 100
    for query, said in [
        ("SELEC 1", "the query is refused"),
        (f"SELECT 1 / (id - id) FROM {users_table}", "division by zero"),
        (f"SELECT id, id FROM {users_table}", "first column name 'id' is not unique"),
    ]:
        result = sluiceway(services, database_url, pipeline, "enqueue", "--sql", query)
        assert result.returncode == 1, query
        assert result.stderr.startswith("sluiceway enqueue: --sql: "), result.stderr
        assert said in result.stderr, result.stderr
    assert await depth(amqp_connection, topology.Queues(pipeline).fetch) == 0


async def test_sql_on_another_database_by_its_own_url(
    services: ServiceUrls, database_url: str, pipeline: str, empty_database: str,
    amqp_connection: AbstractConnection,
) -> None:  # fmt: skip
    result = sluiceway(services, database_url, pipeline, "enqueue", "--sql",
                       "SELECT 'k' || g FROM generate_series(1, 3) g",
                       "--sql-url", empty_database)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert await queued(amqp_connection, pipeline) == ["k1", "k2", "k3"]


async def test_stale_queues_the_oldest_rows_first_up_to_the_limit(
    services: ServiceUrls, database_url: str, pipeline: str, db: Any,
    amqp_connection: AbstractConnection,
) -> None:  # fmt: skip
    ages = {"fresh": "10 minutes", "day": "25 hours", "week": "8 days", "month": "31 days"}
    for key, age in ages.items():
        await db.execute(
            "INSERT INTO records (pipeline, key, payload, fetched_at) "
            "VALUES ($1, $2, '{}', now() - $3::text::interval)",
            pipeline, key, age,
        )  # fmt: skip
    other = f"{pipeline}-other"
    await db.execute(
        "INSERT INTO records (pipeline, key, payload, fetched_at) "
        "VALUES ($1, 'elsewhere', '{}', now() - interval '90 days')",
        other,
    )
    try:
        result = sluiceway(services, database_url, pipeline, "enqueue", "--stale", "24h")
        assert result.returncode == 0, result.stderr
        assert await queued(amqp_connection, pipeline) == ["month", "week", "day"]
        # Their tasks were taken off the queue by hand, so their keys are still in flight.
        again = ("enqueue", "--stale", "7d", "--limit", "1")
        result = sluiceway(services, database_url, pipeline, *again)
        assert result.returncode == 0, result.stderr
        assert await queued(amqp_connection, pipeline) == []
        assert "already in flight 1," in result.stderr
        result = sluiceway(services, database_url, pipeline, *again, "--force")
        assert result.returncode == 0, result.stderr
        assert await queued(amqp_connection, pipeline) == ["month"]
    finally:
        await db.execute("DELETE FROM records WHERE pipeline = $1", other)


async def test_dry_run_counts_and_shows_and_queues_nothing(
    services: ServiceUrls, database_url: str, pipeline: str, users_table: str,
    amqp_connection: AbstractConnection,
) -> None:  # fmt: skip
    result = sluiceway(services, database_url, pipeline, "enqueue", "--dry-run", "--sql",
                       f"SELECT id FROM {users_table} ORDER BY ref")  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:-1] == ["1", "2", "3", "4", "5", "6", "7", "8", "9", "11"]
    assert lines[-1] == ("90 keys would be queued; 10 blank or NULL skipped; nothing was queued "
                         "(--dry-run)")  # fmt: skip
    queues = await topology.queue_depths(amqp_connection, topology.Queues(pipeline).all())
    assert not any(queue.exists for queue in queues)  # not even declared


@pytest.mark.parametrize(
    ("args", "said"),
    [
        ((), "give one source: FILE|-, --sql QUERY or --stale AGE"),
        (
            ("-", "--sql", "SELECT 1"),
            "give one source: FILE|-, --sql QUERY or --stale AGE (got file, sql)",
        ),
        (("--sql", "SELECT 1", "--limit", "5"), "--limit goes with --stale"),
        (("--stale", "1w"), "'1w' is not an age"),
        (("--stale", "1d", "--limit", "0"), "'0' is not a whole number from 1"),
        (
            ("--sql", "SELECT 1", "--sql-url", "mysql://h/db"),
            "--sql-url='mysql://h/db' is not allowed",
        ),
    ],
)
def test_a_bad_choice_of_source_is_one_line_and_exit_2(
    services: ServiceUrls, database_url: str, pipeline: str, args: tuple[str, ...], said: str
) -> None:
    result = sluiceway(services, database_url, pipeline, "enqueue", *args)
    assert result.returncode == 2
    assert said in result.stderr, result.stderr


async def test_a_file_run_reads_no_database_setting(
    services: ServiceUrls, pipeline: str, tmp_path: Any, amqp_connection: AbstractConnection
) -> None:
    # Nor keeps its password secret: a file run's lines are not masked by a database's.
    keys = tmp_path / "keys.txt"
    keys.write_text("a\nb\n")
    bad = "mysql://user:sluiceway@host/db"
    result = sluiceway(services, bad, pipeline, "enqueue", str(keys))
    assert result.returncode == 0, result.stderr
    assert f"enqueued 2 keys to {topology.Queues(pipeline).fetch}" in result.stderr
    assert await queued(amqp_connection, pipeline) == ["a", "b"]
    refused = sluiceway(services, bad, pipeline, "enqueue", "--stale", "1d")
    assert refused.returncode == 2
    assert "SLUICEWAY_DATABASE_URL=" in refused.stderr
