"""Logging set-up: JSON lines when stderr is not a terminal (containers), plain lines when it is."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

import orjson


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def setup(level: str, *, json_lines: bool | None = None) -> None:
    """Send sluiceway's logs to stderr at ``level``; the libraries underneath log at WARNING."""
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if json_lines
        else logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("sluiceway_common").setLevel(level)
    for name in ("sluiceway_fetcher", "sluiceway_writer", "sluiceway_sample_api"):
        logging.getLogger(name).setLevel(level)
    # aiormq logs each failed connection attempt as an error of its own; sluiceway says it
    # once (at start-up) and aio-pika's robust connection warns of each reconnect.
    logging.getLogger("aiormq").setLevel(logging.CRITICAL)
