# Over 300 lines on purpose: the mechanism and the settings every member shares are read
# together everywhere as ``settings.X``; the members' own settings live with them.
"""Configuration: every value comes from a ``SLUICEWAY_*`` variable or the matching CLI flag.

A setting is stated once, as an :class:`Option`: its variable, its parser (whose bounds, for a
number, also write what is allowed), its help and its default. A component's settings object
is a frozen dataclass whose fields are :func:`setting` s of those options (see
:class:`Settings`); a command without one passes its options to :func:`resolve` directly. The
flags (:func:`add_options`), the README table, ``.env.example``, the Pipeline CRD's bounds
and the chart's values schema are read from, or held by tests to, these definitions.

:func:`resolve` reads flag, then environment, then default, and parses each value. A value
that does not parse raises :class:`ConfigError` whose message is the one line the CLI prints
before exiting with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Self
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit


class ConfigError(Exception):
    """A configuration value is missing or not allowed; the message names the variable."""


class Refused(ValueError):
    """Raised by a parser to say why a value is refused; the reason joins the error line."""


@dataclass(frozen=True)
class Option:
    """One setting: its variable, how its text becomes a value, and what is allowed.

    ``allowed`` may be left out when ``parse`` is a :class:`Bounds`, which says it itself."""

    env: str
    parse: Callable[[str], Any]
    help: str
    default: str | None = None
    secret: bool = False
    allowed: str = ""

    def __post_init__(self) -> None:
        if not self.allowed:
            if not isinstance(self.parse, Bounds):
                raise TypeError(f"{self.env}: say what is allowed, or parse with bounds")
            object.__setattr__(self, "allowed", self.parse.allowed)

    @property
    def bounds(self) -> Bounds | None:
        return self.parse if isinstance(self.parse, Bounds) else None

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


def setting(option: Option) -> Any:
    """A field of a :class:`Settings` dataclass, read from ``option``; the field's name is
    the option's (``SLUICEWAY_BATCH_SIZE`` is ``batch_size``)."""
    return dataclasses.field(metadata={"option": option})


class Settings:
    """Base of a component's frozen settings dataclass, whose every field is a
    :func:`setting`: the dataclass is the component's one list of options."""

    @classmethod
    def options(cls) -> tuple[Option, ...]:
        found = []
        for field in dataclasses.fields(cls):  # type: ignore[arg-type]
            option = field.metadata.get("option")
            if not isinstance(option, Option) or option.dest != field.name:
                raise TypeError(f"{cls.__name__}.{field.name} is not a setting of that name")
            found.append(option)
        return tuple(found)

    @classmethod
    def from_args(
        cls, args: argparse.Namespace | None, environ: Mapping[str, str] | None = None
    ) -> Self:
        return cls(**resolve(args, cls.options(), environ))

    def secrets(self) -> list[str]:
        """What of these values must never be shown (see :func:`secret_values`)."""
        return secret_values(self.options(), vars(self))


def hide(secret: str) -> str:
    """What may be shown of a secret value: a URL with its password masked, else nothing."""
    return mask(secret) if _is_url(secret) else "<hidden>"


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
        urls = split_urls(text) if "," in text else [text]  # a cluster's nodes, each one
        if not all(_is_url(url) for url in urls):
            found.append(text)
            continue
        for url in urls:
            parts = urlsplit(url)
            if parts.password:
                raw = parts.netloc.rpartition("@")[0].partition(":")[2]
                found.extend({raw, unquote(raw)})
    return found


def _is_url(text: str) -> bool:
    try:
        parts = urlsplit(text)
    except ValueError:
        return False
    return bool(parts.scheme and parts.netloc)


def mask(url: str) -> str:
    """The URL with its password replaced by ``***`` (each URL of a comma-separated list);
    other text is returned unchanged."""
    if "," in url:
        return ",".join(_mask_one(part) for part in url.split(","))
    return _mask_one(url)


def _mask_one(url: str) -> str:
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


def plain(value: float) -> str:
    """A number as sluiceway writes it for people and for other programs: ``40``, ``2.5``,
    ``1000000``, never ``4e+01`` or ``1e+06``."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


@dataclass(frozen=True)
class Bounds:
    """A parser of an integer or a number from ``low`` to ``high``, both allowed; ``unit``
    opens what it says is allowed (``seconds, a number from 0.1 to 600``)."""

    low: float
    high: float
    integral: bool
    unit: str = ""

    @property
    def allowed(self) -> str:
        kind = "an integer" if self.integral else "a number"
        text = f"{kind} from {plain(self.low)} to {plain(self.high)}"
        return f"{self.unit}, {text}" if self.unit else text

    def __call__(self, text: str) -> Any:
        value = int(text.strip()) if self.integral else float(text.strip())
        if not math.isfinite(value) or not self.low <= value <= self.high:
            raise ValueError("out of range")
        return value


def integer(low: int, high: int, *, unit: str = "") -> Bounds:
    return Bounds(low, high, integral=True, unit=unit)


def number(low: float, high: float, *, unit: str = "") -> Bounds:
    return Bounds(low, high, integral=False, unit=unit)


def url(*schemes: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        parts = urlsplit(text.strip())
        if parts.scheme not in schemes or not parts.hostname:
            raise ValueError("")
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
        return text.strip()

    return parse


def split_urls(text: str) -> list[str]:
    """The URLs of a comma-separated list (a comma inside a password is written %2C)."""
    return [part.strip() for part in text.split(",") if part.strip()]


def amqp_urls(text: str) -> str:
    """One amqp(s):// URL, or several (the nodes of a cluster), comma-separated: each with a
    host, all on the same virtual host, since every node serves the same queues."""
    one = url("amqp", "amqps")
    urls = [one(part) for part in split_urls(text)]
    if not urls or len({urlsplit(each).path.rstrip("/") or "/" for each in urls}) > 1:
        raise ValueError("")
    return ",".join(urls)


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
    "PostgreSQL the writer lands rows in",
    allowed="a postgresql:// URL with a host",
    default="postgresql://sluiceway:sluiceway@127.0.0.1:5432/sluiceway",
    secret=True,
)
AMQP_URL = Option(
    "SLUICEWAY_AMQP_URL",
    amqp_urls,
    "RabbitMQ holding the fetch, records and dead-letter queues: one node, or the nodes of a "
    "cluster, comma-separated (the first that answers is used, the next when it goes)",
    allowed="an amqp:// or amqps:// URL with a host, or several, comma-separated, on one "
    "virtual host",
    default="amqp://guest:guest@127.0.0.1:5672/",
    secret=True,
)
REDIS_URL = Option(
    "SLUICEWAY_REDIS_URL",
    url("redis", "rediss"),
    "Redis holding the failed set",
    allowed="a redis:// or rediss:// URL with a host",
    default="redis://127.0.0.1:6379/0",
    secret=True,
)
PIPELINE = Option(
    "SLUICEWAY_PIPELINE",
    pipeline_name,
    "pipeline name; namespaces queues, Redis keys and rows",
    allowed="1 to 63 lowercase letters, digits or '-', starting and ending with a letter or digit",
    default="default",
)
METRICS_PORT = Option(
    "SLUICEWAY_METRICS_PORT",
    integer(0, 65535, unit="a TCP port"),
    "serve /metrics, /healthz and /readyz on this port, on every interface; 0 serves nothing",
    default="0",
)
LOG_LEVEL = Option(
    "SLUICEWAY_LOG_LEVEL",
    log_level,
    "log level",
    allowed="one of DEBUG, INFO, WARNING, ERROR",
    default="INFO",
)

# --- the pipeline's tuning: read by the fetcher or the writer, set for both by the demo and
# the operator (the Pipeline CRD's bounds and defaults are these), so defined once here ----

RATE_LIMIT = Option(
    "SLUICEWAY_RATE_LIMIT",
    number(0.01, 1_000_000, unit="requests per second"),
    "requests per second to the upstream",
    default="10",
)
BATCH_SIZE = Option(
    "SLUICEWAY_BATCH_SIZE",
    # The broker's prefetch is a 16-bit count and the writer asks for two batches' worth.
    integer(1, 30_000),
    "flush a batch when it holds this many records",
    default="500",
)
BATCH_TIMEOUT = Option(
    "SLUICEWAY_BATCH_TIMEOUT",
    number(0.001, 3600, unit="seconds"),
    "flush a batch when its oldest record has waited this long",
    default="1.0",
)
# 64 rather than 32: at 50 ms upstream latency a fetcher then spends 0.80x the CPU a key
# (378-393 against 450-494 µs, 3 rounds side by side, benchmarks/fetcher_profile.py), since
# each turn of its event loop serves more requests, and does twice the keys a second.
CONCURRENCY = Option(
    "SLUICEWAY_CONCURRENCY",
    integer(1, 4096),
    "requests in flight per fetcher process",
    default="64",
)

REQUEST_TIMEOUT = Option(
    "SLUICEWAY_REQUEST_TIMEOUT",
    number(0.1, 600, unit="seconds"),
    "timeout of one upstream request",
    default="30",
)

MAX_ATTEMPTS = Option(
    "SLUICEWAY_MAX_ATTEMPTS",
    integer(1, 20),
    "attempts at a key before a timeout, connection error, 5xx, 408 or 429 fails it for good",
    default="5",
)

INFLIGHT_TIMEOUT = Option(
    "SLUICEWAY_INFLIGHT_TIMEOUT",
    # A day: longer than any backlog the retries and a busy fetch queue should build; a mark
    # whose task was lost lapses after it.
    number(1, 30 * 86400, unit="seconds"),
    "a key queued by enqueue or failed retry is not queued again for this long, unless its "
    "fetch ends first (it lands or fails for good)",
    default="86400",
)


# The upstream's URL of a key: the fetcher's requests and `sink suggest --fetch` build it.
def source_template(text: str) -> str:
    template = text.strip()
    if template.count("{key}") != 1:
        raise Refused('it must hold "{key}" exactly once')
    url("http", "https")(template.replace("{key}", "k"))
    # Anything but {key} in braces would be an unfilled placeholder in every request.
    if template.replace("{key}", "").count("{") or template.replace("{key}", "").count("}"):
        raise Refused('braces other than "{key}"')
    return template


SOURCE_URL = Option(
    "SLUICEWAY_SOURCE_URL",
    source_template,
    "upstream URL template; {key} is replaced by the percent-encoded key",
    allowed="an http(s) URL template holding {key} once, e.g. https://api.example.com/users/{key}",
)

# The upstream's headers: the fetcher's requests and enqueue --http's listing send them.
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
    "headers sent with every upstream request (tokens: never logged)",
    allowed='a JSON object of header names to string values, e.g. {"Authorization": "Bearer …"}',
    default="{}",
    secret=True,
)
