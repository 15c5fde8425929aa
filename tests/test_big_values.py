"""One huge value must not cost anyone their analytics: the real CLI, default memory limit.

A session whose cancel_clients holds 50,000 entries (1.2 million characters) used to make the
analytics rebuild run out of memory (a lateral UNNEST copied the whole value into every exploded
row, so memory grew with entries x length). It must load exactly, and change nothing for the
other sessions. TimeTap's service_ids and reason_list lists are exploded the same way.
"""

from __future__ import annotations

import json

import duckdb
import pytest
from conftest import Env
from transform_fixtures import packages

from practice_sync.simulator import Simulator
from practice_sync.transform import run_transforms

ENTRIES = 50_000


Row = tuple[int, int | None, int | None, int | None]


def huge_cancel_clients() -> tuple[str, list[Row], list[str]]:
    """The value, the expected (position, client_id, client_due_id, temp_session_id) rows, and
    the malformed entries. Spaces, empty entries and malformed entries are sprinkled in."""
    pieces: list[str] = []
    expected: list[Row] = []
    malformed: list[str] = []
    for position in range(1, ENTRIES + 1):
        client, due, temp = 100_000 + position, 1_000_000 + position, 10_000_000 + position
        if position % 1000 == 7:  # a part that is not an integer
            pieces.append(f"x{client}|{due}|{temp}")
            expected.append((position, None, due, temp))
            malformed.append(pieces[-1])
        elif position % 1000 == 8:  # a part missing
            pieces.append(f" {client}|{due}")
            expected.append((position, client, due, None))
            malformed.append(pieces[-1].strip())
        elif position % 100 == 0:  # spaces around the entry and its parts; temp 0 -> NULL
            pieces.append(f"  {client} | {due} |0 ")
            expected.append((position, client, due, None))
        else:
            pieces.append(f"{client}|{due}|{temp}")
            expected.append((position, client, due, temp))
        if position % 500 == 0:  # empty entries do not count for position
            pieces.append(" ")
            pieces.append("")
    pieces.append("")  # a trailing comma
    return ",".join(pieces), expected, malformed


def cancellations_except(env: Env, session_id: int) -> list[tuple]:
    return env.query(
        "select * exclude (account) from analytics.session_cancellations where session_id <> ? "
        "order by session_id, position",
        [session_id],
    )


def issues_except(env: Env, record_id: str) -> list[tuple]:
    return env.query(
        "select * exclude (account) from analytics.data_issues where record_id <> ? order by all",
        [record_id],
    )


def test_a_session_with_50000_cancellations_loads_exactly(sim: Simulator, env: Env) -> None:
    first = env.run("run")
    assert first.code == 0, first.stderr
    session = next(r for r in sim.bizstim.rows() if r["cancel_clients"].strip())["id"]
    session_id = int(session)
    others = cancellations_except(env, session_id)
    other_issues = issues_except(env, session)
    sessions_before = env.query("select count(*) from analytics.sessions")
    assert others  # the simulator has other cancellations to compare

    value, expected, malformed = huge_cancel_clients()
    assert len(value) > 1_000_000
    sim.bizstim.edit(session, cancel_clients=value)

    result = env.run("run")
    assert result.code == 0, result.stderr

    # the value is loaded in full, and reported as unusually long
    assert env.query(
        "select length(cancel_clients), cancel_clients = ? from bizstim.sessions "
        "where id = ? and _dlt_valid_to is null",
        [value, session],
    ) == [(len(value), True)]
    assert env.query(
        "select problem from analytics.data_issues where record_id = ? and field = 'cancel_clients' "
        "and problem like 'unusually long value%'",
        [session],
    ) == [(f"unusually long value ({len(value):,} characters), loaded in full",)]

    rows = env.query(
        "select position, client_id, client_due_id, temp_session_id "
        "from analytics.session_cancellations where session_id = ? order by position",
        [session_id],
    )
    assert len(rows) == ENTRIES
    assert rows[0] == (1, 100_001, 1_000_001, 10_000_001)
    assert rows[-1] == (ENTRIES, 100_000 + ENTRIES, 1_000_000 + ENTRIES, None)
    assert rows == expected
    # each malformed entry, as delivered (trimmed), is a data issue
    assert len(malformed) == 100
    reported = env.query(
        "select value from analytics.data_issues where record_id = ? "
        "and problem = 'malformed cancellation entry' order by value",
        [session],
    )
    assert reported == [(entry,) for entry in sorted(malformed)]

    # nobody else lost anything
    assert cancellations_except(env, session_id) == others
    assert issues_except(env, session) == other_issues
    assert env.query("select count(*) from analytics.sessions") == sessions_before


def test_a_value_over_100000_characters_loads_in_full(sim: Simulator, env: Env) -> None:
    # 4,000 entries, 96,000+ characters: the size from the issue that stopped every night's build;
    # plus a note over 100,000 characters.
    value = ",".join(f"{100_000 + i}|{1_000_000 + i}|{10_000_000 + i}" for i in range(4_000))
    note = "n" * 150_000
    session = sim.bizstim.add(
        {"id": "900100", "cancel_clients": value, "session_note": note, "multi": "1"}
    )
    result = env.run("run")
    assert result.code == 0, result.stderr
    assert env.query(
        "select length(note) from analytics.sessions where session_id = ?", [int(session)]
    ) == [(150_000,)]
    assert env.query(
        "select session_note = ?, cancel_clients = ? from bizstim.sessions where id = ?",
        [note, value, session],
    ) == [(True, True)]
    assert env.query(
        "select count(*), min(position), max(position), count(client_id), "
        "max_by(client_id, position) from analytics.session_cancellations where session_id = ?",
        [int(session)],
    ) == [(4_000, 1, 4_000, 4_000, 103_999)]


# --- TimeTap lists, on an in-memory warehouse with the pipeline's default memory limit ---------


@pytest.fixture
def con() -> duckdb.DuckDBPyConnection:
    connection = duckdb.connect()
    connection.execute("set memory_limit = '512MB'")
    yield connection
    connection.close()


def test_50000_service_ids_in_one_package(con) -> None:
    services = list(range(1_000_000, 1_000_000 + ENTRIES))
    services[10] = "x"
    packages(con, {"package_id": "1", "service_ids": json.dumps(services)}, {"package_id": "2"})
    counts = run_transforms(con)
    assert counts["package_services"] == ENTRIES - 1 + 2
    assert con.execute(
        "select count(*), min(service_id), max(service_id) from analytics.package_services "
        "where package_id = 1"
    ).fetchall() == [(ENTRIES - 1, 1_000_000, 1_000_000 + ENTRIES - 1)]
    assert con.execute(
        "select * exclude (account) from analytics.package_services where package_id = 2"
    ).fetchall() == [(2, 11), (2, 12)]
    assert con.execute(
        "select record_id, field, value, problem from analytics.data_issues"
    ).fetchall() == [("1", "service_ids", '"x"', "not an integer service id")]


def test_50000_reasons_in_one_package_keep_their_order(con) -> None:
    reasons: list[object] = [
        {"reasonId": 100_000 + i, "reasonDesc": f"Reason {i}"} for i in range(1, ENTRIES + 1)
    ]
    reasons[-1] = "oops"
    packages(con, {"package_id": "1", "reason_list": json.dumps(reasons)}, {"package_id": "2"})
    counts = run_transforms(con)
    assert counts["package_reasons"] == ENTRIES + 2
    assert con.execute(
        "select count(*), min(position), max(position), count(distinct position), "
        "count(*) filter (where reason_id = 100_000 + position) "
        "from analytics.package_reasons where package_id = 1"
    ).fetchall() == [(ENTRIES, 1, ENTRIES, ENTRIES, ENTRIES - 1)]
    assert con.execute(
        "select * exclude (account) from analytics.package_reasons where package_id = 1 "
        "and position in (1, 50000) order by position"
    ).fetchall() == [(1, 1, 100_001, "Reason 1"), (1, ENTRIES, None, None)]
    assert con.execute(
        "select * exclude (account) from analytics.package_reasons where package_id = 2"
    ).fetchall() == [(2, 1, 71, "Yoga"), (2, 2, 72, "Pilates")]
    assert con.execute(
        "select record_id, field, value, problem from analytics.data_issues"
    ).fetchall() == [("1", "reason_list", '"oops"', "malformed reason entry")]
