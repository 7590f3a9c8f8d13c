"""``sluiceway writer`` and ``sluiceway migrate``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

import asyncpg
import sqlalchemy.exc

from sluiceway_common import logs, settings, topology
from sluiceway_common.amqp import BROKER_ERRORS
from sluiceway_common.cli import Command
from sluiceway_common.lifecycle import run_until_signalled
from sluiceway_common.service import Service
from sluiceway_writer import metrics, schema
from sluiceway_writer.batcher import Batcher
from sluiceway_writer.config import WriterSettings
from sluiceway_writer.consumer import DatabaseUnavailable, Delivery, Writer
from sluiceway_writer.merger import Merger
from sluiceway_writer.sink import (
    DATABASE_ERRORS,
    RECORDS,
    SERVER_SETTINGS,
    Sink,
    describe,
    prepare_connection,
    sink_target,
)

log = logging.getLogger(__name__)


async def serve(config: WriterSettings, stop: asyncio.Event) -> int:
    """Write until ``stop`` is set; serve metrics and probes meanwhile (when a port is set)."""
    queues = topology.Queues(config.pipeline)
    async with Service("writer", config.metrics_port) as service:
        # One connection writes batches and one merges (buffered mode); the third leaves the
        # readiness check a connection while both are busy.
        pool = await service.reach(
            "PostgreSQL",
            config.database_url,
            asyncpg.create_pool(
                config.database_url, min_size=1, max_size=3, init=prepare_connection,
                server_settings=SERVER_SETTINGS,
            ),
        )  # fmt: skip
        target = RECORDS
        async with pool.acquire() as conn:
            revision = await schema.check(conn)
            if (sink := config.sink) is not None:
                target = sink_target(await schema.check_sink(conn, sink))
        await service.connect(config.amqp_url)
        # Two batches' worth, so one fills while the other is written. A packed message holds
        # several rows, so this over-fetches for packed streams; the byte bound still caps
        # each batch.
        channel = await service.channel(prefetch=min(2 * config.batch_size, 65535))
        _, records_queue, _ = await topology.declare(channel, queues)
        batcher: Batcher[Delivery] = Batcher(
            config.batch_size, config.batch_timeout, config.batch_max_bytes
        )
        registry = service.observer.registry
        writer = Writer(
            channel,
            queues,
            Sink(pool, config.pipeline, config.write_mode, target),
            batcher,
            stop,
            metrics.Timings.create(registry, queues.pipeline),
        )
        merger = merging = None
        if config.write_mode == "buffered":
            merger = Merger(
                pool, config.pipeline, config.merge_interval,
                target=target, dead_letter=writer.dead_letter,
            )  # fmt: skip
            merging = asyncio.create_task(merger.run(stop))
        metrics.export(registry, queues.pipeline, writer, batcher, merger)
        try:
            async with service.consuming(
                records_queue, writer.on_message, postgresql=lambda: schema_current(pool, revision)
            ):
                log.info(
                    "writing %s to PostgreSQL (schema %s, %s mode) into %s, batches of %d or %gs",
                    queues.records,
                    revision,
                    config.write_mode,
                    target.name,
                    config.batch_size,
                    config.batch_timeout,
                )
                await writer.run()
            await writer.drain()
        except DatabaseUnavailable as exc:
            # Closing the connection returns every unacked message to the queue.
            log.error("stopping with batches unwritten, returned to the queue: %s", exc)
            return 1
        finally:
            if merging is not None:
                await merging
        if merger is not None:
            await final_merge(merger)
    log.info(
        "writer stopped: %d rows written in %d batches, %d dead-lettered "
        "(%d undecodable, %d refused by PostgreSQL); %d write retries",
        writer.written,
        writer.batches,
        writer.dead,
        writer.dead_letters["undecodable"],
        writer.dead_letters["refused"],
        writer.write_retries,
    )
    return 0


async def schema_current(pool: asyncpg.Pool, revision: str) -> None:
    """A readiness check: the database answers and its schema is still at ``revision``."""
    async with pool.acquire() as conn:
        await schema.check(conn, revision)


async def final_merge(merger: Merger) -> None:
    """Merge what this writer buffered last, so a pipeline's last writer leaves nothing behind;
    rows that stay buffered (another merger busy, database away) wait for the next merger."""
    try:
        await merger.drain()
    except (*DATABASE_ERRORS, *BROKER_ERRORS) as exc:
        log.warning("last merge failed; rows stay buffered for the next merger: %s", describe(exc))


def configure_writer(parser: argparse.ArgumentParser) -> None:
    settings.add_options(parser, WriterSettings.options())


def run_writer(args: argparse.Namespace) -> int:
    config = WriterSettings.from_args(args)
    logs.setup(config.log_level, secrets=config.secrets())
    try:
        return run_until_signalled(lambda stop: serve(config, stop))
    except schema.SchemaError as exc:
        print(f"sluiceway writer: {exc}", file=sys.stderr)
        return 3


MIGRATE_OPTIONS = (settings.DATABASE_URL, settings.LOG_LEVEL)
DUPLICATE_TABLE = "42P07"  # SQLSTATE: a revision creating a table the database already has


def configure_migrate(parser: argparse.ArgumentParser) -> None:
    settings.add_options(parser, MIGRATE_OPTIONS)
    parser.add_argument(
        "--stamp",
        action="store_true",
        help="for tables made by hand: record the head revision without running a migration, "
        "once the tables are found to be what the revisions make them (exit 3 naming each "
        "difference otherwise)",
    )


def run_migrate(args: argparse.Namespace) -> int:
    values = settings.resolve(args, MIGRATE_OPTIONS)
    logs.setup(values["log_level"], secrets=settings.secret_values(MIGRATE_OPTIONS, values))
    logging.getLogger("alembic").setLevel(values["log_level"])
    # env.py's comparison plugins announce themselves as it loads them, and --stamp's
    # comparison each difference it finds, which its refusal says in one line: no migration
    # news, so they stay at the libraries' level.
    for chatty in ("alembic.runtime.plugins", "alembic.autogenerate"):
        logging.getLogger(chatty).setLevel(logging.getLogger().level)
    done = "at"
    try:
        if not args.stamp:
            schema.upgrade(values["database_url"])
        elif schema.stamp(values["database_url"]):
            done = "stamped at"
        else:
            done = "already at"
    except schema.StampRefused as exc:
        print(f"sluiceway migrate: {exc}", file=sys.stderr)
        return 3
    except schema.SchemaError as exc:
        print(f"sluiceway migrate: {exc}", file=sys.stderr)
        return 1
    except (OSError, asyncpg.PostgresError, sqlalchemy.exc.DBAPIError) as exc:
        cause = getattr(exc, "orig", None) or exc
        if getattr(cause, "sqlstate", None) == DUPLICATE_TABLE:
            print(
                f"sluiceway migrate: {cause}, though the database has no revision: if its "
                "tables were made by hand, `sluiceway migrate --stamp` checks them and "
                "records the revision",
                file=sys.stderr,
            )
            return 1
        print(
            f"sluiceway migrate: cannot reach the database at "
            f"{settings.mask(values['database_url'])}: {type(cause).__name__}: {cause}",
            file=sys.stderr,
        )
        return 1
    print(f"database schema {done} revision {schema.head()}")
    return 0


WRITER = Command("writer", "land records in PostgreSQL in batches", configure_writer, run_writer)
MIGRATE = Command(
    "migrate",
    "bring the database schema to head (alembic upgrade head), or with --stamp record head "
    "in a database whose tables were made by hand",
    configure_migrate,
    run_migrate,
)
