"""`practice-sync run` against the TimeTap simulator: token handshake, packages, packages sold."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from email.message import Message
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import Env, make_env

from practice_sync.simulator import Fault, Simulator
from practice_sync.simulator.reply import Reply, json_reply


def active_package_ids(sim: Simulator) -> list[int]:
    return sorted(p["packageId"] for p in sim.timetap.active_packages())


def sold_ids(sim: Simulator) -> list[int]:
    return sorted(s["packageSoldId"] for s in sim.timetap.packages_sold())


@contextlib.contextmanager
def answers_changed(
    sim: Simulator, route: list[str], change: Callable[[list[Any]], list[Any]]
) -> Iterator[None]:
    """While inside, TimeTap's JSON array at `route` (its path segments; `*` any one) is sent
    as `change` makes it: what a misbehaving TimeTap would send, over the real socket."""
    real = sim.timetap.handle  # the simulator's own, or another change's (they nest)

    def handle(method: str, parts: list[str], query: dict, headers: Message) -> Reply:
        reply = real(method, parts, query, headers)
        matches = len(parts) == len(route) and all(
            r in ("*", p) for r, p in zip(route, parts, strict=True)
        )
        if matches and reply.status == 200:
            return json_reply(200, change(orjson.loads(reply.body)))
        return reply

    sim.timetap.handle = handle  # type: ignore[method-assign]
    try:
        yield
    finally:
        sim.timetap.handle = real  # type: ignore[method-assign]


def timetap_issues(env: Env, entity: str) -> list[tuple]:
    return env.query(
        "select record_id, field, value, problem from analytics.data_issues "
        "where source = 'timetap' and entity = ? order by all",
        [entity],
    )


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


def test_a_package_missing_from_one_listing_stays_on_offer(
    sim: Simulator, env: Env, first_run
) -> None:
    """GET /package leaves a package out one night while GET /package/{id} still has it active:
    it is kept as TimeTap has it, not stored inactive (and then skipped for good)."""
    assert first_run("run", "--source", "timetap").code == 0
    victim = active_package_ids(sim)[0]
    with answers_changed(
        sim, ["package"], lambda rows: [r for r in rows if r["packageId"] != victim]
    ):
        glitch = env.run("run", "--source", "timetap")
    assert glitch.code == 0, glitch.stderr
    assert any(p.endswith(f"/package/{victim}") for _, p, _ in sim.request_log)
    assert "timetap.packages: 0 new, 0 changed, 0 retired" in glitch.stdout
    assert env.query("select active from analytics.packages where package_id = ?", [victim]) == [
        (True,)
    ]
    listed_again = env.run("run", "--source", "timetap")
    assert listed_again.code == 0, listed_again.stderr
    assert [r[0] for r in env.query("select package_id from analytics.packages order by 1")] == (
        active_package_ids(sim)
    )
    assert env.query(
        "select version_number, active, is_current, is_retired from analytics.package_history "
        "where package_id = ?",
        [victim],
    ) == [(1, True, True, False)]


def test_invalid_utf8_in_a_package_is_reported_and_corrected_the_next_night(
    sim: Simulator, env: Env, first_run
) -> None:
    assert first_run("run", "--source", "timetap").code == 0
    package = active_package_ids(sim)[0]
    sim.timetap.edit_package(package, description="Caf\u00e9 classes")
    sim.add_fault(Fault(r"/package$", "latin1"))
    mangled = env.run("run", "--source", "timetap")
    assert mangled.code == 0, mangled.stderr
    assert env.query(
        "select description from analytics.packages where package_id = ?", [package]
    ) == [("Caf\ufffd classes",)]
    assert timetap_issues(env, "package") == [
        (str(package), "description", "Caf\ufffd classes", "invalid UTF-8 bytes were replaced")
    ]
    # the same package, same modifiedDate, sent cleanly: the stored text is corrected
    clean = env.run("run", "--source", "timetap")
    assert clean.code == 0, clean.stderr
    assert env.query(
        "select description from analytics.packages where package_id = ?", [package]
    ) == [("Caf\u00e9 classes",)]
    assert timetap_issues(env, "package") == []
    assert "timetap.packages: 0 new, 1 changed, 0 retired" in clean.stdout


def test_invalid_utf8_in_a_clients_packages_sold_is_reported(
    sim: Simulator, env: Env, first_run
) -> None:
    assert first_run("run", "--source", "timetap").code == 0
    sale = next(
        s
        for s in sim.timetap.packages_sold()
        if not s["client"]["lastName"].isascii() and s["client"]["firstName"].isascii()
    )
    client_id = sale["client"]["clientId"]
    sales = sorted(
        str(s["packageSoldId"])
        for s in sim.timetap.packages_sold()
        if s["client"]["clientId"] == client_id
    )
    sim.add_fault(Fault(rf"/packageSold/client/{client_id}$", "latin1"))
    result = env.run("run", "--source", "timetap")
    assert result.code == 0, result.stderr
    last_name = env.query(
        "select last_name from analytics.timetap_clients where client_id = ?", [client_id]
    )[0][0]
    assert "\ufffd" in last_name
    # each sale of that client, and no other, says so, of its client object
    reported = [i for i in timetap_issues(env, "package_sold") if "UTF-8" in i[3]]
    assert sorted(r[0] for r in reported) == sales
    assert {(r[1], r[3]) for r in reported} == {("client", "invalid UTF-8 bytes were replaced")}


def test_a_package_without_a_readable_active_flag_stays_on_offer_and_is_reported(
    sim: Simulator, env: Env, first_run
) -> None:
    assert first_run("run", "--source", "timetap").code == 0
    absent, odd = active_package_ids(sim)[:2]

    def damage(rows: list[dict]) -> list[dict]:
        for row in rows:
            if row["packageId"] == absent:
                del row["active"]
            elif row["packageId"] == odd:
                row["active"] = "yes"
        return rows

    with answers_changed(sim, ["package"], damage):
        result = env.run("run", "--source", "timetap")
    assert result.code == 0, result.stderr
    assert [r[0] for r in env.query("select package_id from analytics.packages order by 1")] == (
        active_package_ids(sim)
    )
    assert env.query(
        "select package_id, active from analytics.packages where package_id in (?, ?) order by 1",
        [absent, odd],
    ) == [(absent, None), (odd, None)]
    for package in (absent, odd):
        services = env.query(
            "select count(*) from analytics.package_services where package_id = ?", [package]
        )
        listed = next(p for p in sim.timetap.active_packages() if p["packageId"] == package)
        assert services == [(len(set(listed["serviceIds"])),)]
    assert [i for i in timetap_issues(env, "package") if i[1] == "active"] == [
        (str(absent), "active", "", "missing from the record"),
        (str(odd), "active", "yes", "not a boolean"),
    ]


def test_a_listed_entry_that_is_not_an_object_loads_as_an_issue_and_the_rest_load(
    sim: Simulator, env: Env, first_run
) -> None:
    assert first_run("run", "--source", "timetap").code == 0
    client_id = str(sim.timetap.client_ids()[0])
    with (
        answers_changed(sim, ["package"], lambda rows: [*rows, None]),
        answers_changed(sim, ["packageSold", "client", client_id], lambda rows: [*rows, 7]),
    ):
        result = env.run("run", "--source", "timetap")
    assert result.code == 0, result.stderr
    # the entry is a record too (never dropped): it shows with a NULL key, and is reported
    assert [r[0] for r in env.query("select package_id from analytics.packages order by 1")] == [
        *active_package_ids(sim),
        None,
    ]
    sold = env.query(
        "select package_sold_id from analytics.packages_sold where package_sold_id is not null"
    )
    assert sorted(r[0] for r in sold) == sold_ids(sim)
    # one issue-only row: its key is missing too, as the contract's key_nulls says
    assert [i for i in timetap_issues(env, "package") if i[0] is None] == [
        (None, "", "", "package is not a JSON object"),
        (None, "active", "", "missing from the record"),
        (None, "package_id", "", "missing from the record"),
    ]
    assert [i for i in timetap_issues(env, "package_sold") if i[0] is None] == [
        (None, "", "7", "package_sold is not a JSON object"),
        (None, "package_sold_id", "", "missing from the record"),
    ]


def test_a_package_or_sale_without_its_id_is_reported(
    sim: Simulator, env: Env, first_run
) -> None:
    assert first_run("run", "--source", "timetap").code == 0
    package = active_package_ids(sim)[0]
    sale = sim.timetap.packages_sold()[0]
    client_id = sale["client"]["clientId"]

    def without(key: str, value: int) -> Callable[[list[dict]], list[dict]]:
        """The rows, the one whose `key` is `value` without that field."""
        return lambda rows: [{k: v for k, v in r.items() if (k, v) != (key, value)} for r in rows]

    with (
        answers_changed(sim, ["package"], without("packageId", package)),
        answers_changed(
            sim,
            ["packageSold", "client", str(client_id)],
            without("packageSoldId", sale["packageSoldId"]),
        ),
    ):
        result = env.run("run", "--source", "timetap")
    assert result.code == 0, result.stderr
    assert env.query("select count(*) from analytics.packages where package_id is null") == [(1,)]
    assert env.query(
        "select count(*) from analytics.packages_sold where package_sold_id is null"
    ) == [(1,)]
    assert [i for i in timetap_issues(env, "package") if i[0] is None] == [
        (None, "package_id", "", "missing from the record")
    ]
    assert [i for i in timetap_issues(env, "package_sold") if i[0] is None] == [
        (None, "package_sold_id", "", "missing from the record")
    ]


def test_removing_a_privacy_policy_restores_package_values(
    sim: Simulator, env: Env, first_run
) -> None:
    env.vars["SOURCES__TIMETAP__PRIVACY"] = json.dumps({"drop": ["createdUser"]})
    assert first_run("run", "--source", "timetap").code == 0
    assert env.query("select count(created_by) from analytics.packages") == [(0,)]
    del env.vars["SOURCES__TIMETAP__PRIVACY"]
    result = env.run("run", "--source", "timetap")
    assert result.code == 0, result.stderr
    expected = sorted((p["packageId"], p["createdUser"]) for p in sim.timetap.active_packages())
    assert env.query("select package_id, created_by from analytics.packages order by 1") == expected


@pytest.mark.parametrize("action", ["hash", "drop"])
def test_a_client_answering_404_keeps_its_sales_under_a_client_id_policy(
    sim: Simulator, env: Env, first_run, action: str
) -> None:
    env.vars["SOURCES__TIMETAP__PRIVACY"] = json.dumps({action: ["client_id"]})
    env.vars["PRACTICE_SYNC__PRIVACY_SALT"] = "test-salt-3b9d0c7e1a5f4d2b8c6e"
    assert first_run("run", "--source", "timetap").code == 0
    sold = sim.timetap.packages_sold()
    client_id = sold[0]["client"]["clientId"]
    theirs = sorted(s["packageSoldId"] for s in sold if s["client"]["clientId"] == client_id)
    refunded = next(s for s in sold if s["client"]["clientId"] != client_id)["packageSoldId"]
    sim.timetap.refund(refunded)
    sim.add_fault(Fault(rf"/packageSold/client/{client_id}$", "500", status=404))
    result = env.run("run", "--source", "timetap")
    assert result.code == 0, result.stderr
    assert "1 TimeTap clients answered 404" in result.stdout
    # its sales are spared, and only they: another client's refunded sale still retires
    assert "timetap.packages_sold: 0 new, 0 changed, 1 retired" in result.stdout
    kept = env.query(
        "select package_sold_id from analytics.packages_sold where package_sold_id in "
        f"({', '.join(map(str, theirs))}) order by 1"
    )
    assert [r[0] for r in kept] == theirs
    assert env.query(
        "select count(*) from analytics.packages_sold where package_sold_id = ?", [refunded]
    ) == [(0,)]


def _a_client_and_another_clients_change(sim: Simulator) -> tuple[int, dict]:
    """A client with sales, and a sale of another client used once more upstream tonight."""
    sold = sim.timetap.packages_sold()
    client_id = sold[0]["client"]["clientId"]
    other = next(
        s for s in sold
        if s["client"]["clientId"] != client_id and s["usedQuantity"] < s["maxQuantity"]
    )  # fmt: skip
    sim.timetap.use_package(other["packageSoldId"])
    return client_id, other


@pytest.mark.parametrize(
    ("status", "said", "problem"),
    [
        (500, "kept failing", "its packages sold could not be read after every retry"),
        (403, "were refused", "its packages sold were refused with a fresh session token"),
    ],
)
def test_a_client_whose_list_keeps_failing_costs_the_others_nothing(
    sim: Simulator, env: Env, first_run, status: int, said: str, problem: str
) -> None:
    """One client answering 500 after every retry (or 403 with a fresh token) failed the whole
    TimeTap source: exit 4 (5), and every other client's changes waited for the vendor."""
    assert first_run("run", "--source", "timetap").code == 0
    client_id, other = _a_client_and_another_clients_change(sim)
    before = env.query(
        "select count(*) from analytics.packages_sold where client_id = ?", [client_id]
    )
    sim.add_fault(Fault(rf"/packageSold/client/{client_id}$", "500", status=status, times=50))
    env.vars.update(SOURCES__TIMETAP__MAX_ATTEMPTS="2", SOURCES__TIMETAP__BACKOFF_BASE="0.01")
    result = env.run("run", "--source", "timetap")
    assert result.code == 0, result.stderr
    assert f"1 TimeTap clients {said} for their packages sold (client {client_id})" in (
        result.stdout
    )
    assert env.query(
        "select used_quantity from analytics.packages_sold where package_sold_id = ?",
        [other["packageSoldId"]],
    ) == [(other["usedQuantity"] + 1,)]
    assert env.query(
        "select count(*) from analytics.packages_sold where client_id = ?", [client_id]
    ) == before  # not retired on a failure's word
    assert env.query(
        "select record_id, problem from analytics.data_issues where entity = 'client'"
    ) == [(str(client_id), problem)]


def test_many_failing_clients_are_timetap_failing(sim: Simulator, env: Env, first_run) -> None:
    """Past a few clients (or 2 x concurrency in a row) it is TimeTap that is broken: the source
    fails as before, and nothing of it is applied."""
    assert first_run("run", "--source", "timetap").code == 0
    before = env.query("select count(*), max(_dlt_load_id) from timetap.packages_sold")
    sim.add_fault(Fault(r"/packageSold/client/", "500", times=10_000))
    env.vars.update(SOURCES__TIMETAP__MAX_ATTEMPTS="1")
    result = env.run("run", "--source", "timetap")
    assert result.code == 4, result.stderr
    assert env.query("select count(*), max(_dlt_load_id) from timetap.packages_sold") == before


def test_a_garbled_client_id_list_entry_costs_the_others_nothing(
    sim: Simulator, env: Env, first_run
) -> None:
    """A null or -1 among the ids failed the whole source (exit 4). The client it stood for
    cannot be named, so no sale is retired that night; the others load, and it is reported."""
    assert first_run("run", "--source", "timetap").code == 0
    _, other = _a_client_and_another_clients_change(sim)
    removed = next(s for s in sim.timetap.packages_sold() if s is not other)
    sim.timetap.refund(removed["packageSoldId"])
    with answers_changed(sim, ["clientIdList"], lambda ids: [*ids, None, -1]):
        result = env.run("run", "--source", "timetap")
    assert result.code == 0, result.stderr
    assert "held 2 entries that are not client ids (null, -1)" in result.stdout
    assert env.query(
        "select used_quantity from analytics.packages_sold where package_sold_id = ?",
        [other["packageSoldId"]],
    ) == [(other["usedQuantity"] + 1,)]
    retired = "select count(*) from analytics.packages_sold where package_sold_id = ?"
    assert env.query(retired, [removed["packageSoldId"]]) == [(1,)]  # not tonight
    assert env.query(
        "select record_id, problem from analytics.data_issues where entity = 'client' order by 1"
    ) == [
        ("-1", "GET /clientIdList listed it, and it is not a client id"),
        ("null", "GET /clientIdList listed it, and it is not a client id"),
    ]
    assert env.run("run", "--source", "timetap").code == 0  # a clean list: retired now
    assert env.query(retired, [removed["packageSoldId"]]) == [(0,)]
