"""`practice-sync run` against the TimeTap simulator: token handshake, packages, packages sold."""

from __future__ import annotations

from pathlib import Path

from conftest import Env, make_env

from practice_sync.simulator import Fault, Simulator


def active_package_ids(sim: Simulator) -> list[int]:
    return sorted(p["packageId"] for p in sim.timetap.active_packages())


def sold_ids(sim: Simulator) -> list[int]:
    return sorted(s["packageSoldId"] for s in sim.timetap.packages_sold())


def test_first_load_fills_the_analytics_tables(sim: Simulator, tmp_path: Path) -> None:
    env = make_env(sim, tmp_path, bizstim=False)
    result = env.run("run")
    assert result.code == 0, result.stderr
    assert "bizstim: skipped" in result.stdout
    ids = [r[0] for r in env.query("select package_id from analytics.packages order by 1")]
    assert ids == active_package_ids(sim)
    # epoch milliseconds become the right instants
    first = min(sim.timetap.active_packages(), key=lambda p: p["packageId"])
    row = env.query(
        "select epoch_ms(modified_at), price, package_name from analytics.packages where package_id = ?",
        [first["packageId"]],
    )
    assert row == [(first["modifiedDate"], first["price"], first["packageName"])]
    services = env.query(
        "select service_id from analytics.package_services where package_id = ? order by 1",
        [first["packageId"]],
    )
    assert [s[0] for s in services] == sorted(first["serviceIds"])
    sold = [
        r[0] for r in env.query("select package_sold_id from analytics.packages_sold order by 1")
    ]
    assert sold == sold_ids(sim)
    # every client was asked once, with a token obtained once
    log = [p for _, p, _ in sim.request_log]
    assert sum(p.endswith("/sessionToken") for p in log) == 1
    assert sum("/packageSold/client/" in p for p in log) == len(sim.timetap.client_ids())


def test_rerun_without_changes_rewrites_nothing(sim: Simulator, env: Env, first_run) -> None:
    assert first_run("run", "--source", "timetap").code == 0
    before = env.query(
        "select (select count(*) from timetap.packages), (select count(*) from timetap.packages_sold)"
    )
    result = env.run("run", "--source", "timetap")
    assert result.code == 0, result.stderr
    after = env.query(
        "select (select count(*) from timetap.packages), (select count(*) from timetap.packages_sold)"
    )
    assert after == before
    assert "timetap.packages: 0 new, 0 changed, 0 retired" in result.stdout
    assert "timetap.packages_sold: 0 new, 0 changed, 0 retired" in result.stdout


def test_a_night_of_changes_shows_up_exactly(sim: Simulator, env: Env, first_run) -> None:
    assert first_run("run", "--source", "timetap").code == 0
    packages = sorted(sim.timetap.active_packages(), key=lambda p: p["packageId"])
    edited, retired = packages[0]["packageId"], packages[1]["packageId"]
    sim.timetap.edit_package(edited, price=packages[0]["price"] + 25)
    sim.timetap.retire_package(retired)
    open_sale = next(
        s
        for s in sim.timetap.packages_sold()
        if s["status"] == "OPEN" and 0 <= s["usedQuantity"] < s["maxQuantity"]
    )
    left = open_sale["maxQuantity"] - open_sale["usedQuantity"]
    sim.timetap.use_package(open_sale["packageSoldId"], left)

    result = env.run("run", "--source", "timetap")
    assert result.code == 0, result.stderr
    assert [r[0] for r in env.query("select package_id from analytics.packages order by 1")] == (
        active_package_ids(sim)
    )
    assert env.query("select price from analytics.packages where package_id = ?", [edited]) == [
        (packages[0]["price"] + 25,)
    ]
    # the retired package is kept, marked inactive, in history
    assert env.query(
        "select active, is_current from analytics.package_history where package_id = ? "
        "order by valid_from desc limit 1",
        [retired],
    ) == [(False, True)]
    assert env.query(
        "select used_quantity, remaining_quantity, status from analytics.packages_sold "
        "where package_sold_id = ?",
        [open_sale["packageSoldId"]],
    ) == [(open_sale["maxQuantity"], 0, "CLOSED")]
    assert "timetap.packages: 0 new, 2 changed, 0 retired" in result.stdout
    assert "timetap.packages_sold: 0 new, 1 changed, 0 retired" in result.stdout


def test_token_expiring_mid_run_is_refreshed(sim: Simulator, env: Env) -> None:
    from practice_sync.simulator import Fault

    sim.add_fault(Fault(path=r"/packageSold/client/", kind="401", times=1, after=10))
    result = env.run("run", "--source", "timetap")
    assert result.code == 0, result.stderr
    statuses = [s for _, p, s in sim.request_log if p.endswith("/sessionToken")]
    assert statuses == [200, 200]
    sold = [
        r[0] for r in env.query("select package_sold_id from analytics.packages_sold order by 1")
    ]
    assert sold == sold_ids(sim)


def test_configured_client_ids_limit_the_sweep(sim: Simulator, env: Env) -> None:
    chosen = sorted(sim.timetap.client_ids())[:5]
    env.vars["SOURCES__TIMETAP__CLIENT_IDS"] = str(chosen)
    result = env.run("run", "--source", "timetap")
    assert result.code == 0, result.stderr
    asked = sorted(
        int(p.rsplit("/", 1)[1]) for _, p, _ in sim.request_log if "/packageSold/client/" in p
    )
    assert asked == chosen
    assert not any(p.endswith("/clientIdList") for _, p, _ in sim.request_log)
    loaded = env.query("select package_sold_id from analytics.packages_sold order by 1")
    expected = sorted(
        s["packageSoldId"] for s in sim.timetap.packages_sold() if s["client"]["clientId"] in chosen
    )
    assert [r[0] for r in loaded] == expected


def test_a_client_whose_list_answers_404_is_that_clients_problem(
    sim: Simulator, env: Env, first_run
) -> None:
    assert first_run("run", "--source", "timetap").code == 0
    sold = sim.timetap.packages_sold()
    lost = next(s for s in sold if s["client"]["clientId"] == sold[0]["client"]["clientId"])
    client_id = lost["client"]["clientId"]
    before = env.query(
        "select count(*) from analytics.packages_sold where client_id = ?", [client_id]
    )
    assert before[0][0] >= 1
    sim.add_fault(Fault(rf"/packageSold/client/{client_id}$", "500", status=404))
    other = next(s for s in sold if s["client"]["clientId"] != client_id)
    sim.timetap.use_package(other["packageSoldId"])
    result = env.run("run", "--source", "timetap")
    assert result.code == 0, result.stderr
    assert "1 TimeTap clients answered 404" in result.stdout
    # its sales were not retired on a 404's word; the others loaded
    assert env.query(
        "select count(*) from analytics.packages_sold where client_id = ?", [client_id]
    ) == before
    assert "timetap.packages_sold: 0 new, 1 changed, 0 retired" in result.stdout
    assert env.query(
        "select entity, record_id, problem from analytics.data_issues where entity = 'client'"
    ) == [("client", str(client_id), "its packages sold answered HTTP 404 (not found)")]
    # the next good night clears the report
    assert env.run("run", "--source", "timetap").code == 0
    assert env.query("select count(*) from analytics.data_issues where entity = 'client'") == [
        (0,)
    ]


def test_a_business_with_no_packages_and_no_clients_has_empty_contract_tables(
    tmp_path: Path,
) -> None:
    with Simulator(seed=3, sessions=0, clients=0, packages=0) as empty:
        env = make_env(empty, tmp_path)
        result = env.run("run")
        assert result.code == 0, result.stderr
        tables = {
            r[0]: r[1]
            for r in env.query(
                "select table_name, estimated_size from duckdb_tables() where schema_name = 'analytics'"
            )
        }
    for table in ("sessions", "session_history", "packages", "packages_sold", "data_issues"):
        assert table in tables, sorted(tables)
        assert env.query(f"select count(*) from analytics.{table}") == [(0,)]
    columns = env.query(
        "select count(*) from duckdb_columns() where schema_name = 'analytics' "
        "and table_name = 'sessions'"
    )
    assert columns[0][0] > 30
