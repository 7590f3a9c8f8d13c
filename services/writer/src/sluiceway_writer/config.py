"""The writer's settings."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from sluiceway_common import settings

OPTIONS = (
    settings.DATABASE_URL,
    settings.AMQP_URL,
    settings.PIPELINE,
    settings.BATCH_SIZE,
    settings.BATCH_TIMEOUT,
    settings.LOG_LEVEL,
)


@dataclass(frozen=True)
class WriterSettings:
    database_url: str
    amqp_url: str
    pipeline: str
    batch_size: int
    batch_timeout: float
    log_level: str

    @classmethod
    def from_args(
        cls, args: argparse.Namespace | None, environ: dict[str, str] | None = None
    ) -> WriterSettings:
        return cls(**settings.resolve(args, OPTIONS, environ))
