"""``sluiceway sink suggest``: a ``CREATE TABLE`` for the writer's mapped sink, inferred from
the pipeline's payloads, and the ``SLUICEWAY_SINK_*`` settings that fill it.

The samples are the pipeline's newest rows in ``records`` or, with ``--fetch FILE``, the
upstream's answers for the first keys of FILE, fetched one at a time on the pipeline's shared
rate limit. What the columns are is :mod:`sluiceway_admin.infer`'s decision; this module reads
the samples and prints the suggestion, for a person to review and put in a migration of their
own: the table is theirs, not something the writer changes as payloads change.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import re
import shlex
import sys
import textwrap
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any, BinaryIO

import asyncpg
import httpx
import orjson

from sluiceway_admin import listing
from sluiceway_admin.infer import Column, Inference, KeyType, name_of, quoted
from sluiceway_admin.sources import BadInput, file_keys
from sluiceway_common import codec, logs, settings
from sluiceway_common import sink as sink_settings
from sluiceway_common.cli import Command
from sluiceway_common.lifecycle import StartupError, reach
from sluiceway_common.limiter import SharedLimiter
from sluiceway_common.ratelimit import pause_seconds
from sluiceway_common.settings import ConfigError

log = logging.getLogger(__name__)

OPTIONS = (settings.PIPELINE, settings.LOG_LEVEL)
LANDED_OPTIONS = (
    replace(settings.DATABASE_URL, help="PostgreSQL whose records table the samples are read from"),
)
FETCH_OPTIONS = (
    replace(settings.SOURCE_URL, help="--fetch: the upstream URL of a key, {key} replaced by "
            "the percent-encoded key"),
    replace(settings.SOURCE_HEADERS, help="--fetch: headers sent with every upstream request "
            "(tokens: never logged)"),
    replace(settings.REDIS_URL, help="--fetch: Redis holding the pipeline's shared rate limit"),
    replace(settings.RATE_LIMIT, help="--fetch: requests per second to the upstream for the "
            "whole pipeline, unless `sluiceway rate set` overrides it"),
    replace(settings.REQUEST_TIMEOUT, help="--fetch: timeout of one upstream request"),
)  # fmt: skip

# The newest fetched rather than the newest written: the (pipeline, fetched_at) index serves
# it, where ordering by written_at would read and sort every row of the pipeline.
SAMPLE = """
SELECT key, payload::text FROM records WHERE pipeline = $1 ORDER BY fetched_at DESC LIMIT $2
"""
KEY_COLUMN = "key"
VERSION_COLUMN = "seen_at"
TABLE_PART = re.compile(r"[a-z_][a-z0-9_]{0,62}")
MAX_SAMPLE = 1_000_000


class NoSamples(Exception):
    """Nothing to infer from; the message says why and what to do."""


def parse_json(text: str | bytes) -> Any:
    """A payload, with fractions as Decimal: nothing is rounded before its type is judged."""
    return json.loads(text, parse_float=Decimal)


async def landed(url: str, pipeline: str, limit: int, inference: Inference, keys: KeyType) -> str:
    """Show ``inference`` the pipeline's ``limit`` newest rows; return what was read."""
    conn = await reach("PostgreSQL", url, asyncpg.connect(url))
    try:
        async with conn.transaction(readonly=True):
            async for key, payload in conn.cursor(SAMPLE, pipeline, limit, prefetch=200):
                try:
                    inference.add(parse_json(payload))
                except RecursionError:
                    log.warning("key %r: its payload is nested too deeply to read; left out", key)
                    continue
                keys.add(key)
    except asyncpg.UndefinedTableError:
        raise NoSamples("the records table is missing: run `sluiceway migrate`") from None
    finally:
        await conn.close()
    if not inference.payloads:
        raise NoSamples(f"nothing landed yet for pipeline {pipeline}: run the pipeline, or "
                        "give --fetch FILE to fetch a few of its keys")  # fmt: skip
    return f"the {inference.payloads:,} newest fetched rows of pipeline {pipeline}"


@dataclass(frozen=True)
class Upstream:
    """Where and how ``--fetch`` asks: the fetchers' settings."""

    source_url: str
    source_headers: Mapping[str, str]
    redis_url: str
    rate_limit: float
    request_timeout: float


async def fetched(
    stream: BinaryIO,
    path: str,
    upstream: Upstream,
    pipeline: str,
    limit: int,
    inference: Inference,
    keys: KeyType,
    say: Callable[[str], None],
) -> str:
    """Fetch the first ``limit`` keys of ``stream`` (the file at ``path``) and show
    ``inference`` each answer; a key that fails is said (``say``) and passed over. Return
    what was read."""
    tried = failed = 0
    async with listing.upstream(upstream.redis_url, pipeline, upstream.source_headers,
                                upstream.rate_limit, upstream.request_timeout
                                ) as (http, limiter):  # fmt: skip
        async for chunk in file_keys(stream):
            for _, key in chunk[: limit - tried]:
                tried += 1
                reason = await fetch_one(http, limiter, upstream, key, inference)
                if reason is None:
                    keys.add(key)
                else:
                    failed += 1
                    say(f"key {key!r}: {reason}")
            if tried >= limit:
                break
    if not tried:
        raise NoSamples(f"--fetch {path}: no keys in it")
    if not inference.payloads:
        raise NoSamples(f"--fetch {path}: none of the {tried:,} keys tried could be fetched")
    failures = f" ({failed:,} of {tried:,} keys failed)" if failed else ""
    return f"the upstream's answers for {inference.payloads:,} keys of {path}{failures}"


async def fetch_one(
    http: httpx.AsyncClient,
    limiter: SharedLimiter,
    upstream: Upstream,
    key: str,
    inference: Inference,
) -> str | None:
    """Fetch one key as the fetcher would, once; None when its payload was shown to
    ``inference``, else why not."""
    url = codec.key_url(upstream.source_url, key)
    answer = await listing.get_once(http, limiter, url, upstream.request_timeout)
    if answer.response is None:
        if answer.asked:
            # The fetchers of the pipeline wait as well: the upstream asked all of us.
            await limiter.pause(pause_seconds(answer.asked))
        return answer.reason
    try:
        payload = parse_json(answer.response.content)
    except (ValueError, RecursionError) as exc:
        return f"body is not JSON: {exc}"
    inference.add(payload)
    return None


def printable(text: str) -> str:
    """``text`` safe in a one-line SQL comment: control characters escaped."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def settings_lines(table: str, columns: list[Column]) -> list[str]:
    """The writer's ``SLUICEWAY_SINK_*`` settings for the suggested table, as shell lines."""
    mapping = {VERSION_COLUMN: "/fetched_at", **{c.name: c.pointer for c in columns}}
    return [
        f"{sink_settings.SINK_TABLE.env}={shlex.quote(table)}",
        f"{sink_settings.SINK_KEY.env}={shlex.quote(KEY_COLUMN)}",
        f"{sink_settings.SINK_COLUMNS.env}={shlex.quote(orjson.dumps(mapping).decode())}",
        f"{sink_settings.SINK_VERSION.env}={shlex.quote(VERSION_COLUMN)}",
    ]


def render(table: str, key_type: str, columns: list[Column], read: str, fields: int) -> str:
    """The suggestion: a commented ``CREATE TABLE``, then the writer's settings for it."""
    rows = [
        (quoted(KEY_COLUMN), key_type, " NOT NULL PRIMARY KEY", "/key: the record's key"),
        (quoted(VERSION_COLUMN), "timestamptz", " NOT NULL",
         "/fetched_at: when it was fetched; the newest wins"),
        *((quoted(c.name), c.type, "", f"{printable(c.pointer)}: {c.note}") for c in columns),
    ]  # fmt: skip
    name_width = max(len(row[0]) for row in rows)
    definitions = [
        f"{name:<{name_width}} {type_}{constraint}" + ("," if index < len(rows) - 1 else "")
        for index, (name, type_, constraint, _) in enumerate(rows)
    ]
    width = max(map(len, definitions))
    body = [
        f"    {line:<{width}}  -- {row[3]}" for line, row in zip(definitions, rows, strict=True)
    ]
    about = (
        f"Suggested by `sluiceway sink suggest` from {read}: {fields:,} fields seen. Review "
        "it, then put it in a migration of your own: the types fit these samples, not "
        "necessarily every payload to come. Each comment says where the column's value is in "
        'the record {"key", "payload", "fetched_at"} (a JSON pointer) and in how many samples '
        "it was present."
    )
    lines = [
        *textwrap.wrap(about, 96, initial_indent="-- ", subsequent_indent="-- "),
        f"CREATE TABLE {'.'.join(map(quoted, table.split('.')))} (",
        *body,
        ");",
        "",
        "# The writer's settings for this table:",
        *settings_lines(table, columns),
    ]
    return "\n".join(lines) + "\n"


# The SQLAlchemy type a suggested PostgreSQL type is written as in an Alembic revision.
ALEMBIC_TYPES = {
    "text": "sa.Text()", "bigint": "sa.BigInteger()", "numeric": "sa.Numeric()",
    "boolean": "sa.Boolean()", "date": "sa.Date()", "timestamp": "sa.DateTime()",
    "timestamptz": "sa.DateTime(timezone=True)", "jsonb": "postgresql.JSONB()",
    "uuid": "sa.Uuid()",
}  # fmt: skip


def render_alembic(table: str, key_type: str, columns: list[Column], read: str, fields: int,
                   revision: str) -> str:  # fmt: skip
    """The suggestion as an Alembic revision for the user's own migrations directory: the
    same table, each column's comment saying where its value is, and the writer's settings
    in the docstring. ``down_revision`` is left for the user to set."""
    schema, _, name = table.rpartition(".")
    rows = [
        (KEY_COLUMN, key_type, False, "/key: the record's key"),
        (VERSION_COLUMN, "timestamptz", False, "/fetched_at: when it was fetched; the newest wins"),
        *((c.name, c.type, True, f"{c.pointer}: {c.note}") for c in columns),
    ]  # fmt: skip
    body = [f"        sa.Column({name_!r}, {ALEMBIC_TYPES[type_]}, nullable={nullable}, "
            f"comment={comment!r}),"
            for name_, type_, nullable, comment in rows]  # fmt: skip
    where = f", schema={schema!r}" if schema else ""
    about = (f"Suggested by `sluiceway sink suggest --alembic` from {printable(read)}: "
             f"{fields:,} fields seen. Review it: the types fit these samples, not necessarily "
             "every payload to come. Set down_revision to your head revision.")  # fmt: skip
    doc = [f"sink table {table}", "", *textwrap.wrap(about, 92), "",
           "The writer's settings for this table:", *settings_lines(table, columns)]  # fmt: skip
    lines = [
        # Raw, so that each setting reads in the file as it is meant to be copied.
        'r"""' + "\n".join(doc).replace('"""', "'''"),
        "",
        f"Revision ID: {revision}",
        "Revises:",
        '"""',
        "",
        "import sqlalchemy as sa",
        "from alembic import op",
        "from sqlalchemy.dialects import postgresql",
        "",
        f"revision = {revision!r}",
        "down_revision = None  # your head revision",
        "branch_labels = None",
        "depends_on = None",
        "",
        "",
        "def upgrade() -> None:",
        "    op.create_table(",
        f"        {name!r},",
        *body,
        f"        sa.PrimaryKeyConstraint({KEY_COLUMN!r}){where},",
        "    )",
        "",
        "",
        "def downgrade() -> None:",
        f"    op.drop_table({name!r}{where})",
    ]
    return "\n".join(lines) + "\n"


def table_name(text: str) -> str:
    """``--table``: ``name`` or ``schema.name``, each a lowercase identifier."""
    parts = text.split(".")
    if len(parts) > 2 or not all(TABLE_PART.fullmatch(part) for part in parts):
        raise ConfigError(
            f"--table={text!r} is not allowed: expected NAME or SCHEMA.NAME, each of lowercase "
            "letters, digits and _ (not starting with a digit), at most 63"
        )
    return text


def sample_size(text: str) -> int:
    try:
        return int(settings.integer(1, MAX_SAMPLE)(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not allowed: a whole number from 1 to {MAX_SAMPLE:,}"
        ) from None


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("suggest",),
                        help="suggest: print a CREATE TABLE and SLUICEWAY_SINK_* settings "
                        "inferred from the pipeline's payloads")  # fmt: skip
    parser.add_argument("--sample", type=sample_size, default=1000, metavar="N",
                        help="read the N newest rows of the pipeline (default 1000), or with "
                        "--fetch fetch the first N keys")  # fmt: skip
    parser.add_argument("--fetch", metavar="FILE",
                        help="fetch keys of FILE (one a line) from SLUICEWAY_SOURCE_URL instead "
                        "of reading landed rows")  # fmt: skip
    parser.add_argument("--table", metavar="NAME",
                        help="the table's name, NAME or SCHEMA.NAME (default: the pipeline's, "
                        "with - as _)")  # fmt: skip
    parser.add_argument("--alembic", action="store_true",
                        help="print the table as an Alembic revision (op.create_table) for "
                        "your own migrations directory, the settings in its docstring")  # fmt: skip
    parser.add_argument("--key-type", choices=("auto", "text", "bigint", "uuid"),
                        default="auto", help="the key column's type (default auto: bigint when "
                        "every key sampled is an integer, uuid when every one is a UUID, else "
                        "text)")  # fmt: skip
    settings.add_options(parser, (*OPTIONS, *LANDED_OPTIONS, *FETCH_OPTIONS))


def run(args: argparse.Namespace) -> int:
    options = (*OPTIONS, *(FETCH_OPTIONS if args.fetch else LANDED_OPTIONS))
    values = settings.resolve(args, options)
    logs.setup(values["log_level"], secrets=settings.secret_values(options, values))
    pipeline = values["pipeline"]
    table = table_name(args.table if args.table is not None else name_of((pipeline,)))
    inference, keys = Inference(), KeyType()

    def say(line: str) -> None:
        print(f"sluiceway sink suggest: {line}", file=sys.stderr)

    with contextlib.ExitStack() as stack:
        try:
            if args.fetch:
                try:
                    stream: BinaryIO = stack.enter_context(open(args.fetch, "rb"))
                except OSError as exc:
                    raise NoSamples(f"cannot read {args.fetch}: {exc.strerror}") from None
                upstream = Upstream(**{o.dest: values[o.dest] for o in FETCH_OPTIONS})
                read = asyncio.run(fetched(stream, args.fetch, upstream, pipeline, args.sample,
                                           inference, keys, say))  # fmt: skip
            else:
                read = asyncio.run(landed(values["database_url"], pipeline, args.sample,
                                          inference, keys))  # fmt: skip
        except BadInput as exc:
            say(f"--fetch {args.fetch}: {exc}")
            return 1
        except (NoSamples, StartupError) as exc:
            say(str(exc))
            return 1
    key_type = keys.type if args.key_type == "auto" else args.key_type
    columns = inference.columns(taken=(KEY_COLUMN, VERSION_COLUMN))
    if args.alembic:
        sys.stdout.write(render_alembic(table, key_type, columns, read, inference.fields_seen(),
                                        uuid.uuid4().hex[:12]))  # fmt: skip
    else:
        sys.stdout.write(render(table, key_type, columns, read, inference.fields_seen()))
    return 0


COMMAND = Command(
    "sink",
    "suggest a table for the writer's mapped sink from the pipeline's payloads",
    configure,
    run,
)
