"""A one-line progress display for long work, drawn only when stderr is a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Redraws ``<verb> N <unit> (R/s)`` at most every ``interval`` seconds."""

    def __init__(
        self, verb: str, unit: str, *, stream: TextIO | None = None, interval: float = 0.2
    ) -> None:
        self._stream = stream or sys.stderr
        self._enabled = self._stream.isatty()
        self._verb = verb
        self._unit = unit
        self._interval = interval
        self._started = time.monotonic()
        self._drawn = 0.0

    def update(self, done: int, *, final: bool = False) -> None:
        if not self._enabled:
            return
        now = time.monotonic()
        if not final and now - self._drawn < self._interval:
            return
        self._drawn = now
        rate = done / max(now - self._started, 1e-9)
        end = "\n" if final else ""
        self._stream.write(f"\r{self._verb} {done:,} {self._unit} ({rate:,.0f}/s){end}")
        self._stream.flush()
