"""Progress: redrawn in place on a terminal, logged now and then anywhere else."""

from __future__ import annotations

import io
import logging

import pytest

from sluiceway_admin import progress
from sluiceway_admin.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr("sluiceway_admin.progress.time.monotonic", clock)
    return clock


def test_a_terminal_sees_one_line_redrawn_at_most_every_interval(clock: Clock) -> None:
    screen = Terminal()
    show = Progress("enqueued", "keys", stream=screen, interval=0.25)
    for done in range(1, 1201):
        clock.now = 1000.0 + done / 1024  # 1,024 a second, in steps a float holds exactly
        show.update(done)
    show.update(1200, final=True)
    assert screen.getvalue().split("\r")[1:] == [
        "enqueued 256 keys (1,024/s)",
        "enqueued 512 keys (1,024/s)",
        "enqueued 768 keys (1,024/s)",
        "enqueued 1,024 keys (1,024/s)",
        "enqueued 1,200 keys (1,024/s)\n",
    ]


def test_elsewhere_progress_is_a_log_line_every_log_interval(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    pipe = io.StringIO()
    show = Progress("enqueued", "keys", stream=pipe, log_interval=8)
    with caplog.at_level(logging.INFO, logger=progress.__name__):
        for done in range(1, 30_001):
            clock.now = 1000.0 + done / 1024
            show.update(done)
        show.update(30_000, final=True)
    assert pipe.getvalue() == ""
    assert [r.getMessage() for r in caplog.records] == [
        "enqueued 8,192 keys so far (1,024/s)",
        "enqueued 16,384 keys so far (1,024/s)",
        "enqueued 24,576 keys so far (1,024/s)",
    ]
