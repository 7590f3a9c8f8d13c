"""The fetcher's settings."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace

from sluiceway_common import settings
from sluiceway_common.settings import ConfigError, Option, Refused


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
CONCURRENCY = Option(
    "SLUICEWAY_FETCH_CONCURRENCY",
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

OPTIONS = (
    settings.AMQP_URL,
    settings.REDIS_URL,
    settings.PIPELINE,
    SOURCE_URL,
    RATE_LIMIT,
    CONCURRENCY,
    REQUEST_TIMEOUT,
    settings.LOG_LEVEL,
)


@dataclass(frozen=True)
class FetcherSettings:
    amqp_url: str
    redis_url: str
    pipeline: str
    source_url: str
    rate_limit: float
    fetch_concurrency: int
    request_timeout: float
    log_level: str

    @classmethod
    def from_args(
        cls, args: argparse.Namespace | None, environ: dict[str, str] | None = None
    ) -> FetcherSettings:
        return cls(**settings.resolve(args, OPTIONS, environ))


__all__ = ["OPTIONS", "ConfigError", "FetcherSettings"]
