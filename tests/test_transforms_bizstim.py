"""Bizstim sessions -> analytics.sessions, session_cancellations, session_history, data_issues.

Raw tables are built by hand (tests/transform_fixtures.py) the way dlt writes them, then the real
transforms run on an in-memory DuckDB.
"""

from __future__ import annotations

import shutil
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import pytest
from transform_fixtures import LOAD_1, LOAD_2, SESSION, fetch_dicts, in_order, sessions

from practice_sync.transform import TRANSFORMS_DIR, required_tables, run_transforms, sql_files


@pytest.fixture
def con() -> duckdb.DuckDBPyConnection:
    connection = duckdb.connect()
    # dlt may leave any session zone on its connection; results must not depend on it.
    connection.execute("set TimeZone = 'Asia/Kathmandu'")
    yield connection
    connection.close()


def issues(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    return sorted(
        con.execute("select * exclude (account) from analytics.data_issues").fetchall(),
        key=lambda row: tuple(str(value) for value in row),
    )


def one_session(con: duckdb.DuckDBPyConnection) -> dict:
    rows = fetch_dicts(con, "select * exclude (account) from analytics.sessions")
    assert len(rows) == 1
    return rows[0]


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


# --- the clean case -------------------------------------------------------------------------


def test_documented_example_session_is_fully_typed(con) -> None:
    sessions(con, {})
    counts = run_transforms(con)

    assert counts == {
        "data_issues": 0,
        "session_cancellations": 0,
        "session_history": 1,
        "sessions": 1,
    }
    assert one_session(con) == {
        "session_id": 1135,
        "status": "saved",
        "is_group": False,
        "slots": 0,
        "client_id": 49,
        "practitioner_id": 354,
        "service_id": 19,
        "location_id": 24,
        "class_id": 0,
        "wage_id": 54,
        "client_due_id": 54,
        "recurr_id": 1,
        "custom_map_id": 0,
        "temp_session_id": None,
        "qb_invoice_id": None,
        "is_confirmed": True,
        "is_displayed": True,
        "is_recurring": False,
        "has_reminder_sent": False,
        "has_sms_sent": False,
        "is_moderation_required": False,
        "has_assessment": True,
        "description": "Test Session",
        "note": "This is a public session note",
        "private_note": "Added by administrator",
        "other_note": "",
        "session_date": date(2021, 4, 28),
        "local_start": datetime(2021, 4, 28, 17, 0),
        "local_end": datetime(2021, 4, 28, 18, 0),
        "timezone": "America/Los_Angeles",
        "start_utc": utc(2021, 4, 29, 0, 0),
        "end_utc": utc(2021, 4, 29, 1, 0),
        "duration_minutes": 60,
        "is_overnight": False,
        "is_start_in_dst_gap": False,
        "is_start_in_dst_overlap": False,
        "is_end_in_dst_gap": False,
        "is_end_in_dst_overlap": False,
        "valid_from": LOAD_1,
    }
    assert issues(con) == []


def test_column_types(con) -> None:
    sessions(con, {})
    run_transforms(con)
    types = dict(
        con.execute(
            """select column_name, data_type from information_schema.columns
            where table_schema = 'analytics' and table_name = 'sessions'"""
        ).fetchall()
    )
    assert types["session_id"] == "BIGINT"
    assert types["slots"] == "INTEGER"
    assert types["duration_minutes"] == "INTEGER"
    assert types["qb_invoice_id"] == "VARCHAR"
    assert types["is_group"] == "BOOLEAN"
    assert types["session_date"] == "DATE"
    assert types["local_start"] == "TIMESTAMP"
    assert types["start_utc"] == "TIMESTAMP WITH TIME ZONE"
    assert types["valid_from"] == "TIMESTAMP WITH TIME ZONE"


def test_ids_and_codes(con) -> None:
    sessions(
        con,
        {
            "id": "1",
            "session_status": "0",
            "temp": "479001",
            "qb_invoice_id": "QB-77",
            "multi": "1",
        },
        {"id": "2", "session_status": "1"},
        {"id": "3", "session_status": " 2 "},
        {"id": " 4 ", "session_status": "3"},
    )
    run_transforms(con)
    rows = con.execute(
        in_order(
            "select session_id, status, temp_session_id, qb_invoice_id, is_group from analytics.sessions"
        )
    ).fetchall()
    assert rows == [
        (1, "open", 479001, "QB-77", True),
        (2, "canceled", None, None, False),
        (3, "missed", None, None, False),
        (4, "saved", None, None, False),
    ]
    assert issues(con) == []


# --- cancellations --------------------------------------------------------------------------


def test_cancellations_explode_one_row_per_entry(con) -> None:
    sessions(
        con,
        {"id": "1", "cancel_clients": "76|2328|479889,49|2329|479895"},
        {"id": "2", "cancel_clients": " 76 | 2328 | 479889 ,  49|2329|0 "},
        {"id": "3", "cancel_clients": ",,76|2328|479889,, 49|2329|479895,"},
        {"id": "4", "cancel_clients": ""},
        {"id": "5", "cancel_clients": "  "},
        {"id": "6", "cancel_clients": None},
        {"id": "7", "cancel_clients": ","},
    )
    run_transforms(con)
    assert con.execute(
        in_order("select * exclude (account) from analytics.session_cancellations")
    ).fetchall() == [
        (1, 1, 76, 2328, 479889),
        (1, 2, 49, 2329, 479895),
        (2, 1, 76, 2328, 479889),
        (2, 2, 49, 2329, None),  # temp session 0 means none
        (3, 1, 76, 2328, 479889),  # position counts non-empty entries only
        (3, 2, 49, 2329, 479895),
    ]
    assert issues(con) == []


def test_malformed_cancellation_entries_keep_a_row_and_are_reported(con) -> None:
    sessions(con, {"id": "7", "cancel_clients": "76|2328, 1|2|3|4 ,a|2|3,5||7,garbage,8|9|10"})
    run_transforms(con)
    assert con.execute(
        in_order("select * exclude (account) from analytics.session_cancellations")
    ).fetchall() == [
        (7, 1, 76, 2328, None),  # two parts: read by position
        (7, 2, 1, 2, 3),  # four parts: the first three by position
        (7, 3, None, 2, 3),  # a part that is not an integer
        (7, 4, 5, None, 7),  # an empty part
        (7, 5, None, None, None),
        (7, 6, 8, 9, 10),  # a good entry after bad ones is unaffected
    ]
    problem = "malformed cancellation entry"
    assert issues(con) == [
        ("bizstim", "session", "7", "cancel_clients", "1|2|3|4", problem),
        ("bizstim", "session", "7", "cancel_clients", "5||7", problem),
        ("bizstim", "session", "7", "cancel_clients", "76|2328", problem),
        ("bizstim", "session", "7", "cancel_clients", "a|2|3", problem),
        ("bizstim", "session", "7", "cancel_clients", "garbage", problem),
    ]


def test_a_huge_cancel_clients_explodes_within_the_default_memory_limit(con) -> None:
    # 50,000 entries (1.2 million characters) in one session, with empty and malformed entries,
    # beside a small one. A lateral UNNEST once needed memory ~ entries x length and died here.
    con.execute("set memory_limit = '512MB'")
    entries = [f"{100_000 + i}|{1_000_000 + i}|{10_000_000 + i}" for i in range(1, 50_001)]
    entries[999] = "bad|1|2"
    value = " ,".join(entries[:25_000]) + ",,  ," + ",".join(entries[25_000:]) + ","
    sessions(con, {"id": "1", "cancel_clients": value}, {"id": "2", "cancel_clients": "4|5|6"})
    counts = run_transforms(con)
    assert counts["session_cancellations"] == 50_001
    assert con.execute(
        "select count(*), min(position), max(position), count(distinct position), "
        "count(*) filter (where client_id is null) from analytics.session_cancellations "
        "where session_id = 1"
    ).fetchall() == [(50_000, 1, 50_000, 50_000, 1)]
    assert con.execute(
        "select * exclude (account) from analytics.session_cancellations where session_id = 1 "
        "and position in (1, 1000, 25001, 50000) order by position"
    ).fetchall() == [
        (1, 1, 100_001, 1_000_001, 10_000_001),
        (1, 1000, None, 1, 2),
        (1, 25_001, 125_001, 1_025_001, 10_025_001),  # the empty entries are not counted
        (1, 50_000, 150_000, 1_050_000, 10_050_000),
    ]
    assert con.execute(
        "select * exclude (account) from analytics.session_cancellations where session_id = 2"
    ).fetchall() == [(2, 1, 4, 5, 6)]
    assert issues(con) == [
        ("bizstim", "session", "1", "cancel_clients", "bad|1|2", "malformed cancellation entry")
    ]


# --- data issues ----------------------------------------------------------------------------

NULL_TIMES = {
    "local_start": None,
    "local_end": None,
    "start_utc": None,
    "end_utc": None,
    "duration_minutes": None,
    "is_start_in_dst_gap": None,
    "is_end_in_dst_gap": None,
}


@pytest.mark.parametrize(
    ("change", "field", "problem", "expected"),
    [
        (
            {"session_date": "0000-00-00"},
            "session_date",
            "not a valid date",
            {"session_date": None, **NULL_TIMES},
        ),
        (
            {"session_date": "2022-02-30"},
            "session_date",
            "not a valid date",
            {"session_date": None, **NULL_TIMES},
        ),
        (
            {"session_date": "28/04/2021"},
            "session_date",
            "not a valid date",
            {"session_date": None, **NULL_TIMES},
        ),
        (
            {"session_date": ""},
            "session_date",
            "missing date",
            {"session_date": None, **NULL_TIMES},
        ),
        (
            {"session_start_time": "25:00"},
            "session_start_time",
            "not a valid time",
            {
                "local_start": None,
                "start_utc": None,
                "local_end": datetime(2021, 4, 28, 18, 0),
                "end_utc": utc(2021, 4, 29, 1, 0),
                "duration_minutes": None,
                "is_overnight": None,
            },
        ),
        (
            {"session_end_time": "6pm"},
            "session_end_time",
            "not a valid time",
            {
                "local_end": None,
                "end_utc": None,
                "is_end_in_dst_gap": None,
                "start_utc": utc(2021, 4, 29, 0, 0),
                "duration_minutes": None,
            },
        ),
        (
            {"session_end_time": ""},
            "session_end_time",
            "missing time",
            {"local_end": None, "end_utc": None},
        ),
        ({"session_status": "7"}, "session_status", "unknown status code", {"status": None}),
        ({"session_status": ""}, "session_status", "unknown status code", {"status": None}),
        ({"client_id": "49x"}, "client_id", "not an integer", {"client_id": None}),
        ({"slots": "3.0"}, "slots", "not an integer", {"slots": None}),
        ({"location_id": "1e3"}, "location_id", "not an integer", {"location_id": None}),
        ({"temp": "none"}, "temp", "not an integer", {"temp_session_id": None}),
        ({"confirmed": "yes"}, "confirmed", "not a 0/1 flag", {"is_confirmed": None}),
        ({"session_sms": ""}, "session_sms", "not a 0/1 flag", {"has_sms_sent": None}),
        (
            {"assessment_present": "2"},
            "assessment_present",
            "not a 0/1 flag",
            {"has_assessment": None},
        ),
        (
            {"timezone": "Mars/Olympus"},
            "timezone",
            "unknown time zone",
            {
                "timezone": "Mars/Olympus",
                "local_start": datetime(2021, 4, 28, 17, 0),
                "start_utc": None,
                "end_utc": None,
                "duration_minutes": None,
                "is_start_in_dst_gap": None,
                "is_end_in_dst_overlap": None,
            },
        ),
        ({"timezone": ""}, "timezone", "unknown time zone", {"start_utc": None}),
        # no zone in the answer: the instants were NULL with no issue
        (
            {"timezone": None},
            "timezone",
            "missing time zone",
            {"local_start": datetime(2021, 4, 28, 17, 0), "start_utc": None, "end_utc": None},
        ),
        # beyond INTEGER: parse_int read it, the cast to INTEGER made it NULL with no issue
        ({"slots": "3000000000"}, "slots", "integer out of range", {"slots": None}),
        # year 0000 was read as 1 BC
        (
            {"session_date": "0000-01-01"},
            "session_date",
            "not a valid date",
            {"session_date": None, "start_utc": None},
        ),
    ],
)
def test_each_bad_value_gives_null_and_one_issue(con, change, field, problem, expected) -> None:
    sessions(con, change)
    run_transforms(con)

    row = one_session(con)
    assert row["session_id"] == 1135  # the session is still there
    assert {key: row[key] for key in expected} == expected
    assert issues(con) == [("bizstim", "session", "1135", field, change[field], problem)]


def test_garbage_id_keeps_the_row_and_reports_the_raw_id(con) -> None:
    sessions(con, {"id": "11a5"})
    run_transforms(con)
    assert one_session(con)["session_id"] is None
    assert issues(con) == [("bizstim", "session", "11a5", "id", "11a5", "not an integer")]


def test_one_id_spelled_three_ways_is_one_session(con) -> None:
    """dlt keeps '7', ' 7' and '007' as three records (ids are text); as three version groups
    they were three current rows of session 7, and the key test rolled back every night's
    build. One session: the latest current version wins, the others are its history."""
    sessions(
        con,
        {"id": "7", "session_status": "1"},
        {"id": "007", "session_status": "0", "_dlt_valid_from": LOAD_2, "_dlt_load_id": "2"},
        {"id": " 7", "session_status": "2", "_dlt_valid_from": LOAD_1, "_dlt_load_id": "0"},
    )
    run_transforms(con)
    assert fetch_dicts(con, "select session_id, status from analytics.sessions") == [
        {"session_id": 7, "status": "open"}
    ]
    assert con.execute(
        "select version_number, status, is_current from analytics.session_history "
        "order by version_number"
    ).fetchall() == [(1, "missed", False), (2, "canceled", False), (3, "open", True)]
    assert issues(con) == []


def test_an_empty_id_is_reported(con) -> None:
    sessions(con, {"id": ""})
    run_transforms(con)
    assert one_session(con)["session_id"] is None
    assert issues(con) == [("bizstim", "session", "", "id", "", "not an integer")]


def test_empty_and_missing_optional_values_are_silent(con) -> None:
    sessions(
        con,
        {
            "client_id": "",
            "wage_id": "",
            "temp": "",
            "qb_invoice_id": "",
            "class_id": None,
            "custom_map_id": " ",
            "pract_id": None,
            "confirmed": None,
            "session_note": None,
        },
    )
    run_transforms(con)
    row = one_session(con)
    assert [row[key] for key in ("client_id", "wage_id", "temp_session_id", "qb_invoice_id")] == [
        None,
        None,
        None,
        None,
    ]
    assert [
        row[key] for key in ("class_id", "custom_map_id", "practitioner_id", "is_confirmed")
    ] == [
        None,
        None,
        None,
        None,
    ]
    assert issues(con) == []


def test_several_problems_in_one_session_are_each_reported(con) -> None:
    sessions(con, {"session_date": "0000-00-00", "client_id": "x", "display": "maybe"})
    run_transforms(con)
    assert issues(con) == [
        ("bizstim", "session", "1135", "client_id", "x", "not an integer"),
        ("bizstim", "session", "1135", "display", "maybe", "not a 0/1 flag"),
        ("bizstim", "session", "1135", "session_date", "0000-00-00", "not a valid date"),
    ]


def test_ingest_issues_become_data_issues(con) -> None:
    sessions(
        con,
        {
            "id": "1",
            "session_note": "caf\ufffd",
            "_ingest_issues": '[{"field": "session_note", "value": "caf\\ufffd", '
            '"problem": "invalid UTF-8 replaced"}, {"field": "slots", "value": 12, '
            '"problem": "a number instead of a string"}]',
        },
        {"id": "2", "_ingest_issues": "[]"},
        {"id": "3", "_ingest_issues": "not json"},
        # What the extractor keeps of a row that was not a JSON object at all.
        {
            **dict.fromkeys(SESSION),
            "_ingest_issues": '[{"field": "", "value": "[1]", "problem": "session is not a JSON object"}]',
        },
    )
    run_transforms(con)

    assert con.execute(in_order("select session_id from analytics.sessions")).fetchall() == [
        (1,),
        (2,),
        (3,),
        (None,),
    ]
    assert issues(con) == [
        ("bizstim", "session", "1", "session_note", "caf\ufffd", "invalid UTF-8 replaced"),
        ("bizstim", "session", "1", "slots", "12", "a number instead of a string"),
        (
            "bizstim",
            "session",
            "3",
            "_ingest_issues",
            "not json",
            "unreadable list of ingest issues",
        ),
        ("bizstim", "session", None, "", "[1]", "session is not a JSON object"),
    ]


# --- times ----------------------------------------------------------------------------------


def test_overnight_sessions_end_the_next_day(con) -> None:
    sessions(
        con,
        {
            "id": "1",
            "session_date": "2021-06-01",
            "session_start_time": "22:30",
            "session_end_time": "01:00",
        },
        {
            "id": "2",
            "session_date": "2021-06-01",
            "session_start_time": "09:00",
            "session_end_time": "10:15:00",
        },
        {
            "id": "3",
            "session_date": "2021-06-01",
            "session_start_time": "09:00",
            "session_end_time": "09:00",
        },
        {
            "id": "4",
            "session_date": "2021-12-31",
            "session_start_time": "23:00",
            "session_end_time": "00:00",
        },
    )
    run_transforms(con)
    rows = con.execute(
        in_order("""select session_id, local_start, local_end, start_utc, end_utc, duration_minutes, is_overnight
        from analytics.sessions""")
    ).fetchall()
    assert rows == [
        (
            1,
            datetime(2021, 6, 1, 22, 30),
            datetime(2021, 6, 2, 1, 0),
            utc(2021, 6, 2, 5, 30),
            utc(2021, 6, 2, 8, 0),
            150,
            True,
        ),
        (
            2,
            datetime(2021, 6, 1, 9, 0),
            datetime(2021, 6, 1, 10, 15),
            utc(2021, 6, 1, 16, 0),
            utc(2021, 6, 1, 17, 15),
            75,
            False,
        ),
        (
            3,
            datetime(2021, 6, 1, 9, 0),
            datetime(2021, 6, 1, 9, 0),
            utc(2021, 6, 1, 16, 0),
            utc(2021, 6, 1, 16, 0),
            0,
            False,
        ),
        (
            4,
            datetime(2021, 12, 31, 23, 0),
            datetime(2022, 1, 1, 0, 0),
            utc(2022, 1, 1, 7, 0),
            utc(2022, 1, 1, 8, 0),
            60,
            True,
        ),
    ]


def test_duration_is_real_elapsed_time_across_dst_changes(con) -> None:
    sessions(
        con,
        # Clocks jump 02:00 -> 03:00: three wall-clock hours last two real hours.
        {
            "id": "1",
            "session_date": "2021-03-14",
            "session_start_time": "01:00",
            "session_end_time": "04:00",
        },
        # Starts in the gap: 02:30 does not exist and is read as 03:30 PDT (10:30 UTC).
        {
            "id": "2",
            "session_date": "2021-03-14",
            "session_start_time": "02:30",
            "session_end_time": "04:00",
        },
        # Ends in the overlap: the second 01:15 (PST) is the one taken.
        {
            "id": "3",
            "session_date": "2021-11-06",
            "session_start_time": "23:30",
            "session_end_time": "01:15",
        },
    )
    run_transforms(con)
    rows = con.execute(
        in_order("""select session_id, start_utc, end_utc, duration_minutes, is_start_in_dst_gap,
            is_start_in_dst_overlap, is_end_in_dst_gap, is_end_in_dst_overlap
        from analytics.sessions""")
    ).fetchall()
    assert rows == [
        (1, utc(2021, 3, 14, 9, 0), utc(2021, 3, 14, 11, 0), 120, False, False, False, False),
        (2, utc(2021, 3, 14, 10, 30), utc(2021, 3, 14, 11, 0), 30, True, False, False, False),
        (3, utc(2021, 11, 7, 6, 30), utc(2021, 11, 7, 9, 15), 165, False, False, False, True),
    ]


def test_timezone_name_casing_is_tolerated(con) -> None:
    sessions(con, {"timezone": "america/los_angeles"})
    run_transforms(con)
    row = one_session(con)
    assert (row["timezone"], row["start_utc"]) == ("America/Los_Angeles", utc(2021, 4, 29, 0, 0))
    assert issues(con) == []


@pytest.mark.parametrize(
    ("pract_id", "pract_d", "expected", "issue"),
    [
        ("354", None, 354, None),
        (None, "7", 7, None),
        ("", "7", 7, None),
        ("354", "7", 354, None),  # both filled: pract_id, the one the examples use, wins
        (None, None, None, None),
        (None, "x", None, ("pract_d", "x")),
        ("y", "7", None, ("pract_id", "y")),
    ],
)
def test_practitioner_from_pract_id_or_pract_d(con, pract_id, pract_d, expected, issue) -> None:
    sessions(con, {"pract_id": pract_id, "pract_d": pract_d})
    run_transforms(con)
    assert one_session(con)["practitioner_id"] == expected
    want = [("bizstim", "session", "1135", *issue, "not an integer")] if issue else []
    assert issues(con) == want


def test_results_do_not_depend_on_the_connection_time_zone() -> None:
    results = []
    for zone in ("UTC", "Pacific/Chatham", "America/St_Johns"):
        with duckdb.connect() as con:
            con.execute(f"set TimeZone = '{zone}'")
            sessions(
                con,
                {"id": "1"},
                {"id": "2", "session_date": "2021-03-14", "session_start_time": "02:30"},
                {
                    "id": "3",
                    "session_date": "2021-11-06",
                    "session_start_time": "23:30",
                    "session_end_time": "01:15",
                },
            )
            run_transforms(con)
            results.append(fetch_dicts(con, "select * exclude (account) from analytics.sessions"))
    assert results[0] == results[1] == results[2]


# --- versions -------------------------------------------------------------------------------


def test_sessions_hold_current_versions_and_history_holds_all(con) -> None:
    sessions(
        con,
        # Session 10 changed: an old version (with a bad value, not re-reported) and the current.
        {"id": "10", "session_status": "0", "client_id": "bad", "_dlt_valid_to": LOAD_2},
        {"id": "10", "session_status": "3", "_dlt_valid_from": LOAD_2, "_dlt_load_id": "2"},
        # Session 11 vanished upstream: only a closed version.
        {"id": "11", "session_status": "9", "_dlt_valid_to": LOAD_2},
        # Session 12 has two current rows (should not happen): the latest wins.
        {"id": "12", "session_description": "older"},
        {
            "id": "12",
            "session_description": "newer",
            "_dlt_valid_from": LOAD_2,
            "_dlt_load_id": "2",
        },
    )
    counts = run_transforms(con)

    assert counts["sessions"] == 2
    assert counts["session_history"] == 5
    assert con.execute(
        in_order("select session_id, status, description, valid_from from analytics.sessions")
    ).fetchall() == [(10, "saved", "Test Session", LOAD_2), (12, "saved", "newer", LOAD_2)]
    assert con.execute(
        in_order("""select session_id, version_number, status, description, valid_from, valid_to,
            is_current, is_deleted
        from analytics.session_history""")
    ).fetchall() == [
        (10, 1, "open", "Test Session", LOAD_1, LOAD_2, False, False),
        (10, 2, "saved", "Test Session", LOAD_2, None, True, False),
        (11, 1, None, "Test Session", LOAD_1, LOAD_2, False, True),
        (12, 1, "saved", "older", LOAD_1, None, False, False),
        (12, 2, "saved", "newer", LOAD_2, None, True, False),
    ]
    history = fetch_dicts(
        con, "select * exclude (account) from analytics.session_history where session_id = 10"
    )
    assert history[0]["session_date"] == date(2021, 4, 28)
    assert history[0]["start_utc"] == utc(2021, 4, 29, 0, 0)
    assert issues(con) == []  # only current versions are reported


def test_cancellations_come_from_the_current_version_only(con) -> None:
    sessions(
        con,
        {"id": "1", "cancel_clients": "1|2|3,bad", "_dlt_valid_to": LOAD_2},
        {"id": "1", "cancel_clients": "4|5|6", "_dlt_valid_from": LOAD_2},
    )
    run_transforms(con)
    assert con.execute(
        in_order("select * exclude (account) from analytics.session_cancellations")
    ).fetchall() == [(1, 1, 4, 5, 6)]
    assert issues(con) == []


# --- the runner -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "broken_sql",
    [
        "create or replace table analytics.zz_broken as select * from no_such_table;",
        # Replaces a real table first, then fails: the replacement must be undone too.
        "create or replace table analytics.sessions as select 1 as x;\nselect error('boom');",
        "create or replace tabel analytics.zz_broken as select 1;",
    ],
)
def test_a_failing_transform_leaves_the_previous_tables(
    con, tmp_path: Path, broken_sql: str
) -> None:
    sessions(con, {"id": "1", "client_id": "bad"})
    run_transforms(con)
    before = {
        table: con.execute(f"select * from analytics.{table} order by all").fetchall()
        for table in ("sessions", "session_history", "session_cancellations", "data_issues")
    }

    sessions(con, {"id": "2", "cancel_clients": "1|2|3"})
    broken = tmp_path / "transforms"
    shutil.copytree(TRANSFORMS_DIR, broken, ignore=shutil.ignore_patterns("__pycache__"))
    (broken / "marts" / "zz_broken.sql").write_text(broken_sql)
    with pytest.raises(duckdb.Error) as failure:
        run_transforms(con, transforms_dir=broken)
    assert "while running transform marts/zz_broken.sql" in getattr(failure.value, "__notes__", [])

    after = {
        table: con.execute(f"select * from analytics.{table} order by all").fetchall()
        for table in before
    }
    assert after == before
    tables = {
        row[0]
        for row in con.execute(
            "select table_name from information_schema.tables where table_schema = 'analytics'"
        ).fetchall()
    }
    assert "zz_broken" not in tables

    # No transaction is left open: the next good run works and sees the new session.
    assert run_transforms(con)["sessions"] == 2


def test_absent_sources_are_skipped(con) -> None:
    assert run_transforms(con) == {"data_issues": 0}
    tables = con.execute(
        "select table_name from information_schema.tables where table_schema = 'analytics'"
    ).fetchall()
    assert tables == [("data_issues",)]


def test_data_issues_only_hold_sources_still_present(con) -> None:
    sessions(con, {"client_id": "bad"})
    run_transforms(con)
    assert len(issues(con)) == 1
    con.execute("drop table bizstim.sessions")
    assert run_transforms(con) == {"data_issues": 0}
    assert issues(con) == []


def test_runs_are_repeatable(con) -> None:
    sessions(con, {"cancel_clients": "1|2|3"})
    first = run_transforms(con)
    assert run_transforms(con) == first
    assert con.execute("select count(*) from analytics.session_cancellations").fetchall() == [(1,)]


def test_required_tables_are_read_from_the_leading_comments() -> None:
    sql = "-- requires: bizstim.sessions\n--\n-- requires: a.b, c.d\nselect 1;\n-- requires: x.y\n"
    assert required_tables(sql) == ["bizstim.sessions", "a.b", "c.d"]
    assert required_tables("select 1") == []


def test_transform_files_run_setup_then_staging_then_marts() -> None:
    files = [path.relative_to(TRANSFORMS_DIR).as_posix() for path in sql_files(TRANSFORMS_DIR)]
    assert files[:2] == ["00_analytics_schema.sql", "01_macros.sql"]
    stages = [name.split("/")[0] if "/" in name else "setup" for name in files]
    assert stages == sorted(stages, key=["setup", "staging", "marts"].index)
    assert "marts/sessions.sql" in files
    assert (TRANSFORMS_DIR / "__init__.py").exists()
