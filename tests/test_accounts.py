"""Several Bizstim accounts and TimeTap businesses in one warehouse, against one simulator that
tells them apart by their keys (overlapping ids, different time zones; tests/accounts_fixtures.py).

Expected values are computed from the simulator's own rows (zoneinfo for the instants), never
read back from the pipeline's code.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path

import pytest
from accounts_fixtures import ZONES, accounts_env, expected_sessions, two_accounts
from conftest import FAST_RETRIES, ROOT, Env, make_env, summary_lines

from practice_sync import config_check
from practice_sync.errors import ConfigError
from practice_sync.pipeline import Job, configured_loads
from practice_sync.simulator import Fault, Simulator


@pytest.fixture
def multi() -> Iterator[Simulator]:
    with two_accounts() as sim:
        yield sim


def loaded_sessions(env: Env) -> set[tuple]:
    rows = env.query(
        "select account, session_id, status, client_id, start_utc, end_utc, timezone "
        "from analytics.sessions"
    )
    for row in rows:
        assert row[6] == ZONES[row[0]]  # each account's own response's zone
    return {
        (a, s, st, c, su.astimezone(UTC), eu.astimezone(UTC)) for a, s, st, c, su, eu, _ in rows
    }


def test_two_accounts_of_each_vendor_load_into_one_warehouse_exactly(
    multi: Simulator, tmp_path: Path
) -> None:
    down, up = multi.accounts["downtown"], multi.accounts["uptown"]
    overlap = {r["id"] for r in down.bizstim.rows()} & {r["id"] for r in up.bizstim.rows()}
    assert len(overlap) > 100  # the same session ids in both accounts

    env = accounts_env(multi, tmp_path)
    result = env.run("run")
    assert result.code == 0, result.stderr
    expected = expected_sessions(multi)
    assert len(expected) == 420
    assert loaded_sessions(env) == expected
    # each (account, id) is one session; the key is unique
    assert env.query(
        "select count(*), count(distinct (account, session_id)) from analytics.sessions"
    ) == [(420, 420)]
    assert env.query("select count(*) from analytics.session_history where account is null") == [
        (0,)
    ]

    sold = {
        (name, s["packageSoldId"], s["usedQuantity"], s["client"]["clientId"])
        for name, account in multi.accounts.items()
        for s in account.timetap.packages_sold()
        if s["active"]
    }
    assert (
        set(
            env.query(
                "select account, package_sold_id, used_quantity, client_id from analytics.packages_sold"
            )
        )
        == sold
    )
    packages = {
        (name, p["packageId"], p["active"])
        for name, account in multi.accounts.items()
        for p in account.timetap.packages()
    }
    assert set(env.query("select account, package_id, active from analytics.packages")) <= packages
    assert {(a, p) for a, p, active in packages if active} == set(
        env.query("select account, package_id from analytics.packages where active")
    )
    # raw tables carry the account too, and the default account's dataset was never made
    assert env.query("select distinct account from bizstim_uptown.sessions") == [("uptown",)]
    assert env.query(
        "select count(*) from duckdb_tables() where schema_name in ('bizstim', 'timetap')"
    ) == [(0,)]
    lines = summary_lines(result.stdout)
    for label in ("bizstim.downtown", "bizstim.uptown", "timetap.downtown", "timetap.uptown"):
        assert any(line.startswith(f"{label}: ok") for line in lines), lines

    # a night of changes in one account touches only that account's rows
    night = up.bizstim.night_of_changes(seed=3)
    again = env.run("run", "--source", "bizstim")
    assert again.code == 0, again.stderr
    assert loaded_sessions(env) == expected_sessions(multi)
    retired = env.query(
        "select account, session_id from analytics.session_history where is_deleted"
    )
    assert sorted(retired) == sorted(("uptown", int(i)) for i in night["deleted"])


def test_one_accounts_bad_key_fails_only_that_account(multi: Simulator, tmp_path: Path) -> None:
    env = accounts_env(multi, tmp_path, uptown="not-the-key")
    result = env.run("run")
    assert result.code == 5, result.stderr
    lines = summary_lines(result.stdout)
    assert any(line.startswith("bizstim.uptown: FAILED") for line in lines), lines
    assert (
        "error: Bizstim account uptown rejected the credentials (HTTP 401): check "
        "sources.bizstim.uptown.api_key (SOURCES__BIZSTIM__UPTOWN__API_KEY)."
    ) in "\n".join(lines)
    assert env.query("select account, count(*) from analytics.sessions group by all") == [
        ("downtown", 240)
    ]
    assert env.query("select distinct account from analytics.packages_sold order by 1") == [
        ("downtown",),
        ("uptown",),
    ]
    history = env.query("select source, outcome, exit_code from ops.run_history order by source")
    assert history == [
        ("analytics", "ok", 0),
        ("bizstim.downtown", "ok", 0),
        ("bizstim.uptown", "failed", 5),
        ("timetap.downtown", "ok", 0),
        ("timetap.uptown", "ok", 0),
    ]


def test_one_accounts_outage_fails_only_that_account(multi: Simulator, tmp_path: Path) -> None:
    env = accounts_env(multi, tmp_path)
    env.vars["PRACTICE_SYNC__ACCOUNT_CONCURRENCY"] = "1"  # downtown first, then uptown
    # downtown's one page passes; every request after it (uptown's) answers 503
    multi.add_fault(Fault(path=r"/sessions/", kind="503", after=1, times=1000))
    result = env.run("run", "--source", "bizstim")
    assert result.code == 4, result.stderr
    lines = summary_lines(result.stdout)
    assert any(line.startswith("bizstim.uptown: FAILED") for line in lines), lines
    assert any(line.startswith("bizstim.downtown: ok") for line in lines), lines
    assert env.query("select account, count(*) from analytics.sessions group by all") == [
        ("downtown", 240)
    ]
    assert env.query(
        "select source, outcome, exit_code from ops.run_history where source like 'bizstim%' "
        "order by source"
    ) == [("bizstim.downtown", "ok", 0), ("bizstim.uptown", "failed", 4)]
    # accounts load at once: each retry warning says which one it is about
    assert "Bizstim account uptown /sessions: HTTP 503; retry 1 of" in result.stderr
    assert "Bizstim /sessions" not in result.stderr


def test_one_accounts_mass_deletion_is_withheld_for_it_alone(
    multi: Simulator, tmp_path: Path
) -> None:
    env = accounts_env(multi, tmp_path)
    assert env.run("run", "--source", "bizstim").code == 0
    down, up = multi.accounts["downtown"], multi.accounts["uptown"]
    for row in up.bizstim.rows()[:120]:  # two thirds of uptown vanish: a glitch
        up.bizstim.delete(row["id"])
    gone = down.bizstim.rows()[3]["id"]  # one downtown session really was deleted
    down.bizstim.delete(gone)
    result = env.run("run", "--source", "bizstim")
    assert result.code == 3, result.stderr
    assert "Bizstim lists 60 sessions but the warehouse holds 180" in result.stdout
    counts = env.query("select account, count(*) from analytics.sessions group by all order by 1")
    assert counts == [("downtown", 239), ("uptown", 180)]
    assert env.query("select account from analytics.session_history where is_deleted") == [
        ("downtown",)
    ]
    assert env.query(
        "select source, outcome, exit_code from ops.run_history where source like 'bizstim%' "
        "and finished_at = (select max(finished_at) from ops.run_history) order by source"
    ) == [("bizstim.downtown", "ok", 0), ("bizstim.uptown", "withheld", 3)]


def test_accounts_load_concurrently(multi: Simulator, tmp_path: Path) -> None:
    """The first account's first page is held until the second account's arrives: only loads
    running at the same time can get past it (no timing involved)."""
    both = threading.Event()
    waited: list[bool] = []
    multi.on_request(r"/sessions/0/", lambda: waited.append(both.wait(60)), times=1)
    multi.on_request(r"/sessions/0/", both.set, after=1, times=1)
    env = accounts_env(multi, tmp_path)
    result = env.run("run", "--source", "bizstim")
    assert result.code == 0, result.stderr
    assert waited == [True]
    assert env.query("select count(*) from analytics.sessions") == [(420,)]


def test_which_accounts_load_and_with_which_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCES__BIZSTIM__ACCOUNTS", '["downtown", "uptown"]')
    monkeypatch.setenv("SOURCES__BIZSTIM__API_KEY", "shared")  # the fallback of both
    monkeypatch.setenv("SOURCES__TIMETAP__API_KEY", "k")
    monkeypatch.setenv("SOURCES__TIMETAP__PRIVATE_KEY", "p")
    job = Job(database=tmp_path / "w.duckdb")
    loads = [(load.label, load.dataset, load.skipped) for load in configured_loads(job)]
    assert loads == [
        ("bizstim.downtown", "bizstim_downtown", None),
        ("bizstim.uptown", "bizstim_uptown", None),
        ("timetap", "timetap", None),
    ]
    job.accounts = {"bizstim": ["uptown"]}
    assert [load.label for load in configured_loads(job)] == ["bizstim.uptown", "timetap"]
    job.accounts = {"bizstim": ["midtown"]}
    with pytest.raises(ConfigError, match="Bizstim has no account 'midtown'"):
        configured_loads(job)

    monkeypatch.delenv("SOURCES__BIZSTIM__API_KEY")
    monkeypatch.setenv("SOURCES__BIZSTIM__DOWNTOWN__API_KEY", "own")
    job.accounts = None
    with pytest.raises(ConfigError) as missing:
        configured_loads(job)
    assert str(missing.value).startswith(
        "Bizstim account uptown was asked for but has no credentials: set "
        "sources.bizstim.uptown.api_key (SOURCES__BIZSTIM__UPTOWN__API_KEY)"
    )


def test_account_settings_are_checked_before_anything_runs() -> None:
    listed = {"SOURCES__BIZSTIM__ACCOUNTS": '["downtown", "uptown"]'}
    assert config_check.check({**listed, "SOURCES__BIZSTIM__UPTOWN__API_KEY": "k"}) is not None
    with pytest.raises(ConfigError) as typo:
        config_check.check({**listed, "SOURCES__BIZSTIM__UPTOWN__APIKEY": "k"})
    assert str(typo.value) == (
        "Unknown setting SOURCES__BIZSTIM__UPTOWN__APIKEY in the environment: did you mean "
        "SOURCES__BIZSTIM__UPTOWN__API_KEY?"
    )
    with pytest.raises(ConfigError) as unlisted:
        config_check.check({**listed, "SOURCES__BIZSTIM__UPTOWNN__API_KEY": "k"})
    assert "account 'uptownn', which sources.bizstim.accounts does not list" in str(unlisted.value)
    assert "did you mean 'uptown'?" in str(unlisted.value)
    with pytest.raises(ConfigError) as bad_list:
        config_check.check({"SOURCES__TIMETAP__ACCOUNTS": "uptown"})
    assert "SOURCES__TIMETAP__ACCOUNTS is 'uptown', which is not a list" in str(bad_list.value)
    with pytest.raises(ConfigError):
        config_check.check({**listed, "SOURCES__BIZSTIM__UPTOWN__CONCURRENCY": "many"})


def test_an_unlisted_account_section_in_a_toml_file_is_exit_2(env: Env, tmp_path: Path) -> None:
    settings = tmp_path / "settings" / ".dlt"
    settings.mkdir(parents=True)
    (settings / "config.toml").write_text(
        '[sources.bizstim]\naccounts = ["downtown"]\n\n[sources.bizstim.uptown]\nconcurrency = 2\n'
    )
    result = env.run("run", "--config-dir", str(settings))
    assert result.code == 2
    assert "is for account 'uptown', which sources.bizstim.accounts does not list" in result.stderr


# -- upgrade of a single-account warehouse made by the version before accounts ----------------

BEFORE_ACCOUNTS = "8f4187f"  # main just before multi-account support


def old_code(tmp_path: Path) -> Path:
    """The pre-accounts version's package, importable as `practice_sync` from a temp folder."""
    target = tmp_path / "old_code"
    package = target / "practice_sync"
    package.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", BEFORE_ACCOUNTS, "pipelines", "transforms"],
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    shutil.copytree(target / "pipelines", package, dirs_exist_ok=True)
    shutil.copytree(target / "transforms", package / "transforms")
    return target


def run_old(env: Env, code: Path) -> subprocess.CompletedProcess:
    script = (
        f"import sys; sys.path.insert(0, {str(code)!r}); import practice_sync; "
        f"assert practice_sync.__file__.startswith({str(code)!r}); "
        "from practice_sync.cli import main; sys.exit(main(['run']))"
    )
    return subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env={**os.environ, **env.vars},
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip


def snapshot(env: Env, table: str, order: str) -> list[tuple]:
    return env.query(f"select * exclude (account) from analytics.{table} order by {order}")


def test_a_single_account_warehouse_upgrades_in_place(sim: Simulator, tmp_path: Path) -> None:
    env = make_env(sim, tmp_path)
    env.vars.update(FAST_RETRIES)
    code = old_code(tmp_path)
    first = run_old(env, code)
    assert first.returncode == 0, first.stderr
    night = sim.bizstim.night_of_changes(seed=5)
    sim.timetap.use_package(sim.timetap.packages_sold()[0]["packageSoldId"])
    second = run_old(env, code)
    assert second.returncode == 0, second.stderr
    assert env.query(
        "select count(*) from information_schema.columns where column_name = 'account'"
    ) == [(0,)]
    raw_before = env.query(
        "select id, _dlt_id, _dlt_valid_from, _dlt_valid_to from bizstim.sessions order by all"
    )
    sold_before = env.query(
        "select package_sold_id, _dlt_id, _dlt_valid_from, _dlt_valid_to "
        "from timetap.packages_sold order by all"
    )
    loads_before = env.query("select count(*) from bizstim._dlt_loads")[0][0]
    history_before = env.query(
        "select * from analytics.session_history order by session_id, version_number"
    )
    assert any(row[1] == 2 for row in history_before)  # the night's edits made versions

    upgraded = env.run("run")
    assert upgraded.code == 0, upgraded.stderr
    # no reload: every raw version kept as it was, one more load, nothing new or retired
    assert (
        env.query(
            "select id, _dlt_id, _dlt_valid_from, _dlt_valid_to from bizstim.sessions order by all"
        )
        == raw_before
    )
    assert (
        env.query(
            "select package_sold_id, _dlt_id, _dlt_valid_from, _dlt_valid_to "
            "from timetap.packages_sold order by all"
        )
        == sold_before
    )
    assert env.query("select count(*) from bizstim._dlt_loads") == [(loads_before + 1,)]
    assert "0 new, 0 changed, 0 retired" in upgraded.stdout
    for raw in ("bizstim.sessions", "timetap.packages", "timetap.packages_sold"):
        assert env.query(f"select distinct account from {raw}") == [("default",)], raw
    assert snapshot(env, "session_history", "session_id, version_number") == history_before
    assert env.query("select distinct account from analytics.session_history") == [("default",)]
    deleted = env.query("select session_id from analytics.session_history where is_deleted")
    assert sorted(d for (d,) in deleted) == sorted(int(i) for i in night["deleted"])

    # the next night's changed package adds no column twice (dlt compares with the real table)
    package = next(p for p in sim.timetap.packages() if p["active"])
    sim.timetap.edit_package(package["packageId"], packageName="Renamed at the desk")
    later = env.run("run", "--source", "timetap")
    assert later.code == 0, later.stderr
    assert env.query(
        "select account, package_name from analytics.packages where package_id = ?",
        [package["packageId"]],
    ) == [("default", "Renamed at the desk")]


def test_a_policy_added_later_reaches_an_account_no_longer_listed(
    multi: Simulator, tmp_path: Path
) -> None:
    """An account taken out of `accounts` keeps its history (raw and analytics); a column
    dropped after that stayed there in plain text, the serving file and `sql` showing it."""
    env = accounts_env(multi, tmp_path)
    assert env.run("run", "--source", "bizstim").code == 0
    noted = "select count(*) from analytics.sessions where account = ? and private_note is not null"
    assert env.query(noted, ["uptown"])[0][0] > 0
    env.vars["SOURCES__BIZSTIM__ACCOUNTS"] = '["downtown"]'
    del env.vars["SOURCES__BIZSTIM__UPTOWN__API_KEY"]
    env.vars["SOURCES__BIZSTIM__PRIVACY"] = '{"drop": ["session_private_note"]}'
    result = env.run("run", "--source", "bizstim")
    assert result.code == 0, result.stderr
    assert "(an account no longer listed)" in result.stdout
    for account in ("downtown", "uptown"):
        assert env.query(noted, [account]) == [(0,)]
    raw = "select count(*) from bizstim_uptown.sessions where session_private_note is not null"
    assert env.query(raw) == [(0,)]
    assert env.query("select count(*) from analytics.sessions where account = 'uptown'")[0][0] > 0


def test_a_changed_salt_does_not_stop_every_night_over_an_account_no_longer_listed(
    multi: Simulator, tmp_path: Path
) -> None:
    """The salt check on an unlisted account's history made every night exit 2 after its loads,
    advising a full refresh that cannot reach that account."""
    env = accounts_env(multi, tmp_path)
    env.vars["SOURCES__BIZSTIM__PRIVACY"] = '{"hash": ["session_note"]}'
    env.vars["PRACTICE_SYNC__PRIVACY_SALT"] = "salt-A-0123456789abcdef"
    assert env.run("run", "--source", "bizstim").code == 0
    env.vars["SOURCES__BIZSTIM__ACCOUNTS"] = '["downtown"]'
    del env.vars["SOURCES__BIZSTIM__UPTOWN__API_KEY"]
    env.vars["PRACTICE_SYNC__PRIVACY_SALT"] = "salt-B-rotated-0123456789"
    refreshed = env.run("run", "--source", "bizstim", "--full-refresh")
    assert refreshed.code == 0, refreshed.stderr
    assert "bizstim_uptown keeps its history as it was" in refreshed.stdout
    night = env.run("run", "--source", "bizstim")
    assert night.code == 0, night.stderr
    assert env.query(
        "select source, outcome from ops.run_history where source like 'bizstim%' "
        "order by finished_at desc limit 1"
    ) == [("bizstim.downtown", "ok")]
