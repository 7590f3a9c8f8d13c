"""The sink mapping's pure parts: the writer's settings checked together, the judgement of a
table, the upsert (the settings' parsers: ``tests/unit/common/test_sink.py``)."""

from __future__ import annotations

import pytest

from sluiceway_common.settings import ConfigError
from sluiceway_common.sink import SinkSpec, TableName
from sluiceway_writer.config import WriterSettings
from sluiceway_writer.mapping import ColumnFacts, TableFacts, Unfit, plan

USERS = TableName("s", "users", "s.users")


def test_contradicting_settings_are_a_config_error_naming_the_variable() -> None:
    env = {"SLUICEWAY_SINK_TABLE": "users", "SLUICEWAY_SINK_VERSION": "seen_at"}
    with pytest.raises(ConfigError, match=r"^SLUICEWAY_SINK_VERSION='seen_at' is not allowed"):
        WriterSettings.from_args(None, env)
    bad = {"SLUICEWAY_SINK_COLUMNS": '{"a": "nope"}'}
    with pytest.raises(ConfigError, match=r"^SLUICEWAY_SINK_COLUMNS=.* a JSON pointer starts"):
        WriterSettings.from_args(None, bad)
    assert WriterSettings.from_args(None, {}).sink is None


def facts(**columns: ColumnFacts) -> TableFacts:
    return TableFacts("s", "users", "r", columns, (("id",),), role="writer")


def col(name: str, kind: str = "text", **more: bool) -> ColumnFacts:
    return ColumnFacts(name, kind, **more)


SPEC = SinkSpec(USERS, "id", {"login": ("payload", "login"), "seen_at": ("fetched_at",)},
                "seen_at")  # fmt: skip
FINE = {"id": col("id", "bigint"), "login": col("login"),
        "seen_at": col("seen_at", "timestamp with time zone")}  # fmt: skip


def test_a_fit_table_is_planned_with_the_catalogs_types() -> None:
    table = plan(SPEC, facts(**FINE))
    assert (table.key.type, [c.type for c in table.columns]) == (
        "bigint", ["text", "timestamp with time zone"])  # fmt: skip


@pytest.mark.parametrize(
    ("table", "said"),
    [
        (None, "sink table s.users does not exist (create it with your own migrations)"),
        (TableFacts("s", "users", "v", FINE, ()), "sink table s.users is a view, not a table"),
        (facts(login=FINE["login"], seen_at=FINE["seen_at"]),
         'sink table s.users: no key column "id" (SLUICEWAY_SINK_KEY)'),
        (TableFacts("s", "users", "r", FINE, (("id", "login"),)),
         'sink table s.users: the key column "id" has no unique index or primary key of its own'),
        (facts(id=FINE["id"], seen_at=FINE["seen_at"]),
         'sink table s.users: no column "login" (mapped in SLUICEWAY_SINK_COLUMNS)'),
        (facts(**FINE | {"seen_at": col("seen_at", "date")}),
         'sink table s.users: the version column "seen_at" is date, not a timestamp'),
        (facts(**FINE | {"login": col("login", generated=True)}),
         'sink table s.users: column "login" is generated and cannot be written'),
        (facts(**FINE | {"id": col("id", "bigint", may_insert=False, may_select=False),
                         "login": col("login", may_update=False)}),
         'sink table s.users: role writer may not INSERT "id"; UPDATE "login"; SELECT "id" '
         "(grant INSERT, UPDATE, SELECT)"),
        (TableFacts("s", "users", "r", FINE, (("id",),), schema_usage=False, role="w"),
         'sink table s.users: role w has no USAGE on schema "s"'),
    ],
)  # fmt: skip
def test_an_unfit_table_is_refused_saying_why(table: TableFacts | None, said: str) -> None:
    with pytest.raises(Unfit) as refused:
        plan(SPEC, table)
    assert str(refused.value).startswith(said), str(refused.value)


def test_every_problem_is_said_on_one_line() -> None:
    broken = facts(id=col("id"), seen_at=col("seen_at", "integer"))
    with pytest.raises(Unfit) as refused:
        plan(SPEC, TableFacts("s", "users", "r", broken.columns, ()))
    assert str(refused.value) == (
        'sink table s.users: the key column "id" has no unique index or primary key of its own '
        "(ON CONFLICT needs one on exactly that column, neither partial nor deferrable); "
        'no column "login" (mapped in SLUICEWAY_SINK_COLUMNS); the version column "seen_at" '
        "is integer, not a timestamp or timestamptz (SLUICEWAY_SINK_VERSION)"
    )


def test_the_upsert_quotes_every_name_and_reads_each_pointer() -> None:
    sink = SinkSpec(
        TableName('Odd "S"', "t", '"Odd ""S""".t'),
        "id",
        {'We"ird': ("payload", "it's", "0"), "raw": ("payload",), "all": (),
         "k": ("key",), "seen": ("fetched_at",)},
        "seen",
    )  # fmt: skip
    columns = {
        "id": col("id", "uuid"), 'We"ird': col('We"ird', "integer"), "raw": col("raw", "jsonb"),
        "all": col("all", "json"), "k": col("k", "jsonb"),
        "seen": col("seen", "timestamp without time zone"),
    }  # fmt: skip
    table = plan(sink, TableFacts('Odd "S"', "t", "r", columns, (("id",),)))
    assert table.upsert("sluiceway_stage") == (
        'INSERT INTO "Odd ""S"""."t" AS sluiceway_row ("id", "We""ird", "raw", "all", "k", '
        '"seen")\n'
        "SELECT DISTINCT ON (s.key::uuid) s.key::uuid,\n"
        "       (s.payload #>> ARRAY['it''s', '0']::text[])::integer,\n"
        "       NULLIF(s.payload #> ARRAY[]::text[], 'null'::jsonb)::jsonb,\n"
        "       NULLIF(jsonb_build_object('key', s.key, 'payload', s.payload, 'fetched_at', "
        "s.fetched_at) #> ARRAY[]::text[], 'null'::jsonb)::json,\n"
        "       to_jsonb(s.key)::jsonb,\n"
        "       s.fetched_at::timestamp without time zone\n"
        "FROM sluiceway_stage AS s\n"
        "ORDER BY s.key::uuid, s.fetched_at DESC\n"
        'ON CONFLICT ("id") DO UPDATE SET "We""ird" = EXCLUDED."We""ird", "raw" = '
        'EXCLUDED."raw", "all" = EXCLUDED."all", "k" = EXCLUDED."k", "seen" = EXCLUDED."seen"\n'
        'WHERE sluiceway_row."seen" IS NULL OR sluiceway_row."seen" < EXCLUDED."seen"'
    )


def test_a_key_alone_inserts_and_never_updates() -> None:
    sink = SinkSpec(USERS, "id", {}, None)
    table = plan(sink, facts(id=col("id", "bigint")))
    tail = (
        'FROM moved AS s\nORDER BY s.key::bigint, s.fetched_at DESC\nON CONFLICT ("id") DO NOTHING'
    )
    assert table.upsert("moved").endswith(tail)
