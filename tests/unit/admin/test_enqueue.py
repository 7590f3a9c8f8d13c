"""How ``enqueue`` reads its input: keys and line numbers across reads, bounds held while
reading, and keys handed over as soon as a pipe has them."""

from __future__ import annotations

import asyncio
import io
import os

import pytest

from sluiceway_admin import enqueue
from sluiceway_admin.enqueue import MAX_KEY_BYTES, BadInput, read_keys


async def keys_of(stream: io.BufferedIOBase) -> list[tuple[int, str]]:
    return [key async for chunk in read_keys(stream) for key in chunk]  # type: ignore[arg-type]


async def test_keys_keep_their_line_numbers_across_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(enqueue, "READ_BYTES", 7)  # lines split across many reads
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
    assert source.served <= MAX_KEY_BYTES + 4 * enqueue.READ_BYTES


async def test_the_keys_before_an_overlong_line_are_handed_over_first() -> None:
    stream = io.BufferedReader(io.BytesIO(b"a\nb\n" + b"x" * 100_000 + b"\n"))
    keys = read_keys(stream)
    assert await anext(keys) == [(1, "a"), (2, "b")]
    with pytest.raises(BadInput, match="line 3: longer than 4096 bytes"):
        await anext(keys)


async def test_keys_piped_in_slowly_are_handed_over_before_the_pipe_closes() -> None:
    out, into = os.pipe()
    with os.fdopen(out, "rb") as stream, os.fdopen(into, "wb", buffering=0) as writer:
        writer.write(b"first\nsecond\n")
        keys = read_keys(stream)
        assert await asyncio.wait_for(anext(keys), 5) == [(1, "first"), (2, "second")]
        writer.write(b"third\n")
        assert await asyncio.wait_for(anext(keys), 5) == [(3, "third")]
        writer.close()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(anext(keys), 5)
