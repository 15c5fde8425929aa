"""TimeTap packages and packages sold -> analytics tables and data_issues, with exact values."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import duckdb
import pytest
from transform_fixtures import (
    LOAD_1,
    LOAD_2,
    fetch_dicts,
    in_order,
    packages,
    packages_sold,
    sessions,
)

from practice_sync.transform import run_transforms

CREATED_AT = datetime(2024, 1, 15, 10, 30, tzinfo=UTC)
MODIFIED_AT = datetime(2024, 2, 1, 8, 0, tzinfo=UTC)


@pytest.fixture
def con() -> duckdb.DuckDBPyConnection:
    connection = duckdb.connect()
    connection.execute("set TimeZone = 'America/Sao_Paulo'")  # must not matter
    yield connection
    connection.close()


def issues(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    return sorted(
        con.execute("select * exclude (account) from analytics.data_issues").fetchall(),
        key=lambda row: tuple(str(value) for value in row),
    )


def rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[tuple]:
    return con.execute(in_order(sql)).fetchall()


# --- packages -------------------------------------------------------------------------------


def test_clean_package_is_fully_typed(con) -> None:
    packages(con, {})
    counts = run_transforms(con)

    assert counts == {
        "data_issues": 0,
        "package_history": 1,
        "package_reasons": 2,
        "package_services": 2,
        "packages": 1,
    }
    assert fetch_dicts(con, "select * exclude (account) from analytics.packages") == [
        {
            "package_id": 501,
            "business_id": 9001,
            "package_name": "Ten Yoga Classes",
            "internal_name": "YOGA-10",
            "description": "Ten drop-in classes",
            "price": Decimal("150.50"),
            "quantity": 10,
            "expire_in_days": 180,
            "remind_when_below_quantity": 2,
            "staff_rate_level": "DEFAULT",
            "allow_online": True,
            "taxable": False,
            "active": True,
            "image_url": "https://img.example/yoga.png",
            "created_at": CREATED_AT,
            "created_by": "admin",
            "modified_at": MODIFIED_AT,
            "modified_by": "frontdesk",
            "valid_from": LOAD_1,
        }
    ]
    assert rows(con, "select * exclude (account) from analytics.package_services") == [
        (501, 11),
        (501, 12),
    ]
    assert rows(con, "select * exclude (account) from analytics.package_reasons") == [
        (501, 1, 71, "Yoga"),
        (501, 2, 72, "Pilates"),
    ]
    assert issues(con) == []


def test_package_column_types(con) -> None:
    packages(con, {})
    run_transforms(con)
    types = dict(
        rows(
            con,
            """select column_name, data_type from information_schema.columns
            where table_schema = 'analytics' and table_name = 'packages'""",
        )
    )
    assert types["price"] == "DECIMAL(18,2)"
    assert types["quantity"] == types["expire_in_days"] == "INTEGER"
    assert types["remind_when_below_quantity"] == "INTEGER"
    assert types["package_id"] == types["business_id"] == "BIGINT"
    assert types["allow_online"] == types["taxable"] == types["active"] == "BOOLEAN"
    assert types["created_at"] == types["modified_at"] == "TIMESTAMP WITH TIME ZONE"


@pytest.mark.parametrize(
    ("change", "column", "expected", "problem"),
    [
        ({"price": "abc"}, "price", None, "not a number"),
        ({"price": "12"}, "price", Decimal("12.00"), None),
        ({"quantity": "10.5"}, "quantity", None, "not an integer"),
        ({"expire_in_days": ""}, "expire_in_days", None, None),
        (
            {"remind_when_below_quantity": "two"},
            "remind_when_below_quantity",
            None,
            "not an integer",
        ),
        ({"business_id": "9001x"}, "business_id", None, "not an integer"),
        ({"allow_online": "yes"}, "allow_online", None, "not a boolean"),
        ({"taxable": "1"}, "taxable", None, "not a boolean"),
        ({"taxable": None}, "taxable", None, None),
        (
            {"created_date": "-1000"},
            "created_at",
            None,
            "timestamp out of range (before 2000 or after 2100)",
        ),
        # Seconds where milliseconds are due would land in 1970.
        (
            {"created_date": "1705314600"},
            "created_at",
            None,
            "timestamp out of range (before 2000 or after 2100)",
        ),
        ({"created_date": "946684800000"}, "created_at", datetime(2000, 1, 1, tzinfo=UTC), None),
        (
            {"modified_date": "4102444800000"},
            "modified_at",
            None,
            "timestamp out of range (before 2000 or after 2100)",
        ),
        (
            {"modified_date": "4102444799999"},
            "modified_at",
            datetime(2099, 12, 31, 23, 59, 59, 999000, tzinfo=UTC),
            None,
        ),
        (
            {"modified_date": "yesterday"},
            "modified_at",
            None,
            "not an epoch-milliseconds timestamp",
        ),
        ({"modified_date": "1.7e12"}, "modified_at", None, "not an epoch-milliseconds timestamp"),
        # whole numbers beyond INTEGER: NULL like any unreadable count, and said why
        ({"quantity": "2147483647"}, "quantity", 2147483647, None),
        ({"quantity": "2147483648"}, "quantity", None, "integer out of range"),
        (
            {"expire_in_days": "9223372036854775807"},
            "expire_in_days",
            None,
            "integer out of range",
        ),
        (
            {"remind_when_below_quantity": "-2147483649"},
            "remind_when_below_quantity",
            None,
            "integer out of range",
        ),
    ],
)
def test_package_values(con, change, column, expected, problem) -> None:
    packages(con, change)
    run_transforms(con)
    assert rows(con, f"select package_id, {column} from analytics.packages") == [(501, expected)]
    [(field, value)] = change.items()
    assert issues(con) == (
        [("timetap", "package", "501", field, value, problem)] if problem else []
    )


def test_service_ids_are_unpacked(con) -> None:
    packages(
        con,
        {"package_id": "1", "service_ids": "[]"},
        {"package_id": "2", "service_ids": '[11,11,"12"]'},  # duplicates once; "12" accepted
        {"package_id": "3", "service_ids": '[11,"x",2.5,null]'},
        {"package_id": "4", "service_ids": "{bad"},
        {"package_id": "5", "service_ids": '{"a":1}'},
        {"package_id": "6", "service_ids": None},
    )
    run_transforms(con)
    assert rows(con, "select * exclude (account) from analytics.package_services") == [
        (2, 11),
        (2, 12),
        (3, 11),
    ]
    assert rows(con, "select package_id from analytics.packages") == [(n,) for n in range(1, 7)]
    assert issues(con) == [
        ("timetap", "package", "3", "service_ids", '"x"', "not an integer service id"),
        ("timetap", "package", "3", "service_ids", "2.5", "not an integer service id"),
        ("timetap", "package", "3", "service_ids", "null", "not an integer service id"),
        ("timetap", "package", "4", "service_ids", "{bad", "not a valid JSON array"),
        ("timetap", "package", "5", "service_ids", '{"a":1}', "not a valid JSON array"),
    ]


def test_reason_list_is_unpacked_in_order(con) -> None:
    packages(
        con,
        {"package_id": "1", "reason_list": "[]"},
        {
            "package_id": "2",
            "reason_list": '[{"reasonId":72,"reasonDesc":"Pilates"},"oops",{"reasonDesc":"no id"},'
            '{"reasonId":71,"reasonDesc":"Yoga"}]',
        },
        {"package_id": "3", "reason_list": "not json"},
    )
    run_transforms(con)
    assert rows(con, "select * exclude (account) from analytics.package_reasons") == [
        (2, 1, 72, "Pilates"),
        (2, 2, None, None),
        (2, 3, None, "no id"),
        (2, 4, 71, "Yoga"),
    ]
    assert issues(con) == [
        ("timetap", "package", "2", "reason_list", '"oops"', "malformed reason entry"),
        (
            "timetap",
            "package",
            "2",
            "reason_list",
            '{"reasonDesc":"no id"}',
            "malformed reason entry",
        ),
        ("timetap", "package", "3", "reason_list", "not json", "not a valid JSON array"),
    ]


def test_retired_packages_leave_packages_and_stay_in_history(con) -> None:
    packages(
        con,
        {"package_id": "501"},
        # Changed once: the old version carries a bad price, which is not re-reported.
        {"package_id": "502", "price": "bad", "_dlt_valid_to": LOAD_2},
        {"package_id": "502", "price": "99", "_dlt_valid_from": LOAD_2, "_dlt_load_id": "2"},
        # Dropped out of GET /package: dlt closed its only version.
        {"package_id": "503", "quantity": "x", "_dlt_valid_to": LOAD_2},
        # Still listed but deactivated; its problems are still reported (it is current).
        {"package_id": "504", "active": "false", "price": "n/a"},
        # Changed, then dropped: only the last version is the retired one.
        {"package_id": "505", "_dlt_valid_to": LOAD_2},
        {"package_id": "505", "price": "5", "_dlt_valid_from": LOAD_2, "_dlt_valid_to": LOAD_2},
    )
    run_transforms(con)

    assert rows(con, "select package_id, price from analytics.packages") == [
        (501, Decimal("150.50")),
        (502, Decimal("99.00")),
    ]
    assert rows(con, "select package_id, service_id from analytics.package_services") == [
        (501, 11),
        (501, 12),
        (502, 11),
        (502, 12),
    ]
    assert rows(
        con,
        """select package_id, version_number, price, active, valid_from, valid_to, is_current,
            is_retired from analytics.package_history""",
    ) == [
        (501, 1, Decimal("150.50"), True, LOAD_1, None, True, False),
        (502, 1, None, True, LOAD_1, LOAD_2, False, False),
        (502, 2, Decimal("99.00"), True, LOAD_2, None, True, False),
        (503, 1, Decimal("150.50"), True, LOAD_1, LOAD_2, False, True),
        (504, 1, None, False, LOAD_1, None, True, True),
        (505, 1, Decimal("150.50"), True, LOAD_1, LOAD_2, False, False),
        (505, 2, Decimal("5.00"), True, LOAD_2, LOAD_2, False, True),
    ]
    assert issues(con) == [("timetap", "package", "504", "price", "n/a", "not a number")]


def test_a_package_with_an_unreadable_or_missing_active_stays_on_offer(con) -> None:
    packages(
        con,
        {"package_id": "1", "active": "maybe"},
        # the extractor reports the missing field (a listed package has none to lose)
        {
            "package_id": "2",
            "active": None,
            "_ingest_issues": '[{"field":"active","value":"","problem":"missing from the record"}]',
        },
        {"package_id": "3", "active": "false"},
    )
    run_transforms(con)
    assert rows(con, "select package_id, active from analytics.packages") == [(1, None), (2, None)]
    assert rows(con, "select package_id, service_id from analytics.package_services") == [
        (1, 11),
        (1, 12),
        (2, 11),
        (2, 12),
    ]
    assert rows(con, "select package_id, position from analytics.package_reasons") == [
        (1, 1),
        (1, 2),
        (2, 1),
        (2, 2),
    ]
    assert rows(con, "select package_id, is_current, is_retired from analytics.package_history") == [
        (1, True, False),
        (2, True, False),
        (3, True, True),
    ]
    assert issues(con) == [
        ("timetap", "package", "1", "active", "maybe", "not a boolean"),
        ("timetap", "package", "2", "active", "", "missing from the record"),
    ]


def test_package_ingest_issues(con) -> None:
    packages(
        con,
        {
            "description": "caf\ufffd",
            "_ingest_issues": '[{"field":"description","value":"caf\\ufffd",'
            '"problem":"invalid UTF-8 replaced"}]',
        },
    )
    run_transforms(con)
    assert issues(con) == [
        ("timetap", "package", "501", "description", "caf\ufffd", "invalid UTF-8 replaced")
    ]


# --- packages sold --------------------------------------------------------------------------


def test_clean_package_sold_is_fully_typed(con) -> None:
    packages_sold(con, {})
    counts = run_transforms(con)

    assert counts == {
        "data_issues": 0,
        "package_sold_history": 1,
        "packages_sold": 1,
        "timetap_clients": 1,
    }
    assert fetch_dicts(con, "select * exclude (account) from analytics.packages_sold") == [
        {
            "package_sold_id": 7001,
            "business_id": 9001,
            "client_id": 3001,
            "package_id": 501,
            "price": Decimal("150.00"),
            "max_quantity": 10,
            "used_quantity": 3,
            "remaining_quantity": 7,
            "status": "OPEN",
            "purchased_at": CREATED_AT,
            "expires_at": datetime(2099, 1, 1, tzinfo=UTC),
            "is_expired": False,
            "created_at": CREATED_AT,
            "created_by": "admin",
            "modified_at": MODIFIED_AT,
            "modified_by": "frontdesk",
            "valid_from": LOAD_1,
        }
    ]
    assert issues(con) == []


def test_quantities(con) -> None:
    packages_sold(
        con,
        {"package_sold_id": "1", "used_quantity": "10"},
        {"package_sold_id": "2", "used_quantity": "12"},
        {"package_sold_id": "3", "used_quantity": "lots"},
        {"package_sold_id": "4", "max_quantity": "", "used_quantity": "0"},
    )
    run_transforms(con)
    assert rows(
        con,
        "select package_sold_id, max_quantity, used_quantity, remaining_quantity from analytics.packages_sold",
    ) == [(1, 10, 10, 0), (2, 10, 12, 0), (3, 10, None, None), (4, None, 0, None)]
    assert issues(con) == [
        ("timetap", "package_sold", "2", "used_quantity", "12", "used quantity exceeds maximum"),
        ("timetap", "package_sold", "3", "used_quantity", "lots", "not an integer"),
    ]


def test_quantities_beyond_integer_are_reported(con) -> None:
    packages_sold(
        con,
        {"package_sold_id": "1", "max_quantity": "9223372036854775807"},  # Long.MAX_VALUE
        {"package_sold_id": "2", "used_quantity": "2147483648"},
        {"package_sold_id": "3", "max_quantity": "2147483647", "used_quantity": "2147483647"},
    )
    run_transforms(con)
    assert rows(
        con,
        "select package_sold_id, max_quantity, used_quantity, remaining_quantity from analytics.packages_sold",
    ) == [(1, None, 3, None), (2, 10, None, None), (3, 2147483647, 2147483647, 0)]
    assert issues(con) == [
        (
            "timetap",
            "package_sold",
            "1",
            "max_quantity",
            "9223372036854775807",
            "integer out of range",
        ),
        ("timetap", "package_sold", "2", "used_quantity", "2147483648", "integer out of range"),
    ]


def test_status_values(con) -> None:
    packages_sold(
        con,
        {"package_sold_id": "1", "status": "CLOSED"},
        {"package_sold_id": "2", "status": " open "},
        {"package_sold_id": "3", "status": "PAUSED"},
        {"package_sold_id": "4", "status": ""},
        {"package_sold_id": "5", "status": None},
    )
    run_transforms(con)
    assert rows(con, "select package_sold_id, status from analytics.packages_sold") == [
        (1, "CLOSED"),
        (2, "OPEN"),
        (3, None),
        (4, None),
        (5, None),
    ]
    assert issues(con) == [
        ("timetap", "package_sold", "3", "status", "PAUSED", "unknown status"),
        ("timetap", "package_sold", "4", "status", "", "unknown status"),
    ]


def test_expiry(con) -> None:
    packages_sold(
        con,
        {"package_sold_id": "1", "expire_date": "1706774400000"},  # 2024-02-01: passed
        {"package_sold_id": "2", "expire_date": None},  # never expires
        {"package_sold_id": "3", "expire_date": "soon"},
        {"package_sold_id": "4", "expire_date": "0"},
    )
    run_transforms(con)
    assert rows(
        con, "select package_sold_id, expires_at, is_expired from analytics.packages_sold"
    ) == [
        (1, MODIFIED_AT, True),
        (2, None, False),
        (3, None, None),
        (4, None, None),
    ]
    assert issues(con) == [
        (
            "timetap",
            "package_sold",
            "3",
            "expire_date",
            "soon",
            "not an epoch-milliseconds timestamp",
        ),
        (
            "timetap",
            "package_sold",
            "4",
            "expire_date",
            "0",
            "timestamp out of range (before 2000 or after 2100)",
        ),
    ]


def test_client_and_package_come_from_ids_and_embedded_objects(con) -> None:
    packages_sold(
        con,
        {"package_sold_id": "1", "client_id": None},  # falls back to client.clientId
        {"package_sold_id": "2", "client_id": "3002"},  # the fetched-for id wins
        {"package_sold_id": "3", "pkg": "not json", "client": "[1]"},
        {"package_sold_id": "4", "pkg": '{"packageName":"no id"}'},
        {"package_sold_id": "5", "pkg": None, "client": None, "client_id": "x"},
    )
    run_transforms(con)
    assert rows(
        con, "select package_sold_id, client_id, package_id from analytics.packages_sold"
    ) == [
        (1, 3001, 501),
        (2, 3002, 501),
        (3, 3001, None),
        (4, 3001, None),
        (5, None, None),
    ]
    assert issues(con) == [
        ("timetap", "package_sold", "3", "client", "[1]", "not a valid JSON object"),
        ("timetap", "package_sold", "3", "pkg", "not json", "not a valid JSON object"),
        (
            "timetap",
            "package_sold",
            "4",
            "pkg",
            '{"packageName":"no id"}',
            "no integer packageId in pkg",
        ),
        ("timetap", "package_sold", "5", "client_id", "x", "not an integer"),
    ]


def test_deactivated_packages_sold_stay_in_history_only(con) -> None:
    packages_sold(
        con,
        {"package_sold_id": "1"},
        {"package_sold_id": "2", "active": "false"},
        {"package_sold_id": "3", "active": "maybe"},  # unreadable: kept, and reported
        {"package_sold_id": "4", "used_quantity": "4", "_dlt_valid_to": LOAD_2},
        {"package_sold_id": "4", "used_quantity": "5", "_dlt_valid_from": LOAD_2},
        {"package_sold_id": "5", "_dlt_valid_to": LOAD_2},
    )
    run_transforms(con)
    assert rows(con, "select package_sold_id, used_quantity from analytics.packages_sold") == [
        (1, 3),
        (3, 3),
        (4, 5),
    ]
    assert rows(
        con,
        """select package_sold_id, version_number, used_quantity, active, valid_to, is_current,
            is_retired from analytics.package_sold_history""",
    ) == [
        (1, 1, 3, True, None, True, False),
        (2, 1, 3, False, None, True, True),
        (3, 1, 3, None, None, True, False),
        (4, 1, 4, True, LOAD_2, False, False),
        (4, 2, 5, True, None, True, False),
        (5, 1, 3, True, LOAD_2, False, True),
    ]
    assert issues(con) == [("timetap", "package_sold", "3", "active", "maybe", "not a boolean")]


def test_package_sold_ingest_issues(con) -> None:
    packages_sold(
        con,
        {
            "_ingest_issues": '[{"field":"price","value":"{}","problem":"an object instead of a number"}]'
        },
    )
    run_transforms(con)
    assert issues(con) == [
        ("timetap", "package_sold", "7001", "price", "{}", "an object instead of a number")
    ]


# --- sources present or not -----------------------------------------------------------------


def test_timetap_alone_builds_only_timetap_tables(con) -> None:
    packages(con, {"price": "bad"})
    assert run_transforms(con) == {
        "data_issues": 1,
        "package_history": 1,
        "package_reasons": 2,
        "package_services": 2,
        "packages": 1,
    }
    packages_sold(con, {})
    assert set(run_transforms(con)) == {
        "data_issues",
        "package_history",
        "package_reasons",
        "package_services",
        "packages",
        "package_sold_history",
        "packages_sold",
        "timetap_clients",
    }
    analytics = {
        name
        for (name,) in rows(
            con,
            "select table_name from information_schema.tables where table_schema = 'analytics'",
        )
    }
    assert "sessions" not in analytics


def test_both_sources_report_into_one_data_issues_table(con) -> None:
    sessions(con, {"client_id": "bad"})
    packages(con, {"taxable": "nope"})
    packages_sold(con, {"status": "LOST"})
    counts = run_transforms(con)
    assert counts["data_issues"] == 3
    assert issues(con) == [
        ("bizstim", "session", "1135", "client_id", "bad", "not an integer"),
        ("timetap", "package", "501", "taxable", "nope", "not a boolean"),
        ("timetap", "package_sold", "7001", "status", "LOST", "unknown status"),
    ]


def test_one_id_spelled_two_ways_is_one_package_and_one_package_sold(con) -> None:
    """'501' and '0501' are two dlt records (ids are text) but one key: as two version groups
    they were two current rows of package 501, and the key test failed every night's build
    for every account and source. One record: the latest current version wins."""
    later = {"_dlt_valid_from": LOAD_2, "_dlt_load_id": "2"}
    packages(
        con,
        {"package_id": "501", "package_name": "Ten classes"},
        {"package_id": "0501", "package_name": "Twelve classes", **later},
    )
    packages_sold(
        con,
        {"package_sold_id": "7001", "used_quantity": "1"},
        {"package_sold_id": "07001", "used_quantity": "2", **later},
    )
    run_transforms(con)
    assert rows(con, "select package_id, package_name from analytics.packages") == [
        (501, "Twelve classes")
    ]
    assert rows(
        con, "select version_number, package_name, is_current from analytics.package_history"
    ) == [(1, "Ten classes", False), (2, "Twelve classes", True)]
    assert rows(con, "select package_sold_id, used_quantity from analytics.packages_sold") == [
        (7001, 2)
    ]
    assert issues(con) == []


def test_a_client_object_repeating_a_key_is_reported_not_a_failed_build(con) -> None:
    """Sent as a string, a client object may repeat a key: json_valid accepts it, the map cast
    of timetap_clients refused it, and every account's build failed every night (exit 7)."""
    twice = '{"clientId":3001,"firstName":"Ada","firstName":"Ada","lastName":"L"}'
    packages_sold(con, {"client": twice}, {"package_sold_id": "7002", "client_id": "3002"})
    run_transforms(con)
    assert rows(con, "select package_sold_id, client_id from analytics.packages_sold") == [
        (7001, 3001), (7002, 3002)
    ]
    assert rows(con, "select client_id, first_name from analytics.timetap_clients") == [
        (3002, "Ada")
    ]
    assert issues(con) == [
        ("timetap", "package_sold", "7001", "client", twice, "not a valid JSON object"),
        ("timetap", "package_sold", "7001", "client_id", "3001",
         "relationships test: not found in analytics.timetap_clients.client_id"),
    ]  # fmt: skip


def test_negative_quantities_and_empty_dates_are_reported(con) -> None:
    """-3 used of 10 read as 13 left, and an empty purchase date as NULL, each without an issue;
    an empty expiry date still means the package never expires."""
    packages_sold(
        con,
        {"package_sold_id": "1", "used_quantity": "-3"},
        {"package_sold_id": "2", "max_quantity": "-1", "used_quantity": "0"},
        {"package_sold_id": "3", "purchase_date": "", "expire_date": ""},
    )
    packages(con, {"modified_date": " "})
    run_transforms(con)
    assert rows(
        con,
        "select package_sold_id, max_quantity, used_quantity, remaining_quantity, purchased_at, "
        "is_expired from analytics.packages_sold",
    ) == [
        (1, 10, -3, None, CREATED_AT, False),
        (2, -1, 0, None, CREATED_AT, False),
        (3, 10, 3, 7, None, False),
    ]
    assert issues(con) == [
        ("timetap", "package", "501", "modified_date", " ", "empty date"),
        ("timetap", "package_sold", "1", "used_quantity", "-3", "negative quantity"),
        ("timetap", "package_sold", "2", "max_quantity", "-1", "negative quantity"),
        ("timetap", "package_sold", "3", "purchase_date", "", "empty date"),
    ]
