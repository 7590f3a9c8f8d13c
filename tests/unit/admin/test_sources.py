"""How ``enqueue`` reads its sources: a file's keys and line numbers across reads, bounds held
while reading, keys handed over as soon as a pipe has them; ages for ``--stale``."""

from __future__ import annotations

import asyncio
import io
import os

import pytest

from sluiceway_admin import sources
from sluiceway_admin.sources import MAX_KEY_BYTES, BadInput, Skipped, file_keys, parse_age


async def keys_of(stream: io.BufferedIOBase) -> list[tuple[int, str]]:
    return [key async for chunk in file_keys(stream) for key in chunk]  # type: ignore[arg-type]


async def test_keys_keep_their_line_numbers_across_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "READ_BYTES", 7)  # lines split across many reads
    text = b"alpha\n\n  beta  \r\ngamma-delta-epsilon\n\t\nlast-without-newline"
    assert await keys_of(io.BufferedReader(io.BytesIO(text))) == [
        (1, "alpha"), (3, "beta"), (4, "gamma-delta-epsilon"), (6, "last-without-newline"),
    ]  # fmt: skip


async def test_a_key_of_the_bound_passes_with_a_crlf_and_one_byte_more_does_not() -> None:
    bound = b"k" * MAX_KEY_BYTES
    assert await keys_of(io.BufferedReader(io.BytesIO(bound + b"\r\n"))) == [(1, bound.decode())]
    with pytest.raises(BadInput, match="line 2: longer than 4096 bytes"):
        await keys_of(io.BufferedReader(io.BytesIO(b"ok\n" + bound + b"kk\r\n")))


class Endless(io.RawIOBase):
    """A line that never ends; counts what was read of it."""

    def __init__(self) -> None:
        self.served = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        buffer[:] = b"x" * len(buffer)
        self.served += len(buffer)
        return len(buffer)


async def test_a_line_that_never_ends_is_refused_after_reading_a_bounded_amount() -> None:
    source = Endless()
    with pytest.raises(BadInput, match="line 1: longer than 4096 bytes"):
        await keys_of(io.BufferedReader(source))
    assert source.served <= MAX_KEY_BYTES + 4 * sources.READ_BYTES


async def test_the_keys_before_an_overlong_line_are_handed_over_first() -> None:
    stream = io.BufferedReader(io.BytesIO(b"a\nb\n" + b"x" * 100_000 + b"\n"))
    keys = file_keys(stream)
    assert await anext(keys) == [(1, "a"), (2, "b")]
    with pytest.raises(BadInput, match="line 3: longer than 4096 bytes"):
        await anext(keys)


async def test_keys_piped_in_slowly_are_handed_over_before_the_pipe_closes() -> None:
    out, into = os.pipe()
    with os.fdopen(out, "rb") as stream, os.fdopen(into, "wb", buffering=0) as writer:
        writer.write(b"first\nsecond\n")
        keys = file_keys(stream)
        assert await asyncio.wait_for(anext(keys), 5) == [(1, "first"), (2, "second")]
        writer.write(b"third\n")
        assert await asyncio.wait_for(anext(keys), 5) == [(3, "third")]
        writer.close()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(anext(keys), 5)


async def test_blank_lines_are_counted_as_skipped() -> None:
    skipped = Skipped()
    stream = io.BufferedReader(io.BytesIO(b"a\n\n  \nb\n"))
    assert [k async for chunk in file_keys(stream, skipped) for k in chunk] == [(1, "a"), (4, "b")]
    assert skipped.blank == 2


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("24h", 86400), ("7d", 604800), ("1.5h", 5400)],
)
def test_an_age_is_a_number_and_a_unit(text: str, seconds: float) -> None:
    assert parse_age(text) == seconds


@pytest.mark.parametrize("text", ["", "24", "h", "0s", "-1d", "1w", "1 d", "nan"])
def test_an_age_without_a_unit_or_above_zero_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_age(text)
