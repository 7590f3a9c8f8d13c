"""The Celery contenders of ``benchmarks/writer.py`` and ``benchmarks/end_to_end.py``.

Written the way a Celery user would. ``land`` is one task per record, landed in batches:
celery-batches buffers task calls and hands them to the task as a list every ``flush_every``
calls or ``flush_interval`` seconds, and the task upserts the list through a plain psycopg 3
connection with ``executemany``. ``fetch`` is one task per key: it GETs the key's URL through
its process's pooled ``httpx.Client`` and calls ``land`` with the answer. Run as
``python -m benchmarks.celery_app FILE`` it queues one ``fetch`` per line of FILE, as a user's
script would. Configured through the environment so that the benchmark can give every round
its own queues:

- ``SLUICEWAY_AMQP_URL``: the broker;
- ``SLUICEWAY_DATABASE_URL``: the database, migrated by ``sluiceway migrate``;
- ``SLUICEWAY_PIPELINE``: the ``records.pipeline`` value the rows get;
- ``SLUICEWAY_SOURCE_URL``: ``fetch``'s URL template, holding ``{key}``;
- ``BENCH_CELERY_QUEUE``: the queue (and its exchange) of ``land``, this round's;
- ``BENCH_CELERY_FETCH_QUEUE``: the queue of ``fetch`` (and its exchange);
- ``BENCH_CELERY_CONCURRENCY``: the worker's pool size (processes or threads);
- ``BENCH_CELERY_PREFETCH``: messages in flight for the whole worker.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
import psycopg
from celery import Celery
from celery.signals import worker_ready
from celery_batches import Batches, SimpleRequest

QUEUE = os.environ.get("BENCH_CELERY_QUEUE", "sluiceway-bench-celery")
FETCH_QUEUE = os.environ.get("BENCH_CELERY_FETCH_QUEUE", f"{QUEUE}-fetch")
CONCURRENCY = int(os.environ.get("BENCH_CELERY_CONCURRENCY", "1"))
PREFETCH = int(os.environ.get("BENCH_CELERY_PREFETCH", "2000"))
FLUSH_EVERY = 1000
FLUSH_INTERVAL = 0.2
# Printed once the worker consumes: at Celery's default log level (WARNING) it logs no line
# of its own then, nor one a task.
WORKER_READY = "sluiceway_bench worker ready"

UPSERT = """
INSERT INTO records AS r (pipeline, key, payload, fetched_at)
VALUES (%s, %s, %s::jsonb, %s::timestamptz)
ON CONFLICT (pipeline, key) DO UPDATE
    SET payload = EXCLUDED.payload, fetched_at = EXCLUDED.fetched_at, written_at = now()
    WHERE r.fetched_at < EXCLUDED.fetched_at
"""

app = Celery("sluiceway_bench", broker=os.environ.get("SLUICEWAY_AMQP_URL"))
app.conf.update(
    task_default_queue=QUEUE,
    task_default_exchange=QUEUE,
    # Celery's native delayed delivery on quorum queues routes through topic exchanges.
    task_default_exchange_type="topic",
    task_default_routing_key=QUEUE,
    # The sluiceway queues are quorum queues; the same kind here keeps the broker's share of
    # the work comparable (Celery then also declares its native delayed-delivery topology).
    task_default_queue_type="quorum",
    task_routes={"sluiceway_bench.fetch": {"queue": FETCH_QUEUE}},
    task_create_missing_queue_type="quorum",
    task_create_missing_queue_exchange_type="topic",
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    # Acked only after the batch committed, as sluiceway does: an early ack loses records
    # when the worker dies holding a batch.
    task_acks_late=True,
    # Celery prefetches multiplier x concurrency messages; a batch of 1000 needs at least
    # that many in hand, and the sluiceway writer holds 2 x batch size.
    worker_prefetch_multiplier=max(1, PREFETCH // CONCURRENCY),
    worker_enable_remote_control=False,
    broker_connection_retry_on_startup=True,
)

_connection: psycopg.Connection[Any] | None = None
_client: httpx.Client | None = None
_client_lock = threading.Lock()


def connection() -> psycopg.Connection[Any]:
    """This process's connection, opened on first use so that prefork children own theirs."""
    global _connection
    if _connection is None or _connection.closed:
        _connection = psycopg.connect(os.environ["SLUICEWAY_DATABASE_URL"])
    return _connection


@app.task(
    base=Batches,
    name="sluiceway_bench.land",
    flush_every=FLUSH_EVERY,
    flush_interval=FLUSH_INTERVAL,
)
def land(requests: list[SimpleRequest]) -> None:
    """Upsert one record per request: ``land.delay(key, payload, fetched_at)``."""
    pipeline = os.environ["SLUICEWAY_PIPELINE"]
    rows = [
        (pipeline, key, json.dumps(payload, separators=(",", ":")), fetched_at)
        for key, payload, fetched_at in (request.args for request in requests)
    ]
    conn = connection()
    with conn.cursor() as cursor:
        cursor.executemany(UPSERT, rows)
    conn.commit()


@worker_ready.connect
def announce(**_: Any) -> None:
    print(WORKER_READY, file=sys.stderr, flush=True)


def client() -> httpx.Client:
    """This process's pooled HTTP client, opened on first use (after a prefork pool's fork)
    and shared by a thread pool's threads, with a kept-alive connection for each of them."""
    global _client
    with _client_lock:
        if _client is None:
            limits = httpx.Limits(
                max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY
            )
            _client = httpx.Client(limits=limits, timeout=30.0)
        return _client


@app.task(
    name="sluiceway_bench.fetch",
    autoretry_for=(httpx.TransportError, httpx.HTTPStatusError),
    retry_backoff=True,
    max_retries=4,
)
def fetch(key: str) -> None:
    """GET the key's URL and land its JSON: ``fetch.delay(key)``."""
    url = os.environ["SLUICEWAY_SOURCE_URL"].replace("{key}", quote(key, safe=""))
    response = client().get(url)
    response.raise_for_status()
    land.delay(key, response.json(), datetime.now(UTC).isoformat())


def enqueue(path: str) -> int:
    """Queue one ``fetch`` a line of ``path`` (blank lines skipped), through one producer."""
    queued = 0
    with open(path, encoding="utf-8") as lines, app.producer_or_acquire() as producer:
        for line in lines:
            if key := line.strip():
                fetch.apply_async((key,), producer=producer)
                queued += 1
    print(f"queued {queued} fetch tasks", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(enqueue(sys.argv[1]))
