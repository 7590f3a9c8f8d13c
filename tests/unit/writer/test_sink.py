from datetime import UTC, datetime, timedelta

import asyncpg

from sluiceway_common.codec import Record
from sluiceway_writer.sink import is_refused_row, newest_per_key

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_newest_per_key_collapses_duplicates_and_sorts() -> None:
    records = [
        Record("b", "1", T0),
        Record("a", "old", T0),
        Record("a", "new", T0 + timedelta(seconds=1)),
        Record("a", "older", T0 - timedelta(seconds=1)),
        Record("b", "tie", T0),
    ]
    assert newest_per_key(records) == [
        Record("a", "new", T0 + timedelta(seconds=1)),
        Record("b", "1", T0),
    ]


def test_refused_rows_are_data_and_integrity_errors_only() -> None:
    assert is_refused_row(asyncpg.exceptions.UntranslatableCharacterError("x"))  # 22P05
    assert is_refused_row(asyncpg.exceptions.NotNullViolationError("x"))  # 23502
    assert not is_refused_row(asyncpg.exceptions.DeadlockDetectedError("x"))  # 40P01
    assert not is_refused_row(asyncpg.exceptions.AdminShutdownError("x"))  # 57P01
    assert not is_refused_row(asyncpg.exceptions.DiskFullError("x"))  # 53100
    assert not is_refused_row(ConnectionResetError())
