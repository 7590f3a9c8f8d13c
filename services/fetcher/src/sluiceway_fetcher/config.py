"""The fetcher's settings."""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass, replace

from sluiceway_common import settings
from sluiceway_common.settings import ConfigError, Option, Refused
from sluiceway_fetcher.packer import PackPolicy


def source_template(text: str) -> str:
    template = text.strip()
    if template.count("{key}") != 1:
        raise Refused('it must hold "{key}" exactly once')
    settings.url("http", "https")(template.replace("{key}", "k"))
    # Anything but {key} in braces would be an unfilled placeholder in every request.
    if template.replace("{key}", "").count("{") or template.replace("{key}", "").count("}"):
        raise Refused('braces other than "{key}"')
    return template


SOURCE_URL = Option(
    "SLUICEWAY_SOURCE_URL",
    source_template,
    "an http(s) URL template holding {key} once, e.g. https://api.example.com/users/{key}",
    "upstream URL template; {key} is replaced by the percent-encoded key",
)
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def source_headers(text: str) -> dict[str, str]:
    try:
        headers = json.loads(text)
    except ValueError:
        raise Refused("not JSON") from None
    if not isinstance(headers, dict):
        raise Refused("not a JSON object")
    for name, value in headers.items():
        if not HEADER_NAME.fullmatch(name):
            raise Refused("a header name is not an HTTP token")
        if not isinstance(value, str) or any(c in value for c in "\r\n\0"):
            raise Refused(f"the value of {name} is not a one-line string")
    return headers


SOURCE_HEADERS = Option(
    "SLUICEWAY_SOURCE_HEADERS",
    source_headers,
    'a JSON object of header names to string values, e.g. {"Authorization": "Bearer …"}',
    "headers sent with every upstream request (tokens: never logged)",
    default="{}",
    secret=True,
)
CONCURRENCY = Option(
    "SLUICEWAY_CONCURRENCY",
    settings.integer(1, 4096),
    "an integer from 1 to 4096",
    "requests in flight per fetcher process",
    default="32",
)
REQUEST_TIMEOUT = Option(
    "SLUICEWAY_REQUEST_TIMEOUT",
    settings.number(0.1, 600),
    "seconds, a number from 0.1 to 600",
    "timeout of one upstream request",
    default="30",
)

RATE_LIMIT = replace(
    settings.RATE_LIMIT,
    help="requests per second to the upstream from all of the pipeline's fetchers together, "
    "unless `sluiceway rate set` overrides it",
)

MAX_ATTEMPTS = Option(
    "SLUICEWAY_MAX_ATTEMPTS",
    settings.integer(1, 20),
    "an integer from 1 to 20",
    "attempts at a key before a timeout, connection error, 5xx, 408 or 429 fails it for good",
    default="5",
)
MAX_BODY_BYTES = Option(
    "SLUICEWAY_MAX_BODY_BYTES",
    settings.integer(1024, 1 << 30),
    "bytes, an integer from 1024 to 1073741824",
    "an upstream body larger than this (as sent) fails its key without being read further",
    default=str(10 << 20),
)
PUBLISH_LINGER_MS = Option(
    "SLUICEWAY_PUBLISH_LINGER_MS",
    settings.number(0, 10_000),
    "milliseconds, a number from 0 to 10000",
    "records finished within this long of the first go out as one message; 0 sends each alone",
    default="20",
)
PACK_MAX_RECORDS = Option(
    "SLUICEWAY_PACK_MAX_RECORDS",
    settings.integer(1, 10_000),
    "an integer from 1 to 10000",
    "most records in one message",
    default="100",
)
PACK_MAX_BYTES = Option(
    "SLUICEWAY_PACK_MAX_BYTES",
    settings.integer(1024, 64 << 20),
    "bytes, an integer from 1024 to 67108864",
    "most bytes of records in one message (a larger record still goes, alone)",
    default=str(1 << 20),
)
COMPRESS_MIN_BYTES = Option(
    "SLUICEWAY_COMPRESS_MIN_BYTES",
    settings.integer(0, 1 << 30),
    "bytes, an integer from 0 to 1073741824",
    "compress a message body (zstd) from this size up; chosen by benchmarks/compression.py",
    default="1024",
)

OPTIONS = (
    settings.AMQP_URL,
    settings.REDIS_URL,
    settings.PIPELINE,
    SOURCE_URL,
    SOURCE_HEADERS,
    RATE_LIMIT,
    CONCURRENCY,
    REQUEST_TIMEOUT,
    MAX_ATTEMPTS,
    MAX_BODY_BYTES,
    PUBLISH_LINGER_MS,
    PACK_MAX_RECORDS,
    PACK_MAX_BYTES,
    COMPRESS_MIN_BYTES,
    settings.METRICS_PORT,
    settings.LOG_LEVEL,
)


@dataclass(frozen=True)
class FetcherSettings:
    amqp_url: str
    redis_url: str
    pipeline: str
    source_url: str
    source_headers: dict[str, str]
    rate_limit: float
    concurrency: int
    request_timeout: float
    max_attempts: int
    max_body_bytes: int
    publish_linger_ms: float
    pack_max_records: int
    pack_max_bytes: int
    compress_min_bytes: int
    metrics_port: int
    log_level: str

    def pack_policy(self) -> PackPolicy:
        return PackPolicy(
            linger=self.publish_linger_ms / 1000,
            max_records=self.pack_max_records,
            max_bytes=self.pack_max_bytes,
            compress_min_bytes=self.compress_min_bytes,
        )

    @classmethod
    def from_args(
        cls, args: argparse.Namespace | None, environ: dict[str, str] | None = None
    ) -> FetcherSettings:
        return cls(**settings.resolve(args, OPTIONS, environ))


__all__ = ["OPTIONS", "ConfigError", "FetcherSettings"]
