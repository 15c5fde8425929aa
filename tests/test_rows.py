"""Vendor rows to the raw layer's all-text Arrow tables, and the row hashes scd2 compares."""

from __future__ import annotations

from typing import Any

import orjson
import pyarrow as pa
import pytest

from practice_sync.rows import (
    INGEST_ISSUES,
    LONG_VALUE,
    ROW_HASH,
    plain_row_hashes,
    row_hashes,
    rows_to_table,
)

FIELDS = ["id", "start", "name"]


def table(rows: list[Any], **options: Any) -> pa.Table:
    return rows_to_table(rows, FIELDS, entity="session", **options)


def issues(result: pa.Table) -> list[list[dict[str, str]] | None]:
    return [None if v is None else orjson.loads(v) for v in result[INGEST_ISSUES].to_pylist()]


def test_plain_rows_become_an_all_text_table_with_every_documented_column() -> None:
    result = table([{"id": "1", "start": "2025-03-01 09:00"}, {"id": "2", "name": "Ann"}])
    assert result.column_names == [*FIELDS, INGEST_ISSUES, ROW_HASH]
    assert all(field.type == pa.string() for field in result.schema)
    assert result.select(FIELDS).to_pylist() == [
        {"id": "1", "start": "2025-03-01 09:00", "name": None},
        {"id": "2", "start": None, "name": "Ann"},
    ]
    assert issues(result) == [None, None]
    assert result.schema.field(ROW_HASH).nullable is False


def test_unknown_fields_become_extra_columns() -> None:
    result = table([{"id": "1", "room": "B"}, {"id": "2", "colour": "red"}])
    assert result.column_names == [*FIELDS, "room", "colour", INGEST_ISSUES, ROW_HASH]
    assert result["room"].to_pylist() == ["B", None]
    assert result["colour"].to_pylist() == [None, "red"]


def test_a_vendor_field_named_like_the_account_stamp_is_kept_under_another_name() -> None:
    result = table([{"id": "1", "account": '{"tier": "gold"}'}, {"id": "2"}])
    assert "account" not in result.column_names
    assert result["account_from_vendor"].to_pylist() == ['{"tier": "gold"}', None]
    # hashed as stored, so a privacy rewrite of the history computes the same hash
    renamed = table([{"id": "1", "account_from_vendor": '{"tier": "gold"}'}, {"id": "2"}])
    assert result[ROW_HASH].to_pylist() == renamed[ROW_HASH].to_pylist()


def test_a_row_that_is_not_an_object_is_kept_as_an_issue_row() -> None:
    result = table([{"id": "1"}, "oops", 5, None])
    assert result.num_rows == 4
    assert result["id"].to_pylist() == ["1", None, None, None]
    assert issues(result) == [
        None,
        [{"field": "", "value": "oops", "problem": "session is not a JSON object"}],
        [{"field": "", "value": "5", "problem": "session is not a JSON object"}],
        [{"field": "", "value": "", "problem": "session is not a JSON object"}],
    ]


ODD = {"id": 12, "start": 1.5, "name": True, "tags": [1, 2], "meta": {"b": 1, "a": None}}
ODD_AS_TEXT = {
    "id": "12",
    "start": "1.5",
    "name": "true",
    "tags": "[1,2]",
    "meta": '{"a":null,"b":1}',
}


def test_values_that_are_not_text_are_converted_and_reported_where_text_was_promised() -> None:
    result = table([ODD, {"id": "2"}])
    assert result.select(list(ODD_AS_TEXT)).to_pylist()[0] == ODD_AS_TEXT
    assert issues(result) == [
        [
            {"field": "id", "value": "12", "problem": "arrived as a number, not as text"},
            {"field": "start", "value": "1.5", "problem": "arrived as a number, not as text"},
            {"field": "name", "value": "true", "problem": "arrived as a boolean, not as text"},
            {"field": "tags", "value": "[1,2]", "problem": "arrived as an array, not as text"},
            {
                "field": "meta",
                "value": '{"a":null,"b":1}',
                "problem": "arrived as an object, not as text",
            },
        ],
        None,
    ]


def test_values_that_are_not_text_are_converted_silently_for_vendors_that_send_json_types() -> None:
    result = table([ODD], expect_text=False)
    assert result.select(list(ODD_AS_TEXT)).to_pylist() == [ODD_AS_TEXT]
    assert issues(result) == [None]


def test_a_required_field_missing_or_null_is_reported() -> None:
    """A JSON null in a required field was silent: a session with a null date, times and status
    loaded with NULLs and no data issue."""
    result = table(
        [{"id": "1"}, {"id": "2", "start": None}, {"start": "x"}, {"id": None, "start": "y"}],
        required=["id", "start"],
    )
    assert issues(result) == [
        [{"field": "start", "value": "", "problem": "missing from the record"}],
        [{"field": "start", "value": "", "problem": "null in the record"}],
        [{"field": "id", "value": "", "problem": "missing from the record"}],
        [{"field": "id", "value": "", "problem": "null in the record"}],
    ]


def test_a_long_value_loads_in_full_and_is_reported_shortened() -> None:
    long = "x" * (LONG_VALUE + 1)
    result = table([{"id": "1", "name": long}, {"id": "2", "name": "x" * LONG_VALUE}])
    assert result["name"].to_pylist() == [long, "x" * LONG_VALUE]
    assert issues(result) == [
        [
            {
                "field": "name",
                "value": "x" * 200,
                "problem": "unusually long value (100,001 characters), loaded in full",
            }
        ],
        None,
    ]


def test_replaced_utf8_is_reported_only_when_the_body_had_some() -> None:
    rows = [{"id": "1", "name": "Ren\ufffde"}]
    assert issues(table(rows, check_replacement=True)) == [
        [{"field": "name", "value": "Ren\ufffde", "problem": "invalid UTF-8 bytes were replaced"}]
    ]
    assert issues(table(rows)) == [None]


def test_constants_fill_a_column_and_count_in_the_hash() -> None:
    rows = [{"id": "1"}, {"id": "2"}]
    berlin = table(rows, constants={"timezone": "Europe/Berlin"})
    vienna = table(rows, constants={"timezone": "Europe/Vienna"})
    assert berlin["timezone"].to_pylist() == ["Europe/Berlin", "Europe/Berlin"]
    assert berlin.column_names.index("timezone") < berlin.column_names.index(INGEST_ISSUES)
    hashes = berlin[ROW_HASH].to_pylist()
    assert len(set(hashes)) == 2
    assert set(hashes).isdisjoint(vienna[ROW_HASH].to_pylist())


# --- row hashes -----------------------------------------------------------------------------


def hashes(data: dict[str, list[str | None]], documented: list[str] = FIELDS) -> list[str]:
    return row_hashes(
        pa.table(data, schema=pa.schema([(n, pa.string()) for n in data])), documented
    ).to_pylist()


BASE = {"id": ["1", "2"], "start": ["a", None], "name": ["Ann", "Bo"]}


def test_hash_ignores_column_order_and_how_the_row_was_read() -> None:
    assert hashes(BASE) == hashes({name: BASE[name] for name in reversed(FIELDS)})
    # the fast path (every value text) and the slow one (another row forced conversion)
    fast = table([{"id": "1", "start": "a", "name": "Ann"}])
    slow = table([{"name": "Ann", "start": "a", "id": "1"}, {"id": 2}], expect_text=False)
    assert fast[ROW_HASH][0] == slow[ROW_HASH][0]
    # a documented column absent from the page is the same as one that is all null
    assert hashes({"id": ["1"], "start": [None], "name": ["Ann"]}) == hashes(
        {"id": ["1"], "name": ["Ann"]}
    )


@pytest.mark.parametrize("column", FIELDS)
@pytest.mark.parametrize("value", ["changed", "", None])
def test_a_change_in_any_documented_column_changes_only_that_rows_hash(
    column: str, value: str | None
) -> None:
    changed = {name: list(values) for name, values in BASE.items()}
    changed[column][0] = value
    before, after = hashes(BASE), hashes(changed)
    assert before[0] != after[0]
    assert before[1] == after[1]


def test_a_value_moving_to_the_next_column_changes_the_hash() -> None:
    assert hashes({"id": ["1"], "start": ["ab"], "name": [""]}) != hashes(
        {"id": ["1"], "start": ["a"], "name": ["b"]}
    )


def test_an_extra_column_with_a_value_changes_the_hash() -> None:
    assert hashes({**BASE, "room": ["B", "C"]}) != hashes(BASE)
    assert hashes({**BASE, "room": ["B", "C"]}) != hashes({**BASE, "colour": ["B", "C"]})


def test_an_all_null_extra_column_does_not_change_the_hash() -> None:
    assert hashes({**BASE, "room": [None, None]}) == hashes(BASE)


# every kind of row a page can bring: plain ones (all fields, some absent, nulls outside the
# required ones, key orders) and every kind that must take the full way
KINDS: list[Any] = [
    {"id": "1", "start": "09:00", "name": "Ann"},
    {"name": "Ann", "id": "1", "start": "09:00"},  # another key order, the same row
    {"id": "2", "start": "09:00"},  # a documented field absent
    {"id": "3", "start": "09:00", "name": None},  # null outside the required fields
    {"id": "4", "start": "", "name": "x\x1fy"},  # empty text; the separator inside a value
    {"id": "5", "start": "09:00", "name": "Zoë 😀"},
    {"id": "6", "start": "09:00", "name": "x" * (LONG_VALUE + 1)},  # reported: long
    {"id": "7", "start": None, "name": "Ann"},  # a required value null
    {"id": "8", "name": "Ann"},  # a required field missing
    {"id": 9, "start": "09:00"},  # a number where text is promised
    {"id": "10", "start": "09:00", "room": "B"},  # an undocumented field
    {"id": "11", "start": "09:00", "timezone": "UTC"},  # a field named like a page constant
    {"id": "12", "start": "09:00", "name": ["a"]},
    ["not", "an", "object"],
    {},
    {"id": "13", "start": "09:00", "name": "\ud800"},  # a lone surrogate (parse_json replaces it)
]


@pytest.mark.parametrize("zone", ["Europe/Paris", None])
def test_plain_row_hashes_are_the_hashes_of_the_converted_rows_and_none_for_the_rest(
    zone: str | None,
) -> None:
    """A night leaves unchanged rows out by `plain_row_hashes` before converting anything
    (`page_worker.decode_page`): for every plain row it must give exactly the hash the row
    converts to, and None for every row whose conversion adds issues or columns."""
    constants = {"timezone": zone}
    required = ["id", "start"]
    quick = plain_row_hashes(KINDS, FIELDS, required, constants)
    plain = [i for i, digest in enumerate(quick) if digest is not None]
    assert plain == [0, 1, 2, 3, 4, 5]
    for i in range(len(KINDS) - 1):
        converted = rows_to_table(
            [KINDS[i]], FIELDS, entity="session", required=required, constants=constants
        )
        if i in plain:
            assert quick[i] == converted[ROW_HASH][0].as_py()
            assert converted[INGEST_ISSUES][0].as_py() is None
            assert converted.column_names == [*FIELDS, "timezone", INGEST_ISSUES, ROW_HASH]
    assert quick[0] == quick[1] != quick[2]


def test_plain_row_hashes_join_any_set_of_absent_fields_as_the_table_does() -> None:
    """Absent fields before, between and after the present ones (each subset of five): the
    hash as parsed equals the converted row's, also across rows of several key sets."""
    documented = ["a", "b", "c", "d", "e"]
    rows = [
        {name: f"{name}{mask}" for i, name in enumerate(documented) if mask >> i & 1}
        for mask in range(1, 32)
    ]
    rows += [{**row, "c": None} for row in rows if "c" in row]  # null as absent
    quick = plain_row_hashes(rows, documented, [], {"zone": "UTC"})
    converted = rows_to_table(rows, documented, entity="x", constants={"zone": "UTC"})
    assert quick == converted[ROW_HASH].to_pylist()
    assert len(set(quick)) == len(rows)
    nulled = [{k: v for k, v in row.items() if k != "c"} for row in rows[31:]]
    assert nulled[0] == {}  # not plain (no field at all): the full way, as any odd row
    assert plain_row_hashes(nulled, documented, [], {"zone": "UTC"}) == [None, *quick[32:]]
