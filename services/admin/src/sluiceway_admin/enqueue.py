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
import sys
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import BinaryIO, TextIO

import asyncpg

from sluiceway_admin.listing import Listing, PageFailed, Requests, http_keys, pointer
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
from sluiceway_common import amqp, codec, logs, settings, topology
from sluiceway_common.cli import Command
from sluiceway_common.lifecycle import reach
from sluiceway_common.publisher import ConfirmedPublisher
from sluiceway_common.settings import ConfigError

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """Publishing stopped part way; ``resume_line`` is the first line (or row) not known to
    be queued."""

    def __init__(self, cause: BaseException, confirmed: int, resume_line: int) -> None:
        super().__init__(str(cause) or type(cause).__name__)
        self.confirmed = confirmed
        self.resume_line = resume_line


async def enqueue(
    amqp_url: str, pipeline: str, source: AsyncIterator[Chunk], show: Progress
) -> int:
    """Publish a fetch task per key of ``source``; return how many the broker confirmed.

    On a broker failure raise ``Interrupted``, saying from which line a rerun loses nothing.
    """
    queues = topology.Queues(pipeline)
    connection = await reach("RabbitMQ", amqp_url, amqp.connect(amqp_url, "enqueue"))
    # The line of each key published and perhaps not yet confirmed, oldest first: a window's
    # worth and one read's keys at most.
    unconfirmed: deque[int] = deque()
    published = 0
    next_line = 1

    def resume_line() -> int:
        """The first line whose key the broker has not confirmed (all before it it has)."""
        while len(unconfirmed) > published - publisher.confirmed:
            unconfirmed.popleft()
        return unconfirmed[0] if unconfirmed else next_line

    try:
        channel = await amqp.publishing_channel(connection)
        await topology.declare(channel, queues)
        publisher = ConfirmedPublisher(channel, queues.fetch)
        try:
            async for chunk in source:
                for number, key in chunk:
                    await publisher.publish(codec.encode_task(key))
                    unconfirmed.append(number)
                    published += 1
                    next_line = number + 1
                    show.update(publisher.confirmed)
                # The next read may wait on a slow pipe or query: what was read goes out first.
                await publisher.flush()
                resume_line()  # forget the lines of the keys confirmed by now
            await publisher.drain()
        except amqp.BROKER_ERRORS as exc:
            raise Interrupted(exc, publisher.confirmed, resume_line()) from exc
        finally:
            show.update(publisher.confirmed, final=True)
        return publisher.confirmed
    finally:
        await connection.close()


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
OPTIONS = (settings.AMQP_URL, settings.PIPELINE, settings.LOG_LEVEL)
# What each source reads besides: a run resolves (and keeps secret) only what it uses, so a
# file run neither needs nor refuses a database setting.
SOURCE_OPTIONS = {"file": (), "sql": (settings.DATABASE_URL, SQL_URL),
                  "stale": (settings.DATABASE_URL,),
                  "http": (settings.REDIS_URL, settings.SOURCE_HEADERS, settings.RATE_LIMIT,
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
                        "(90s, 30m, 24h, 7d), oldest first")  # fmt: skip
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
                        help="count the keys and print the first ones; queue nothing")  # fmt: skip
    every = dict.fromkeys(option for used in SOURCE_OPTIONS.values() for option in used)
    settings.add_options(parser, (*every, *OPTIONS))


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


async def until_failure(
    source: AsyncIterator[Chunk], failed: list[PageFailed]
) -> AsyncIterator[Chunk]:
    """``source`` until a page of it fails; the failure goes to ``failed``. The source then
    ends as if the listing did, so that enqueue() drains what went out before it and returns
    how many the broker confirmed, which the error line states."""
    try:
        async for chunk in source:
            yield chunk
    except PageFailed as exc:
        failed.append(exc)


def run(args: argparse.Namespace) -> int:
    kind = chosen_source(args)
    options = (*SOURCE_OPTIONS[kind], *OPTIONS)
    values = settings.resolve(args, options)
    logs.setup(values["log_level"], secrets=settings.secret_values(options, values))
    started = time.monotonic()
    skipped = Skipped()
    page_failed: list[PageFailed] = []
    with contextlib.ExitStack() as stack:
        if kind == "file":
            try:
                stream: BinaryIO = stack.enter_context(
                    sys.stdin.buffer if args.file == "-" else open(args.file, "rb")  # noqa: SIM115
                )
            except OSError as exc:
                print(f"sluiceway enqueue: cannot read {args.file}: {exc.strerror}",
                      file=sys.stderr)  # fmt: skip
                return 1
            where, source = args.file, file_keys(stream, skipped)
        elif kind == "sql":
            url = values["sql_url"] or values["database_url"]
            where, source = "--sql", sql_keys(url, args.sql, skipped)
        elif kind == "stale":
            url = values["database_url"]
            where, source = "--stale", stale_keys(url, values["pipeline"], args.stale, args.limit)
        else:
            requests = Requests(values["redis_url"], values["pipeline"], values["source_headers"],
                                values["rate_limit"], values["max_attempts"],
                                values["request_timeout"])  # fmt: skip
            listed = http_keys(http_listing(args), requests, skipped)
            where, source = "--http", until_failure(listed, page_failed)
        try:
            if args.dry_run:
                count = asyncio.run(dry_run(source, sys.stdout))
            else:
                show = Progress("enqueued", "keys")
                count = asyncio.run(enqueue(values["amqp_url"], values["pipeline"], source, show))
        except BadInput as exc:
            done = "" if args.dry_run else "; keys before it were enqueued"
            print(f"sluiceway enqueue: {where}: {exc}{done}", file=sys.stderr)
            return 1
        except asyncpg.PostgresError as exc:
            done = "" if args.dry_run else "; keys before the failure were enqueued"
            print(f"sluiceway enqueue: {where}: the query failed: {logs.error_text(exc)}{done}",
                  file=sys.stderr)  # fmt: skip
            return 1
        except Interrupted as exc:
            print(f"sluiceway enqueue: stopped by the broker ({exc}) after {exc.confirmed:,} "
                  f"keys were confirmed; {resume_hint(kind, args.file, exc.resume_line)}  "
                  "(keys queued twice are fetched twice and stored once)",
                  file=sys.stderr)  # fmt: skip
            return 1
    if page_failed:
        done = "listed (--dry-run: nothing was queued)" if args.dry_run else "queued"
        print(f"sluiceway enqueue: --http: {page_failed[0]}; {count:,} keys were {done}",
              file=sys.stderr)  # fmt: skip
        return 1
    seconds = time.monotonic() - started
    passed = f"; {skipped.blank:,} blank or NULL skipped" if skipped.blank else ""
    if args.dry_run:
        print(f"{count:,} keys would be queued{passed}; nothing was queued (--dry-run)")
        return 0
    log.info(
        "enqueued %s keys to %s in %.1fs (%s/s)%s",
        f"{count:,}",
        topology.Queues(values["pipeline"]).fetch,
        seconds,
        f"{count / max(seconds, 1e-9):,.0f}",
        passed,
    )
    return 0


def resume_hint(kind: str, file: str | None, line: int) -> str:
    """How to go on after a broker failure without losing a key."""
    if kind != "file":
        return "run it again to queue the rest"
    source = "-" if file == "-" else shlex.quote(str(file))
    return (f"every key before line {line:,} is queued. Resume with: tail -n +{line} {source} "
            "| sluiceway enqueue -")  # fmt: skip


COMMAND = Command("enqueue", "publish one fetch task per key", configure, run)
