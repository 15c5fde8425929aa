"""`practice-sync run` against the Bizstim simulator over real sockets, as cron runs it."""

from __future__ import annotations

from pathlib import Path

from conftest import Env, make_env

from practice_sync.bizstim.settings import SESSION_FIELDS
from practice_sync.simulator import Simulator


def current_raw(env: Env) -> dict[str, dict[str, str | None]]:
    cols = ", ".join(f'"{c}"' for c in SESSION_FIELDS)
    rows = env.query(f"select {cols} from bizstim.sessions where _dlt_valid_to is null")
    return {r[0]: dict(zip(SESSION_FIELDS, r, strict=True)) for r in rows}


def upstream(sim: Simulator) -> dict[str, dict[str, str | None]]:
    return {r["id"]: {f: r.get(f) for f in SESSION_FIELDS} for r in sim.bizstim.rows()}


def test_first_load_matches_upstream_exactly(sim: Simulator, tmp_path: Path) -> None:
    env = make_env(sim, tmp_path, timetap=False)
    result = env.run("run")
    assert result.code == 0, result.stderr
    assert current_raw(env) == upstream(sim)
    # every row carries the account zone of its response
    assert env.query("select distinct timezone from bizstim.sessions") == [(sim.bizstim.timezone,)]
    # one analytics row per session, each exactly once
    ids = [r[0] for r in env.query("select session_id from analytics.sessions order by 1")]
    assert ids == sorted(int(i) for i in upstream(sim))
    assert "bizstim: ok" in result.stdout
    assert f"bizstim.sessions: {len(ids):,} new, 0 changed, 0 retired" in result.stdout
    assert "timetap: skipped" in result.stdout


def test_pages_are_fetched_concurrently_and_overlap_by_one_row(
    sim: Simulator, tmp_path: Path
) -> None:
    env = make_env(sim, tmp_path, timetap=False)
    env.vars["SOURCES__BIZSTIM__PAGE_SIZE"] = "100"
    env.vars["SOURCES__BIZSTIM__CONCURRENCY"] = "3"
    sim.latency = 0.05
    sim.reset_log()
    assert env.run("run").code == 0
    paths = [p for _, p, status in sim.request_log if p.startswith("/bizstim") and status == 200]
    starts = sorted(int(p.split("/")[-2]) for p in paths)
    # 600 sessions in pages of 100 that share one row: starts 0, 99, 198, ...
    assert starts == list(range(0, 600 - 1, 99))
    # the six pages after the first go three at a time: the setting bounds requests on the
    # wire, although the client runs more threads than that (some decode while others fetch)
    assert sim.peak_in_flight == 3
    assert current_raw(env) == upstream(sim)


def test_rerun_without_changes_writes_nothing(sim: Simulator, env: Env, first_run) -> None:
    assert first_run("run", "--source", "bizstim").code == 0
    versions = env.query("select count(*), max(_dlt_load_id) from bizstim.sessions")
    result = env.run("run", "--source", "bizstim")
    assert result.code == 0, result.stderr
    assert env.query("select count(*), max(_dlt_load_id) from bizstim.sessions") == versions
    assert "bizstim.sessions: 0 new, 0 changed, 0 retired" in result.stdout


def test_a_night_of_changes_is_reflected_exactly(sim: Simulator, env: Env, first_run) -> None:
    assert first_run("run", "--source", "bizstim").code == 0
    before = current_raw(env)
    night = sim.bizstim.night_of_changes(edit=0.05, delete=0.02, new=0.03, seed=3)
    edited, deleted, added = night["edited"], night["deleted"], night["added"]
    result = env.run("run", "--source", "bizstim")
    assert result.code == 0, result.stderr
    after = current_raw(env)
    assert after == upstream(sim)
    assert set(before) - set(after) == set(deleted)
    assert set(after) - set(before) == set(added)
    expect = f"bizstim.sessions: {len(added)} new, {len(edited)} changed, {len(deleted)} retired"
    assert expect in result.stdout
    # history: an edited session has two versions, the old one closed when the new one opened
    sid = edited[0]
    history = env.query(
        "select version_number, is_current, valid_to is null from analytics.session_history "
        "where session_id = ? order by version_number",
        [int(sid)],
    )
    assert history == [(1, False, False), (2, True, True)]
    # a deleted session leaves the current table but stays in history
    gone = int(deleted[0])
    assert env.query("select count(*) from analytics.sessions where session_id = ?", [gone]) == [
        (0,)
    ]
    assert env.query(
        "select count(*) from analytics.session_history where session_id = ? and not is_current",
        [gone],
    ) == [(1,)]


def test_a_vendor_field_named_account_does_not_take_the_accounts_place(
    sim: Simulator, env: Env, first_run
) -> None:
    """The account is stamped on every row after the extract; a vendor field of that name took
    its place, and the session was filed under an account that does not exist."""
    assert first_run("run", "--source", "bizstim").code == 0
    session_id = sim.bizstim.rows()[3]["id"]
    sim.bizstim.edit(session_id, account='{"tier": "gold"}')
    result = env.run("run", "--source", "bizstim")
    assert result.code == 0, result.stderr
    assert env.query(
        "select account, account_from_vendor from bizstim.sessions "
        "where id = ? and _dlt_valid_to is null",
        [session_id],
    ) == [("default", '{"tier": "gold"}')]
    assert env.query("select distinct account from analytics.sessions") == [("default",)]
    assert env.query(
        "select count(*) from analytics.sessions where session_id = ?", [int(session_id)]
    ) == [(1,)]
