"""``enqueue``'s sources against the real services, through the CLI: a SQL query's rows
(read-only, NULLs skipped and counted), the pipeline's stale rows, ``--dry-run``, and an
upstream's listing (``--http``) served in-process by the sample API or a scripted upstream."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from aio_pika.abc import AbstractConnection
from aiohttp import web

from sluiceway_common import codec, store, topology
from sluiceway_common.sink import quote
from sluiceway_sample_api.data import is_missing, listed_key
from sluiceway_sample_api.server import Behaviour, make_app
from tests.conftest import ServiceUrls
from tests.integration.helpers import (
    depth,
    drain,
    eventually,
    http_server,
    running_fetcher,
    running_writer,
)
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


async def test_a_stale_refresh_fetches_exactly_the_stale_keys_again_and_their_rows_advance(
    services: ServiceUrls, database_url: str, pipeline: str, db: Any,
    amqp_connection: AbstractConnection,
) -> None:  # fmt: skip
    ages = {"fresh": "1 hour", "yesterday": "30 hours", "last-week": "8 days"}
    for key, age in ages.items():
        await db.execute(
            "INSERT INTO records (pipeline, key, payload, fetched_at) "
            "VALUES ($1, $2, '{\"old\": true}', now() - $3::text::interval)",
            pipeline, key, age,
        )  # fmt: skip
    before = dict(await db.fetch(
        "SELECT key, fetched_at FROM records WHERE pipeline = $1", pipeline))  # fmt: skip
    asked: list[str] = []

    async def user(request: web.Request) -> web.Response:
        asked.append(request.match_info["key"])
        return web.json_response({"id": request.match_info["key"], "old": False})

    app = web.Application()
    app.router.add_get("/users/{key}", user)
    async with (
        http_server(app) as base,
        running_fetcher(services.amqp, services.redis, pipeline, base + "/users/{key}"),
        running_writer(database_url, services.amqp, pipeline, batch_size=10, batch_timeout=0.05),
    ):
        result = sluiceway(services, database_url, pipeline, "enqueue", "--stale", "24h")
        assert result.returncode == 0, result.stderr

        async def refreshed() -> bool:
            rows = await db.fetch(
                "SELECT key FROM records WHERE pipeline = $1 AND payload->>'old' = 'false'",
                pipeline,
            )
            return {row["key"] for row in rows} == {"yesterday", "last-week"}

        await eventually(refreshed, what="the two stale rows written again")
    assert sorted(asked) == ["last-week", "yesterday"]  # the fresh key was not fetched
    after = dict(await db.fetch(
        "SELECT key, fetched_at FROM records WHERE pipeline = $1", pipeline))  # fmt: skip
    assert after["fresh"] == before["fresh"]
    for key in ("yesterday", "last-week"):
        assert after[key] > before["fresh"] > before[key]
    again = sluiceway(services, database_url, pipeline, "enqueue", "--stale", "24h", "--dry-run")
    assert "0 keys would be queued" in again.stdout  # nothing is stale any more


@pytest.fixture
async def sink_schema(db: Any, pipeline: str) -> AsyncIterator[str]:
    """A schema of this test's own whose name needs quotes, as SQL writes it."""
    quoted = quote(f"Sink Data {pipeline}")
    await db.execute(f"CREATE SCHEMA {quoted}")
    try:
        yield quoted
    finally:
        await db.execute(f"DROP SCHEMA {quoted} CASCADE")


SINK_AGES = {1: "12 hours", 2: "25 hours", 3: "8 days", 4: "31 days", 9: "40 days", 10: "40 days"}


@pytest.mark.parametrize("version_type", ["timestamptz", "timestamp"])
async def test_stale_over_a_sink_reads_the_sink_tables_versions_oldest_first(
    services: ServiceUrls, database_url: str, pipeline: str, db: Any, sink_schema: str,
    amqp_connection: AbstractConnection, version_type: str,
) -> None:  # fmt: skip
    table = f'{sink_schema}."Users"'
    await db.execute(f'CREATE TABLE {table} (id bigint PRIMARY KEY, "Seen At" {version_type}, '
                     "login text)")  # fmt: skip
    # A timestamp column holds fetched_at at UTC, as the writer writes it.
    at = "now() - $2::text::interval"
    at = at if version_type == "timestamptz" else f"({at}) AT TIME ZONE 'UTC'"
    for key, age in SINK_AGES.items():
        await db.execute(f'INSERT INTO {table} (id, "Seen At") VALUES ($1, {at})', key, age)
    await db.execute(f"INSERT INTO {table} (id) VALUES (5)")  # no version: not known stale
    # The pipeline's rows in records are not the sink's: they are not read.
    await db.execute(
        "INSERT INTO records (pipeline, key, payload, fetched_at) "
        "VALUES ($1, 'in-records', '{}', now() - interval '90 days')",
        pipeline,
    )
    env = {
        "SLUICEWAY_SINK_TABLE": table,
        "SLUICEWAY_SINK_KEY": "id",
        "SLUICEWAY_SINK_COLUMNS": '{"Seen At": "/fetched_at", "login": "/payload/login"}',
        "SLUICEWAY_SINK_VERSION": "Seen At",
    }
    # A zone far from UTC: a timestamp read in it would make the 12-hour-old row 26 hours old.
    far = f"{database_url}?timezone=Pacific/Kiritimati"
    result = sluiceway(services, far, pipeline, "enqueue", "--stale", "24h", env=env)
    assert result.returncode == 0, result.stderr
    # Stalest first, ties in the key column's order (9 before 10: bigint, not text).
    assert await queued(amqp_connection, pipeline) == ["9", "10", "4", "3", "2"]
    again = ("enqueue", "--stale", "7d", "--limit", "2", "--force")
    result = sluiceway(services, far, pipeline, *again, env=env)
    assert result.returncode == 0, result.stderr
    assert await queued(amqp_connection, pipeline) == ["9", "10"]


async def test_stale_over_a_sink_needs_its_version_and_its_table(
    services: ServiceUrls, database_url: str, pipeline: str, sink_schema: str
) -> None:
    env = {"SLUICEWAY_SINK_TABLE": f"{sink_schema}.users", "SLUICEWAY_SINK_KEY": "id",
           "SLUICEWAY_SINK_COLUMNS": '{"login": "/payload/login"}'}  # fmt: skip
    result = sluiceway(services, database_url, pipeline, "enqueue", "--stale", "1d", env=env)
    assert result.returncode == 2
    assert result.stderr.startswith(
        f"sluiceway enqueue: SLUICEWAY_SINK_VERSION is empty: --stale reads the sink table "
        f"{sink_schema}.users (SLUICEWAY_SINK_TABLE), and only its version column"
    ), result.stderr
    env |= {"SLUICEWAY_SINK_COLUMNS": '{"seen_at": "/fetched_at"}',
            "SLUICEWAY_SINK_VERSION": "seen_at"}  # fmt: skip
    result = sluiceway(services, database_url, pipeline, "enqueue", "--stale", "1d", env=env)
    assert result.returncode == 1
    schema = sink_schema.strip('"')
    assert f'--stale: the query is refused: relation "{schema}.users" does not exist' in (
        result.stderr
    ), result.stderr


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
        ((), "give one source: FILE|-, --sql QUERY, --stale AGE or --http URL"),
        (
            ("-", "--sql", "SELECT 1"),
            "give one source: FILE|-, --sql QUERY, --stale AGE or --http URL (got file, sql)",
        ),
        (("-", "--http", "http://h/"), "(got file, http)"),
        (("-", "--items", "/data"), "--items goes with --http"),
        (("--sql", "SELECT 1", "--cursor-param", "c"), "--cursor-param goes with --http"),
        (("--http", "http://h/", "--cursor-param", "c"), "--cursor-param goes with --next"),
        (("--http", "http://h/", "--items", "data"), "--items='data' is not a JSON pointer"),
        (("--http", "http://h/", "--key", "/a~2"), "--key='/a~2' is not a JSON pointer"),
        (("--http", "ftp://h/"), "--http='ftp://h/' is not allowed: an http(s) URL"),
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


# --- --http: an upstream's listing -------------------------------------------------------------


async def listing_run(
    services: ServiceUrls, database_url: str, pipeline: str, *args: str
) -> subprocess.CompletedProcess[str]:
    """``sluiceway enqueue --http …`` in a thread, so that this loop serves the upstream."""
    return await asyncio.to_thread(sluiceway, services, database_url, pipeline, "enqueue",
                                   "--http", *args)  # fmt: skip


USERS = 250  # 7 pages of 40


@pytest.mark.parametrize(
    ("query", "flags"),
    [
        ("", ("--items", "/data", "--key", "/id", "--next", "/next", "--cursor-param", "cursor")),
        ("&style=url", ("--items", "/data", "--key", "/id", "--next", "/next")),
        ("&style=link", ()),  # bare keys, Link: <relative URL>; rel="next"
    ],
    ids=["cursor", "next-url", "link-header"],
)
async def test_http_queues_every_key_of_the_listing_once_in_each_paging_style(
    services: ServiceUrls, database_url: str, pipeline: str, amqp_connection: AbstractConnection,
    query: str, flags: tuple[str, ...],
) -> None:  # fmt: skip
    behaviour = Behaviour(users=USERS, not_found_rate=0.05)
    async with http_server(make_app(behaviour)) as base:
        result = await listing_run(services, database_url, pipeline,
                                   f"{base}/users?limit=40{query}", *flags)  # fmt: skip
    assert result.returncode == 0, result.stderr
    expected = [listed_key(i) for i in range(USERS) if not is_missing(listed_key(i), 0.05)]
    assert await queued(amqp_connection, pipeline) == expected
    assert f"enqueued {len(expected)} keys to" in result.stderr
    assert behaviour.served[200] == 7  # one request a page


class Upstream:
    """Pages ``/p/1`` … of keys, each linking to the next (``Link``, relative); ``script``
    holds, per page, the answers its next requests get before the page itself (status and
    headers); ``loop_to`` makes the last page link back to that page."""

    def __init__(self, pages: list[list[str]], loop_to: int | None = None) -> None:
        self.pages = pages
        self.loop_to = loop_to
        self.script: dict[int, list[tuple[int, dict[str, str]]]] = {}
        self.seen: list[tuple[int, float, str | None]] = []  # page, loop time, Authorization

    def app(self) -> web.Application:
        async def page(request: web.Request) -> web.Response:
            number = int(request.match_info["n"])
            loop = asyncio.get_running_loop()
            self.seen.append((number, loop.time(), request.headers.get("Authorization")))
            if self.script.get(number):
                status, headers = self.script[number].pop(0)
                return web.json_response({"error": "scripted"}, status=status, headers=headers)
            following = number + 1 if number < len(self.pages) else self.loop_to
            links = {"Link": f'</p/{following}>; rel="next"'} if following else {}
            return web.json_response(self.pages[number - 1], headers=links)

        app = web.Application()
        app.router.add_get("/p/{n}", page)
        return app

    def requests_for(self, number: int) -> int:
        return sum(seen == number for seen, _, _ in self.seen)


PAGES = [["a1", "a2"], ["b1", "b2"], ["c1", "c2"], ["d1"]]
HEADERS = '{"Authorization": "Bearer t0ken"}'


async def test_http_a_page_that_is_refused_stops_the_run_with_its_url_and_the_count(
    services: ServiceUrls, database_url: str, pipeline: str, amqp_connection: AbstractConnection
) -> None:
    upstream = Upstream(PAGES)
    upstream.script[3] = [(404, {})]
    async with http_server(upstream.app()) as base:
        result = await listing_run(services, database_url, pipeline, f"{base}/p/1",
                                   "--source-headers", HEADERS)  # fmt: skip
    assert result.returncode == 1
    said = (
        f"sluiceway enqueue: --http: {base}/p/3: HTTP 404 Not Found; 4 keys before it were queued"
    )
    assert result.stderr.strip().splitlines()[-1] == said
    assert await queued(amqp_connection, pipeline) == ["a1", "a2", "b1", "b2"]
    assert upstream.requests_for(3) == 1  # a 404 is not tried again
    assert {auth for _, _, auth in upstream.seen} == {"Bearer t0ken"}  # the pipeline's headers
    assert "t0ken" not in result.stderr


async def test_http_a_page_failing_on_every_attempt_stops_after_the_attempts(
    services: ServiceUrls, database_url: str, pipeline: str, amqp_connection: AbstractConnection
) -> None:
    upstream = Upstream(PAGES)
    upstream.script[2] = [(500, {})] * 5
    async with http_server(upstream.app()) as base:
        result = await listing_run(services, database_url, pipeline, f"{base}/p/1",
                                   "--max-attempts", "2")  # fmt: skip
    assert result.returncode == 1
    assert (f"--http: {base}/p/2: HTTP 500 Internal Server Error (2 attempts); 2 keys before "
            "it were queued") in result.stderr  # fmt: skip
    assert upstream.requests_for(2) == 2
    assert await queued(amqp_connection, pipeline) == ["a1", "a2"]


async def test_http_a_listing_that_loops_stops_with_a_clear_error(
    services: ServiceUrls, database_url: str, pipeline: str, amqp_connection: AbstractConnection
) -> None:
    upstream = Upstream(PAGES[:2], loop_to=1)
    async with http_server(upstream.app()) as base:
        result = await listing_run(services, database_url, pipeline, f"{base}/p/1")
    assert result.returncode == 1
    assert (f"--http: {base}/p/2: the next page {base}/p/1 was listed already: the listing "
            "loops; 4 keys before it were queued") in result.stderr  # fmt: skip
    assert await queued(amqp_connection, pipeline) == ["a1", "a2", "b1", "b2"]


async def test_http_a_retry_after_pauses_the_pipeline_and_the_page_is_tried_again(
    services: ServiceUrls, database_url: str, pipeline: str, amqp_connection: AbstractConnection,
    redis_client: aioredis.Redis,
) -> None:  # fmt: skip
    upstream = Upstream(PAGES)
    upstream.script[2] = [(429, {"Retry-After": "2"})]
    rate = store.RateKeys(redis_client, pipeline)

    async def paused() -> bool:
        return (await rate.read()).paused_for > 0

    async with http_server(upstream.app()) as base:
        run = asyncio.create_task(listing_run(services, database_url, pipeline, f"{base}/p/1"))
        # The pause is the pipeline's, in Redis: every fetcher waits it out too.
        await eventually(paused, what="the pipeline paused")
        result = await run
    assert result.returncode == 0, result.stderr
    assert "pausing the pipeline" in result.stderr
    assert await queued(amqp_connection, pipeline) == [k for page in PAGES for k in page]
    (asked, _), (again, _) = [(at, n) for n, at, _ in upstream.seen if n == 2]
    assert again - asked >= 1.5  # waited for the pause (a lower bound: slowness only adds)


async def test_http_listing_requests_take_their_slots_from_the_pipelines_shared_limit(
    services: ServiceUrls, database_url: str, pipeline: str, amqp_connection: AbstractConnection,
    redis_client: aioredis.Redis,
) -> None:  # fmt: skip
    rate = store.RateKeys(redis_client, pipeline)
    assert await redis_client.get(rate.last) is None
    # The pipeline's limit, set as `sluiceway rate set 2` does, rules the listing as it rules
    # every fetcher; its own SLUICEWAY_RATE_LIMIT (1000 here) applies only without one.
    await rate.set_override(2)
    upstream = Upstream(PAGES)
    async with http_server(upstream.app()) as base:
        result = await listing_run(services, database_url, pipeline, f"{base}/p/1",
                                   "--rate-limit", "1000")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert await redis_client.get(rate.last) is not None  # the limiter's state: slots taken
    times = [at for _, at, _ in upstream.seen]
    # 4 pages at 2/s: slots half a second apart, 1.5 s from the first to the last (a lower
    # bound, less a margin for one request reaching the upstream later than its slot).
    assert times[-1] - times[0] >= 1.2
