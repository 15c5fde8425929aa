"""Build raw dlt tables by hand for the transform tests.

Raw tables look like what dlt writes: every vendor column VARCHAR (values exactly as delivered),
plus `_dlt_id`, `_dlt_load_id`, `_dlt_valid_from`, `_dlt_valid_to` and `_ingest_issues`.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

import duckdb
import pyarrow as pa

SESSION_COLUMNS = (
    "id confirmed multi slots class_id display pract_id pract_d wage_id client_id client_due_id "
    "cancel_clients temp service_id location_id recurr_id recurr_on qb_invoice_id session_status "
    "custom_map_id session_reminder session_sms session_description session_date "
    "session_start_time session_end_time session_note session_private_note session_other_note "
    "assessment_moderation assessment_present timezone"
).split()

PACKAGE_COLUMNS = (
    "package_id business_id package_name internal_name description price quantity expire_in_days "
    "remind_when_below_quantity staff_rate_level allow_online taxable active image_url "
    "created_date created_user modified_date modified_user service_ids reason_list"
).split()

PACKAGE_SOLD_COLUMNS = (
    "package_sold_id business_id client_id client pkg price max_quantity used_quantity status "
    "purchase_date expire_date created_date modified_date created_user modified_user active"
).split()

RAW_TABLES = {
    "bizstim.sessions": SESSION_COLUMNS,
    "timetap.packages": PACKAGE_COLUMNS,
    "timetap.packages_sold": PACKAGE_SOLD_COLUMNS,
}

DLT_COLUMNS = {
    "_dlt_id": "varchar",
    "_dlt_load_id": "varchar",
    "_dlt_valid_from": "timestamptz",
    "_dlt_valid_to": "timestamptz",
    "_ingest_issues": "varchar",
}

LOAD_1 = datetime(2024, 1, 1, 3, 0, tzinfo=UTC)
LOAD_2 = datetime(2024, 1, 2, 3, 0, tzinfo=UTC)

# A complete, clean session as the Bizstim docs show it.
SESSION = {
    "id": "1135",
    "confirmed": "1",
    "multi": "0",
    "slots": "0",
    "class_id": "0",
    "display": "1",
    "pract_id": "354",
    "pract_d": None,
    "wage_id": "54",
    "client_id": "49",
    "client_due_id": "54",
    "cancel_clients": "",
    "temp": "0",
    "service_id": "19",
    "location_id": "24",
    "recurr_id": "1",
    "recurr_on": "0",
    "qb_invoice_id": "0",
    "session_status": "3",
    "custom_map_id": "0",
    "session_reminder": "0",
    "session_sms": "0",
    "session_description": "Test Session",
    "session_date": "2021-04-28",
    "session_start_time": "17:00",
    "session_end_time": "18:00",
    "session_note": "This is a public session note",
    "session_private_note": "Added by administrator",
    "session_other_note": "",
    "assessment_moderation": "0",
    "assessment_present": "1",
    "timezone": "America/Los_Angeles",
}

# 2024-01-15T10:30:00Z and 2024-02-01T08:00:00Z in epoch milliseconds, as TimeTap sends dates.
CREATED_MS = "1705314600000"
MODIFIED_MS = "1706774400000"

# A clean TimeTap package as the extractor stores it (camelCase fields snake_cased by dlt).
PACKAGE = {
    "package_id": "501",
    "business_id": "9001",
    "package_name": "Ten Yoga Classes",
    "internal_name": "YOGA-10",
    "description": "Ten drop-in classes",
    "price": "150.5",
    "quantity": "10",
    "expire_in_days": "180",
    "remind_when_below_quantity": "2",
    "staff_rate_level": "DEFAULT",
    "allow_online": "true",
    "taxable": "false",
    "active": "true",
    "image_url": "https://img.example/yoga.png",
    "created_date": CREATED_MS,
    "created_user": "admin",
    "modified_date": MODIFIED_MS,
    "modified_user": "frontdesk",
    "service_ids": "[11,12]",
    "reason_list": '[{"reasonDesc":"Yoga","reasonId":71},{"reasonDesc":"Pilates","reasonId":72}]',
}

# A clean package sold: 2024-01-15 purchase, expiring 2099-01-01 (never expired while tests run).
PACKAGE_SOLD = {
    "package_sold_id": "7001",
    "business_id": "9001",
    "client_id": "3001",
    "client": '{"clientId":3001,"emailAddress":"ada@example.com","firstName":"Ada","lastName":"L"}',
    "pkg": '{"active":true,"packageId":501,"packageName":"Ten Yoga Classes"}',
    "price": "150",
    "max_quantity": "10",
    "used_quantity": "3",
    "status": "OPEN",
    "purchase_date": CREATED_MS,
    "expire_date": "4070908800000",
    "created_date": CREATED_MS,
    "modified_date": MODIFIED_MS,
    "created_user": "admin",
    "modified_user": "frontdesk",
    "active": "true",
}

_row_ids = itertools.count(1)


def create_raw_table(con: duckdb.DuckDBPyConnection, table: str) -> None:
    """Create an empty raw table (documented columns, dlt columns, one extra unknown column)."""
    schema = table.split(".")[0]
    columns = [f'"{name}" varchar' for name in RAW_TABLES[table]]
    columns += [f"{name} {type_}" for name, type_ in DLT_COLUMNS.items()]
    columns.append("some_future_field varchar")
    con.execute(f"create schema if not exists {schema}")
    con.execute(f"create table {table} ({', '.join(columns)})")


def insert_rows(
    con: duckdb.DuckDBPyConnection,
    table: str,
    rows: Iterable[Mapping[str, object]],
    *,
    base: Mapping[str, object] | None = None,
) -> None:
    """Insert raw rows; each is `base` updated with the row. Keys starting with '_' are dlt columns.

    Defaults: a fresh _dlt_id, load '1', valid from LOAD_1, current (valid_to NULL), no ingest issues.
    The table is created on first use.
    """
    exists = con.execute(
        "select count(*) from information_schema.tables where table_schema || '.' || table_name = ?",
        [table],
    ).fetchall()[0][0]
    if not exists:
        create_raw_table(con, table)
    names = list(RAW_TABLES[table]) + list(DLT_COLUMNS)
    records = []
    for row in rows:
        values = {
            "_dlt_id": f"row{next(_row_ids)}",
            "_dlt_load_id": "1",
            "_dlt_valid_from": LOAD_1,
            "_dlt_valid_to": None,
            "_ingest_issues": None,
            **(base or {}),
            **row,
        }
        unknown = set(values) - set(names)
        assert not unknown, f"unknown columns {unknown}"
        records.append(values)
    # One Arrow batch instead of one INSERT per row: the timezone tests insert thousands.
    schema = pa.schema(
        [
            (name, pa.timestamp("us", tz="UTC") if name.startswith("_dlt_valid") else pa.string())
            for name in names
        ]
    )
    batch = pa.Table.from_pylist([{n: r.get(n) for n in names} for r in records], schema=schema)
    quoted = ", ".join(f'"{name}"' for name in names)
    con.register("_raw_batch", batch)
    try:
        con.execute(f"insert into {table} ({quoted}) select {quoted} from _raw_batch")
    finally:
        con.unregister("_raw_batch")


def sessions(con: duckdb.DuckDBPyConnection, *rows: Mapping[str, object]) -> None:
    """Insert Bizstim session rows, each a change against the clean SESSION."""
    insert_rows(con, "bizstim.sessions", rows, base=SESSION)


def packages(con: duckdb.DuckDBPyConnection, *rows: Mapping[str, object]) -> None:
    """Insert TimeTap package rows, each a change against the clean PACKAGE."""
    insert_rows(con, "timetap.packages", rows, base=PACKAGE)


def packages_sold(con: duckdb.DuckDBPyConnection, *rows: Mapping[str, object]) -> None:
    """Insert TimeTap package-sold rows, each a change against the clean PACKAGE_SOLD."""
    insert_rows(con, "timetap.packages_sold", rows, base=PACKAGE_SOLD)


def in_order(sql: str) -> str:
    """`sql` sorted by every column unless it orders its rows itself: no analytics table
    promises a row order, so a test comparing lists must ask for one."""
    return sql if re.search(r"\border\s+by\b", sql, re.IGNORECASE) else f"{sql} order by all"


def fetch_dicts(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> list[dict]:
    """Run a query and return its rows as dicts, in order (`in_order`)."""
    cursor = con.execute(in_order(sql), params or [])
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
