"""``sluiceway enqueue``: one fetch task per key, from one source a run (see
:mod:`sluiceway_admin.sources` and :mod:`sluiceway_admin.listing`): lines of a file or
standard input, a SQL query's rows, the pipeline's stale rows, or the upstream's listing.
``--dry-run`` counts and shows the keys and queues nothing."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shlex
import signal
import sys
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, BinaryIO, TextIO

import asyncpg
import redis.asyncio as aioredis

from sluiceway_admin.listing import Listing, Requests, http_keys, pointer
from sluiceway_admin.progress import Progress
from sluiceway_admin.sources import (
    BadInput,
    Chunk,
    Skipped,
    file_keys,
    parse_age,
    sql_keys,
    stale_keys,
)
from sluiceway_common import amqp, codec, logs, settings, sink, store, topology
from sluiceway_common.cli import Command
from sluiceway_common.lifecycle import StartupError, reach
from sluiceway_common.publisher import ConfirmedPublisher
from sluiceway_common.settings import ConfigError

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """Publishing stopped part way, by the broker or by a signal (``by``); ``resume_line``
    is the first line (or row) not known to be queued."""

    def __init__(
        self, cause: BaseException, confirmed: int, resume_line: int, by: str = "the broker"
    ) -> None:
        super().__init__(str(cause) or type(cause).__name__)
        self.confirmed = confirmed
        self.resume_line = resume_line
        self.by = by


# How long a run stopped by a signal waits for the broker to confirm what it sent.
STOP_DRAIN_SECONDS = 5.0


@dataclass
class Tally:
    """What a run did so far: keys the broker confirmed, and keys passed over because a task
    of theirs was already in flight. Kept up to date while it runs, so a run that stops part
    way can still say how far it came."""

    queued: int = 0
    in_flight: int = 0


async def enqueue(
    amqp_url: str,
    redis_url: str,
    pipeline: str,
    source: AsyncIterator[Chunk],
    show: Progress,
    *,
    lifetime: float,
    force: bool = False,
    tally: Tally | None = None,
) -> Tally:
    """Publish a fetch task per key of ``source`` that is not in flight already (every key
    with ``force``), marking each in flight for ``lifetime`` seconds; return the tally.

    On a broker failure, or when SIGTERM (or Ctrl-C) stops it, raise ``Interrupted``, saying
    from which line a rerun loses nothing, after releasing the marks of the keys not
    confirmed: a feed's pod stopped part way leaves no key marked that was not queued. A
    source that fails part way raises its own error once what it gave before is confirmed.
    """
    tally = tally or Tally()
    queues = topology.Queues(pipeline)
    client = aioredis.Redis.from_url(redis_url)
    inflight = store.InFlight(client, pipeline)
    try:
        await reach("Redis", redis_url, client.ping())
        # Not a reconnecting connection: a run the broker cut stops and says where to resume,
        # where one that waited to reconnect would hang while nothing awaits a confirm.
        connection = await reach("RabbitMQ", amqp_url, amqp.connect_plain(amqp_url, "enqueue"))
    except BaseException:
        await client.aclose()
        raise
    # The line and key of each key published and perhaps not yet confirmed, oldest first: a
    # window's worth and one read's keys at most.
    unconfirmed: deque[tuple[int, str]] = deque()
    pending: deque[str] = deque()  # claimed in this chunk, not yet published
    published = 0
    next_line = 1

    def resume_line() -> int:
        """The first line whose key the broker has not confirmed (all before it it has)."""
        while len(unconfirmed) > published - publisher.confirmed:
            unconfirmed.popleft()
        return unconfirmed[0][0] if unconfirmed else next_line

    # SIGTERM (a pod stopped) cancels the run as Ctrl-C does, so that it gives its marks back.
    # The flag catches a cancellation that a library swallowed while it waited.
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    assert task is not None
    stopping = asyncio.Event()

    def stop() -> None:
        stopping.set()
        task.cancel()

    loop.add_signal_handler(signal.SIGTERM, stop)
    try:
        channel = await amqp.publishing_channel(connection)
        await topology.declare(channel, queues)
        publisher = ConfirmedPublisher(channel, queues.fetch)
        try:
            try:
                async for chunk in source:
                    if stopping.is_set():
                        raise asyncio.CancelledError
                    lines: dict[str, int] = {}  # each key's first line in the chunk
                    for number, key in chunk:
                        lines.setdefault(key, number)
                    await claim_into(pending, inflight, list(lines), lifetime, force)
                    tally.in_flight += len(chunk) - len(pending)
                    while pending:
                        # Counted as published before publish() buffers it, so that a stop
                        # anywhere in there counts it as sent and not confirmed.
                        key = pending.popleft()
                        unconfirmed.append((lines[key], key))
                        published += 1
                        next_line = lines[key] + 1
                        await publisher.publish(codec.encode_task(key))
                        tally.queued = publisher.confirmed
                        show.update(tally.queued)
                    next_line = chunk[-1][0] + 1  # keys in flight after the last published
                    # The next read may wait on a slow pipe or query: what was read goes first.
                    await publisher.flush()
                    resume_line()  # forget the lines of the keys confirmed by now
            except (BadInput, asyncpg.PostgresError, OSError):
                await publisher.drain()  # "the keys before it were queued" holds
                raise
            finally:
                tally.queued = publisher.confirmed
            await publisher.drain()
            tally.queued = publisher.confirmed
        except (*amqp.BROKER_ERRORS, asyncio.CancelledError) as exc:
            signalled = isinstance(exc, asyncio.CancelledError)
            if signalled:
                # What is sent may still be confirmed: wait a little for it, so that fewer
                # keys are given back that were queued after all.
                with contextlib.suppress(*amqp.BROKER_ERRORS, TimeoutError):
                    async with asyncio.timeout(STOP_DRAIN_SECONDS):
                        await publisher.drain()
            line, confirmed = resume_line(), publisher.confirmed
            tally.queued = confirmed
            await release(inflight, [*pending, *(key for _, key in unconfirmed)])
            if signalled:
                cause = RuntimeError("SIGTERM or Ctrl-C")
                raise Interrupted(cause, confirmed, line, by="a signal") from None
            raise Interrupted(exc, confirmed, line) from exc
        finally:
            show.update(tally.queued, final=True)
        return tally
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        await connection.close()
        await client.aclose()


async def claim_into(
    pending: deque[str], inflight: store.InFlight, keys: list[str], lifetime: float, force: bool
) -> None:
    """Add to ``pending`` the keys of ``keys`` that ``inflight`` claims, even when the run is
    stopped while Redis answers: Redis may have marked them by then, and only its answer says
    which keys the stop must give back."""
    claiming = asyncio.ensure_future(inflight.claim(keys, lifetime, force))
    try:
        await asyncio.shield(claiming)
    finally:
        if not claiming.done():  # stopped meanwhile: the answer is a round trip away
            await asyncio.wait([claiming])
        if claiming.done() and not claiming.cancelled() and claiming.exception() is None:
            pending.extend(claiming.result())


async def release(inflight: store.InFlight, keys: list[str]) -> None:
    """Give up the marks of keys that may not have been queued, so a rerun queues them."""
    try:
        await inflight.release(keys)
    except aioredis.RedisError as exc:
        log.warning("%d keys not queued stay marked in flight until their marks lapse, "
                    "Redis: %s", len(keys), exc)  # fmt: skip


def optional_url(text: str) -> str:
    return settings.url("postgresql", "postgres")(text) if text.strip() else ""


SQL_URL = settings.Option(
    "SLUICEWAY_SQL_URL",
    optional_url,
    "--sql: the database the query runs on, instead of SLUICEWAY_DATABASE_URL",
    allowed="a postgresql:// URL with a host, or empty for SLUICEWAY_DATABASE_URL",
    default="",
    secret=True,
)


def feed_name(text: str) -> str:
    """A feed's name as the Pipeline's ``spec.feeds`` gives it (a DNS label, 1-63); empty for
    a run that is no feed's."""
    return settings.pipeline_name(text) if text else ""


FEED = settings.Option(
    "SLUICEWAY_FEED",
    feed_name,
    "the Pipeline feed this run is (set by its CronJob): its outcome is kept in Redis, "
    "where the operator reads it",
    allowed="a feed name: 1-63 of a-z 0-9 -, starting and ending alphanumeric; or empty",
    default="",
)
OPTIONS = (
    settings.AMQP_URL, settings.REDIS_URL, settings.PIPELINE, settings.INFLIGHT_TIMEOUT, FEED,
    settings.LOG_LEVEL,
)  # fmt: skip
# What each source reads besides: a run resolves (and keeps secret) only what it uses, so a
# file run neither needs nor refuses a database setting.
SOURCE_OPTIONS = {"file": (), "sql": (settings.DATABASE_URL, SQL_URL),
                  "stale": (settings.DATABASE_URL, *sink.OPTIONS),
                  "http": (settings.SOURCE_HEADERS, settings.RATE_LIMIT,
                           settings.MAX_ATTEMPTS, settings.REQUEST_TIMEOUT)}  # fmt: skip
# The flags that shape a --http listing, and only that.
LISTING_FLAGS = {"items": "--items", "key": "--key", "next": "--next",
                 "cursor_param": "--cursor-param"}  # fmt: skip
DRY_RUN_SHOWN = 10  # keys a dry run prints


async def dry_run(source: AsyncIterator[Chunk], out: TextIO) -> int:
    """Count the keys of ``source`` and print the first few; queue nothing."""
    count = 0
    async for chunk in source:
        for _, key in chunk[: max(DRY_RUN_SHOWN - count, 0)]:
            out.write(key + "\n")
        count += len(chunk)
    return count


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE|-", nargs="?",
                        help="keys, one per line; - reads stdin")  # fmt: skip
    parser.add_argument("--sql", metavar="QUERY",
                        help="the first column of each row of QUERY is a key (cast to text; "
                        "NULLs skipped); run read-only on SLUICEWAY_SQL_URL, else "
                        "SLUICEWAY_DATABASE_URL")  # fmt: skip
    parser.add_argument("--stale", metavar="AGE", type=stale_age,
                        help="the pipeline's keys whose row was fetched longer than AGE ago "
                        "(90s, 30m, 24h, 7d), oldest first; with SLUICEWAY_SINK_TABLE, the "
                        "sink table's keys whose SLUICEWAY_SINK_VERSION is that old")  # fmt: skip
    parser.add_argument("--limit", metavar="N", type=positive,
                        help="--stale: the N stalest only")  # fmt: skip
    parser.add_argument("--http", metavar="URL",
                        help="the upstream's listing endpoint: each page's items are keys; "
                        "pages follow Link rel=next, or --next")  # fmt: skip
    parser.add_argument("--items", metavar="POINTER",
                        help="--http: the JSON pointer of a page's array of items, e.g. /data "
                        "(default: the page is the array)")  # fmt: skip
    parser.add_argument("--key", metavar="POINTER",
                        help="--http: the key's JSON pointer in an item, e.g. /id (default: "
                        "the item, a string or number, is the key)")  # fmt: skip
    parser.add_argument("--next", metavar="POINTER",
                        help="--http: the JSON pointer of the next page's URL in a page (or "
                        "cursor, with --cursor-param); default: the Link header")  # fmt: skip
    parser.add_argument("--cursor-param", metavar="NAME",
                        help="--http --next: the value at --next is a cursor, sent as query "
                        "parameter NAME of the listing's URL")  # fmt: skip
    parser.add_argument("--dry-run", action="store_true",
                        help="count the keys and print the first ones; queue nothing (and "
                        "ask nobody which are in flight)")  # fmt: skip
    parser.add_argument("--force", action="store_true",
                        help="queue every key, also those already in flight")  # fmt: skip
    used = (option for options in SOURCE_OPTIONS.values() for option in options)
    settings.add_options(parser, tuple(dict.fromkeys((*used, *OPTIONS))))


def stale_age(text: str) -> float:
    try:
        return parse_age(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an age: expected a number and s, m, h or d (90s, 30m, 24h, 7d)"
        ) from None


def positive(text: str) -> int:
    try:
        return int(settings.integer(1, 2**63 - 1)(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 1") from None


def chosen_source(args: argparse.Namespace) -> str:
    """Which source the run reads: exactly one is given."""
    given = [name for name, value in (("file", args.file), ("sql", args.sql),
                                      ("stale", args.stale), ("http", args.http))
             if value is not None]  # fmt: skip
    if len(given) != 1:
        raise ConfigError("give one source: FILE|-, --sql QUERY, --stale AGE or --http URL"
                          + (f" (got {', '.join(given)})" if given else ""))  # fmt: skip
    if args.limit is not None and given != ["stale"]:
        raise ConfigError("--limit goes with --stale")
    for dest, flag in LISTING_FLAGS.items():
        if getattr(args, dest) is not None and given != ["http"]:
            raise ConfigError(f"{flag} goes with --http")
    if args.cursor_param is not None and args.next is None:
        raise ConfigError("--cursor-param goes with --next: the cursor is the value there")
    return given[0]


def stale_sink(values: dict[str, Any]) -> sink.SinkSpec | None:
    """The sink ``--stale`` reads instead of ``records``, if the settings name one; it needs
    the version column, the only one that says when a row was fetched."""
    found = sink.configured(values)
    if found is not None and found.version is None:
        raise ConfigError(
            f"SLUICEWAY_SINK_VERSION is empty: --stale reads the sink table "
            f"{found.table.written} (SLUICEWAY_SINK_TABLE), and only its version column "
            "(mapped to /fetched_at) says when a row was fetched; set it, or leave the table "
            "empty to read records"
        )
    return found


def http_listing(args: argparse.Namespace) -> Listing:
    """The listing ``--http`` and its flags describe."""
    try:
        url = settings.url("http", "https")(args.http)
    except ValueError:
        raise ConfigError(f"--http={args.http!r} is not allowed: an http(s) URL") from None
    pointers = {}
    for dest in ("items", "key", "next"):
        text = getattr(args, dest)
        try:
            pointers[dest] = None if text is None else pointer(text)
        except ValueError as exc:
            raise ConfigError(
                f"{LISTING_FLAGS[dest]}={text!r} is not a JSON pointer: {exc}"
            ) from None
    if args.cursor_param is not None and not args.cursor_param.strip():
        raise ConfigError("--cursor-param='' is not allowed: a query parameter's name")
    return Listing(url, **pointers, cursor_param=args.cursor_param)


def run(args: argparse.Namespace) -> int:
    kind = chosen_source(args)
    options = (*SOURCE_OPTIONS[kind], *OPTIONS)
    values = settings.resolve(args, options)
    if kind == "stale":
        values["sink"] = stale_sink(values)
    logs.setup(values["log_level"], secrets=settings.secret_values(options, values))
    started = datetime.now(UTC)
    tally = Tally()
    skipped = Skipped()
    error = read(args, kind, values, skipped, tally)
    if args.dry_run:
        if error is None:
            passed = f"; {skipped.blank:,} blank or NULL skipped" if skipped.blank else ""
            print(f"{tally.queued:,} keys would be queued{passed}; nothing was queued (--dry-run)")
        return 0 if error is None else 1
    if values["feed"]:
        run_record = {
            "started": started.isoformat(), "finished": datetime.now(UTC).isoformat(),
            "ok": error is None, "queued": tally.queued, "in_flight": tally.in_flight,
            "skipped": skipped.blank, "error": error,
        }  # fmt: skip
        asyncio.run(record_run(values["redis_url"], values["pipeline"], values["feed"], run_record))
    if error is not None:
        print(f"sluiceway enqueue: {error}", file=sys.stderr)
        return 1
    seconds = (datetime.now(UTC) - started).total_seconds()
    log.info(
        "enqueued %s keys to %s in %.1fs (%s/s); already in flight %s, not queued again%s",
        f"{tally.queued:,}",
        topology.Queues(values["pipeline"]).fetch,
        seconds,
        f"{tally.queued / max(seconds, 1e-9):,.0f}",
        f"{tally.in_flight:,}",
        f"; {skipped.blank:,} blank or NULL skipped" if skipped.blank else "",
    )
    return 0


def read(
    args: argparse.Namespace, kind: str, values: dict[str, Any], skipped: Skipped, tally: Tally
) -> str | None:
    """Read the source and queue its keys (count them, with ``--dry-run``); return None when
    done, else what stopped the run, for its error line."""
    with contextlib.ExitStack() as stack:
        if kind == "file":
            try:
                stream: BinaryIO = stack.enter_context(
                    sys.stdin.buffer if args.file == "-" else open(args.file, "rb")  # noqa: SIM115
                )
            except OSError as exc:
                return f"cannot read {args.file}: {exc.strerror}"
            where, source = args.file, file_keys(stream, skipped)
        elif kind == "sql":
            url = values["sql_url"] or values["database_url"]
            where, source = "--sql", sql_keys(url, args.sql, skipped)
        elif kind == "stale":
            url = values["database_url"]
            stale = stale_keys(url, values["pipeline"], args.stale, args.limit, values["sink"])
            where, source = "--stale", stale
        else:
            requests = Requests(values["redis_url"], values["pipeline"], values["source_headers"],
                                values["rate_limit"], values["max_attempts"],
                                values["request_timeout"])  # fmt: skip
            listed = http_keys(http_listing(args), requests, skipped)
            where, source = "--http", listed
        try:
            if args.dry_run:
                tally.queued = asyncio.run(dry_run(source, sys.stdout))
            else:
                asyncio.run(
                    enqueue(
                        values["amqp_url"], values["redis_url"], values["pipeline"], source,
                        Progress("queued", "keys"), lifetime=values["inflight_timeout"],
                        force=args.force, tally=tally,
                    )
                )  # fmt: skip
        except BadInput as exc:
            return f"{where}: {exc}{queued(args, tally)}"
        except asyncpg.PostgresError as exc:
            return f"{where}: the query failed: {logs.error_text(exc)}{queued(args, tally)}"
        except StartupError as exc:
            return str(exc)
        except Interrupted as exc:
            return (f"stopped by {exc.by} ({exc}) after {exc.confirmed:,} keys were "
                    f"confirmed; {resume_hint(kind, args.file, exc.resume_line)}  (keys queued "
                    "twice are fetched twice and stored once)")  # fmt: skip
    return None


def queued(args: argparse.Namespace, tally: Tally) -> str:
    """What a run that stopped on its source had queued, for its error line."""
    return "" if args.dry_run else f"; {tally.queued:,} keys before it were queued"


async def record_run(redis_url: str, pipeline: str, feed: str, run: dict[str, Any]) -> None:
    """Keep a feed run's outcome where the operator reads it; a Redis that is away costs
    only the Pipeline's report of this run, so it is a warning."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        await store.FeedRuns(client, pipeline).record(feed, run)
    except aioredis.RedisError as exc:
        log.warning("feed %s: cannot record this run in Redis: %s", feed, exc)
    finally:
        await client.aclose()


def resume_hint(kind: str, file: str | None, line: int) -> str:
    """How to go on after a broker failure without losing a key."""
    if kind != "file":
        return "run it again to queue the rest (the keys queued are in flight, so it skips them)"
    source = "-" if file == "-" else shlex.quote(str(file))
    return (f"every key before line {line:,} is queued. Resume with: tail -n +{line} {source} "
            "| sluiceway enqueue -")  # fmt: skip


COMMAND = Command("enqueue", "publish one fetch task per key", configure, run)
