"""Scratch databases: each made for one use on the tests' PostgreSQL server, then dropped.

``python -m tests.scratch COMMAND [ARG…]`` runs COMMAND with ``SLUICEWAY_DATABASE_URL`` set to
a new database migrated to head, made on the server of ``SLUICEWAY_TEST_DATABASE_URL``, and
drops the database afterwards whatever COMMAND did; it exits with COMMAND's status. ``make
check`` runs ``alembic check`` so (the drift check), and a developer may run ``alembic revision
--autogenerate`` so, against nothing but the migrations.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from urllib.parse import urlsplit, urlunsplit

import asyncpg

ADMIN_URL = "SLUICEWAY_TEST_DATABASE_URL"


def new_name(prefix: str = "sluiceway_test") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def execute(url: str, sql: str) -> None:
    """``sql`` on a connection of its own to ``url``."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def create_database(admin_url: str, name: str) -> str:
    await execute(admin_url, f'CREATE DATABASE "{name}"')
    return with_database(admin_url, name)


async def drop_database(admin_url: str, name: str) -> None:
    await execute(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def at_head(admin_url: str, prefix: str = "sluiceway_test") -> Iterator[str]:
    """A new database on the server of ``admin_url``, migrated to head; dropped on the way
    out."""
    from sluiceway_writer import schema

    name = new_name(prefix)
    url = asyncio.run(create_database(admin_url, name))
    try:
        schema.upgrade(url)
        yield url
    finally:
        asyncio.run(drop_database(admin_url, name))


def main(command: Sequence[str]) -> int:
    admin_url = os.environ.get(ADMIN_URL)
    if not command or not admin_url:
        print(f"usage: {ADMIN_URL}=postgresql://… python -m tests.scratch COMMAND [ARG…]",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        with at_head(admin_url, "sluiceway_scratch") as url:
            env = os.environ | {"SLUICEWAY_DATABASE_URL": url}
            return subprocess.run(command, env=env, check=False).returncode
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"tests.scratch: no scratch database on {ADMIN_URL}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
