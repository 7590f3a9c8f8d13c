import pytest

from sluiceway_writer.batcher import Batcher


def test_flushes_when_full() -> None:
    batcher: Batcher[int] = Batcher(size=3, timeout=10)
    assert not batcher.add(1, now=0.0)
    assert not batcher.add(2, now=0.1)
    assert not batcher.due(0.2)
    assert batcher.add(3, now=0.2)
    assert batcher.due(0.2)
    assert batcher.take() == [1, 2, 3]
    assert len(batcher) == 0


def test_flushes_when_the_oldest_has_waited_the_timeout() -> None:
    batcher: Batcher[str] = Batcher(size=100, timeout=1.0)
    batcher.add("a", now=5.0)
    batcher.add("b", now=5.9)
    assert batcher.deadline() == 6.0
    assert not batcher.due(5.99)
    assert batcher.due(6.0)
    assert batcher.take() == ["a", "b"]


def test_nothing_held_is_never_due() -> None:
    batcher: Batcher[int] = Batcher(size=1, timeout=0.5)
    assert batcher.deadline() is None
    assert not batcher.due(1e9)


def test_take_leaves_the_rest_with_their_own_clock() -> None:
    batcher: Batcher[int] = Batcher(size=2, timeout=1.0)
    for i, t in enumerate([0.0, 0.1, 0.5, 0.7, 0.9]):
        batcher.add(i, now=t)
    assert batcher.take() == [0, 1]
    assert batcher.deadline() == 1.5
    assert batcher.due(0.9)  # still two or more held
    assert batcher.take() == [2, 3]
    assert not batcher.due(1.8)
    assert batcher.due(1.9)
    assert batcher.take() == [4]


@pytest.mark.parametrize(
    ("size", "timeout", "max_bytes"), [(0, 1.0, None), (1, 0.0, None), (1, 1.0, 0)]
)
def test_refuses_nonsense(size: int, timeout: float, max_bytes: int | None) -> None:
    with pytest.raises(ValueError):
        Batcher(size, timeout, max_bytes)


def test_rows_of_packed_messages_count_toward_the_size() -> None:
    batcher: Batcher[str] = Batcher(size=100, timeout=10)
    assert not batcher.add("a", now=0.0, rows=60)
    assert batcher.add("b", now=0.0, rows=50)
    # Whole messages only: the second would pass 100 rows, so it waits for the next batch.
    assert batcher.take() == ["a"]
    assert batcher.rows == 50
    assert not batcher.due(0.0)


def test_flushes_when_the_bytes_reach_the_bound() -> None:
    batcher: Batcher[str] = Batcher(size=1000, timeout=10, max_bytes=1000)
    assert not batcher.add("a", now=0.0, size=600)
    assert batcher.add("b", now=0.0, size=600)
    assert batcher.due(0.0)
    assert batcher.take() == ["a"]
    assert batcher.bytes == 600


def test_a_message_larger_than_the_bound_goes_alone() -> None:
    batcher: Batcher[str] = Batcher(size=1000, timeout=10, max_bytes=100)
    batcher.add("huge", now=0.0, size=5000)
    batcher.add("small", now=0.0, size=10)
    assert batcher.take() == ["huge"]
    assert batcher.take() == ["small"]
    assert (batcher.rows, batcher.bytes) == (0, 0)
