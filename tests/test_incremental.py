"""Incremental analytics (pipelines/incremental.py): a night's build updates the records that
changed, and its tables equal a full rebuild's, row for row; wherever an incremental build could
be wrong, the build is full and says why.

The unit part builds raw tables by hand (tests/transform_fixtures.py) on a real DuckDB; the end
of the file runs the real CLI against the simulator for several nights.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
from transform_fixtures import LOAD_2, packages, sessions

from practice_sync import incremental, serve
from practice_sync.errors import TransformFailed
from practice_sync.failpoints import ENV, POINTS
from practice_sync.transform import TRANSFORMS_DIR, Build, build_analytics


def tables(con: duckdb.DuckDBPyConnection) -> dict[str, list[tuple[Any, ...]]]:
    """Every analytics table's rows, sorted (an incremental build appends, so order differs)."""
    names = [
        name
        for (name,) in con.execute(
            "select table_name from duckdb_tables() where schema_name = 'analytics' order by 1"
        ).fetchall()
    ]
    return {
        name: con.execute(f"select * from analytics.{name} order by all").fetchall()
        for name in names
    }


def comments(con: duckdb.DuckDBPyConnection) -> list[tuple[Any, ...]]:
    return con.execute(
        "select table_name, column_name, comment from duckdb_columns() "
        "where schema_name = 'analytics' order by all"
    ).fetchall()


def equals_full_rebuild(con: duckdb.DuckDBPyConnection, build: Build) -> None:
    """The tables `build` left equal those a full rebuild makes of the same raw rows."""
    after, notes = tables(con), comments(con)
    full = build_analytics(con, full="test")
    assert not any(d.incremental for d in full.decisions)
    assert tables(con) == after
    assert comments(con) == notes
    assert full.counts == build.counts


def session(id_: str, **values: Any) -> dict[str, Any]:
    return {"id": id_, "_dlt_id": f"{id_}-{values.pop('version', 1)}", **values}


@pytest.fixture
def con(tmp_path: Path) -> duckdb.DuckDBPyConnection:
    connection = duckdb.connect(str(tmp_path / "w.duckdb"))
    sessions(
        connection,
        session("1", cancel_clients="76|2328|479889,49|2329|479895"),
        session("2", session_status="9"),  # a data issue
        session(
            "3", session_date="2024-03-10", session_start_time="02:30", timezone="America/New_York"
        ),
        session("4"),
        session("5", cancel_clients="7|8|0"),
        *(session(str(100 + n)) for n in range(30)),  # the rest of the warehouse
    )
    packages(connection, {"package_id": "10"})
    first = build_analytics(connection)
    assert [(d.family.raw, d.incremental, d.reason) for d in first.decisions] == [
        ("bizstim.sessions", False, "first build")
    ]
    return connection


def retire(con: duckdb.DuckDBPyConnection, id_: str) -> None:
    con.execute(
        "update bizstim.sessions set _dlt_valid_to = ? where id = ? and _dlt_valid_to is null",
        [LOAD_2, id_],
    )


def a_night(con: duckdb.DuckDBPyConnection) -> None:
    """Edited (1: its cancellations cleared; 2: its bad status fixed), deleted (4), new (6)."""
    for id_ in ("1", "2", "4"):
        retire(con, id_)
    second = {"_dlt_load_id": "2", "_dlt_valid_from": LOAD_2, "version": 2}
    sessions(
        con,
        session("1", cancel_clients="", **second),
        session("2", session_status="1", **second),
        session("6", cancel_clients="1|2|3", _dlt_load_id="2", _dlt_valid_from=LOAD_2),
    )


def test_a_night_updates_only_the_changed_sessions_and_equals_a_full_rebuild(con) -> None:
    before = tables(con)
    a_night(con)
    build = build_analytics(con)
    [decision] = build.decisions
    assert decision.incremental and decision.changed == 4  # sessions 1, 2, 4 and 6
    assert build.summary == "incremental (bizstim.sessions: 4 records changed)"
    after = tables(con)
    assert after != before
    ids = {row[0] for row in after["sessions"]}
    assert ids == {1, 2, 3, 5, 6, *range(100, 130)}
    # session 1 lost its cancellations, 6 gained one, 5 kept its own
    assert sorted((r[0], r[2]) for r in after["session_cancellations"]) == [(5, 7), (6, 1)]
    # session 2's status problem is gone with its new version; 3's row stays as it was
    assert [r[2] for r in after["data_issues"]] == []
    history = {(r[0], r[1]): r for r in after["session_history"]}
    assert history[(4, 1)][-2] is True  # is_deleted
    assert history[(1, 2)][-3] is True and history[(1, 1)][-3] is False  # is_current
    equals_full_rebuild(con, build)


def test_a_night_without_changes_changes_nothing(con) -> None:
    before = tables(con)
    build = build_analytics(con)
    assert build.summary == "incremental (bizstim.sessions: 0 records changed)"
    assert tables(con) == before


def test_several_nights_in_a_row_stay_equal_to_full_rebuilds(con) -> None:
    a_night(con)
    equals_full_rebuild(con, build_analytics(con))
    for night in range(3, 6):
        retire(con, "3")
        moment = LOAD_2 + timedelta(days=night)
        sessions(
            con,
            session("3", session_note=f"night {night}", _dlt_load_id=str(night),
                    _dlt_valid_from=moment, version=night),
            session(str(10 + night), _dlt_load_id=str(night), _dlt_valid_from=moment),
        )  # fmt: skip
        build = build_analytics(con)
        assert build.decisions[0].incremental and build.decisions[0].changed == 2
        equals_full_rebuild(con, build)


def test_a_vendor_field_named_r_hides_no_change(con) -> None:
    """dlt adds a new vendor field as a raw column. The row hash once named the row `r`, so a
    field `r` was hashed instead of the row and every later change went unseen."""
    con.execute("alter table bizstim.sessions add column r varchar")
    assert not build_analytics(con).decisions[0].incremental  # every row's hash moved
    retire(con, "4")  # gone upstream
    con.execute("update bizstim.sessions set session_note = 'edited in place' where id = '5'")
    build = build_analytics(con)
    assert build.decisions[0].incremental and build.decisions[0].changed == 2
    assert 4 not in {row[0] for row in tables(con)["sessions"]}
    equals_full_rebuild(con, build)


def test_a_non_canonical_id_makes_the_family_build_in_full(con) -> None:
    sessions(con, session("012"), session(" 7 "))
    build = build_analytics(con)
    assert (
        build.summary
        == "full (bizstim.sessions: 2 new raw rows of bizstim.sessions fail incremental_if)"
    )
    equals_full_rebuild(con, build)
    # the state remembers them: every later night is full too, until they are gone
    sessions(con, session("8", _dlt_load_id="2"))
    assert build_analytics(con).summary == "full (bizstim.sessions: 2 raw rows fail incremental_if)"


def test_a_session_gone_from_the_raw_table_makes_the_build_full(con) -> None:
    con.execute("delete from bizstim.sessions where id = '4'")
    build = build_analytics(con)
    assert build.summary == "full (bizstim.sessions: 1 records vanished from the raw table)"
    assert 4 not in {row[0] for row in tables(con)["sessions"]}


def test_a_row_copied_twice_makes_the_build_full(con) -> None:
    con.execute("insert into bizstim.sessions select * from bizstim.sessions where id = '5'")
    build = build_analytics(con)
    assert build.summary == "full (bizstim.sessions: raw rows were copied or removed)"


def test_changed_transforms_make_the_build_full(con, tmp_path: Path) -> None:
    folder = edited_transforms(tmp_path, "marts/sessions.sql", "\nselect", "\n\nselect")
    build = build_analytics(con, folder)
    assert (
        build.summary == "full (bizstim.sessions: the transforms, the contract or DuckDB changed)"
    )
    # and the next night with the same files is incremental again
    a_night(con)
    assert build_analytics(con, folder).decisions[0].incremental


def test_most_rows_changed_builds_in_full(con) -> None:
    for n in range(10):
        retire(con, str(100 + n))
    build = build_analytics(con)
    assert build.summary == "full (bizstim.sessions: 10 of 35 raw rows changed)"
    equals_full_rebuild(con, build)


def test_a_failing_build_rolls_back_analytics_and_state_together(con, tmp_path: Path) -> None:
    folder = tmp_path / "transforms"
    shutil.copytree(TRANSFORMS_DIR, folder, ignore=shutil.ignore_patterns("__pycache__"))
    build_analytics(con, folder)  # the copy's state
    before = tables(con)
    rows = con.execute(
        f'select * from {incremental.STATE}."rows__raw_bizstim__sessions" order by all'
    ).fetchall()
    a_night(con)
    contract = folder / "marts" / "sessions.yml"
    contract.write_text(
        contract.read_text().replace("values: [open, canceled, missed, saved]", "values: [open]")
    )
    with pytest.raises(TransformFailed):
        build_analytics(con, folder)
    assert tables(con) == before
    saved = con.execute(
        f'select * from {incremental.STATE}."rows__raw_bizstim__sessions" order by all'
    ).fetchall()
    assert saved == rows
    contract.write_text(
        contract.read_text().replace("values: [open]", "values: [open, canceled, missed, saved]")
    )
    build = build_analytics(con, folder)
    equals_full_rebuild(con, build)


def edited_transforms(tmp_path: Path, file: str, old: str, new: str) -> Path:
    """A copy of the project's transforms with `old` replaced by `new` in one file."""
    folder = tmp_path / "transforms"
    shutil.copytree(TRANSFORMS_DIR, folder, ignore=shutil.ignore_patterns("__pycache__"))
    edited = folder / file
    text = edited.read_text()
    assert old in text, f"{file} no longer holds {old!r}"
    edited.write_text(text.replace(old, new))
    return folder


def test_relationship_findings_follow_the_changed_keys_and_equal_a_full_rebuild(
    con, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The relationships test of a table rewritten in part looks at the rewritten keys only
    (contract_checks._narrowed); its findings must still be a full rebuild's, night after
    night. Here `sessions` leaves out odd ids, so the cancellations of odd sessions point at
    no session: 1 has two, 5 has one."""
    from practice_sync import contract_checks

    folder = edited_transforms(
        tmp_path,
        "marts/sessions.sql",
        "    where is_current\n",
        "    where is_current and session_id % 2 = 0\n",
    )
    narrowed: list[str] = []
    report = contract_checks._report

    def spy(
        con: Any, table: Any, test: Any, where: str, narrow: Any = None, clear: bool = True
    ) -> None:
        if narrow is not None:
            narrowed.append(table.name)
        report(con, table, test, where, narrow, clear)

    monkeypatch.setattr(contract_checks, "_report", spy)

    def findings() -> list[tuple[Any, ...]]:
        return con.execute(
            "select record_id, value from analytics.data_issues "
            "where problem like 'relationships test%' order by all"
        ).fetchall()

    def equal_to_full(build: Build) -> None:
        after = tables(con)
        full = build_analytics(con, folder, full="test")
        assert not any(d.incremental for d in full.decisions)
        assert tables(con) == after

    assert not build_analytics(con, folder).decisions[0].incremental  # new files: full
    assert findings() == [("1:1", "1"), ("1:2", "1"), ("5:1", "5")]
    a_night(con)  # 1 loses its cancellations; 6 (even) gains one
    build = build_analytics(con, folder)
    assert build.decisions[0].incremental
    assert findings() == [("5:1", "5")]
    equal_to_full(build)
    retire(con, "5")
    sessions(
        con,
        session("5", cancel_clients="7|8|0,9|9|0", session_note="edited", _dlt_load_id="3",
                _dlt_valid_from=LOAD_2 + timedelta(days=1), version=3),
        session("7", cancel_clients="1|1|0", _dlt_load_id="3",
                _dlt_valid_from=LOAD_2 + timedelta(days=1)),
    )  # fmt: skip
    narrowed.clear()
    build = build_analytics(con, folder)
    assert build.decisions[0].incremental
    assert narrowed == ["session_cancellations"]
    assert findings() == [("5:1", "5"), ("5:2", "5"), ("7:1", "7")]
    equal_to_full(build)


@pytest.mark.parametrize(
    ("file", "old", "new", "refusal"),
    [
        (
            "marts/sessions.sql",
            "valid_from,\n        account",
            "current_timestamp as valid_from,\n        account",
            "marts/sessions.sql reads the clock",
        ),
        (
            "marts/session_history.sql",
            "-- incremental_key: session_id\n",
            "",
            "session_history.sql depends on an incremental model",
        ),
        (
            "staging/stg_bizstim__sessions.sql",
            "incremental_by: id",
            "incremental_by: record",
            "cannot name a column called 'record'",
        ),
        (
            "staging/stg_bizstim__sessions.sql",
            "incremental_by: id",
            "incremental_by: Record",
            "cannot name a column called 'Record'",
        ),
        (
            "marts/session_history.sql",
            "-- incremental_key: session_id\n",
            "-- incremental_key: sesion_id\n",
            "session_history: its `-- incremental_key:` names sesion_id, which stg_bizstim__",
        ),
    ],
    ids=[
        "a model reading the clock",
        "a mart without a key",
        "a record column named like the state",
        "the same name capitalised",
        "a key column the root does not have",
    ],
)
def test_a_family_the_incremental_build_cannot_keep_exact_is_refused(
    tmp_path: Path, file: str, old: str, new: str, refusal: str
) -> None:
    folder = edited_transforms(tmp_path, file, old, new)
    con = duckdb.connect()
    sessions(con, session("1"))
    with pytest.raises(incremental.IncrementalError, match=refusal):
        build_analytics(con, folder)


def a_mart(folder: Path, name: str, sql: str, columns: dict[str, str], **header: str) -> None:
    """Add a mart to a copy of the transforms: its SQL file and its contract."""
    (folder / "marts" / f"{name}.sql").write_text(sql)
    lines = [f"name: {name}", f"description: {name}.", "source: bizstim", "entity: session"]
    lines += [f"{key}: {value}" for key, value in header.items()]
    lines.append("columns:")
    for column, type_ in columns.items():
        lines += [f"  - name: {column}", f"    type: {type_}", f"    description: {column}."]
    (folder / "marts" / f"{name}.yml").write_text("\n".join(lines) + "\n")


def test_a_model_reading_a_familys_raw_table_beside_it_is_refused(tmp_path: Path) -> None:
    """On a night the family's raw view holds the changed records alone: a model outside the
    family reading it would count the night's changes, not the sessions."""
    folder = edited_transforms(tmp_path, "marts/sessions.sql", "", "")
    a_mart(
        folder,
        "session_counts",
        "-- requires: bizstim.sessions\n\ncreate or replace table analytics.session_counts as\n"
        "select account, count(distinct id) as seen from raw_bizstim__sessions group by account;\n",
        {"account": "VARCHAR", "seen": "BIGINT"},
        grain="account",
        key="[account]",
    )
    con = duckdb.connect()
    sessions(con, session("1"))
    with pytest.raises(incremental.IncrementalError, match="session_counts.sql reads bizstim"):
        build_analytics(con, folder)


def test_a_mart_written_another_way_is_rewritten_or_built_in_full(con, tmp_path: Path) -> None:
    """The schema quoted is the same statement; a statement the rewrite does not know (an
    update, here) makes the night full instead of running on the changed records alone."""
    folder = edited_transforms(
        tmp_path,
        "marts/sessions.sql",
        "create or replace table analytics.sessions as",
        'create or replace table "analytics"."sessions" as',
    )
    build_analytics(con, folder, full="test")
    a_night(con)
    build = build_analytics(con, folder)
    assert build.decisions[0].incremental and build.decisions[0].changed == 4
    equals_full_rebuild(con, build)
    history = folder / "marts" / "session_history.sql"
    history.write_text(
        history.read_text() + "\nupdate analytics.session_history set status = status where false;\n"
    )
    build_analytics(con, folder)  # full: the transforms changed
    retire(con, "3")
    sessions(con, session("3", session_note="later", _dlt_load_id="3", version=3))
    build = build_analytics(con, folder)
    assert build.summary == (
        "full (bizstim.sessions: session_history has a statement an incremental build cannot "
        "rewrite)"
    )
    assert len(tables(con)["sessions"]) == 35  # 1-3, 5, 6 and 30 others, not session 3 alone


def test_a_family_whose_mart_also_reads_another_model_builds_in_full(
    con, tmp_path: Path
) -> None:
    """A mart of the sessions family that also reads TimeTap's packages: a night when only a
    package changed shows in no session, so the family builds in full every night."""
    folder = edited_transforms(tmp_path, "marts/sessions.sql", "", "")
    a_mart(
        folder,
        "session_offers",
        "-- depends_on: stg_bizstim__sessions, stg_timetap__packages\n"
        "-- incremental_key: session_id\n\n"
        "create or replace table analytics.session_offers as\n"
        "select s.session_id, p.package_name, s.account from stg_bizstim__sessions s\n"
        "cross join (select max(package_name) as package_name from stg_timetap__packages) p\n"
        "where s.is_current;\n",
        {"session_id": "BIGINT", "package_name": "VARCHAR", "account": "VARCHAR"},
        grain="session",
        key="[account, session_id]",
    )
    build_analytics(con, folder, full="test")
    con.execute("update timetap.packages set package_name = 'Twenty Yoga Classes'")
    build = build_analytics(con, folder)
    assert build.summary == (
        "full (bizstim.sessions: marts/session_offers.sql also reads stg_timetap__packages)"
    )
    assert {row[1] for row in tables(con)["session_offers"]} == {"Twenty Yoga Classes"}


def test_a_mart_of_no_family_made_empty_then_filled_is_made_anew_every_night(
    con, tmp_path: Path
) -> None:
    """Only a setup file's empty table is kept on an incremental night (the families' marts
    fill it); any other model's is made anew, or each night would add its rows again."""
    folder = edited_transforms(tmp_path, "marts/sessions.sql", "", "")
    a_mart(
        folder,
        "package_names",
        "-- depends_on: stg_timetap__packages\n\n"
        "create or replace table analytics.package_names (package_id bigint, account varchar);\n"
        "insert into analytics.package_names\n"
        "select package_id, account from stg_timetap__packages where is_current;\n",
        {"package_id": "BIGINT", "account": "VARCHAR"},
        grain="package",
    )
    build_analytics(con, folder, full="test")
    for night in (2, 3):
        retire(con, "3")
        sessions(con, session("3", session_note=f"n{night}", _dlt_load_id=str(night), version=night))
        build = build_analytics(con, folder)
        assert build.decisions[0].incremental
        assert tables(con)["package_names"] == [(10, "default")]


def test_timetap_rebuilds_in_full_beside_an_incremental_bizstim(con) -> None:
    packages(con, {"package_id": "11", "_dlt_load_id": "2"})
    a_night(con)
    build = build_analytics(con)
    assert build.decisions[0].incremental
    assert {row[0] for row in tables(con)["packages"]} == {10, 11}
    equals_full_rebuild(con, build)


def served_tables(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    with duckdb.connect(str(path), read_only=True) as connection:
        return tables(connection)


def test_the_serving_file_is_patched_with_the_rows_an_incremental_build_rewrote(
    con, tmp_path: Path
) -> None:
    target = tmp_path / "serving.duckdb"
    assert serve.plan(con, target) == "full"
    serve.publish(con, target)
    assert served_tables(target) == tables(con)
    assert serve.plan(con, target) == "history"  # the same build: only the run history
    a_night(con)
    build = build_analytics(con)
    assert build.decisions[0].incremental
    assert serve.plan(con, target) == "patch"
    serve.publish(con, target)
    assert served_tables(target) == tables(con)
    with duckdb.connect(str(target), read_only=True) as served:
        assert comments(served) == comments(con)
    # two nights in a row, and a night with nothing changed
    retire(con, "3")
    sessions(con, session("3", session_note="later", _dlt_load_id="3", version=3))
    build_analytics(con)
    serve.publish(con, target)
    build_analytics(con)
    assert serve.plan(con, target) == "patch"
    serve.publish(con, target)
    assert served_tables(target) == tables(con)


def test_a_patch_rewrites_one_accounts_session_and_keeps_the_same_id_in_another(
    con, tmp_path: Path
) -> None:
    # a second account's dataset, as dlt loads it (`_dlt_loads` marks it), holding ids 1 and 3 too
    con.execute("create schema bizstim_uptown")
    con.execute("create table bizstim_uptown._dlt_loads (load_id varchar)")
    con.execute(
        "create table bizstim_uptown.sessions as select * replace ('uptown' as session_note) "
        "from bizstim.sessions where id in ('1', '3')"
    )
    build_analytics(con, full="test")
    target = tmp_path / "serving.duckdb"
    serve.publish(con, target)
    # tonight session 1 changes in the default account only
    retire(con, "1")
    sessions(con, session("1", session_note="edited", _dlt_load_id="2", version=2))
    build = build_analytics(con)
    assert build.decisions[0].incremental and build.decisions[0].changed == 1
    assert serve.plan(con, target) == "patch"
    serve.publish(con, target)
    assert served_tables(target) == tables(con)
    with duckdb.connect(str(target), read_only=True) as served:
        assert served.execute(
            "select account, note from analytics.sessions where session_id = 1 order by all"
        ).fetchall() == [("default", "edited"), ("uptown", "uptown")]
    equals_full_rebuild(con, build)


def test_a_serving_file_not_written_from_the_last_build_is_written_whole(
    con, tmp_path: Path
) -> None:
    target = tmp_path / "serving.duckdb"
    serve.publish(con, target)
    a_night(con)
    build_analytics(con)
    build_analytics(con)  # a night whose publish never happened: two builds on from the file
    assert serve.plan(con, target) == "full"
    serve.publish(con, target)
    assert served_tables(target) == tables(con)
    # someone else wrote the file: its size or time differs from what was recorded
    with duckdb.connect(str(target)) as other:
        other.execute("delete from analytics.sessions where session_id = 3")
    retire(con, "5")
    build_analytics(con)
    assert serve.plan(con, target) == "full"
    serve.publish(con, target)
    assert served_tables(target) == tables(con)
    # a full rebuild is published whole
    build_analytics(con, full="test")
    assert serve.plan(con, target) == "full"


# another program writes to the serving file: the change stays in its log (no checkpoint), then
# it exits without closing, or waits, holding the file
_WRITER = """
import os, sys, duckdb
con = duckdb.connect(sys.argv[1])
con.execute("delete from analytics.sessions where session_id = 3")
if sys.argv[2] == "exit":
    os._exit(0)
print("written", flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("writer", ["exit", "wait"])
def test_a_write_left_in_the_serving_files_log_is_noticed_and_the_log_removed(
    con, tmp_path: Path, writer: str
) -> None:
    """Someone opened the serving file for writing: the change is in its `.wal`, the file
    keeps its size and time. It is written whole, and the old file's log does not stay beside
    the new one (DuckDB refuses to open the pair: "WAL does not match database file")."""
    target = tmp_path / "serving.duckdb"
    serve.publish(con, target)
    other = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(target), writer],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        if writer == "exit":
            assert other.wait(timeout=60) == 0
        else:
            assert other.stdout is not None and other.stdout.readline() == "written\n"
        wal = target.with_name(target.name + ".wal")
        assert wal.exists()
        retire(con, "5")
        build_analytics(con)
        assert serve.plan(con, target) == "full"
        serve.publish(con, target)
        assert not wal.exists()
        assert served_tables(target) == tables(con)
    finally:
        other.kill()
        other.wait()


def test_a_serving_file_changed_while_destinations_publish_is_written_whole_again(
    con, tmp_path: Path
) -> None:
    """Between the serving file and the run history's refresh come the destinations (minutes
    against a remote server); a change made to the file meanwhile is not kept."""
    target = tmp_path / "serving.duckdb"
    serve.publish(con, target)
    with duckdb.connect(str(target)) as other:
        other.execute("delete from analytics.sessions where session_id = 3")
    serve.refresh_history(con, target)
    assert served_tables(target) == tables(con)
    assert serve.plan(con, target) == "history"  # and it is known to hold tonight's build


def test_copies_left_by_killed_publishes_are_removed(con, tmp_path: Path) -> None:
    """A run killed while writing the serving file leaves its copy in progress (named with its
    process id); the next publish removes it, but never one whose process still runs."""
    target = tmp_path / "serving.duckdb"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    left = [tmp_path / f".serving.duckdb.{dead.stdout.strip()}.tmp"]
    left.append(left[0].with_name(left[0].name + ".wal"))
    alive = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)  # fmt: skip
    running = tmp_path / f".serving.duckdb.{alive.pid}.tmp"
    try:
        for path in [*left, running]:
            path.write_bytes(b"half a copy")
        serve.publish(con, target)
        assert [path.exists() for path in left] == [False, False]
        assert running.exists()
        assert served_tables(target) == tables(con)
    finally:
        alive.kill()
        alive.wait()


def test_a_warehouse_named_serving_publishes(tmp_path: Path) -> None:
    """The serving file is attached under an alias, which must not be the warehouse's own
    database name (its file's name)."""
    warehouse = duckdb.connect(str(tmp_path / "serving.duckdb"))
    sessions(warehouse, session("1"))
    build_analytics(warehouse)
    target = tmp_path / "serving_analytics.duckdb"
    serve.publish(warehouse, target)
    assert served_tables(target) == tables(warehouse)


# -- real runs: the CLI against the simulator ----------------------------------------------------


def analytics_of(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    with duckdb.connect(str(path), read_only=True) as connection:
        return tables(connection)


def equals_full_rebuild_and_upstream(env: Any, sim: Any, folder: Path) -> None:
    """A copy of the warehouse rebuilt in full by `transform --full-rebuild` has the same
    analytics tables, and `analytics.sessions` holds exactly the simulator's sessions."""
    copy = folder / env.database.name
    copy.parent.mkdir()
    shutil.copy(env.database, copy)
    built = analytics_of(copy)
    rebuilt = env.run("transform", "--full-rebuild", "--database", str(copy))
    assert rebuilt.code == 0, rebuilt.stderr
    assert "analytics build: full (bizstim.sessions: --full-rebuild)" in rebuilt.stdout
    assert analytics_of(copy) == built
    expected = {
        (name, int(row["id"])) for name, account in sim.accounts.items()
        for row in account.bizstim.rows()
    }  # fmt: skip
    assert {(row[-1], row[0]) for row in built["sessions"]} == expected


def test_nights_through_the_cli_build_incrementally_and_equal_a_full_rebuild(
    tmp_path: Path,
) -> None:
    """Three nights of edits, deletions and bookings in two accounts with overlapping ids, each
    run's analytics built incrementally; a copy rebuilt in full by `transform --full-rebuild`
    has the same tables, row for row."""
    from accounts_fixtures import accounts_env, two_accounts

    with two_accounts() as sim:
        env = accounts_env(sim, tmp_path)
        first = env.run("run")
        assert first.code == 0, first.stderr
        assert "analytics build: full (bizstim.sessions: first build)" in first.stdout
        for night in range(1, 4):
            changes = [
                account.bizstim.night_of_changes(edit=0.03, delete=0.01, new=0.02, seed=night)
                for account in sim.accounts.values()
            ]
            changed = sum(len(c["edited"]) + len(c["deleted"]) + len(c["added"]) for c in changes)
            result = env.run("run", "--allow-deletions")
            assert result.code == 0, result.stderr
            expect = f"analytics build: incremental (bizstim.sessions: {changed} records changed)"
            assert expect in result.stdout
            equals_full_rebuild_and_upstream(env, sim, tmp_path / f"night{night}")


# a kill during the extract leaves the warehouse as it was (tests/test_crash.py, every point):
# these are the steps after which the incremental state and the raw tables may disagree
AFTER_EXTRACT = [point for point in POINTS if point not in ("mid-extract", "after-extract")]


@pytest.mark.parametrize("point", AFTER_EXTRACT)
def test_a_kill_during_an_incremental_night_is_made_exact_by_the_next_run(
    tmp_path: Path, point: str
) -> None:
    """Killed at each step of a night whose analytics build is incremental, once its raw tables
    may have changed (mid-transform: after its first table was rewritten), the next run's tables
    equal upstream and a full rebuild; two accounts, so the other one is killed anywhere."""
    from accounts_fixtures import accounts_env, two_accounts

    with two_accounts() as sim:
        env = accounts_env(sim, tmp_path)
        env.vars["SOURCES__BIZSTIM__PAGE_SIZE"] = "100"
        assert env.run("run").code == 0
        for account in sim.accounts.values():
            account.bizstim.night_of_changes(edit=0.05, delete=0.01, new=0.03, seed=3)
        env.vars[ENV] = point
        assert env.run("run").code == -signal.SIGKILL
        del env.vars[ENV]
        result = env.run("run")
        assert result.code == 0, result.stderr
        assert "analytics build: incremental (bizstim.sessions:" in result.stdout
        equals_full_rebuild_and_upstream(env, sim, tmp_path / "copy")


def test_an_analytics_table_dropped_by_hand_makes_the_night_build_in_full(con) -> None:
    """An update deletes and inserts the changed keys' rows in place: with the table gone,
    every night failed (exit 7) naming another file, and only `--full-rebuild` recovered."""
    con.execute("drop table analytics.session_cancellations")
    a_night(con)
    build = build_analytics(con)
    assert build.summary.startswith(
        "full (bizstim.sessions: marts/session_cancellations.sql found a table missing: Catalog"
    ), build.summary
    assert not any(d.incremental for d in build.decisions)
    assert sorted((r[0], r[2]) for r in tables(con)["session_cancellations"]) == [(5, 7), (6, 1)]
    equals_full_rebuild(con, build)
    assert build_analytics(con).summary == "incremental (bizstim.sessions: 0 records changed)"


def test_a_new_session_without_an_id_is_not_said_to_have_vanished(con) -> None:
    sessions(con, {"id": None, "_dlt_id": "no-id-1", "_dlt_load_id": "2"})
    build = build_analytics(con)
    assert build.summary == (
        "full (bizstim.sessions: 1 new raw rows of bizstim.sessions fail incremental_if)"
    ), build.summary
    equals_full_rebuild(con, build)


def test_the_code_that_writes_analytics_is_part_of_the_fingerprint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the SQL, the contract, DuckDB and FORMAT were: an upgrade changing a finding's wording
    or a comment kept the old text on every record an incremental night did not touch."""
    assert {p.name for p in incremental._code_files() if p.is_file()} == {
        "incremental.py", "transform.py", "contract.py", "contract_checks.py",
    }  # fmt: skip
    code = tmp_path / "contract_checks.py"
    code.write_text("problem = 'old wording'")
    monkeypatch.setattr(incremental, "_code_files", lambda: [code])
    marts = TRANSFORMS_DIR / "marts"
    before = incremental.fingerprint([("a.sql", "select 1")], marts)
    assert incremental.fingerprint([("a.sql", "select 1")], marts) == before
    code.write_text("problem = 'new wording'")
    assert incremental.fingerprint([("a.sql", "select 1")], marts) != before


def test_a_mart_inserting_without_deleting_its_keys_first_builds_in_full(
    con, tmp_path: Path
) -> None:
    """Insert-only into a table its setup file makes: right in a full build, but on a night it
    added the changed records' rows again beside their old ones, silently."""
    folder = edited_transforms(
        tmp_path,
        "marts/data_issues__bizstim_sessions.sql",
        "delete from analytics.data_issues where source = 'bizstim' and entity = 'session';",
        "",
    )
    build_analytics(con, folder, full="test")
    a_night(con)
    build = build_analytics(con, folder)
    assert build.summary == (
        "full (bizstim.sessions: data_issues__bizstim_sessions inserts into analytics.data_issues "
        "without deleting its keys there first)"
    ), build.summary
    after = tables(con)
    assert len(after["data_issues"]) == len(set(after["data_issues"]))
    equals_full_rebuild(con, build)


def test_a_table_a_setup_file_makes_dropped_by_hand_makes_the_night_full(con) -> None:
    """On a partial build the setup file's table is made only if missing: dropped by hand, it
    came back empty and the night lost the untouched records' issues, silently."""
    before = tables(con)["data_issues"]
    assert before  # session 2's unknown status
    con.execute("drop table analytics.data_issues")
    sessions(con, session("6", _dlt_load_id="2", _dlt_valid_from=LOAD_2))
    build = build_analytics(con)
    assert build.summary == (
        "full (bizstim.sessions: analytics table data_issues is missing)"
    ), build.summary
    assert tables(con)["data_issues"] == before
    equals_full_rebuild(con, build)


def thirty_thousand_sessions(con: duckdb.DuckDBPyConnection) -> None:
    """Sessions 10000-39999, copied from three of the fixture's: a time zone, cancellations,
    an issue."""
    for offset, template in enumerate(("3", "5", "2")):
        con.execute(
            "insert into bizstim.sessions select s.* replace ("
            f"  cast(10000 + n * 3 + {offset} as varchar) as id,"
            f"  'bulk-{offset}-' || n as _dlt_id)"
            f" from bizstim.sessions s, range(10000) r(n) where s.id = '{template}'"
        )


def test_a_large_night_is_typed_in_parts_and_equals_a_full_rebuild(con) -> None:
    """A night of 6,000 changed raw rows fills less than a row group, which DuckDB scans on one
    thread: the view the staging model reads splits them into one part per thread. The parts
    must hold every row once (an incremental night equal to a full rebuild), with the edits
    spread over data issues, cancellations and time zones."""
    con.execute("set threads = 2")
    thirty_thousand_sessions(con)
    assert not build_analytics(con).decisions[0].incremental  # 30,000 new sessions: in full
    edited = "cast(id as int) between 10000 and 12999"
    con.execute(f"update bizstim.sessions set _dlt_valid_to = ? where {edited}", [LOAD_2])
    con.execute(
        "insert into bizstim.sessions select * replace ("
        "  case when cast(id as int) % 2 = 0 then '1' else session_status end as session_status,"
        "  case when cast(id as int) % 5 = 0 then '' else cancel_clients end as cancel_clients,"
        "  _dlt_id || '-2' as _dlt_id, '2' as _dlt_load_id, ? as _dlt_valid_from,"
        "  null as _dlt_valid_to)"
        f" from bizstim.sessions where {edited}",
        [LOAD_2],
    )
    build = build_analytics(con)
    assert build.summary == "incremental (bizstim.sessions: 3,000 records changed)"
    (view,) = con.execute(
        "select sql from duckdb_views() where view_name = 'raw_bizstim__sessions'"
    ).fetchall()[0]
    assert view.upper().count("UNION ALL") == 1 and "(_raw_row % 2) = 1" in view, view
    equals_full_rebuild(con, build)


def test_two_current_versions_of_one_load_resolve_the_same_way_in_every_build(con) -> None:
    """A session given two current versions by one load (same valid_from and load) is a tie in
    the versions' order: builds broke it by the order the rows arrived in, which a night's
    parts (and the threads of any build) change, so nights and full rebuilds kept different
    versions. The version stored last wins, in every build."""
    con.execute("set threads = 2")
    thirty_thousand_sessions(con)
    assert not build_analytics(con).decisions[0].incremental
    edited = "cast(id as int) between 10000 and 12999"
    con.execute(f"update bizstim.sessions set _dlt_valid_to = ? where {edited}", [LOAD_2])
    for status in ("1", "2"):  # two versions of each edited session, one load, both current
        con.execute(
            "insert into bizstim.sessions select * replace ("
            f"  '{status}' as session_status, _dlt_id || '-{status}' as _dlt_id,"
            "  '2' as _dlt_load_id, ? as _dlt_valid_from, null as _dlt_valid_to)"
            f" from bizstim.sessions where {edited} and _dlt_load_id <> '2'",
            [LOAD_2],
        )
    build = build_analytics(con)
    assert build.summary == "incremental (bizstim.sessions: 3,000 records changed)"
    statuses = con.execute(
        "select status, count(*) from analytics.sessions where session_id between 10000 and "
        "12999 group by all"
    ).fetchall()
    assert statuses == [("missed", 3000)]  # session_status '2', stored after '1'
    equals_full_rebuild(con, build)
