"""Logging set-up: JSON lines when stderr is not a terminal (containers), plain lines when it is.

Every line, in either form, goes through :func:`redact` on its way out: the password of any
URL in it becomes ``***``, and so does every secret value the process registered with
:func:`keep_secret` (``setup`` registers those of the component's settings: the URLs'
passwords and ``SLUICEWAY_SOURCE_HEADERS``' values). Code should not log secrets in the first
place; this is the net under it, for the text of a library's exception, say.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from importlib.metadata import entry_points

import orjson

from sluiceway_common import COMMAND_GROUP

# scheme://user:password@ -- the password runs to the last '@' before the host.
URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s/@:]*:)[^\s/]*@")
# A shorter value would blot out ordinary words and numbers in every line, and is no secret
# worth the name; it is not replaced.
MIN_SECRET_LENGTH = 4

_secrets: set[str] = set()


def keep_secret(*values: str) -> None:
    """Never let ``values`` reach a log line (or anything else passed through :func:`redact`)."""
    _secrets.update(value for value in values if len(value) >= MIN_SECRET_LENGTH)


def error_text(exc: BaseException) -> str:
    """``exc`` in one line, ``Type: message``, or only its type when it has no message."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def redact(text: str) -> str:
    """``text`` with URL passwords and the registered secret values replaced by ``***``."""
    text = URL_PASSWORD.sub(r"\g<head>***@", text)
    # Longest first, so that a secret holding another is replaced whole.
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, "***")
    return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        if record.exc_info:
            doc["exc"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(doc, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


# Every package of sluiceway's logs at the level asked for; the libraries underneath at
# WARNING (or the level asked for, when that is higher).


def packages() -> set[str]:
    """sluiceway's own packages here: the library and each installed member with commands."""
    found = {entry.module.partition(".")[0] for entry in entry_points(group=COMMAND_GROUP)}
    return found | {__name__.partition(".")[0]}


def setup(level: str, *, json_lines: bool | None = None, secrets: Iterable[str] = ()) -> None:
    """Send sluiceway's logs to stderr at ``level``; the libraries underneath log at WARNING,
    or at ``level`` when it is higher. ``secrets`` are kept out of every line."""
    keep_secret(*secrets)
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(logging.WARNING, logging.getLevelNamesMapping()[level]))
    for name in packages():
        logging.getLogger(name).setLevel(level)
    # aiormq logs each failed connection attempt as an error of its own; sluiceway says it
    # once (at start-up) and aio-pika's robust connection warns of each reconnect.
    logging.getLogger("aiormq").setLevel(logging.CRITICAL)
    tools = logging.getLogger("aio_pika.tools")
    tools.filters[:] = [f for f in tools.filters if not isinstance(f, ChannelReopenNoise)]
    tools.addFilter(ChannelReopenNoise())


class ChannelReopenNoise(logging.Filter):
    """Keeps out aio-pika's error for a channel that tried to reopen at once on a connection
    just lost: the robust connection restores every channel when it is back, and
    :func:`sluiceway_common.amqp.connect` has already said the connection was lost. Each
    such record, with the object reprs of aio-pika's internals in it, is passed on only at
    DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and "RobustChannel._on_close" in record.getMessage():
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(__name__).isEnabledFor(logging.DEBUG)
        return True
