# Over 300 lines on purpose: the demo is one script read top to bottom (start the processes,
# watch, ask the sample API, stop, check), and its parts are used nowhere else.
"""``sluiceway demo``: the whole pipeline end to end on the sample API (what ``make run`` runs).

It runs the real processes, as an operator would: ``sluiceway migrate``, ``sample-api``, one
``fetcher``, one ``writer`` and ``enqueue``; shows progress until every key has landed or
failed; asks the sample API for every key once more while it still runs; stops what it started
with SIGTERM; then checks the table row by row against what the sample API served, and the
failed set against the keys it answered 404 for. The pipeline it uses (``demo`` by default) is
emptied first: its rows, queues and failed set. The sample API answers 404 for 1% of keys
unless ``SLUICEWAY_SAMPLE_NOT_FOUND_RATE`` says otherwise.

It needs the whole workspace installed (``make install``): it starts the fetcher, the writer
and the sample API, which the admin image does not hold.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

import aiohttp
import asyncpg
import redis.asyncio as aioredis

from sluiceway_admin import watch as view
from sluiceway_admin.reading import StatusReader
from sluiceway_common import amqp, codec, settings, store, topology
from sluiceway_common.cli import Command
from sluiceway_common.settings import Option, setting

DEMO_KEYS = Option(
    "SLUICEWAY_DEMO_KEYS",
    settings.integer(1, 10_000_000),
    "how many keys to push through",
    default="20000",
)
DEMO_STALL_SECONDS = Option(
    "SLUICEWAY_DEMO_STALL_SECONDS",
    settings.number(1, 3600, unit="seconds"),
    "give up when nothing moves for this long",
    default="60",
)
DEMO_LOG_DIR = Option(
    "SLUICEWAY_DEMO_LOG_DIR",
    Path,
    "where the processes' logs go",
    allowed="a directory path",
    default=".run/logs",
)
STOP_TIMEOUT = 30.0
# The sample API's share of keys answered 404, unless the environment sets one: a few keys
# fail for good, so the failed set is part of what the demo shows and checks.
NOT_FOUND_RATE = ("SLUICEWAY_SAMPLE_NOT_FOUND_RATE", "0.01")
# Asking the sample API for every key again: requests at once, and tries a request gets
# (the API may be told to answer a share of requests 503).
CHECK_CONCURRENCY = 32
CHECK_ATTEMPTS = 10


@dataclass(frozen=True)
class DemoSettings(settings.Settings):
    database_url: str = setting(settings.DATABASE_URL)
    amqp_url: str = setting(settings.AMQP_URL)
    redis_url: str = setting(settings.REDIS_URL)
    pipeline: str = setting(
        replace(settings.PIPELINE, default="demo", help="pipeline the demo empties, then uses")
    )
    demo_keys: int = setting(DEMO_KEYS)
    rate_limit: float = setting(replace(settings.RATE_LIMIT, default="5000"))
    batch_size: int = setting(settings.BATCH_SIZE)
    batch_timeout: float = setting(settings.BATCH_TIMEOUT)
    demo_stall_seconds: float = setting(DEMO_STALL_SECONDS)
    demo_log_dir: Path = setting(DEMO_LOG_DIR)


class DemoFailed(Exception):
    """The demo could not run or what landed is wrong; the message says what."""


def demo_keys(count: int) -> list[str]:
    """``user-000000``…, with every 1000th key holding a space, a slash and a non-ASCII letter
    so that percent-encoding is exercised on the way."""
    return [f"team {i}/Zoë" if i % 1000 == 999 else f"user-{i:06d}" for i in range(count)]


@dataclass
class Child:
    name: str
    process: asyncio.subprocess.Process
    log_path: Path
    log: IO[bytes]

    def tail(self, lines: int = 15) -> str:
        if not self.log.closed:
            self.log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join("    " + line for line in text[-lines:])


class Demo:
    def __init__(self, config: DemoSettings) -> None:
        self.config = config
        self.queues = topology.Queues(config.pipeline)
        self.log_dir = config.demo_log_dir / config.pipeline
        self.children: list[Child] = []
        self.env = {
            **os.environ,
            "SLUICEWAY_DATABASE_URL": config.database_url,
            "SLUICEWAY_AMQP_URL": config.amqp_url,
            "SLUICEWAY_REDIS_URL": config.redis_url,
            "SLUICEWAY_PIPELINE": config.pipeline,
        }
        self.env.setdefault(*NOT_FOUND_RATE)

    async def start(
        self, name: str, *args: str, pipe_stdout: bool = False, env: dict[str, str] | None = None
    ) -> Child:
        """Start ``sluiceway <args>``, logging to ``<log dir>/<name>.log``."""
        log_path = self.log_dir / f"{name}.log"
        log = log_path.open("wb")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sluiceway_common", *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if pipe_stdout else log,
            stderr=log,
            env={**self.env, **(env or {})},
        )  # fmt: skip
        child = Child(name, process, log_path, log)
        self.children.append(child)
        return child

    async def run_once(self, name: str, *args: str) -> None:
        child = await self.start(name, *args)
        status = await child.process.wait()
        self.children.remove(child)
        child.log.close()
        if status != 0:
            raise DemoFailed(f"`sluiceway {' '.join(args)}` failed:\n{child.tail()}")

    async def reset(self) -> None:
        """Empty the demo pipeline: its queues, failed set, rate-limit state and rows."""
        connection = await amqp.connect(self.config.amqp_url, "demo")
        try:
            channel = await connection.channel()
            for queue in await topology.declare(channel, self.queues, *self.queues.owned()):
                await queue.purge()
        finally:
            await connection.close()
        client = aioredis.Redis.from_url(self.config.redis_url)
        try:
            # A rate override or pause left from earlier would hold the demo back.
            await client.delete(*store.owned(self.config.pipeline))
        finally:
            await client.aclose()
        conn = await asyncpg.connect(self.config.database_url)
        try:
            await conn.execute("DELETE FROM records WHERE pipeline = $1", self.config.pipeline)
        finally:
            await conn.close()

    async def start_sample_api(self) -> str:
        child = await self.start(
            "sample-api", "sample-api", "--sample-port", "0", pipe_stdout=True,
        )  # fmt: skip
        assert child.process.stdout is not None
        try:
            line = await asyncio.wait_for(child.process.stdout.readline(), timeout=30)
        except TimeoutError:
            line = b""
        if not line.startswith(b"listening on "):
            raise DemoFailed(f"the sample API did not start:\n{child.tail()}")
        return line.decode().split()[-1]

    def check_children(self, enqueue: Child) -> None:
        for child in self.children:
            code = child.process.returncode
            if code is None or (child is enqueue and code == 0):
                continue
            raise DemoFailed(f"{child.name} exited with status {code}:\n{child.tail()}")

    async def watch(self, keys: int, enqueue: Child) -> None:
        """Show the live view of ``sluiceway status --watch`` until every key landed or
        failed (redrawn on a terminal, else printed every 5 s); raise if the pipeline stalls."""
        screen = view.Screen(sys.stdout)
        history = view.History()
        started = last_change = last_print = time.monotonic()
        last_seen: tuple[int, ...] = ()
        async with StatusReader(
            self.config.database_url, self.config.amqp_url, self.config.redis_url
        ) as reader:
            while True:
                await asyncio.sleep(0.5)
                self.check_children(enqueue)
                status = await reader.read(self.config.pipeline)
                now = time.monotonic()
                trend = history.add(now, status)
                rows = status.rows or 0
                fetch, records = status.depth(self.queues.fetch), status.depth(self.queues.records)
                seen = (rows, status.failed, fetch, records)
                if seen != last_seen:
                    last_seen, last_change = seen, now
                finished = (
                    enqueue.process.returncode == 0 and rows + status.failed >= keys
                    and fetch == 0 and records == 0
                )  # fmt: skip
                if screen.tty or finished or now - last_print >= 5:
                    clock = f"{now - started:.1f}s since the first key was enqueued"
                    screen.draw(view.render(status, trend, clock=clock, expected=keys))
                    last_print = now
                if finished:
                    return
                if now - last_change > self.config.demo_stall_seconds:
                    raise DemoFailed(
                        f"nothing moved for {self.config.demo_stall_seconds:g}s; "
                        f"see the logs in {self.log_dir}"
                    )

    async def stop_all(self) -> list[str]:
        """SIGTERM every child still running, newest first; return what did not stop cleanly."""
        problems = []
        for child in reversed(self.children):
            if child.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(child.process.wait(), timeout=STOP_TIMEOUT)
                except TimeoutError:
                    child.process.kill()
                    await child.process.wait()
                    problems.append(f"{child.name} did not stop within {STOP_TIMEOUT:g}s")
                else:
                    if child.process.returncode != 0:
                        problems.append(
                            f"{child.name} exited with status {child.process.returncode}:\n"
                            f"{child.tail()}"
                        )
            child.log.close()
        return problems

    async def served(self, base: str, keys: list[str]) -> dict[str, Any]:
        """What the sample API answers for each key, through the URL the fetcher asks: its
        JSON, or None for a 404. Other answers are asked again, a few times."""
        answers: dict[str, Any] = {}
        gate = asyncio.Semaphore(CHECK_CONCURRENCY)

        async def ask(session: aiohttp.ClientSession, key: str) -> None:
            url = codec.key_url(f"{base}/users/{{key}}", key)
            async with gate:
                for _ in range(CHECK_ATTEMPTS):
                    async with session.get(url) as response:
                        if response.status == 404:
                            answers[key] = None
                            return
                        if response.status == 200:
                            answers[key] = await response.json()
                            return
                raise DemoFailed(f"the sample API kept answering {response.status} for {url}")

        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(ask(session, key) for key in keys))
        return answers

    async def verify(self, answers: dict[str, Any]) -> tuple[int, int]:
        """Check every row and failed key against what the sample API served; return
        (rows, failed)."""
        missing = {key for key, doc in answers.items() if doc is None}
        conn = await asyncpg.connect(self.config.database_url)
        try:
            found = await conn.fetch(
                "SELECT key, payload FROM records WHERE pipeline = $1", self.config.pipeline
            )
        finally:
            await conn.close()
        rows = {r["key"]: r["payload"] for r in found}
        client = aioredis.Redis.from_url(self.config.redis_url)
        try:
            failed = await store.FailedSet(client, self.config.pipeline).members()
        finally:
            await client.aclose()
        served = [key for key, doc in answers.items() if doc is not None]
        absent = [key for key in served if key not in rows]
        wrong = [key for key in served if key in rows and json.loads(rows[key]) != answers[key]]
        extra = sorted(set(rows) - set(served))
        problems = []
        if absent:
            problems.append(f"{len(absent)} rows missing, e.g. {absent[:3]}")
        if wrong:
            problems.append(f"{len(wrong)} rows differ from what the API served, e.g. {wrong[:3]}")
        if extra:
            problems.append(f"{len(extra)} rows for keys the API did not serve, e.g. {extra[:3]}")
        if failed != missing:
            problems.append(
                f"the failed set holds {len(failed)} keys, not the {len(missing)} answered 404 "
                f"(first differing: {sorted(failed ^ missing)[:3]})"
            )
        if problems:
            raise DemoFailed("the table does not match the sample API:\n  " + "\n  ".join(problems))
        return len(rows), len(failed)

    async def run(self) -> int:
        config = self.config
        self.log_dir.mkdir(parents=True, exist_ok=True)
        keys = demo_keys(config.demo_keys)
        key_file = self.log_dir / "keys.txt"
        key_file.write_text("".join(k + "\n" for k in keys))
        print(
            f"sluiceway demo: pipeline {config.pipeline!r}, {len(keys):,} keys; "
            f"logs in {self.log_dir}",
            flush=True,
        )
        try:
            await self.run_once("migrate", "migrate")
            await self.reset()
            base = await self.start_sample_api()
            print(f"sample API on {base}", flush=True)
            await self.start("writer", "writer", env={
                "SLUICEWAY_BATCH_SIZE": str(config.batch_size),
                "SLUICEWAY_BATCH_TIMEOUT": str(config.batch_timeout),
            })  # fmt: skip
            await self.start("fetcher", "fetcher", env={
                "SLUICEWAY_SOURCE_URL": f"{base}/users/{{key}}",
                "SLUICEWAY_RATE_LIMIT": str(config.rate_limit),
            })  # fmt: skip
            started = time.monotonic()
            enqueue = await self.start("enqueue", "enqueue", str(key_file))
            await self.watch(len(keys), enqueue)
            elapsed = time.monotonic() - started
            answers = await self.served(base, keys)
        finally:
            problems = await self.stop_all()
        if problems:
            raise DemoFailed("\n".join(problems))
        rows, failed = await self.verify(answers)
        print(
            f"landed {rows:,} rows, {failed:,} keys failed (the sample API's 404s), "
            f"in {elapsed:.1f}s: {rows / elapsed:,.0f} rows/s\n"
            "verified: every row matches what the sample API served for its key",
            flush=True,
        )
        return 0


def configure(parser: argparse.ArgumentParser) -> None:
    settings.add_options(parser, DemoSettings.options())


def run(args: argparse.Namespace) -> int:
    config = DemoSettings.from_args(args)
    try:
        return asyncio.run(Demo(config).run())
    except DemoFailed as exc:
        print(f"sluiceway demo: FAILED: {exc}", file=sys.stderr)
        return 1


COMMAND = Command(
    "demo", "run the whole pipeline end to end on the sample API and check it", configure, run
)
