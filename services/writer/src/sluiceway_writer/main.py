"""``sluiceway writer`` and ``sluiceway migrate``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

import asyncpg
import sqlalchemy.exc

from sluiceway_common import amqp, logs, settings, topology
from sluiceway_common.cli import Command
from sluiceway_common.lifecycle import run_until_signalled
from sluiceway_writer import schema
from sluiceway_writer.batcher import Batcher
from sluiceway_writer.config import OPTIONS, WriterSettings
from sluiceway_writer.consumer import DatabaseUnavailable, Writer
from sluiceway_writer.sink import Sink, prepare_connection

log = logging.getLogger(__name__)


async def serve(config: WriterSettings, stop: asyncio.Event) -> int:
    queues = topology.Queues(config.pipeline)
    pool = await asyncpg.create_pool(
        config.database_url, min_size=1, max_size=2, init=prepare_connection
    )
    try:
        async with pool.acquire() as conn:
            revision = await schema.check(conn)
        connection = await amqp.connect(config.amqp_url, "writer")
        try:
            channel = await connection.channel(publisher_confirms=True)
            await channel.set_qos(prefetch_count=2 * config.batch_size)
            _, records_queue, _ = await topology.declare(channel, queues)
            writer = Writer(
                channel,
                queues,
                Sink(pool, config.pipeline),
                Batcher(config.batch_size, config.batch_timeout),
            )
            tag = await records_queue.consume(writer.on_message)
            log.info(
                "writing %s to PostgreSQL (schema %s), batches of %d or %gs",
                queues.records,
                revision,
                config.batch_size,
                config.batch_timeout,
            )
            await writer.run(stop)
            await records_queue.cancel(tag)
            # Let deliveries already on their way reach the batcher before the last flush.
            await asyncio.sleep(0.05)
            try:
                await writer.drain()
            except DatabaseUnavailable as exc:
                log.error("stopping with a batch unwritten, returned to the queue: %s", exc)
                return 1
            await channel.close()
        finally:
            await connection.close()
    finally:
        await pool.close()
    log.info(
        "writer stopped: %d rows written in %d batches, %d dead-lettered",
        writer.written,
        writer.batches,
        writer.dead,
    )
    return 0


def configure_writer(parser: argparse.ArgumentParser) -> None:
    settings.add_options(parser, OPTIONS)


def run_writer(args: argparse.Namespace) -> int:
    config = WriterSettings.from_args(args)
    logs.setup(config.log_level)
    try:
        return run_until_signalled(lambda stop: serve(config, stop))
    except schema.SchemaError as exc:
        print(f"sluiceway writer: {exc}", file=sys.stderr)
        return 3


MIGRATE_OPTIONS = (settings.DATABASE_URL, settings.LOG_LEVEL)


def configure_migrate(parser: argparse.ArgumentParser) -> None:
    settings.add_options(parser, MIGRATE_OPTIONS)


def run_migrate(args: argparse.Namespace) -> int:
    values = settings.resolve(args, MIGRATE_OPTIONS)
    logs.setup(values["log_level"])
    logging.getLogger("alembic").setLevel(values["log_level"])
    try:
        schema.upgrade(values["database_url"])
    except schema.SchemaError as exc:
        print(f"sluiceway migrate: {exc}", file=sys.stderr)
        return 1
    except (OSError, asyncpg.PostgresError, sqlalchemy.exc.DBAPIError) as exc:
        cause = getattr(exc, "orig", None) or exc
        print(
            f"sluiceway migrate: cannot reach the database at "
            f"{settings.mask(values['database_url'])}: {type(cause).__name__}: {cause}",
            file=sys.stderr,
        )
        return 1
    print(f"database schema at revision {schema.head()}")
    return 0


WRITER = Command("writer", "land records in PostgreSQL in batches", configure_writer, run_writer)
MIGRATE = Command(
    "migrate",
    "bring the database schema to head (alembic upgrade head)",
    configure_migrate,
    run_migrate,
)
