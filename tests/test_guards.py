"""A sweep that looks like a wipe-out must not retire the history, until a person confirms."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Env, make_env

from practice_sync.simulator import Fault, Simulator


def current_ids(env: Env) -> set[str]:
    return {r[0] for r in env.query("select id from bizstim.sessions where _dlt_valid_to is null")}


def test_total_zero_glitch_retires_nothing(sim: Simulator, env: Env, first_run) -> None:
    assert first_run("run").code == 0
    before = current_ids(env)
    sim.add_fault(Fault(path=r"/sessions/", kind="empty", times=1))
    result = env.run("run", "--source", "bizstim")
    assert result.code == 3
    assert f"Bizstim lists 0 sessions but the warehouse holds {len(before):,}" in result.stderr
    assert "--allow-deletions" in result.stderr
    assert current_ids(env) == before
    assert env.query("select count(*) from analytics.sessions") == [(len(before),)]


def test_a_withheld_source_says_so_in_json_logs_as_in_the_history(
    sim: Simulator, env: Env, first_run
) -> None:
    assert first_run("run").code == 0
    sim.add_fault(Fault(path=r"/sessions/", kind="empty", times=1))
    result = env.run("run", "--source", "bizstim", "--log-format", "json")
    assert result.code == 3
    events = [json.loads(line) for line in result.stdout.splitlines()]
    (finished,) = [e for e in events if e["event"] == "source_finished"]
    assert finished["outcome"] == "withheld"  # was "ok"
    assert env.query(
        "select outcome from ops.run_history where source = 'bizstim' "
        "order by finished_at desc limit 1"
    ) == [("withheld",)]


def test_far_fewer_rows_withholds_deletions_but_applies_edits(
    sim: Simulator, env: Env, first_run
) -> None:
    assert first_run("run").code == 0
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


def test_a_serving_file_that_cannot_be_replaced_outranks_a_withheld_deletion(
    sim: Simulator, env: Env, first_run, tmp_path
) -> None:
    """Exit 3 asks for `--allow-deletions`; the stale serving file needs exit 8 (the README:
    the first failure's code wins over 3). `_close` kept the 3."""
    assert first_run("run").code == 0
    for row in sim.bizstim.rows()[::2]:
        sim.bizstim.delete(row["id"])
    blocked = tmp_path / "serving.duckdb"
    blocked.mkdir()  # a folder where the file should be: renaming the new file over it fails
    env.vars["PRACTICE_SYNC__SERVE_PATH"] = str(blocked)
    result = env.run("run", "--source", "bizstim")
    assert result.code == 8, result.stderr
    assert "none were retired" in result.stderr
    assert f"could not be published to {blocked}" in result.stderr
    # the history said ok for the analytics of a night whose readers kept stale data
    ((outcome, code, error),) = env.query(
        "select outcome, exit_code, error from ops.run_history where source = 'analytics' "
        "order by finished_at desc limit 1"
    )
    assert (outcome, code) == ("failed", 8)
    assert f"could not be published to {blocked}" in error


def test_a_few_deletions_are_applied_without_asking(sim: Simulator, env: Env, first_run) -> None:
    assert first_run("run").code == 0
    gone = sim.bizstim.rows()[5]["id"]
    sim.bizstim.delete(gone)
    result = env.run("run", "--source", "bizstim")
    assert result.code == 0, result.stderr
    assert gone not in current_ids(env)


def test_empty_client_list_does_not_retire_packages_sold(
    sim: Simulator, env: Env, first_run
) -> None:
    assert first_run("run").code == 0
    before = env.query("select count(*) from analytics.packages_sold")
    sim.add_fault(Fault(path=r"/clientIdList", kind="empty", times=1))
    result = env.run("run", "--source", "timetap")
    assert result.code == 3
    assert "TimeTap lists 0 packages sold" in result.stderr
    assert env.query("select count(*) from analytics.packages_sold") == before


def test_mass_package_retirement_is_withheld(sim: Simulator, env: Env, first_run) -> None:
    assert first_run("run").code == 0
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


# One table for the one guard: every resource, a few vanished (retired at once), many vanished
# (withheld, exit 3, the run says so), then confirmed with --allow-deletions.
def _vanish_sessions(sim: Simulator, n: int) -> None:
    for row in sim.bizstim.rows()[:n]:
        sim.bizstim.delete(row["id"])


def _retire_packages(sim: Simulator, n: int) -> None:
    for package in sim.timetap.active_packages()[:n]:
        sim.timetap.retire_package(package["packageId"])


def _refund_sales(sim: Simulator, n: int) -> None:
    for sold in sim.timetap.packages_sold()[:n]:
        sim.timetap.refund(sold["packageSoldId"])


GUARDED = {
    "sessions": (
        "bizstim",
        _vanish_sessions,
        lambda sim: len(sim.bizstim.rows()),
        "select count(*) from analytics.sessions",
        "none were retired",
    ),
    "packages": (
        "timetap",
        _retire_packages,
        lambda sim: len(sim.timetap.active_packages()),
        "select count(*) from analytics.packages",
        "none were marked inactive",
    ),
    "packages_sold": (
        "timetap",
        _refund_sales,
        lambda sim: len(sim.timetap.packages_sold()),
        "select count(*) from analytics.packages_sold",
        "none were retired",
    ),
}


@pytest.mark.parametrize("resource", sorted(GUARDED))
def test_the_one_guard_for_every_resource(
    sim: Simulator, env: Env, resource: str, first_run
) -> None:
    source, vanish, upstream_count, count_sql, withheld = GUARDED[resource]
    assert first_run("run", "--source", source).code == 0
    held = upstream_count(sim)
    assert env.query(count_sql) == [(held,)]

    vanish(sim, 1)  # a few: retired without asking
    result = env.run("run", "--source", source)
    assert result.code == 0, result.stderr
    assert env.query(count_sql) == [(held - 1,)] == [(upstream_count(sim),)]

    vanish(sim, (held - 1) // 2)  # half of what is left: withheld
    result = env.run("run", "--source", source)
    assert result.code == 3, result.stderr
    assert withheld in result.stderr and "--allow-deletions" in result.stderr
    assert env.query(count_sql) == [(held - 1,)]

    confirmed = env.run("run", "--source", source, "--allow-deletions")
    assert confirmed.code == 0, confirmed.stderr
    assert env.query(count_sql) == [(upstream_count(sim),)]


def test_a_session_dropped_by_a_listing_glitch_stays_current(sim: Simulator, env: Env) -> None:
    assert env.run("run", "--source", "bizstim").code == 0
    rows = sim.bizstim.rows()
    glitched, deleted = rows[3], rows[4]
    sim.bizstim.hide(glitched["id"])  # missing from /sessions, still answered by /session/{id}
    sim.bizstim.delete(deleted["id"])  # really gone: /session/{id} answers 404
    result = env.run("run", "--source", "bizstim")
    assert result.code == 0, result.stderr
    assert glitched["id"] in current_ids(env) and deleted["id"] not in current_ids(env)
    assert "1 retired" in result.stdout
    lookups = [p for _, p, _ in sim.request_log if "/session/" in p]
    assert sorted(lookups) == sorted(
        f"/bizstim/api/session/{r['id']}" for r in (glitched, deleted)
    )


def test_confirmations_per_run_are_bounded_and_the_rest_wait(
    sim: Simulator, env: Env, first_run
) -> None:
    env.vars["SOURCES__BIZSTIM__MAX_CONFIRMATIONS"] = "2"
    assert first_run("run", "--source", "bizstim").code == 0
    gone = [r["id"] for r in sim.bizstim.rows()[10:15]]
    for session_id in gone:
        sim.bizstim.delete(session_id)
    result = env.run("run", "--source", "bizstim")
    assert result.code == 0, result.stderr
    assert "2 retired" in result.stdout
    assert "3 vanished sessions beyond sources.bizstim.max_confirmations (2)" in result.stdout
    assert len(set(gone) & current_ids(env)) == 3  # kept current until confirmed
    assert env.run("run", "--source", "bizstim").code == 0
    assert env.run("run", "--source", "bizstim").code == 0
    assert set(gone) & current_ids(env) == set()


def test_a_withheld_mass_deletion_says_how_many_were_confirmed_gone(
    sim: Simulator, env: Env, first_run
) -> None:
    assert first_run("run", "--source", "bizstim").code == 0
    rows = sim.bizstim.rows()
    for row in rows[:100]:
        sim.bizstim.delete(row["id"])  # really deleted
    for row in rows[100:300]:
        sim.bizstim.hide(row["id"])  # a listing glitch
    result = env.run("run", "--source", "bizstim")
    assert result.code == 3
    assert "300 vanished (the API confirmed 100 of them gone)" in result.stderr
    assert len(current_ids(env)) == len(rows)


def test_allow_deletions_looks_up_every_vanished_session(
    sim: Simulator, env: Env, first_run
) -> None:
    """With the per-run bound, `--allow-deletions` retired 5 of 150 deleted sessions, and the
    next nights withheld the rest again (exit 3) until a person confirmed once more."""
    env.vars["SOURCES__BIZSTIM__MAX_CONFIRMATIONS"] = "5"
    assert first_run("run", "--source", "bizstim").code == 0
    gone = {r["id"] for r in sim.bizstim.rows()[:150]}
    for session_id in gone:
        sim.bizstim.delete(session_id)
    assert env.run("run", "--source", "bizstim").code == 3
    confirmed = env.run("run", "--source", "bizstim", "--allow-deletions")
    assert confirmed.code == 0, confirmed.stderr
    assert "150 retired" in confirmed.stdout
    assert gone & current_ids(env) == set()
    assert env.run("run", "--source", "bizstim").code == 0


@pytest.mark.parametrize("spelled", ["False", "0"])
def test_a_package_retired_or_unreadable_is_not_withheld_every_night(
    tmp_path: Path, spelled: str
) -> None:
    """The guard read `active` as raw text, the transforms as `parse_bool`: a package stored
    as 'False' was retired in analytics but live to the guard, and once off the listing it
    was withheld (exit 3) every night, `--allow-deletions` or not. One with an unreadable
    '0' that TimeTap still has is stored as it is, and withholds nothing either."""
    with Simulator(packages=3, clients=10, edge_cases=False) as small:
        env = make_env(small, tmp_path, bizstim=False)
        package = small.timetap.active_packages()[0]["packageId"]
        small.timetap.edit_package(package, active=spelled)  # a string: still listed
        assert env.run("run").code == 0
        small.timetap.edit_package(package, active=False if spelled == "False" else 0)
        for _ in range(2):  # off the listing now; GET /package/{id} still has it
            night = env.run("run")
            assert night.code == 0, night.stderr
        live = env.query("select count(*) from analytics.packages where package_id = ?", [package])
        assert live == [(0 if spelled == "False" else 1,)]


def test_a_vanished_package_is_looked_up_by_its_own_path() -> None:
    """An id such as `A B` made a malformed URL (curl error 3), retried until the account
    failed, every night once the package left the listing."""
    from practice_sync.errors import NotFound
    from practice_sync.timetap import helpers

    asked: list[str] = []

    class Api:
        def get_response(self, path: str, check: object = None) -> object:
            asked.append(path)
            raise NotFound("gone", path)

    assert helpers._vanished_package(Api(), "A B/1") is None  # type: ignore[arg-type]
    assert asked == ["/package/A%20B%2F1"]
