"""When to flush: the pure policy of the writer's batches.

A *batch* is the messages taken together for one transaction. It is *due* when it holds
``size`` messages or its oldest message has waited ``timeout`` seconds, whichever comes first.
The batcher holds items with their arrival times and does no I/O; the caller passes the clock.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Batcher(Generic[T]):
    def __init__(self, size: int, timeout: float) -> None:
        if size < 1 or timeout <= 0:
            raise ValueError("size must be >= 1 and timeout > 0")
        self.size = size
        self.timeout = timeout
        self._items: deque[tuple[float, T]] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: T, now: float) -> bool:
        """Hold ``item``, arrived at ``now``; return whether a batch is now due by size."""
        self._items.append((now, item))
        return len(self._items) >= self.size

    def deadline(self) -> float | None:
        """When the oldest held item's wait runs out, or ``None`` when nothing is held."""
        return self._items[0][0] + self.timeout if self._items else None

    def due(self, now: float) -> bool:
        if not self._items:
            return False
        return len(self._items) >= self.size or now >= self._items[0][0] + self.timeout

    def take(self) -> list[T]:
        """Remove and return the oldest ``size`` items (all, when fewer are held)."""
        count = min(self.size, len(self._items))
        return [self._items.popleft()[1] for _ in range(count)]
