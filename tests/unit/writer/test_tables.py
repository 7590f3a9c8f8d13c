"""sluiceway's tables in code: the names the revisions gave."""

from __future__ import annotations

from sluiceway_writer import tables


def test_constraints_and_indexes_get_the_names_the_revisions_gave_them() -> None:
    assert tables.records.primary_key.name == "records_pkey"
    assert tables.records_buffer.primary_key.name == "records_buffer_pkey"
    assert [index.name for index in tables.records.indexes] == ["records_pipeline_fetched_at"]
    assert [index.name for index in tables.records_buffer.indexes] == ["records_buffer_pipeline_id"]
