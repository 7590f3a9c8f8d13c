"""The sample API's HTTP server (aiohttp)."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import unquote

import orjson
from aiohttp import web

from sluiceway_sample_api.data import is_missing, user

PREFIX = "/users/"


@dataclass
class Behaviour:
    not_found_rate: float = 0.0
    error_rate: float = 0.0
    latency: float = 0.0  # seconds
    seed: int | None = None
    served: Counter[int] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)

    def error_now(self) -> bool:
        return self.error_rate > 0 and self._random.random() < self.error_rate


def _json(status: int, doc: object) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(doc), content_type="application/json")


def make_app(behaviour: Behaviour) -> web.Application:
    async def users(request: web.Request) -> web.Response:
        # The raw path, not aiohttp's decoded one: a key may hold an encoded "/".
        path = request.raw_path.split("?", 1)[0]
        try:
            key = unquote(path[len(PREFIX) :], errors="strict")
        except UnicodeDecodeError:
            behaviour.served[400] += 1
            return _json(400, {"error": "key is not UTF-8"})
        if behaviour.latency:
            await asyncio.sleep(behaviour.latency)
        if not key or "/" in path[len(PREFIX) :]:
            status, doc = 404, {"error": "no such path"}
        elif is_missing(key, behaviour.not_found_rate):
            status, doc = 404, {"error": "no such user", "id": key}
        elif behaviour.error_now():
            status, doc = 503, {"error": "injected failure"}
        else:
            status, doc = 200, user(key)
        behaviour.served[status] += 1
        return _json(status, doc)

    async def stats(_: web.Request) -> web.Response:
        return _json(200, {"served": {str(k): v for k, v in sorted(behaviour.served.items())}})

    async def healthz(_: web.Request) -> web.Response:
        return _json(200, {"ok": True})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/stats", stats)
    app.router.add_get(PREFIX + "{tail:.*}", users)
    return app


async def serve(
    host: str,
    port: int,
    behaviour: Behaviour,
    stop: asyncio.Event,
    ready: asyncio.Future[int] | None = None,
) -> None:
    """Serve until ``stop``; ``ready`` receives the bound port (useful with port 0)."""
    runner = web.AppRunner(make_app(behaviour), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=1024)
        await site.start()
        bound: int = runner.addresses[0][1]
        if ready is not None:
            ready.set_result(bound)
        await stop.wait()
    finally:
        await runner.cleanup()
