import zstandard

from sluiceway_fetcher.packer import PackPolicy

POLICY = PackPolicy(linger=0.02, max_records=3, max_bytes=100, compress_min_bytes=64)


def test_a_lone_record_is_its_own_body() -> None:
    assert POLICY.body([b'{"key":"a"}']) == (b'{"key":"a"}', None)


def test_several_records_are_a_json_array() -> None:
    assert POLICY.body([b"{}", b"{}"]) == (b"[{},{}]", None)


def test_bodies_from_the_threshold_up_are_zstd() -> None:
    record = b'{"key":"' + b"k" * 70 + b'"}'
    body, encoding = POLICY.body([record])
    assert encoding == "zstd"
    assert zstandard.ZstdDecompressor().decompress(body) == record
    small = b'{"key":"' + b"k" * 40 + b'"}'
    assert POLICY.body([small]) == (small, None)


def test_a_pack_is_bounded_by_records_and_bytes() -> None:
    assert POLICY.fits(records=0, size=0, extra=500)  # alone, however large
    assert POLICY.fits(records=2, size=50, extra=50)
    assert not POLICY.fits(records=3, size=10, extra=1)
    assert not POLICY.fits(records=1, size=60, extra=41)
    assert POLICY.full(records=3, size=0)
    assert POLICY.full(records=1, size=100)
    assert not POLICY.full(records=2, size=99)


def test_no_linger_means_no_packing() -> None:
    alone = PackPolicy(linger=0, max_records=100, max_bytes=1 << 20, compress_min_bytes=1024)
    assert alone.full(records=1, size=1)
