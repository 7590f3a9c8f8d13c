"""When to flush: the pure policy of the writer's batches.

A *batch* is the messages taken together for one transaction. Each message weighs its rows
(a packed message holds several) and its bytes. A batch is *due* when the held messages reach
``size`` rows or ``max_bytes`` bytes, or the oldest has waited ``timeout`` seconds, whichever
comes first. A batch is taken whole messages at a time, since a message is acked whole. The
batcher holds items with their arrival times and does no I/O; the caller passes the clock.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Batcher(Generic[T]):
    def __init__(self, size: int, timeout: float, max_bytes: int | None = None) -> None:
        if size < 1 or timeout <= 0 or (max_bytes is not None and max_bytes < 1):
            raise ValueError("size and max_bytes must be >= 1 and timeout > 0")
        self.size = size
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._items: deque[tuple[float, T, int, int]] = deque()
        self.rows = 0
        self.bytes = 0

    def __len__(self) -> int:
        """How many items (messages) are held."""
        return len(self._items)

    def add(self, item: T, now: float, rows: int = 1, size: int = 0) -> bool:
        """Hold ``item`` of ``rows`` rows and ``size`` bytes, arrived at ``now``; return whether
        a batch is now due by rows or bytes."""
        self._items.append((now, item, rows, size))
        self.rows += rows
        self.bytes += size
        return self._full()

    def _full(self) -> bool:
        return self.rows >= self.size or (
            self.max_bytes is not None and self.bytes >= self.max_bytes
        )

    def deadline(self) -> float | None:
        """When the oldest held item's wait runs out, or ``None`` when nothing is held."""
        return self._items[0][0] + self.timeout if self._items else None

    def due(self, now: float) -> bool:
        if not self._items:
            return False
        return self._full() or now >= self._items[0][0] + self.timeout

    def take(self) -> list[T]:
        """Remove and return the oldest items up to ``size`` rows and ``max_bytes`` bytes;
        always at least one, however large."""
        taken: list[T] = []
        rows = size = 0
        while self._items:
            _, item, item_rows, item_size = self._items[0]
            over_rows = rows + item_rows > self.size
            over_bytes = self.max_bytes is not None and size + item_size > self.max_bytes
            if taken and (over_rows or over_bytes):
                break
            self._items.popleft()
            taken.append(item)
            rows += item_rows
            size += item_size
        self.rows -= rows
        self.bytes -= size
        return taken
