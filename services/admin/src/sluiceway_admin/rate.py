"""``sluiceway rate show|set|clear``: the pipeline's shared rate limit, changed while it runs.

Every fetcher of a pipeline reads the override on each reservation, so a limit set here
applies to the next request of every fetcher (slots already reserved, at most a twentieth of
a second's worth, keep theirs). Without an override each fetcher uses its own
``SLUICEWAY_RATE_LIMIT``, which should then be the same everywhere. ``show`` also tells
whether the upstream has paused the pipeline with a Retry-After.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import replace

import orjson
import redis.asyncio as aioredis

from sluiceway_common import settings, store
from sluiceway_common.cli import Command
from sluiceway_common.lifecycle import reach
from sluiceway_common.settings import ConfigError, plain
from sluiceway_common.store import RateState

OPTIONS = (
    replace(settings.REDIS_URL, help="Redis holding the pipeline's rate limit"),
    settings.PIPELINE,
)


def parse_limit(text: str | None) -> float:
    """``N`` of ``rate set N``, held to what ``SLUICEWAY_RATE_LIMIT`` allows."""
    if text is None:
        raise ConfigError(f"set needs N: expected {settings.RATE_LIMIT.allowed}")
    try:
        return float(settings.RATE_LIMIT.parse(text))
    except ValueError:
        raise ConfigError(
            f"N={text!r} is not allowed: expected {settings.RATE_LIMIT.allowed}"
        ) from None


async def act(redis_url: str, pipeline: str, action: str, value: float | None) -> RateState:
    client = aioredis.Redis.from_url(redis_url)
    try:
        await reach("Redis", redis_url, client.ping())
        keys = store.RateKeys(client, pipeline)
        if action == "set":
            assert value is not None
            await keys.set_override(value)
        elif action == "clear":
            await keys.clear_override()
        return await keys.read()
    finally:
        await client.aclose()


def describe(pipeline: str, state: RateState) -> str:
    limit = (
        f"{plain(state.limit)} requests/s, set with `sluiceway rate set`"
        if state.limit is not None
        else "not set: each fetcher uses its SLUICEWAY_RATE_LIMIT"
    )
    paused = (
        f"for {state.paused_for:.1f}s more (the upstream's Retry-After)"
        if state.paused_for > 0
        else "no"
    )
    return f"pipeline {pipeline}\nlimit:  {limit}\npaused: {paused}"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("show", "set", "clear"))
    parser.add_argument(
        "n", nargs="?", metavar="N", help="set: requests per second for the whole pipeline"
    )
    parser.add_argument("--json", action="store_true", help="show: one JSON object")
    settings.add_options(parser, OPTIONS)


def run(args: argparse.Namespace) -> int:
    value = parse_limit(args.n) if args.action == "set" else None
    if args.action != "set" and args.n is not None:
        raise ConfigError(f"{args.action} takes no N (got {args.n!r})")
    values = settings.resolve(args, OPTIONS)
    pipeline = values["pipeline"]
    state = asyncio.run(act(values["redis_url"], pipeline, args.action, value))
    if args.json:
        doc = {"pipeline": pipeline, "limit": state.limit, "paused_for": state.paused_for}
        sys.stdout.write(orjson.dumps(doc).decode() + "\n")
    else:
        print(describe(pipeline, state))
    return 0


COMMAND = Command("rate", "show, set or clear the pipeline's shared rate limit", configure, run)
