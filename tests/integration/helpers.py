"""Small tools shared by the integration tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime

import aio_pika
from aio_pika.abc import AbstractConnection

from sluiceway_common import codec, topology


async def eventually(
    check: Callable[[], Awaitable[bool]], within: float = 20.0, what: str = "condition"
) -> None:
    """Poll ``check`` until it holds; fail after ``within`` seconds (a hang guard, not a
    speed target)."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {within}s")
        await asyncio.sleep(0.05)


async def publish(
    connection: AbstractConnection,
    pipeline: str,
    queue: str,
    bodies: list[bytes],
    **properties: object,
) -> None:
    channel = await connection.channel(publisher_confirms=True)
    try:
        await topology.declare(channel, topology.Queues(pipeline))
        for body in bodies:
            await channel.default_exchange.publish(
                topology.persistent(body, **properties), routing_key=queue
            )  # type: ignore[arg-type]
    finally:
        await channel.close()


def record(key: str, payload: bytes, at: datetime) -> bytes:
    return codec.encode_record(key, payload, at)


async def depth(connection: AbstractConnection, queue: str) -> int:
    channel = await connection.channel()
    try:
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)
    finally:
        await channel.close()


async def drain(
    connection: AbstractConnection, queue: str
) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Take every message now on ``queue`` (acking them)."""
    channel = await connection.channel()
    taken = []
    try:
        q = await channel.declare_queue(queue, passive=True)
        while (message := await q.get(no_ack=True, fail=False)) is not None:
            taken.append(message)
    finally:
        await channel.close()
    return taken
