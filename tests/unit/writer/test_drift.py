"""What the drift check compares."""

from __future__ import annotations

from sluiceway_writer import drift


def test_only_sluiceways_own_tables_are_compared() -> None:
    assert drift.ours("records", "table", {})
    assert drift.ours("records_buffer", "table", {})
    assert not drift.ours("users", "table", {})  # a sink table, the user's
    assert drift.ours("anything", "column", {})  # a compared table's every part is
