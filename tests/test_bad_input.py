"""Bad input from the API never crashes a run and never drops a record: each record loads, with
NULL where a value is unreadable, and each problem is a row in `analytics.data_issues`."""

from __future__ import annotations

from conftest import Env

from practice_sync.simulator import Fault, Simulator


def issues_for(env: Env, record_id: str) -> set[tuple[str, str]]:
    rows = env.query(
        "select field, problem from analytics.data_issues where record_id = ?", [record_id]
    )
    return set(rows)


def test_malformed_bizstim_rows_load_and_are_reported(sim: Simulator, env: Env, first_run) -> None:
    assert first_run("run", "--source", "bizstim").code == 0
    missing = sim.bizstim.add({"id": "900001"}, drop=("session_date", "session_status"))
    unknown = sim.bizstim.add({"id": "900002", "room_name": "Studio B"})
    retyped = sim.bizstim.add({"id": "900003", "slots": 12, "client_id": {"id": 5}})
    huge = sim.bizstim.add({"id": "900004", "session_description": "x" * 250_000})
    accented = sim.bizstim.add({"id": "900005", "session_note": "Zoë's café"})
    garbage = sim.bizstim.add({"id": "900006", "session_date": "2022-02-30", "slots": "lots"})
    # the page holding the new rows comes back once with Latin-1 bytes instead of UTF-8
    sim.add_fault(Fault(path=r"/sessions/", kind="latin1", times=1))

    result = env.run("run", "--source", "bizstim")
    assert result.code == 0, result.stderr

    ids = {r[0] for r in env.query("select session_id from analytics.sessions")}
    assert {int(i) for i in (missing, unknown, retyped, huge, accented, garbage)} <= ids
    assert ids == {int(r["id"]) for r in sim.bizstim.rows()}  # nothing dropped

    assert issues_for(env, missing) >= {
        ("session_date", "missing from the record"),
        ("session_status", "missing from the record"),
    }
    assert env.query(
        "select session_date, status from analytics.sessions where session_id = ?", [int(missing)]
    ) == [(None, None)]
    # an unknown field becomes a column; the run goes on
    assert env.query("select room_name from bizstim.sessions where id = ?", [unknown]) == [
        ("Studio B",)
    ]
    assert issues_for(env, unknown) == set()
    # a value whose type changed is loaded as text and reported; unreadable ones become NULL
    assert issues_for(env, retyped) >= {
        ("slots", "arrived as a number, not as text"),
        ("client_id", "arrived as an object, not as text"),
    }
    assert env.query(
        "select slots, client_id from analytics.sessions where session_id = ?", [int(retyped)]
    ) == [(12, None)]
    assert (
        "session_description",
        "unusually long value (250,000 characters), loaded in full",
    ) in issues_for(env, huge)
    assert env.query(
        "select length(description) from analytics.sessions where session_id = ?", [int(huge)]
    ) == [(250_000,)]
    assert ("session_note", "invalid UTF-8 bytes were replaced") in issues_for(env, accented)
    assert ("session_date", "not a valid date") in issues_for(env, garbage)
    assert ("slots", "not an integer") in issues_for(env, garbage)


def test_unknown_time_zone_keeps_every_session(sim: Simulator, env: Env) -> None:
    sim.bizstim.timezone = "Mars/Olympus_Mons"
    result = env.run("run", "--source", "bizstim")
    assert result.code == 0, result.stderr
    total = len(sim.bizstim.rows())
    assert env.query(
        "select count(*), count(start_utc), count(local_start) from analytics.sessions"
    ) == [(total, 0, env.query("select count(local_start) from analytics.sessions")[0][0])]
    zone_issues = env.query(
        "select count(*), min(value) from analytics.data_issues where problem = 'unknown time zone'"
    )
    assert zone_issues == [(total, "Mars/Olympus_Mons")]


def test_timetap_bad_values_are_reported_not_dropped(sim: Simulator, env: Env) -> None:
    package = sim.timetap.active_packages()[0]["packageId"]
    sim.timetap.edit_package(package, price="free", serviceIds="not-a-list", newField=[1, 2])
    result = env.run("run", "--source", "timetap")
    assert result.code == 0, result.stderr
    assert env.query(
        "select price from analytics.packages where package_id = ?", [package]
    ) == [(None,)]
    fields = {f for f, _ in issues_for(env, str(package))}
    assert {"price", "service_ids"} <= fields
    assert env.query("select new_field from timetap.packages where package_id = ?", [str(package)]) == [
        ("[1,2]",)
    ]
    sold = {r[0] for r in env.query("select package_sold_id from analytics.packages_sold")}
    assert sold == {s["packageSoldId"] for s in sim.timetap.packages_sold()}


def test_vendor_fields_named_like_the_pipelines_columns_load_under_their_own_names(
    sim: Simulator, env: Env, first_run
) -> None:
    """A field whose name dlt spells like another column's (`sessionDate`) failed every night
    (exit 1, dlt's name collision); one named like a column of ours was dropped (`_vanished`,
    the record vanished with exit 0) or overwritten (`timezone`, `_ingest_issues`)."""
    assert first_run("run").code == 0
    odd = {
        "sessionDate": "2030-01-01", "Session_Date": "2030-01-02", "_dlt_id": "abc",
        "_vanished": "0", "timezone": "Mars/Olympus", "_ingest_issues": "[]",
    }  # fmt: skip
    added = sim.bizstim.add({"id": "900100", **odd})
    result = env.run("run", "--source", "bizstim")
    assert result.code == 0, result.stderr
    assert "1 new" in result.stdout
    columns = {
        name
        for (name,) in env.query(
            "select column_name from information_schema.columns "
            "where table_schema = 'bizstim' and table_name = 'sessions'"
        )
    }
    kept = {
        "session_date_from_vendor", "session_date_from_vendor_2", "_dlt_id_from_vendor",
        "_vanished_from_vendor", "timezone_from_vendor", "_ingest_issues_from_vendor",
    }  # fmt: skip
    assert kept <= columns
    row = env.query(
        "select session_date, timezone, _ingest_issues, "
        + ", ".join(sorted(kept))
        + f" from bizstim.sessions where id = '{added}' and _dlt_valid_to is null"
    )
    upstream = next(r for r in sim.bizstim.rows() if r["id"] == added)
    zone = env.query("select any_value(timezone) from bizstim.sessions where id <> ?", [added])
    assert row == [
        (upstream["session_date"], zone[0][0], None,
         "abc", "[]", "0", "2030-01-01", "2030-01-02", "Mars/Olympus"),
    ]  # fmt: skip
    count = "select count(*) from analytics.sessions where session_id = ?"
    assert env.query(count, [int(added)]) == [(1,)]


def test_a_session_listed_twice_loads_once_and_the_night_goes_on(
    sim: Simulator, env: Env, first_run, monkeypatch
) -> None:
    """Nothing moving, one session listed twice: every read saw the repeat, so the account
    failed every night (exit 4, "changed while they were being read") and no edit loaded."""
    import json

    assert first_run("run", "--source", "bizstim").code == 0
    edited = sim.bizstim.rows()[40]["id"]
    sim.bizstim.edit(edited, session_status="1")
    rows = sim.bizstim.rows()
    listing = rows[:11] + [rows[10]] + rows[11:]
    real = sim.bizstim._page

    def page(start: int, limit: int) -> bytes:
        body = json.loads(real(start, limit))
        body.update(total=len(listing), response=listing[start : start + limit])
        return json.dumps(body).encode()

    monkeypatch.setattr(sim.bizstim, "_page", page)
    result = env.run("run", "--source", "bizstim")
    assert result.code == 0, result.stderr
    assert f"1 session ids were listed twice by Bizstim in two reads of the listing ({rows[10]['id']})" in result.stdout
    assert "1 changed" in result.stdout
    status = "select session_status from bizstim.sessions where id = ? and _dlt_valid_to is null"
    assert env.query(status, [edited]) == [("1",)]
    assert env.query(
        "select count(*) from bizstim.sessions where id = ? and _dlt_valid_to is null",
        [rows[10]["id"]],
    ) == [(1,)]


def test_a_session_listed_twice_keeps_its_first_copy_night_after_night(
    tmp_path, monkeypatch
) -> None:
    """With the decode workers leaving out current rows (40+ pages), an unchanged first copy
    never reached the check, the second was kept in its place, and the session flipped between
    its two copies every night, a new version each time."""
    import orjson
    from conftest import make_env

    from practice_sync.simulator import bizstim as simulated

    with Simulator(sessions=300, clients=10, packages=3, edge_cases=False) as sim:
        twice = sim.bizstim.rows()[200]["id"]
        real = simulated.Bizstim._page

        def page(self, start: int, limit: int) -> bytes:  # noqa: ANN001
            body = orjson.loads(real(self, start, limit))
            for n, row in enumerate(body["response"]):
                if start + n == 280:  # a second copy of session `twice`, another note
                    row.update(id=twice, session_note="the second copy")
            return orjson.dumps(body)

        monkeypatch.setattr(simulated.Bizstim, "_page", page)
        sim.latency = 0.05  # the workers are ready before the last pages come
        env = make_env(sim, tmp_path, timetap=False)
        env.vars["SOURCES__BIZSTIM__PAGE_SIZE"] = "5"  # 75 pages: decoded by the workers
        first = next(r for r in sim.bizstim.rows() if r["id"] == twice)["session_note"]
        for _ in range(3):
            assert env.run("run").code == 0
            assert env.query(
                "select session_note from bizstim.sessions where id = ? "
                "and _dlt_valid_to is null", [twice]
            ) == [(first,)]  # fmt: skip
        assert env.query("select count(*) from bizstim.sessions where id = ?", [twice]) == [(1,)]
