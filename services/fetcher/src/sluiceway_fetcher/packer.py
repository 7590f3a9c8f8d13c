"""Publishing records packed: the records finished close together go out as one message.

A *pack* is the records that completed within ``linger`` seconds of the first one, up to
``max_records`` records or ``max_bytes`` bytes: one message whose body is the record itself
when alone, else a JSON array of them (the writer accepts both). A body of at least
``compress_min_bytes`` is compressed with zstd and marked ``content_encoding: zstd``; a single
small record is not worth it. Each record's publisher waits for its pack's broker confirm, so
a fetch task is still acked only after its own record is safe; a key that failed never enters
a pack, so its failure stays its own. Once a pack is confirmed, and before its publishers
return, ``confirmed`` is handed the keys of its records: the fetcher releases their in-flight
marks there, one Redis call a pack.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import zstandard
from aio_pika.abc import AbstractChannel

from sluiceway_common import amqp, topology

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackPolicy:
    """What makes a pack full and how its body is made; pure, no I/O."""

    linger: float  # seconds; 0 publishes every record alone at once
    max_records: int
    max_bytes: int
    compress_min_bytes: int
    level: int = 3

    def fits(self, records: int, size: int, extra: int) -> bool:
        """Whether a record of ``extra`` bytes may join a pack of ``records`` and ``size``."""
        return records == 0 or (records < self.max_records and size + extra <= self.max_bytes)

    def full(self, records: int, size: int) -> bool:
        return self.linger <= 0 or records >= self.max_records or size >= self.max_bytes

    def body(self, records: list[bytes]) -> tuple[bytes, str | None]:
        """The message body of ``records`` and its content encoding (``None``: plain)."""
        body = records[0] if len(records) == 1 else b"[" + b",".join(records) + b"]"
        if len(body) < self.compress_min_bytes:
            return body, None
        return zstandard.ZstdCompressor(level=self.level).compress(body), "zstd"


@dataclass
class _Pack:
    confirmed: asyncio.Future[None]
    records: list[bytes] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    size: int = 0


class Packer:
    """Packs records for one queue and publishes each pack with a broker confirm."""

    def __init__(
        self,
        channel: AbstractChannel,
        routing_key: str,
        policy: PackPolicy,
        confirmed: Callable[[list[str]], Awaitable[None]] | None = None,
    ) -> None:
        self._channel = channel
        self._confirmed = confirmed
        self._routing_key = routing_key
        self._policy = policy
        self._pack: _Pack | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self.messages = 0

    async def publish(self, record: bytes, key: str | None = None) -> None:
        """Put ``record`` (of ``key``) in the open pack; return once the broker confirmed its
        message and the pack's keys were handed on."""
        pack = self._pack
        if pack is not None and not self._policy.fits(len(pack.records), pack.size, len(record)):
            self._send_open_pack()
            pack = None
        if pack is None:
            pack = self._pack = _Pack(asyncio.get_running_loop().create_future())
            # A failed pack nobody waits for any more (its fetchers stopped) must not warn.
            pack.confirmed.add_done_callback(_retrieve)
            if self._policy.linger > 0:
                self._timer = asyncio.get_running_loop().call_later(
                    self._policy.linger, self._send_open_pack
                )
        pack.records.append(record)
        if key is not None:
            pack.keys.append(key)
        pack.size += len(record)
        if self._policy.full(len(pack.records), pack.size):
            self._send_open_pack()
        # Shielded: a fetcher cancelled while waiting must not cancel its neighbours' pack.
        await asyncio.shield(pack.confirmed)

    def _send_open_pack(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pack, self._pack = self._pack, None
        if pack is None or not pack.records:
            return
        task = asyncio.get_running_loop().create_task(self._send(pack))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, pack: _Pack) -> None:
        body, encoding = self._policy.body(pack.records)
        try:
            await self._channel.default_exchange.publish(
                topology.persistent(body, content_encoding=encoding),
                routing_key=self._routing_key,
                mandatory=True,
            )
        except Exception as exc:  # handed to every record's publisher, which decides
            if not pack.confirmed.done():
                pack.confirmed.set_exception(amqp.broker_error(exc))
        else:
            self.messages += 1
            if self._confirmed is not None and pack.keys:
                await self._confirmed(pack.keys)
            if not pack.confirmed.done():
                pack.confirmed.set_result(None)

    async def close(self) -> None:
        """Send the open pack and wait for every pack under way."""
        self._send_open_pack()
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)


def _retrieve(future: asyncio.Future[None]) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        future.exception()
