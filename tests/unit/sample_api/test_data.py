from sluiceway_admin.demo import demo_keys
from sluiceway_sample_api.data import fraction, is_missing, user


def test_user_is_a_pure_function_of_the_key() -> None:
    assert user("user-1") == user("user-1")
    assert user("user-1") != user("user-2")
    assert user("user-1")["id"] == "user-1"


def test_not_found_share_is_close_to_the_rate() -> None:
    keys = [f"k{i}" for i in range(20_000)]
    missing = sum(is_missing(k, 0.1) for k in keys)
    assert 1_800 < missing < 2_200
    assert not any(is_missing(k, 0.0) for k in keys)
    assert all(is_missing(k, 1.0) for k in keys)


def test_fraction_is_in_unit_interval() -> None:
    assert all(0 <= fraction(f"k{i}", "s") < 1 for i in range(1000))


def test_demo_keys_are_unique_and_some_need_encoding() -> None:
    keys = demo_keys(5000)
    assert len(set(keys)) == 5000
    assert any("/" in k and " " in k for k in keys)
