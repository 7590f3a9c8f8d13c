"""The Celery contender of ``benchmarks/writer.py``: one task per record, landed in batches.

Written the way a Celery user would: celery-batches buffers task calls and hands them to
the task as a list every ``flush_every`` calls or ``flush_interval`` seconds, and the task
upserts the list through a plain psycopg 3 connection with ``executemany``. Configured
through the environment so that the benchmark can give every round its own queue:

- ``SLUICEWAY_AMQP_URL``: the broker;
- ``SLUICEWAY_DATABASE_URL``: the database, migrated by ``sluiceway migrate``;
- ``SLUICEWAY_PIPELINE``: the ``records.pipeline`` value the rows get;
- ``BENCH_CELERY_QUEUE``: the queue (and its exchange) of this round;
- ``BENCH_CELERY_PREFETCH``: messages in flight for the whole worker.
"""

from __future__ import annotations

import json
import os
from typing import Any

import psycopg
from celery import Celery
from celery_batches import Batches, SimpleRequest

QUEUE = os.environ.get("BENCH_CELERY_QUEUE", "sluiceway-bench-celery")
CONCURRENCY = int(os.environ.get("BENCH_CELERY_CONCURRENCY", "1"))
PREFETCH = int(os.environ.get("BENCH_CELERY_PREFETCH", "2000"))
FLUSH_EVERY = 1000
FLUSH_INTERVAL = 0.2

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
