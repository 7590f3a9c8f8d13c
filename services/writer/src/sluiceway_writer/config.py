"""The writer's settings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sluiceway_common import settings
from sluiceway_common.pointer import Pointer
from sluiceway_common.settings import setting
from sluiceway_common.sink import (
    SINK_COLUMNS,
    SINK_KEY,
    SINK_TABLE,
    SINK_VERSION,
    SinkSpec,
    TableName,
    configured,
)
from sluiceway_writer.sink import WRITE_MODES

BATCH_MAX_BYTES = settings.Option(
    "SLUICEWAY_BATCH_MAX_BYTES",
    settings.integer(1024, 1 << 30, unit="bytes"),
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
    "direct: each batch upserts into records; buffered: each batch appends to records_buffer "
    "and one merger at a time moves rows into records",
    allowed="direct or buffered",
    default="direct",
)
MERGE_INTERVAL = settings.Option(
    "SLUICEWAY_MERGE_INTERVAL",
    settings.number(0.01, 3600, unit="seconds"),
    "buffered mode: how often the merger moves buffered rows into records",
    default="0.5",
)


@dataclass(frozen=True)
class WriterSettings(settings.Settings):
    database_url: str = setting(settings.DATABASE_URL)
    amqp_url: str = setting(settings.AMQP_URL)
    pipeline: str = setting(settings.PIPELINE)
    batch_size: int = setting(settings.BATCH_SIZE)
    batch_timeout: float = setting(settings.BATCH_TIMEOUT)
    batch_max_bytes: int = setting(BATCH_MAX_BYTES)
    write_mode: str = setting(WRITE_MODE)
    merge_interval: float = setting(MERGE_INTERVAL)
    metrics_port: int = setting(settings.METRICS_PORT)
    log_level: str = setting(settings.LOG_LEVEL)
    sink_table: TableName | None = setting(SINK_TABLE)
    sink_key: str = setting(SINK_KEY)
    sink_columns: Mapping[str, Pointer] = setting(SINK_COLUMNS)
    sink_version: str | None = setting(SINK_VERSION)

    def __post_init__(self) -> None:
        self.sink  # noqa: B018 -- the sink settings are checked against each other

    @property
    def sink(self) -> SinkSpec | None:
        """The sink table the settings name, ``None`` for ``records``."""
        return configured(vars(self))
