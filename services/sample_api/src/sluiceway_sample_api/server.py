"""The sample API's HTTP server (aiohttp).

``GET /users/{key}`` answers one user. ``GET /users`` lists the users there are, a page at a
time: ``user-000000`` to the population's last (``Behaviour.users``), leaving out the keys
answered 404, ``limit`` candidates a page from ``cursor`` (an offset, as text). Its ``style``
chooses how a page names the next one, the three ways upstreams do:

* ``cursor`` (the default): ``{"data": [{"id": key}, ...], "next": cursor or null}``;
* ``url``: the same, with ``next`` a (relative) URL of the next page, or null;
* ``link``: a bare array of keys, and the next page in ``Link: <...>; rel="next"``.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import unquote, urlencode

import orjson
from aiohttp import web

from sluiceway_sample_api.data import is_missing, listed_key, user

PREFIX = "/users/"
LISTING = "/users"
PAGE = 100  # users a listing page holds by default
MAX_PAGE = 1000
STYLES = ("cursor", "url", "link")


@dataclass
class Behaviour:
    not_found_rate: float = 0.0
    error_rate: float = 0.0
    latency: float = 0.0  # seconds
    seed: int | None = None
    users: int = 10_000  # the population GET /users lists
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

    async def listing(request: web.Request) -> web.Response:
        query = request.query
        style = query.get("style", "cursor")
        try:
            offset = int(query.get("cursor", "0"))
            limit = int(query.get("limit", str(PAGE)))
        except ValueError:
            offset = limit = -1
        if behaviour.latency:
            await asyncio.sleep(behaviour.latency)
        if style not in STYLES:
            status, doc = 400, {"error": f"style is one of {', '.join(STYLES)}"}
        elif not 0 <= offset <= behaviour.users:
            status, doc = 400, {"error": f"cursor is a whole number from 0 to {behaviour.users}"}
        elif not 1 <= limit <= MAX_PAGE:
            status, doc = 400, {"error": f"limit is a whole number from 1 to {MAX_PAGE}"}
        elif behaviour.error_now():
            status, doc = 503, {"error": "injected failure"}
        else:
            end = min(offset + limit, behaviour.users)
            keys = [listed_key(i) for i in range(offset, end)
                    if not is_missing(listed_key(i), behaviour.not_found_rate)]  # fmt: skip
            following = str(end) if end < behaviour.users else None
            behaviour.served[200] += 1
            if style == "cursor":
                return _json(200, {"data": [{"id": key} for key in keys], "next": following})
            params = {"style": style, "cursor": following, "limit": limit}
            url = f"{LISTING}?{urlencode(params)}" if following else None
            if style == "url":
                return _json(200, {"data": [{"id": key} for key in keys], "next": url})
            response = _json(200, keys)
            if url:
                response.headers["Link"] = f'<{url}>; rel="next"'
            return response
        behaviour.served[status] += 1
        return _json(status, doc)

    async def stats(_: web.Request) -> web.Response:
        return _json(200, {"served": {str(k): v for k, v in sorted(behaviour.served.items())}})

    async def healthz(_: web.Request) -> web.Response:
        return _json(200, {"ok": True})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/stats", stats)
    app.router.add_get(LISTING, listing)
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
