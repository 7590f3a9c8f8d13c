"""The writer's settings."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from sluiceway_common import settings

BATCH_MAX_BYTES = settings.Option(
    "SLUICEWAY_BATCH_MAX_BYTES",
    settings.integer(1024, 1 << 30),
    "bytes, an integer from 1024 to 1073741824",
    "flush a batch when its records reach this many bytes (decompressed); also the most one "
    "message may decompress to",
    default=str(16 << 20),
)

OPTIONS = (
    settings.DATABASE_URL,
    settings.AMQP_URL,
    settings.PIPELINE,
    settings.BATCH_SIZE,
    settings.BATCH_TIMEOUT,
    BATCH_MAX_BYTES,
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
    log_level: str

    @classmethod
    def from_args(
        cls, args: argparse.Namespace | None, environ: dict[str, str] | None = None
    ) -> WriterSettings:
        return cls(**settings.resolve(args, OPTIONS, environ))
