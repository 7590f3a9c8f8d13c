"""The writer's settings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sluiceway_common import settings
from sluiceway_common.pointer import Pointer
from sluiceway_common.settings import ConfigError, setting
from sluiceway_writer import mapping
from sluiceway_writer.mapping import SinkSpec, TableName
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

# The sink (see mapping.py): the user's own table, in place of records.
SINK_TABLE = settings.Option(
    "SLUICEWAY_SINK_TABLE",
    mapping.table_name,
    "land records in this table of yours instead of records; it must exist",
    allowed="a table name as in SQL, schema-qualified or not (users, analytics.users, "
    '"Analytics Data".users), or empty for records',
    default="",
)
SINK_KEY = settings.Option(
    "SLUICEWAY_SINK_KEY",
    mapping.column_name,
    "the sink table's column the record's key goes to; unique on its own (the upsert's "
    "conflict target)",
    allowed="a column's name, exactly as the table has it",
    default="key",
)
SINK_COLUMNS = settings.Option(
    "SLUICEWAY_SINK_COLUMNS",
    mapping.column_map,
    "the sink table's columns and what each gets: a JSON pointer into the record "
    '{"key", "payload", "fetched_at"}',
    allowed='a JSON object of column names to JSON pointers, e.g. {"login": "/payload/login", '
    '"seen_at": "/fetched_at"}',
    default="{}",
)
SINK_VERSION = settings.Option(
    "SLUICEWAY_SINK_VERSION",
    mapping.optional_column_name,
    "a mapped column holding /fetched_at: a row is updated only by a newer fetch; empty: "
    "the last record written wins",
    allowed="the name of a column SLUICEWAY_SINK_COLUMNS maps to /fetched_at, or empty",
    default="",
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
        try:
            self.sink  # noqa: B018 -- the sink settings are checked against each other
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    @property
    def sink(self) -> SinkSpec | None:
        """The sink table the settings name, ``None`` for ``records``."""
        return mapping.spec(self.sink_table, self.sink_key, self.sink_columns, self.sink_version)
