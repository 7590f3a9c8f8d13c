"""Configuration: every value comes from a ``SLUICEWAY_*`` variable or the matching CLI flag.

A component declares its :class:`Option` s; :func:`add_options` turns them into flags and
:func:`resolve` reads flag, then environment, then default, and parses each value. A value
that does not parse raises :class:`ConfigError` whose message is the one line the CLI prints
before exiting with status 2.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit


class ConfigError(Exception):
    """A configuration value is missing or not allowed; the message names the variable."""


class Refused(ValueError):
    """Raised by a parser to say why a value is refused; the reason joins the error line."""


@dataclass(frozen=True)
class Option:
    """One setting: its variable, how its text becomes a value, and what is allowed."""

    env: str
    parse: Callable[[str], Any]
    allowed: str
    help: str
    default: str | None = None
    secret: bool = False

    @property
    def dest(self) -> str:
        return self.env.removeprefix("SLUICEWAY_").lower()

    @property
    def flag(self) -> str:
        return "--" + self.dest.replace("_", "-")


def add_options(parser: argparse.ArgumentParser, options: tuple[Option, ...]) -> None:
    """Add one flag per option; flags default to ``None`` so :func:`resolve` sees what was set."""
    for option in options:
        default = "" if option.default is None else f"; default {mask(option.default)}"
        parser.add_argument(
            option.flag,
            dest=option.dest,
            default=None,
            metavar=option.dest.upper(),
            help=f"{option.help} (env {option.env}{default})",
        )


def resolve(
    args: argparse.Namespace | None,
    options: tuple[Option, ...],
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """``{dest: value}`` per option, from the flag, else the environment, else the default."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for option in options:
        raw = getattr(args, option.dest, None) if args is not None else None
        where = option.flag
        if raw is None:
            raw = environ.get(option.env)
            where = option.env
        if raw is None:
            raw = option.default
            where = f"{option.env} (default)"
        if raw is None:
            raise ConfigError(f"{option.env} is not set: expected {option.allowed}")
        try:
            values[option.dest] = option.parse(raw)
        except ValueError as exc:
            shown = repr(hide(raw) if option.secret else raw)
            detail = f" ({exc})" if isinstance(exc, Refused) and str(exc) else ""
            raise ConfigError(
                f"{where}={shown} is not allowed: expected {option.allowed}{detail}"
            ) from None
    return values


def hide(secret: str) -> str:
    """What may be shown of a secret value: a URL with its password masked, else nothing."""
    try:
        parts = urlsplit(secret)
    except ValueError:
        return "<hidden>"
    return mask(secret) if parts.scheme and parts.netloc else "<hidden>"


def secret_values(options: tuple[Option, ...], values: Mapping[str, Any]) -> list[str]:
    """What of ``values`` (as :func:`resolve` returns them) must never be shown: the password
    of each secret URL (as written and decoded), the values of a secret mapping (headers),
    and any other secret text whole."""
    found: list[str] = []
    for option in options:
        if not option.secret or option.dest not in values:
            continue
        value = values[option.dest]
        if isinstance(value, Mapping):
            found.extend(str(v) for v in value.values())
            continue
        text = str(value)
        try:
            parts = urlsplit(text)
        except ValueError:
            parts = None
        if parts is None or not (parts.scheme and parts.netloc):
            found.append(text)
        elif parts.password:
            raw = parts.netloc.rpartition("@")[0].partition(":")[2]
            found.extend({raw, unquote(raw)})
    return found


def mask(url: str) -> str:
    """The URL with its password replaced by ``***``; other text is returned unchanged."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username or ''}:***@{host}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(SplitResult(parts.scheme, netloc, parts.path, parts.query, parts.fragment))


# --- parsers ---------------------------------------------------------------------------------


def integer(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text.strip())
        if not low <= value <= high:
            raise ValueError("out of range")
        return value

    return parse


def number(low: float, high: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = float(text.strip())
        if not math.isfinite(value) or not low <= value <= high:
            raise ValueError("out of range")
        return value

    return parse


def url(*schemes: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        parts = urlsplit(text.strip())
        if parts.scheme not in schemes or not parts.hostname:
            raise ValueError("")
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
        return text.strip()

    return parse


PIPELINE_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def pipeline_name(text: str) -> str:
    # The name reaches queue names, Redis keys and Kubernetes object names, so it is held to
    # a DNS label: nothing in it can change the meaning of any of those.
    if not PIPELINE_NAME.fullmatch(text):
        raise ValueError("")
    return text


def log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError("")
    return level


# --- options every service shares ---------------------------------------------------------

DATABASE_URL = Option(
    "SLUICEWAY_DATABASE_URL",
    url("postgresql", "postgres"),
    "a postgresql:// URL with a host",
    "PostgreSQL the writer lands rows in",
    default="postgresql://sluiceway:sluiceway@127.0.0.1:5432/sluiceway",
    secret=True,
)
AMQP_URL = Option(
    "SLUICEWAY_AMQP_URL",
    url("amqp", "amqps"),
    "an amqp:// or amqps:// URL with a host",
    "RabbitMQ holding the fetch, records and dead-letter queues",
    default="amqp://guest:guest@127.0.0.1:5672/",
    secret=True,
)
REDIS_URL = Option(
    "SLUICEWAY_REDIS_URL",
    url("redis", "rediss"),
    "a redis:// or rediss:// URL with a host",
    "Redis holding the failed set",
    default="redis://127.0.0.1:6379/0",
    secret=True,
)
PIPELINE = Option(
    "SLUICEWAY_PIPELINE",
    pipeline_name,
    "1 to 63 lowercase letters, digits or '-', starting and ending with a letter or digit",
    "pipeline name; namespaces queues, Redis keys and rows",
    default="default",
)
METRICS_PORT = Option(
    "SLUICEWAY_METRICS_PORT",
    integer(0, 65535),
    "a TCP port, an integer from 0 (off) to 65535",
    "serve /metrics, /healthz and /readyz on this port, on every interface; 0 serves nothing",
    default="0",
)
LOG_LEVEL = Option(
    "SLUICEWAY_LOG_LEVEL",
    log_level,
    "one of DEBUG, INFO, WARNING, ERROR",
    "log level",
    default="INFO",
)

# --- the pipeline's tuning: read by the fetcher or the writer, set for both by the demo and
# the operator, so defined once here --------------------------------------------------------

RATE_LIMIT = Option(
    "SLUICEWAY_RATE_LIMIT",
    number(0.01, 1_000_000),
    "requests per second, a number from 0.01 to 1000000",
    "requests per second to the upstream",
    default="10",
)
BATCH_SIZE = Option(
    "SLUICEWAY_BATCH_SIZE",
    # The broker's prefetch is a 16-bit count and the writer asks for two batches' worth.
    integer(1, 30_000),
    "an integer from 1 to 30000",
    "flush a batch when it holds this many records",
    default="500",
)
BATCH_TIMEOUT = Option(
    "SLUICEWAY_BATCH_TIMEOUT",
    number(0.001, 3600),
    "seconds, a number from 0.001 to 3600",
    "flush a batch when its oldest record has waited this long",
    default="1.0",
)
