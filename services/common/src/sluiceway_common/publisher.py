"""Publishing many small messages with confirms, at the speed a 10-million-key enqueue needs.

aio-pika's publish costs ~470 µs of CPU a message here (an ``aio_pika.Message``, the channel
lock, a task, a socket write and a drain each, the same content header marshalled every
time; ``benchmarks/enqueue.py``), which held ``enqueue`` near 2,000 keys a second.
``ConfirmedPublisher`` queues messages and sends a batch as one socket write, registering
each message's delivery tag, confirm future and message id on the aiormq channel exactly as
aiormq's own ``basic_publish`` does, so the broker's acks, nacks and returns, and a lost
channel, settle them through aiormq's code.
"""

from __future__ import annotations

import asyncio
import copy
import os
import secrets
import struct
from collections import deque
from functools import partial
from typing import Any

import aiormq
import aiormq.exceptions
import pamqp.frame
from aio_pika.abc import AbstractChannel
from aiormq.abc import ChannelFrame, DeliveredMessage
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from sluiceway_common import amqp, topology

# Where a content header frame holds the body size: after the frame's type (1 byte),
# channel (2) and size (4), and the header's class id (2) and weight (2). AMQP 0-9-1, 4.2.6.1.
BODY_SIZE = struct.Struct(">Q")
BODY_SIZE_AT = 11

# Message ids are the publisher's prefix and a counter of this many hex digits, so every
# id of one publisher has the same length and its header frames differ only in place.
COUNTER_DIGITS = 12


class HeaderStamper:
    """Content header frames for one set of properties on one channel number.

    pamqp marshals the header once, with a placeholder message id; each message's frame is
    then that template with its body size and message id written over the placeholders.
    ``frame`` equals pamqp's own marshalling of the same header (a test holds it to that).
    """

    def __init__(self, properties: spec.Basic.Properties, id_prefix: str, channel: int) -> None:
        self._id_prefix = id_prefix
        placeholder = id_prefix + secrets.token_hex(COUNTER_DIGITS // 2)
        stamped = copy.copy(properties)
        stamped.message_id = placeholder
        template = pamqp.frame.marshal(ContentHeader(0, 0, stamped), channel)
        at = template.find(placeholder.encode())
        if at < 0 or template.find(placeholder.encode(), at + 1) >= 0:  # pragma: no cover
            raise ValueError("the message id placeholder is not unique in the header frame")
        self._head = template[:BODY_SIZE_AT]
        self._middle = template[BODY_SIZE_AT + BODY_SIZE.size : at]
        self._tail = template[at + len(placeholder) :]

    def message_id(self, counter: int) -> str:
        return f"{self._id_prefix}{counter:0{COUNTER_DIGITS}x}"

    def frame(self, body_size: int, message_id: str) -> bytes:
        """The header frame of a ``body_size``-byte body; the id from :meth:`message_id`."""
        body = BODY_SIZE.pack(body_size)
        return b"".join((self._head, body, self._middle, message_id.encode(), self._tail))


class ConfirmedPublisher:
    """Publishes to one queue through the default exchange with up to ``window`` unconfirmed.

    ``publish`` only queues a message; ``batch`` of them go out as one socket write (``flush``
    sends a shorter batch; call it before waiting on anything else, or the messages wait
    too). ``publish`` and ``flush`` wait while the window is full. ``drain`` sends the rest
    and waits for every confirm. The first failure — a nack, a message the broker returned as
    unroutable, a lost channel — is raised by the next call; nothing counts as published
    until it is confirmed.

    ``confirmed`` counts the messages, from the first, that the broker confirmed with none
    unconfirmed before them: after a failure, publishing again from there loses nothing.
    """

    def __init__(
        self,
        channel: AbstractChannel,
        routing_key: str,
        *,
        properties: spec.Basic.Properties | None = None,
        window: int = 4096,
        batch: int = 256,
    ) -> None:
        self._channel = channel
        self._routing_key = routing_key
        self._properties = properties or topology.persistent(b"").properties
        self._window = window
        self._batch = batch
        self._buffer: list[tuple[bytes, spec.Basic.Properties | None]] = []
        self._inflight: deque[asyncio.Future[Any]] = deque()
        self._room = asyncio.Event()
        self._error: BaseException | None = None  # the first failure, raised by the next call
        self._broken = False  # a failed message has been counted off: the count stops there
        # Unique across processes and publishers: a returned message comes back with only
        # its message id to say which publish it was.
        self._id_prefix = f"{os.getpid():x}.{secrets.token_hex(4)}."
        self._counter = 0
        self._frames: tuple[int, bytes, HeaderStamper] | None = None
        self._confirmed = 0

    @property
    def confirmed(self) -> int:
        self._settle()
        return self._confirmed

    async def publish(self, body: bytes, properties: spec.Basic.Properties | None = None) -> None:
        """Queue ``body``, with the publisher's properties unless others are given."""
        self._raise_failure()
        self._buffer.append((body, properties))
        if len(self._buffer) >= self._batch:
            await self.flush()

    async def flush(self) -> None:
        """Send what is queued, once the window has room for it."""
        if not self._buffer:
            return
        await self._wait_until_unsettled_at_most(self._window - len(self._buffer))
        messages, self._buffer = self._buffer, []
        underlay = await self._channel.get_underlay_channel()
        assert isinstance(underlay, aiormq.Channel)
        await self._send(underlay, messages)

    async def drain(self) -> None:
        """Send what is queued and wait until the broker has confirmed everything."""
        await self.flush()
        await self._wait_until_unsettled_at_most(0)

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise self._error

    def _settle(self) -> int:
        """Count off the settled messages at the head; return how many remain unsettled."""
        inflight = self._inflight
        while inflight and inflight[0].done():
            head = inflight.popleft()
            if self._broken:
                continue
            failure = _failure(head)
            if failure is None:
                self._confirmed += 1
            else:
                self._broken = True
                self._error = self._error or failure
        return len(inflight)

    async def _wait_until_unsettled_at_most(self, count: int) -> None:
        while self._settle() > max(count, 0):
            self._raise_failure()
            self._room.clear()
            await self._room.wait()
        self._raise_failure()

    def _on_settled(
        self, ids: dict[str, int], message_id: str, future: asyncio.Future[Any]
    ) -> None:
        ids.pop(message_id, None)
        if self._error is None:
            self._error = _failure(future)
        self._room.set()

    def _channel_frames(self, number: int) -> tuple[bytes, HeaderStamper]:
        # A robust connection that reconnects reopens the channel, perhaps under a new number.
        if self._frames is None or self._frames[0] != number:
            method = spec.Basic.Publish(exchange="", routing_key=self._routing_key, mandatory=True)
            self._frames = (
                number,
                pamqp.frame.marshal(method, number),
                HeaderStamper(self._properties, self._id_prefix, number),
            )
        return self._frames[1], self._frames[2]

    def _header(
        self, stamper: HeaderStamper, number: int, body: bytes, own: spec.Basic.Properties | None
    ) -> tuple[str, bytes]:
        self._counter += 1
        message_id = stamper.message_id(self._counter)
        if own is None:
            return message_id, stamper.frame(len(body), message_id)
        stamped = copy.copy(own)
        stamped.message_id = message_id
        return message_id, pamqp.frame.marshal(ContentHeader(0, len(body), stamped), number)

    async def _send(
        self, channel: aiormq.Channel, messages: list[tuple[bytes, spec.Basic.Properties | None]]
    ) -> None:
        number = channel.number
        method, stamper = self._channel_frames(number)
        largest = channel.max_content_size
        parts: list[bytes] = []
        registered: list[tuple[int, str, asyncio.Future[Any]]] = []
        async with channel.lock:
            first_tag = channel.delivery_tag
            try:
                for body, own in messages:
                    message_id, header = self._header(stamper, number, body, own)
                    parts.append(method)
                    parts.append(header)
                    for start in range(0, len(body), largest):
                        chunk = ContentBody(body[start : start + largest])
                        parts.append(pamqp.frame.marshal(chunk, number))
                    channel.delivery_tag += 1
                    confirmation = channel.create_future()
                    channel.confirmations[channel.delivery_tag] = confirmation
                    channel.message_id_delivery_tag[message_id] = channel.delivery_tag
                    registered.append((channel.delivery_tag, message_id, confirmation))
                drained = channel.create_future()
                await channel.write_queue.put(
                    ChannelFrame(payload=b"".join(parts), should_close=False, drain_future=drained)
                )
            except BaseException:
                # None of it reached the writer: hand the delivery tags back, as
                # basic_publish does, or later confirms would be matched to wrong messages.
                channel.delivery_tag = first_tag
                for tag, message_id, confirmation in registered:
                    channel.confirmations.pop(tag, None)
                    channel.message_id_delivery_tag.pop(message_id, None)
                    confirmation.cancel()
                raise
        ids = channel.message_id_delivery_tag
        for _, message_id, confirmation in registered:
            confirmation.add_done_callback(partial(self._on_settled, ids, message_id))
            self._inflight.append(confirmation)
        # The socket's own backpressure: the writer drains it before settling this.
        await amqp.broker_result(drained)


def _failure(future: asyncio.Future[Any]) -> BaseException | None:
    """Why the message of a settled confirm future was not published; None if it was."""
    if future.cancelled():
        return aiormq.exceptions.ChannelInvalidStateError("the channel closed before a confirm")
    exception = future.exception()
    if exception is not None:
        return amqp.broker_error(exception)
    result = future.result()
    if isinstance(result, spec.Basic.Ack):
        return None
    # A channel without on_return_raises settles a returned message with the message itself.
    if isinstance(result, DeliveredMessage) and isinstance(result.delivery, spec.Basic.Return):
        return aiormq.exceptions.PublishError(result, result.delivery)
    return aiormq.exceptions.DeliveryError(None, result)
