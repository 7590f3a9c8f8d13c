"""The fetcher's settings."""

from __future__ import annotations

from dataclasses import dataclass, replace

from sluiceway_common import settings
from sluiceway_common.settings import ConfigError, Option, setting
from sluiceway_fetcher.packer import PackPolicy

RATE_LIMIT = replace(
    settings.RATE_LIMIT,
    help="requests per second to the upstream from all of the pipeline's fetchers together, "
    "unless `sluiceway rate set` overrides it",
)

MAX_BODY_BYTES = Option(
    "SLUICEWAY_MAX_BODY_BYTES",
    settings.integer(1024, 1 << 30, unit="bytes"),
    "an upstream body larger than this (as sent) fails its key without being read further",
    default=str(10 << 20),
)
PUBLISH_LINGER_MS = Option(
    "SLUICEWAY_PUBLISH_LINGER_MS",
    settings.number(0, 10_000, unit="milliseconds"),
    "records finished within this long of the first go out as one message; 0 sends each alone",
    default="20",
)
PACK_MAX_RECORDS = Option(
    "SLUICEWAY_PACK_MAX_RECORDS",
    settings.integer(1, 10_000),
    "most records in one message",
    default="100",
)
PACK_MAX_BYTES = Option(
    "SLUICEWAY_PACK_MAX_BYTES",
    settings.integer(1024, 64 << 20, unit="bytes"),
    "most bytes of records in one message (a larger record still goes, alone)",
    default=str(1 << 20),
)
COMPRESS_MIN_BYTES = Option(
    "SLUICEWAY_COMPRESS_MIN_BYTES",
    settings.integer(0, 1 << 30, unit="bytes"),
    "compress a message body (zstd) from this size up; chosen by benchmarks/compression.py",
    default="1024",
)


@dataclass(frozen=True)
class FetcherSettings(settings.Settings):
    amqp_url: str = setting(settings.AMQP_URL)
    redis_url: str = setting(settings.REDIS_URL)
    pipeline: str = setting(settings.PIPELINE)
    source_url: str = setting(settings.SOURCE_URL)
    source_headers: dict[str, str] = setting(settings.SOURCE_HEADERS)
    rate_limit: float = setting(RATE_LIMIT)
    concurrency: int = setting(settings.CONCURRENCY)
    request_timeout: float = setting(settings.REQUEST_TIMEOUT)
    max_attempts: int = setting(settings.MAX_ATTEMPTS)
    max_body_bytes: int = setting(MAX_BODY_BYTES)
    publish_linger_ms: float = setting(PUBLISH_LINGER_MS)
    pack_max_records: int = setting(PACK_MAX_RECORDS)
    pack_max_bytes: int = setting(PACK_MAX_BYTES)
    compress_min_bytes: int = setting(COMPRESS_MIN_BYTES)
    metrics_port: int = setting(settings.METRICS_PORT)
    log_level: str = setting(settings.LOG_LEVEL)

    def pack_policy(self) -> PackPolicy:
        return PackPolicy(
            linger=self.publish_linger_ms / 1000,
            max_records=self.pack_max_records,
            max_bytes=self.pack_max_bytes,
            compress_min_bytes=self.compress_min_bytes,
        )


__all__ = ["ConfigError", "FetcherSettings"]
