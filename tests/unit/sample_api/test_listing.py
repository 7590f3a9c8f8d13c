"""The sample API's ``GET /users``: every key it lists once, pages by each style, and only
keys ``GET /users/{key}`` answers. Served in-process on loopback by aiohttp's test client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from sluiceway_admin.listing import next_link
from sluiceway_sample_api.data import is_missing, listed_key
from sluiceway_sample_api.server import Behaviour, make_app

USERS = 250


@pytest.fixture
async def client() -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(make_app(Behaviour(users=USERS, not_found_rate=0.1)))) as c:
        yield c


async def pages(client: TestClient[Any, Any], style: str) -> list[list[str]]:
    """Every page of the listing in ``style``, following it as a client would."""
    found: list[list[str]] = []
    url: str | None = f"/users?style={style}&limit=40"
    while url is not None:
        response = await client.get(url)
        assert response.status == 200, await response.text()
        doc = await response.json()
        if style == "link":
            found.append(doc)
            url = next_link(response.headers.getall("Link", []))
        else:
            found.append([item["id"] for item in doc["data"]])
            if style == "url":
                url = doc["next"]
            else:
                url = None if doc["next"] is None else f"/users?cursor={doc['next']}&limit=40"
    return found


@pytest.mark.parametrize("style", ["cursor", "url", "link"])
async def test_each_style_lists_every_answered_key_once(
    client: TestClient[Any, Any], style: str
) -> None:
    found = await pages(client, style)
    assert len(found) == 7  # 250 candidates, 40 a page
    keys = [key for page in found for key in page]
    expected = [listed_key(i) for i in range(USERS) if not is_missing(listed_key(i), 0.1)]
    assert keys == expected
    assert 200 < len(keys) < USERS  # some left out as missing, the rest listed
    for key in keys[:5]:
        response = await client.get(f"/users/{key}")
        assert response.status == 200


async def test_the_cursor_style_is_the_default_and_ends_with_a_null_next(
    client: TestClient[Any, Any],
) -> None:
    doc = await (await client.get("/users?cursor=200")).json()
    assert doc["next"] is None
    assert all(set(item) == {"id"} for item in doc["data"])
    response = await client.get("/users?style=link&cursor=240&limit=40")
    assert "Link" not in response.headers


@pytest.mark.parametrize(
    "query",
    ["cursor=x", "cursor=-1", f"cursor={USERS + 1}", "limit=0", "limit=1001", "style=odd"],
)
async def test_a_bad_query_is_400(client: TestClient[Any, Any], query: str) -> None:
    response = await client.get(f"/users?{query}")
    assert response.status == 400
    assert "error" in await response.json()
