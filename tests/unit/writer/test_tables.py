"""sluiceway's tables in code: the names the revisions gave, and the names the writer's SQL
takes from them."""

from __future__ import annotations

import pytest

from sluiceway_writer import merger, sink, tables


def test_constraints_and_indexes_get_the_names_the_revisions_gave_them() -> None:
    assert tables.records.primary_key.name == "records_pkey"
    assert tables.records_buffer.primary_key.name == "records_buffer_pkey"
    assert [index.name for index in tables.records.indexes] == ["records_pipeline_fetched_at"]
    assert [index.name for index in tables.records_buffer.indexes] == ["records_buffer_pipeline_id"]


def test_names_give_the_table_its_primary_key_and_each_column() -> None:
    assert tables.names(tables.records) == {
        "table": "records",
        "primary_key": "pipeline, key",
        "pipeline": "pipeline",
        "key": "key",
        "payload": "payload",
        "fetched_at": "fetched_at",
        "written_at": "written_at",
    }
    with pytest.raises(KeyError, match="buffered_at"):
        "{buffered_at}".format_map(tables.names(tables.records))


def test_the_writers_sql_names_the_metadatas_tables() -> None:
    assert sink.UPSERT.startswith("\nINSERT INTO records AS r (pipeline, key, payload, fetched_at)")
    assert "ON CONFLICT (pipeline, key) DO UPDATE" in sink.MERGE_UPSERT
    assert sink.BUFFER_TABLE == "records_buffer"
    assert "DELETE FROM records_buffer" in merger.MERGE
    assert "{upsert}" in merger.MERGE  # left for each Merger's target
    assert "{upsert}" in merger.MERGE_ROWS
