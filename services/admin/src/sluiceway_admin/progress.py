"""Progress of long work: a line redrawn in place on a terminal, a log line now and then
elsewhere (a CI log, a container's output)."""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

log = logging.getLogger(__name__)


class Progress:
    """Shows ``<verb> N <unit> (R/s)``: redrawn at most every ``interval`` seconds when the
    stream is a terminal, otherwise logged every ``log_interval`` seconds (the caller logs
    its own summary at the end)."""

    def __init__(
        self,
        verb: str,
        unit: str,
        *,
        stream: TextIO | None = None,
        interval: float = 0.2,
        log_interval: float = 10.0,
    ) -> None:
        self._stream = stream or sys.stderr
        self._terminal = self._stream.isatty()
        self._verb = verb
        self._unit = unit
        self._interval = interval if self._terminal else log_interval
        self._started = time.monotonic()
        self._shown = self._started

    def update(self, done: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._shown < self._interval:
            return
        self._shown = now
        rate = done / max(now - self._started, 1e-9)
        if self._terminal:
            end = "\n" if final else ""
            self._stream.write(f"\r{self._verb} {done:,} {self._unit} ({rate:,.0f}/s){end}")
            self._stream.flush()
        elif not final:
            log.info("%s %s %s so far (%s/s)", self._verb, f"{done:,}", self._unit, f"{rate:,.0f}")
