"""``sluiceway sample-api``: run the sample upstream until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

from sluiceway_common import logs, settings
from sluiceway_common.cli import Command
from sluiceway_common.lifecycle import run_until_signalled
from sluiceway_common.settings import Option
from sluiceway_sample_api.server import Behaviour, serve

log = logging.getLogger(__name__)


def host(text: str) -> str:
    if not text or any(c.isspace() for c in text):
        raise ValueError("")
    return text


NOT_FOUND_RATE = Option(
    "SLUICEWAY_SAMPLE_NOT_FOUND_RATE",
    settings.number(0, 1),
    "share of keys answered 404, always the same keys",
    default="0",
)
OPTIONS = (
    Option(
        "SLUICEWAY_SAMPLE_HOST",
        host,
        "address to listen on",
        allowed="a host name or address",
        default="127.0.0.1",
    ),
    Option(
        "SLUICEWAY_SAMPLE_PORT",
        settings.integer(0, 65535),
        "port to listen on; 0 picks a free one",
        default="8099",
    ),
    NOT_FOUND_RATE,
    Option(
        "SLUICEWAY_SAMPLE_ERROR_RATE",
        settings.number(0, 1),
        "share of requests answered 503 at random",
        default="0",
    ),
    Option(
        "SLUICEWAY_SAMPLE_LATENCY_MS",
        settings.number(0, 600_000, unit="milliseconds"),
        "delay before each answer",
        default="0",
    ),
    Option(
        "SLUICEWAY_SAMPLE_USERS",
        settings.integer(0, 10_000_000),
        "users GET /users lists, user-000000 on (the keys answered 404 left out)",
        default="10000",
    ),
    Option(
        "SLUICEWAY_SAMPLE_SEED",
        settings.integer(0, 2**63),
        "seed of the random 503s",
        default="0",
    ),
    settings.LOG_LEVEL,
)


def configure(parser: argparse.ArgumentParser) -> None:
    settings.add_options(parser, OPTIONS)


def run(args: argparse.Namespace) -> int:
    values = settings.resolve(args, OPTIONS)
    logs.setup(values["log_level"])
    behaviour = Behaviour(
        not_found_rate=values["sample_not_found_rate"],
        error_rate=values["sample_error_rate"],
        latency=values["sample_latency_ms"] / 1000,
        seed=values["sample_seed"],
        users=values["sample_users"],
    )

    async def main(stop: asyncio.Event) -> int:
        ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        server = asyncio.create_task(
            serve(values["sample_host"], values["sample_port"], behaviour, stop, ready)
        )
        either: set[asyncio.Future[Any]] = {ready, server}
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if server.done():
            server.result()  # raises what stopped it from listening
        if not ready.done():
            return 0
        # The one line on stdout: scripts and tests read the port from it.
        print(f"listening on http://{values['sample_host']}:{ready.result()}", flush=True)
        await server
        log.info("sample API stopped; answered %s", dict(behaviour.served))
        return 0

    try:
        return run_until_signalled(main)
    except OSError as exc:
        print(
            f"sluiceway sample-api: cannot listen on {values['sample_host']}:"
            f"{values['sample_port']}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1


SAMPLE_API = Command("sample-api", "serve the deterministic sample upstream API", configure, run)
