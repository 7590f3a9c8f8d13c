"""The writer's settings."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from sluiceway_common import settings
from sluiceway_writer.sink import WRITE_MODES

BATCH_MAX_BYTES = settings.Option(
    "SLUICEWAY_BATCH_MAX_BYTES",
    settings.integer(1024, 1 << 30),
    "bytes, an integer from 1024 to 1073741824",
    "flush a batch when its records reach this many bytes (decompressed); also the most one "
    "message may decompress to",
    default=str(16 << 20),
)


def write_mode(text: str) -> str:
    if text.strip() not in WRITE_MODES:
        raise ValueError("")
    return text.strip()


WRITE_MODE = settings.Option(
    "SLUICEWAY_WRITE_MODE",
    write_mode,
    "direct or buffered",
    "direct: each batch upserts into records; buffered: each batch appends to records_buffer "
    "and one merger at a time moves rows into records",
    default="direct",
)
MERGE_INTERVAL = settings.Option(
    "SLUICEWAY_MERGE_INTERVAL",
    settings.number(0.01, 3600),
    "seconds, a number from 0.01 to 3600",
    "buffered mode: how often the merger moves buffered rows into records",
    default="0.5",
)

OPTIONS = (
    settings.DATABASE_URL,
    settings.AMQP_URL,
    settings.PIPELINE,
    settings.BATCH_SIZE,
    settings.BATCH_TIMEOUT,
    BATCH_MAX_BYTES,
    WRITE_MODE,
    MERGE_INTERVAL,
    settings.METRICS_PORT,
    settings.LOG_LEVEL,
)


@dataclass(frozen=True)
class WriterSettings:
    database_url: str
    amqp_url: str
    pipeline: str
    batch_size: int
    batch_timeout: float
    batch_max_bytes: int
    write_mode: str
    merge_interval: float
    metrics_port: int
    log_level: str

    @classmethod
    def from_args(
        cls, args: argparse.Namespace | None, environ: dict[str, str] | None = None
    ) -> WriterSettings:
        return cls(**settings.resolve(args, OPTIONS, environ))
