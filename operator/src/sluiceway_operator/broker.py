"""Queue depths, as the scaling policies need them: ready *and* unacked messages (the records
queue's for the writers; the fetch and delay queues' together for the fetchers).

RabbitMQ's management HTTP API counts both (``messages`` of ``/api/queues/<vhost>/<name>``);
a writer's prefetched batch is unacked, and a policy that saw only ready messages would
take busy writers for idle ones and scale them away mid-batch. When the management API
cannot be reached (the plugin is off, a network policy), or answers without the queue's
counts (not sampled yet: a queue just declared, a broker just back), an AMQP passive declare
is the fallback; it sees ready messages only, and the reading says which source it came from.
With several nodes (a cluster: comma-separated URLs), the management API of each is tried in
turn, the one that answered last first: any node's API counts every queue of the cluster.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import aio_pika
import aio_pika.exceptions
import aiormq.exceptions
import httpx

from sluiceway_common import amqp
from sluiceway_common.settings import mask, split_urls
from sluiceway_common.topology import queue_depths

log = logging.getLogger(__name__)

Source = Literal["management-api", "passive-declare"]
MANAGEMENT_TIMEOUT = 5.0


class BrokerUnreachable(Exception):
    """Neither the management API nor AMQP answered; the message says what each said."""


class Unsampled(ValueError):
    """The management API answered for the queue, without its message counts."""


@dataclass(frozen=True)
class Depth:
    messages: int  # ready + unacked from the management API; ready only from AMQP
    consumers: int
    source: Source


def management_url(amqp_url: str) -> str:
    """The management API of the broker behind ``amqp_url``: same host and user, port 15672
    (15671 over TLS)."""
    parts = urlsplit(amqp_url)
    tls = parts.scheme == "amqps"
    netloc = parts.netloc.rsplit("@", 1)
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    address = f"{host}:{15671 if tls else 15672}"
    return urlunsplit(("https" if tls else "http",
                       f"{netloc[0]}@{address}" if len(netloc) == 2 else address,
                       "", "", ""))  # fmt: skip


def _api(base_url: str) -> tuple[str, httpx.BasicAuth]:
    """A management API's base URL without its credentials, and the credentials."""
    base = urlsplit(base_url)
    auth = httpx.BasicAuth(unquote(base.username or "guest"), unquote(base.password or "guest"))
    host = base.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{base.port}" if base.port else host
    return urlunsplit((base.scheme, netloc, base.path.rstrip("/"), "", "")), auth


def vhost_of(amqp_url: str) -> str:
    path = urlsplit(amqp_url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


class DepthReader:
    """Reads one pipeline's queue depths; keeps one AMQP connection for the fallback."""

    def __init__(self, amqp_url: str, management: str | None = None) -> None:
        self._amqp_url = amqp_url
        nodes = split_urls(amqp_url)
        bases = split_urls(management) if management else [management_url(u) for u in nodes]
        self._apis = [_api(base) for base in bases]  # (base URL, credentials)
        self._http = httpx.AsyncClient(timeout=MANAGEMENT_TIMEOUT)
        self._vhost = quote(vhost_of(nodes[0]), safe="")
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._source: Source | None = None

    async def read(self, queue: str) -> Depth:
        return await self.read_total((queue,))

    async def read_total(self, queues: tuple[str, ...]) -> Depth:
        """The depths of ``queues`` summed (a pipeline's fetch queue and its delay queues),
        all from one source: the management API (one request a queue: its name filter works
        only on paged listings), else a passive declare of each. One queue it cannot count
        makes the whole reading fail: a sum missing a part is no reading."""
        try:
            depths = [await self._management(queue) for queue in queues]
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            management_error = f"{type(exc).__name__}: {mask(str(exc))}"
            try:
                depths = await self._passive(queues)
            except (OSError, aio_pika.exceptions.AMQPError, aiormq.exceptions.AMQPError,
                    TimeoutError) as amqp_exc:  # fmt: skip
                await self._drop_connection()
                raise BrokerUnreachable(
                    f"management API: {management_error}; AMQP: "
                    f"{type(amqp_exc).__name__}: {mask(str(amqp_exc))}"
                ) from None
            if self._source != depths[0].source:
                log.warning("queue depth from a passive declare, which counts ready messages "
                            "only: the management API at %s failed (%s)",
                            mask(self._api), management_error)  # fmt: skip
        depth = Depth(sum(d.messages for d in depths), sum(d.consumers for d in depths),
                      depths[0].source)  # fmt: skip
        self._source = depth.source
        return depth

    @property
    def _api(self) -> str:
        return self._apis[0][0]

    async def _management(self, queue: str) -> Depth:
        """The queue's depth from the first node whose management API answers (that one
        is asked first from then on)."""
        for attempt in range(len(self._apis)):
            api, auth = self._apis[0]
            try:
                response = await self._http.get(
                    f"{api}/api/queues/{self._vhost}/{quote(queue, safe='')}", auth=auth
                )
            except httpx.TransportError:
                if attempt == len(self._apis) - 1:
                    raise
                self._apis.append(self._apis.pop(0))
                continue
            return self._depth(queue, response)
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _depth(queue: str, response: httpx.Response) -> Depth:
        if response.status_code == 404 and response.json().get("error") == "Object Not Found":
            return Depth(0, 0, "management-api")  # not declared yet: nothing to do
        response.raise_for_status()
        doc = response.json()
        messages = doc.get("messages")
        if messages is None:
            ready, unacked = doc.get("messages_ready"), doc.get("messages_unacknowledged")
            if ready is None or unacked is None:
                # No statistics sampled yet (a queue just declared, a broker just back): the
                # counts are absent for seconds, and absent is no reading, not zero.
                raise Unsampled(f"queue {queue} has no message counts yet (statistics not "
                                "sampled)")  # fmt: skip
            messages = int(ready) + int(unacked)
        return Depth(int(messages), int(doc.get("consumers", 0)), "management-api")

    async def _passive(self, queues: tuple[str, ...]) -> list[Depth]:
        if self._connection is None or self._connection.is_closed:
            self._connection = await amqp.connect_plain(self._amqp_url, "operator")
        return [Depth(depth.ready, depth.consumers, "passive-declare")
                for depth in await queue_depths(self._connection, queues)]  # fmt: skip

    async def _drop_connection(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            try:
                await connection.close()
            except Exception:
                log.debug("closing a failed AMQP connection", exc_info=True)

    async def close(self) -> None:
        await self._http.aclose()
        await self._drop_connection()
