"""The contract after real runs against the simulator: what a BI tool sees in the warehouse and
the serving file (comments on every column, no dlt staging schemas, columns exactly as the YAML
says), `analytics.timetap_clients` exact against the simulator, and a fatal data test's exit 7."""

from __future__ import annotations

import contextlib
from pathlib import Path

import duckdb
from conftest import Env

from practice_sync.contract import load_contract
from practice_sync.simulator import Simulator
from practice_sync.transform import TRANSFORMS_DIR

CONTRACT = load_contract(TRANSFORMS_DIR / "marts")


def serving_file(env: Env) -> Path:
    return env.database.with_name(f"{env.database.stem}_analytics.duckdb")


def query(path: Path, sql: str) -> list[tuple]:
    with contextlib.closing(duckdb.connect(str(path), read_only=True)) as con:
        return con.execute(sql).fetchall()


def schemas(path: Path) -> set[str]:
    return {
        name
        for (name,) in query(
            path,
            "select schema_name from duckdb_schemas() where database_name = current_database()",
        )
    }


def expected_clients(sim: Simulator) -> list[tuple]:
    """From the simulator's own sales: each client's object, and the sale it is read from (all
    sales load together, so the latest modifiedDate, then the highest packageSoldId)."""
    latest: dict[int, dict] = {}
    for sale in sim.timetap.packages_sold():
        client_id = sale["client"]["clientId"]
        held = latest.get(client_id)
        if held is None or (sale["modifiedDate"], sale["packageSoldId"]) > (
            held["modifiedDate"],
            held["packageSoldId"],
        ):
            latest[client_id] = sale
    return [
        (
            client_id,
            sale["client"]["firstName"],
            sale["client"]["lastName"],
            sale["client"]["emailAddress"],
            None,
            sale["packageSoldId"],
        )
        for client_id, sale in sorted(latest.items())
    ]


CLIENT_COLUMNS = (
    "select client_id, first_name, last_name, email_address, other_fields, from_package_sold_id "
    "from analytics.timetap_clients order by client_id"
)


def test_a_bi_tool_sees_only_the_contract_with_comments_and_types(sim: Simulator, env: Env) -> None:
    for night in range(2):
        result = env.run("run", "--quiet")
        assert result.code == 0, result.stderr
        # dlt's merge staging datasets are dropped after each load; the raw datasets stay, and
        # the incremental build's state (row hashes and ids only, never published)
        assert schemas(env.database) == {
            "main", "bizstim", "timetap", "analytics", "ops", "analytics_state"
        }  # fmt: skip
        assert schemas(serving_file(env)) == {"main", "analytics", "ops"}
        if night == 0:  # a night of changes: the next load recreates and drops staging again
            sale = next(s for s in sim.timetap.packages_sold() if s["status"] == "OPEN")
            sim.timetap.use_package(sale["packageSoldId"])
            sim.bizstim.add({"id": "990001", "session_status": "1"})

    for path in (env.database, serving_file(env)):
        tables = query(
            path,
            "select table_name, comment from duckdb_tables() where schema_name = 'analytics' "
            "order by 1",
        )
        assert [name for name, _ in tables] == sorted(CONTRACT)
        assert all(comment and "Grain: one row per" in comment for _, comment in tables)
        columns = query(
            path,
            "select table_name, column_name, data_type, comment from duckdb_columns() "
            "where schema_name = 'analytics' order by table_name, column_index",
        )
        assert len(columns) == sum(len(t.columns) for t in CONTRACT.values())
        described = {
            (t.name, c.name): (c.type, c.description) for t in CONTRACT.values() for c in t.columns
        }
        for table, column, type_, comment in columns:
            assert described[(table, column)] == (type_, comment), (table, column)


def test_timetap_clients_are_exact_against_the_simulator(sim: Simulator, env: Env) -> None:
    assert env.run("run", "--source", "timetap", "--quiet").code == 0
    assert env.query(CLIENT_COLUMNS) == expected_clients(sim)
    # every package sold joins to its client
    assert env.query(
        "select count(*) from analytics.packages_sold s "
        "left join analytics.timetap_clients c using (client_id) where c.client_id is null"
    ) == [(0,)]

    # a new client buys a package; an existing sale changes: the latest version wins
    new_client = sim.timetap.add_client()
    package_id = sim.timetap.active_packages()[0]["packageId"]
    sim.timetap.sell_package(new_client, package_id)
    changed = next(s for s in sim.timetap.packages_sold() if s["status"] == "OPEN")
    sim.timetap.use_package(changed["packageSoldId"])
    assert env.run("run", "--source", "timetap", "--quiet").code == 0
    got = env.query(CLIENT_COLUMNS)
    assert got == expected_clients(sim)
    assert new_client in [row[0] for row in got]
    # the changed sale's version is the newest (later valid_from) of its client's sales
    assert (changed["client"]["clientId"], changed["packageSoldId"]) in [
        (row[0], row[5]) for row in got
    ]


def test_a_fatal_data_test_keeps_yesterdays_analytics_and_exits_7(sim: Simulator, env: Env) -> None:
    assert env.run("run", "--source", "bizstim", "--quiet").code == 0
    before = env.query("select * from analytics.sessions order by session_id")
    session_id = before[0][0]
    # a current raw version of a new session with no valid_from (not_null is fatal for it)
    with contextlib.closing(duckdb.connect(str(env.database))) as con:
        con.execute(
            "insert into bizstim.sessions by name select * replace (id || '9' as id, "
            "md5(_dlt_id) as _dlt_id, null as _dlt_valid_from) from bizstim.sessions "
            "where id = ? and _dlt_valid_to is null",
            [str(session_id)],
        )
    result = env.run("transform")
    assert result.code == 7, result.stderr
    assert (
        "analytics.session_history.valid_from failed its not_null test in 1 row, so "
        "the previous analytics tables were kept." in result.stderr
    ), result.stderr
    assert env.query("select * from analytics.sessions order by session_id") == before
    assert query(serving_file(env), "select count(*) from analytics.sessions") == [(len(before),)]
