"""Benchmark: what zstd costs and saves on record bodies, to choose the fetcher's default
``SLUICEWAY_COMPRESS_MIN_BYTES``.

Bodies are packs of 1 to 128 records of the sample API's users, as the fetcher publishes them.
For each size: the bytes saved, and the CPU to compress (fetcher) and decompress (writer), as
medians of repeated runs in this process. Run with ``make bench``.
"""

from __future__ import annotations

import statistics
import time
from datetime import UTC, datetime

import orjson
import zstandard

from sluiceway_common import codec
from sluiceway_sample_api.data import user

AT = datetime(2026, 1, 1, tzinfo=UTC)
LEVEL = 3


def body(records: int, start: int) -> bytes:
    items = [codec.encode_record(f"user-{i:06d}", orjson.dumps(user(f"user-{i:06d}")), AT)
             for i in range(start, start + records)]  # fmt: skip
    return items[0] if records == 1 else b"[" + b",".join(items) + b"]"


def timed(work: object, repeat: int) -> float:
    """Median microseconds of one call of ``work``."""
    samples = []
    for _ in range(7):
        started = time.perf_counter()
        for _ in range(repeat):
            work()  # type: ignore[operator]
        samples.append((time.perf_counter() - started) / repeat * 1e6)
    return statistics.median(samples)


def main() -> None:
    compressor = zstandard.ZstdCompressor(level=LEVEL)
    decompressor = zstandard.ZstdDecompressor()
    print(f"zstd level {LEVEL} on packs of sample-API records (medians of 7 runs)")
    print(f"{'records':>8}{'bytes':>9}{'zstd':>8}{'saved':>8}{'compress µs':>13}"
          f"{'decompress µs':>15}{'µs per KiB saved':>18}")  # fmt: skip
    for records in (1, 2, 4, 8, 16, 32, 64, 128):
        plain = body(records, records * 1000)
        packed = compressor.compress(plain)
        repeat = max(20, 20_000 // len(plain))
        squeeze = timed(lambda plain=plain: compressor.compress(plain), repeat)
        expand = timed(lambda packed=packed: decompressor.decompress(packed), repeat)
        saved = len(plain) - len(packed)
        per_kib = (squeeze + expand) / (saved / 1024) if saved > 0 else float("inf")
        print(f"{records:>8}{len(plain):>9,}{len(packed):>8,}{saved / len(plain):>8.0%}"
              f"{squeeze:>13.1f}{expand:>15.1f}{per_kib:>18.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
