"""A sweep that looks like a wipe-out must not retire the history, until a person confirms."""

from __future__ import annotations

from conftest import Env

from practice_sync.simulator import Fault, Simulator


def current_ids(env: Env) -> set[str]:
    return {r[0] for r in env.query("select id from bizstim.sessions where _dlt_valid_to is null")}


def test_total_zero_glitch_retires_nothing(sim: Simulator, env: Env) -> None:
    assert env.run("run").code == 0
    before = current_ids(env)
    sim.add_fault(Fault(path=r"/sessions/", kind="empty", times=1))
    result = env.run("run", "--source", "bizstim")
    assert result.code == 3
    assert f"Bizstim lists 0 sessions but the warehouse holds {len(before):,}" in result.stderr
    assert "--allow-deletions" in result.stderr
    assert current_ids(env) == before
    assert env.query("select count(*) from analytics.sessions") == [(len(before),)]


def test_far_fewer_rows_withholds_deletions_but_applies_edits(sim: Simulator, env: Env) -> None:
    assert env.run("run").code == 0
    rows = sim.bizstim.rows()
    kept, edited = rows[0]["id"], rows[1]["id"]
    sim.bizstim.edit(edited, session_description="Renamed by the front desk")
    vanished = [r["id"] for r in rows[len(rows) // 2 :]]
    for sid in vanished:
        sim.bizstim.delete(sid)
    result = env.run("run", "--source", "bizstim")
    assert result.code == 3
    assert current_ids(env) == {r["id"] for r in rows}  # nothing retired
    assert env.query(
        "select description from analytics.sessions where session_id = ?", [int(edited)]
    ) == [("Renamed by the front desk",)]
    assert env.query("select count(*) from bizstim.sessions where id = ?", [kept]) == [
        (1,)
    ]  # untouched sessions got no new version

    confirmed = env.run("run", "--source", "bizstim", "--allow-deletions")
    assert confirmed.code == 0, confirmed.stderr
    assert current_ids(env) == {r["id"] for r in sim.bizstim.rows()}
    assert f"{len(vanished)} retired" in confirmed.stdout


def test_a_few_deletions_are_applied_without_asking(sim: Simulator, env: Env) -> None:
    assert env.run("run").code == 0
    gone = sim.bizstim.rows()[5]["id"]
    sim.bizstim.delete(gone)
    result = env.run("run", "--source", "bizstim")
    assert result.code == 0, result.stderr
    assert gone not in current_ids(env)


def test_empty_client_list_does_not_retire_packages_sold(sim: Simulator, env: Env) -> None:
    assert env.run("run").code == 0
    before = env.query("select count(*) from analytics.packages_sold")
    sim.add_fault(Fault(path=r"/clientIdList", kind="empty", times=1))
    result = env.run("run", "--source", "timetap")
    assert result.code == 3
    assert "TimeTap lists 0 packages sold" in result.stderr
    assert env.query("select count(*) from analytics.packages_sold") == before


def test_mass_package_retirement_is_withheld(sim: Simulator, env: Env) -> None:
    assert env.run("run").code == 0
    active = [p["packageId"] for p in sim.timetap.active_packages()]
    for pid in active[: len(active) // 2]:
        sim.timetap.retire_package(pid)
    result = env.run("run", "--source", "timetap")
    assert result.code == 3
    assert "none were marked inactive" in result.stderr
    assert env.query("select count(*) from analytics.packages") == [(len(active),)]
    confirmed = env.run("run", "--source", "timetap", "--allow-deletions")
    assert confirmed.code == 0, confirmed.stderr
    assert env.query("select count(*) from analytics.packages") == [
        (len(active) - len(active) // 2,)
    ]
