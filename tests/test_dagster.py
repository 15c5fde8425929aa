"""The Dagster definitions (`practice_sync.dagster`) materialised against the simulator.

Dagster runs the CLI's own job, so the warehouse must hold exactly what upstream holds, each
source's asset must carry the summary's figures, and a failing source must fail only its own
asset, with the very sentence and exit code `practice-sync run` gives for the same settings.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from conftest import Env, make_env, messages

from practice_sync import warehouse
from practice_sync.dagster import (
    ANALYTICS,
    RunSettings,
    asset_specs,
    build_assets,
    practice_sync_assets,
    source_key,
)
from practice_sync.simulator import Simulator

BIZSTIM = source_key("bizstim")
TIMETAP = source_key("timetap")


def use(env: Env, monkeypatch: pytest.MonkeyPatch) -> Env:
    """Give this process the settings a scheduler gives Dagster's run worker."""
    for name, value in env.vars.items():
        monkeypatch.setenv(name, value)
    return env


def materialize(
    selection: list[dg.AssetKey] | None = None,
    instance: dg.DagsterInstance | None = None,
    assets: dg.AssetsDefinition | None = None,
    **settings: object,
) -> dg.ExecuteInProcessResult:
    config = dg.RunConfig({"practice_sync_run": RunSettings(**settings)})
    return dg.materialize(
        [assets or practice_sync_assets],
        selection=selection,
        run_config=config,
        instance=instance or dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


def materialized(result: dg.ExecuteInProcessResult) -> dict[dg.AssetKey, dict[str, object]]:
    """Asset -> its materialisation's metadata, as plain values."""
    out = {}
    for event in result.get_asset_materialization_events():
        assert event.asset_key is not None
        metadata = event.step_materialization_data.materialization.metadata
        out[event.asset_key] = {name: value.value for name, value in metadata.items()}
    return out


def the_failure(result: dg.ExecuteInProcessResult) -> tuple[str | None, dict[str, object]]:
    """The failed step's description and metadata (there is one step)."""
    (event,) = result.get_step_failure_events()
    data = event.step_failure_data.user_failure_data
    assert data is not None
    return data.description, {name: value.value for name, value in data.metadata.items()}


def test_materialising_every_asset_loads_the_warehouse_and_reports_each_source(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = use(make_env(sim, tmp_path), monkeypatch)
    result = materialize()
    assert result.success
    assets = materialized(result)
    assert set(assets) == {BIZSTIM, TIMETAP, ANALYTICS}

    session_ids = sorted(int(row["id"]) for row in sim.bizstim.rows())
    sold_ids = sorted(s["packageSoldId"] for s in sim.timetap.packages_sold())
    package_ids = sorted(p["packageId"] for p in sim.timetap.active_packages())
    assert [r[0] for r in env.query("select session_id from analytics.sessions order by 1")] == (
        session_ids
    )
    assert [r[0] for r in env.query("select package_id from analytics.packages order by 1")] == (
        package_ids
    )
    sold = env.query("select package_sold_id from analytics.packages_sold order by 1")
    assert [r[0] for r in sold] == sold_ids

    bizstim, timetap, analytics = assets[BIZSTIM], assets[TIMETAP], assets[ANALYTICS]
    assert (bizstim["outcome"], bizstim["exit_code"]) == ("ok", 0)
    assert bizstim["sessions_new"] == bizstim["sessions_current"] == len(session_ids)
    assert bizstim["sessions_retired"] == 0
    assert timetap["packages_sold_current"] == len(sold_ids)
    assert timetap["requests"] == sum(
        path.startswith("/timetap/") for _, path, _ in sim.request_log
    )
    assert analytics["rows_sessions"] == len(session_ids)
    assert analytics["rows_packages_sold"] == len(sold_ids)
    (issues,) = env.query("select count(*) from analytics.data_issues")
    assert analytics["rows_data_issues"] == issues[0]
    # one night, one run: the same run id on every asset and in ops.run_history
    assert bizstim["run_id"] == timetap["run_id"] == analytics["run_id"]
    history = env.query("select source, outcome, exit_code, run_id from ops.run_history order by 1")
    assert history == [
        ("analytics", "ok", 0, bizstim["run_id"]),
        ("bizstim", "ok", 0, bizstim["run_id"]),
        ("timetap", "ok", 0, bizstim["run_id"]),
    ]
    serving = Path(str(analytics["serving_file"]))
    assert Env({}, serving).query("select count(*) from analytics.sessions") == [
        (len(session_ids),)
    ]


def test_a_rejected_key_fails_only_its_asset_with_the_clis_sentence_and_exit_code(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = make_env(sim, tmp_path)
    env.vars["SOURCES__TIMETAP__PRIVATE_KEY"] = "not-the-private-key"
    use(env, monkeypatch)
    instance = dg.DagsterInstance.ephemeral()
    result = materialize(instance=instance)
    assert not result.success
    assert set(materialized(result)) == {BIZSTIM, ANALYTICS}
    # planned, not materialised, in a failed run: how Dagster tells a failed asset
    stored = [entry.dagster_event for entry in instance.all_logs(result.run_id)]
    planned = {
        e.asset_key for e in stored if e and e.event_type_value == "ASSET_MATERIALIZATION_PLANNED"
    }
    assert planned == {BIZSTIM, TIMETAP, ANALYTICS}
    description, metadata = the_failure(result)
    (observation,) = result.get_asset_observation_events()
    assert observation.asset_key == TIMETAP
    noted = observation.asset_observation_data.asset_observation
    assert noted.description == description
    assert noted.metadata["exit_code"].value == 5
    assert metadata["exit_code"] == 5
    assert metadata["failed"] == "timetap/default"
    assert "not-the-private-key" not in str(description)
    # Bizstim and the rebuild went ahead
    sessions = env.query("select count(*) from analytics.sessions")
    assert sessions == [(len(sim.bizstim.rows()),)]
    history = env.query("select source, outcome, exit_code, error from ops.run_history order by 1")
    assert history == [
        ("analytics", "ok", 0, None),
        ("bizstim", "ok", 0, None),
        ("timetap", "failed", 5, description),
    ]

    # the CLI, given the same settings and a warehouse of its own, says and exits the same
    cli = Env({**env.vars}, tmp_path / "cli" / "practice_sync.duckdb")
    cli.database.parent.mkdir()
    cli.vars["DESTINATION__DUCKDB__CREDENTIALS"] = str(cli.database)
    ran = cli.run("run")
    assert ran.code == 5
    assert f"practice-sync: {description}" in messages(ran.stderr)


def test_a_withheld_mass_deletion_loads_fails_the_run_and_is_confirmed_by_run_config(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = use(make_env(sim, tmp_path, timetap=False), monkeypatch)
    assert materialize([BIZSTIM]).success
    rows = sim.bizstim.rows()
    vanished = [row["id"] for row in rows[len(rows) // 2 :]]
    for session_id in vanished:
        sim.bizstim.delete(session_id)

    withheld = materialize([BIZSTIM])
    assert not withheld.success
    loaded = materialized(withheld)[BIZSTIM]  # edits and new rows did load: it is materialised
    assert (loaded["outcome"], loaded["exit_code"], loaded["sessions_retired"]) == (
        "withheld",
        3,
        0,
    )
    description, metadata = the_failure(withheld)
    assert loaded["withheld"] == description
    assert "--allow-deletions" in str(description)
    assert (metadata["exit_code"], metadata["failed"]) == (3, "bizstim/default")
    current = env.query("select count(*) from bizstim.sessions where _dlt_valid_to is null")
    assert current == [(len(rows),)]

    confirmed = materialize([BIZSTIM], allow_deletions=True)  # the launchpad's `--allow-deletions`
    assert confirmed.success
    retired = materialized(confirmed)[BIZSTIM]
    assert (retired["outcome"], retired["sessions_retired"]) == ("ok", len(vanished))
    assert env.query("select count(*) from analytics.sessions") == [(len(rows) - len(vanished),)]


def test_a_held_warehouse_fails_the_launch_as_the_cli_does_and_changes_nothing(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = use(make_env(sim, tmp_path), monkeypatch)
    with warehouse.lock(env.database):
        result = materialize(wait_for_lock_seconds=0.2)
        ran = env.run("run", "--wait-for-lock", "0.2s")
    assert not result.success
    assert materialized(result) == {}
    description, metadata = the_failure(result)
    assert metadata == {"exit_code": 6}
    assert ran.code == 6
    assert f"practice-sync: {description}" in messages(ran.stderr)
    assert sim.request_log == []
    assert not env.database.exists()


def test_a_selected_source_runs_alone_and_analytics_alone_calls_no_api(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = use(make_env(sim, tmp_path), monkeypatch)
    result = materialize([BIZSTIM])
    assert result.success
    assert set(materialized(result)) == {BIZSTIM}
    assert env.query("select count(*) from bizstim.sessions") == [(len(sim.bizstim.rows()),)]
    schemas = {r[0] for r in env.query("select schema_name from information_schema.schemata")}
    assert "timetap" not in schemas
    assert not any(path.startswith("/timetap/") for _, path, _ in sim.request_log)

    requests = len(sim.request_log)
    rebuilt = materialize([ANALYTICS])
    assert rebuilt.success
    assert materialized(rebuilt)[ANALYTICS]["rows_sessions"] == len(sim.bizstim.rows())
    assert len(sim.request_log) == requests


def test_accounts_come_from_the_setting_the_pipeline_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys = [spec.key for spec in asset_specs()]
    assert keys == [BIZSTIM, TIMETAP, ANALYTICS]
    monkeypatch.setenv("SOURCES__BIZSTIM__ACCOUNTS", '["downtown", "uptown"]')
    specs = asset_specs()
    assert [spec.key.to_user_string() for spec in specs] == [
        "bizstim/downtown",
        "bizstim/uptown",
        "timetap/default",
        "analytics",
    ]
    assert {dep.asset_key for dep in specs[-1].deps} == {spec.key for spec in specs[:-1]}


def test_selecting_one_accounts_asset_loads_that_account_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Simulator(seed=7, sessions=10, clients=5, packages=3, edge_cases=False) as sim:
        for name, seed, zone in (
            ("downtown", 21, "America/New_York"),
            ("uptown", 22, "Europe/Berlin"),
        ):
            sim.add_account(
                name, seed=seed, sessions=30 + seed, clients=5, packages=3, timezone=zone
            )
        env = make_env(sim, tmp_path, bizstim=False)
        env.vars["SOURCES__BIZSTIM__ACCOUNTS"] = '["downtown", "uptown"]'
        env.vars["SOURCES__BIZSTIM__BASE_URL"] = sim.bizstim_url
        for name, account in sim.accounts.items():
            env.vars[f"SOURCES__BIZSTIM__{name.upper()}__API_KEY"] = account.bizstim_api_key
        use(env, monkeypatch)
        uptown = dg.AssetKey(["bizstim", "uptown"])
        result = materialize([uptown], assets=build_assets())  # the accounts as now configured
        assert result.success
        assert set(materialized(result)) == {uptown}
        up = sorted(int(row["id"]) for row in sim.accounts["uptown"].bizstim.rows())
        assert env.query("select account, session_id from analytics.sessions order by 2") == [
            ("uptown", session_id) for session_id in up
        ]
        schemas = {r[0] for r in env.query("select schema_name from information_schema.schemata")}
        assert "bizstim_uptown" in schemas
        assert not schemas & {"bizstim_downtown", "bizstim", "timetap"}
        history = env.query("select source, outcome from ops.run_history order by 1")
        assert history == [("analytics", "ok"), ("bizstim.uptown", "ok")]


def test_dagsters_own_command_materialises_the_module(sim: Simulator, tmp_path: Path) -> None:
    """What a Dagster deployment does: load `-m practice_sync.dagster` and materialise it."""
    env = make_env(sim, tmp_path)
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("")
    dagster = Path(sys.executable).with_name("dagster")
    done = subprocess.run(
        [str(dagster), "asset", "materialize", "-m", "practice_sync.dagster", "--select", "*"],
        env={**os.environ, **env.vars, "DAGSTER_HOME": str(home)},
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert env.query("select count(*) from analytics.sessions") == [(len(sim.bizstim.rows()),)]
    history = env.query("select source, outcome from ops.run_history order by 1")
    assert history == [("analytics", "ok"), ("bizstim", "ok"), ("timetap", "ok")]
