"""What a scheduler and an on-call person see: misconfiguration is exit 2 with the setting
named, readers never block the nightly run, and the summary says where it wrote."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import Env, spawn
from test_config_errors import assert_one_sentence

from practice_sync.simulator import Simulator


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("SOURCES__BIZSTIM__APIKEY", "x", "did you mean SOURCES__BIZSTIM__API_KEY?"),
        ("SOURCES__BIZSTIM__CONCURENCY", "4", "did you mean SOURCES__BIZSTIM__CONCURRENCY?"),
        ("DESTINATION__DUCKDB__CREDENTIAL", "/tmp/x.duckdb", "DESTINATION__DUCKDB__CREDENTIALS?"),
        ("PRACTICE_SYNC__MEMORYLIMIT", "1GB", "did you mean PRACTICE_SYNC__MEMORY_LIMIT?"),
    ],
)
def test_an_unknown_setting_in_the_environment_is_named(
    env: Env, name: str, value: str, expected: str
) -> None:
    env.vars[name] = value
    result = env.run("run")
    assert result.code == 2
    assert_one_sentence(result.stderr, f"Unknown setting {name} in the environment", expected)
    assert not env.database.exists()  # nothing was created


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("SOURCES__BIZSTIM__CONCURRENCY", "abc", "'abc', which is not a whole number"),
        ("SOURCES__TIMETAP__MAX_DELETION_SHARE", "lots", "'lots', which is not a number"),
        ("SOURCES__TIMETAP__CLIENT_IDS", "1,2", "'1,2', which is not a list of whole numbers"),
        # DuckDB's own parser refused it at the first open: exit 1 and "report a bug"
        ("PRACTICE_SYNC__MEMORY_LIMIT", "lots", "'lots', which is not an amount of memory"),
        # inf stopped the progress ticker with a traceback, nan logged a line per 0.1 s
        ("PRACTICE_SYNC__PROGRESS_INTERVAL", "inf", "'inf', which is not a finite number"),
        ("PRACTICE_SYNC__PROGRESS_INTERVAL", "nan", "'nan', which is not a finite number"),
    ],
)
def test_a_value_that_does_not_convert_is_named(
    env: Env, name: str, value: str, problem: str
) -> None:
    env.vars[name] = value
    result = env.run("run")
    assert result.code == 2
    assert_one_sentence(result.stderr, f"{name} is {problem}")


def _project(tmp_path: Path, config: str, secrets: str | None = None) -> Path:
    folder = tmp_path / "project" / ".dlt"
    folder.mkdir(parents=True)
    (folder / "config.toml").write_text(config)
    if secrets is not None:
        (folder / "secrets.toml").write_text(secrets)
    return folder


def test_unknown_setting_and_broken_file_in_toml_are_named(env: Env, tmp_path: Path) -> None:
    folder = _project(tmp_path, '[sources.bizstim]\nconcurency = 4\n')
    result = env.run("run", "--config-dir", str(folder))
    assert result.code == 2
    assert_one_sentence(
        result.stderr,
        f"Unknown setting sources.bizstim.concurency in {folder / 'config.toml'}",
        "did you mean sources.bizstim.concurrency?",
    )
    (folder / "config.toml").write_text("[sources.bizstim]\n")
    (folder / "secrets.toml").write_text('[sources.bizstim]\napi_key = "unterminated\n')
    result = env.run("run", "--config-dir", str(folder))
    assert result.code == 2
    assert_one_sentence(result.stderr, f"{folder / 'secrets.toml'} is not valid TOML (line 2")


def test_a_server_url_given_to_the_wrong_setting_is_quoted_without_its_password(
    env: Env,
) -> None:
    env.vars["PRACTICE_SYNC__PUBLISH"] = "postgresql://loader:S3cretPW@db.example:5432/bi"
    result = env.run("run")
    assert result.code == 2
    assert_one_sentence(
        result.stderr, "PRACTICE_SYNC__PUBLISH is 'postgresql://loader:***@db.example:5432/bi'"
    )
    assert "S3cretPW" not in result.stdout + result.stderr


def test_the_readmes_privacy_policy_in_config_toml_is_applied(
    sim: Simulator, env: Env, tmp_path: Path
) -> None:
    """The README's recommended `[sources.bizstim] privacy = {drop = [...]}`, word for word: its
    table was taken for an account's section, and the run stopped (exit 2)."""
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    recommended = readme.split("### Private data")[1].split("```toml\n")[1].split("```")[0]
    config, _, secrets = recommended.partition("# .dlt/secrets.toml")
    secrets = secrets.split("\n", 1)[1].replace('"…"', '"a-salt-of-at-least-sixteen-characters"')
    assert "privacy = {drop = " in config and "privacy_salt" in secrets
    folder = _project(tmp_path, config, secrets)
    notes = [row["session_private_note"] for row in sim.bizstim.rows()]
    assert any(notes)  # something to drop
    result = env.run("run", "--config-dir", str(folder))
    assert result.code == 0, result.stderr
    assert env.query(
        "select count(*), count(session_private_note) from bizstim.sessions"
    ) == [(len(notes), 0)]
    assert env.query("select count(*) from ops.privacy_policy") == [(2,)]  # both sources


def test_repeating_a_source_loads_it_once(env: Env) -> None:
    """`--source bizstim --source bizstim` ran two loads of one account at once: one failed."""
    result = env.run("run", "--source", "bizstim", "--source", "bizstim")
    assert result.code == 0, result.stderr
    assert env.query("select source, outcome from ops.run_history order by source") == [
        ("analytics", "ok"),
        ("bizstim", "ok"),
    ]


def test_cron_from_another_folder_with_config_dir(sim: Simulator, tmp_path: Path) -> None:
    folder = _project(
        tmp_path,
        f'[sources.bizstim]\nbase_url = "{sim.bizstim_url}"\n\n'
        '[destination.duckdb]\ncredentials = "warehouse.duckdb"\n',
        f'[sources.bizstim]\napi_key = "{sim.bizstim_api_key}"\n',
    )
    elsewhere = tmp_path / "cron-home"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOURCES__", "DESTINATION__"))}
    command = [sys.executable, "-m", "practice_sync.cli", "run", "--config-dir", str(folder)]
    result = subprocess.run(command, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    database = folder.parent / "warehouse.duckdb"  # beside .dlt, not in the cron folder
    assert f"warehouse: {database}" in result.stdout
    assert list(elsewhere.iterdir()) == []

    # a relative serving-file path is read from the same folder, not from cron's
    with (folder / "config.toml").open("a") as config:
        config.write('\n[practice_sync]\nserve_path = "served/analytics.duckdb"\n')
    (folder.parent / "served").mkdir()
    result = subprocess.run(command, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    served = folder.parent / "served" / "analytics.duckdb"
    assert f"serving file (for readers): {served}" in result.stdout and served.exists()
    assert list(elsewhere.iterdir()) == []

    no_config = subprocess.run(
        [sys.executable, "-m", "practice_sync.cli", "run"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert no_config.returncode == 2
    assert_one_sentence(
        no_config.stderr,
        "No source has credentials",
        f"no config.toml or secrets.toml found in {elsewhere / '.dlt'}; --config-dir",
    )


def test_a_source_that_loaded_before_and_lost_its_key_fails(env: Env, first_run) -> None:
    assert first_run("run").code == 0
    del env.vars["SOURCES__BIZSTIM__API_KEY"]
    result = env.run("run")
    assert result.code == 2
    assert_one_sentence(
        result.stderr,
        f"Bizstim has loaded into {env.database} before but has no credentials now",
        "SOURCES__BIZSTIM__API_KEY",
    )


def test_a_warehouse_path_that_is_a_folder(env: Env, tmp_path: Path) -> None:
    folder = tmp_path / "a-folder.duckdb"
    folder.mkdir()
    env.vars["DESTINATION__DUCKDB__CREDENTIALS"] = str(folder)
    result = env.run("run")
    assert result.code == 2
    assert_one_sentence(result.stderr, f"{folder} is a folder, not a file")
    assert list(folder.iterdir()) == [] and list(tmp_path.glob("*.lock")) == []


def test_debug_works_after_the_subcommand(env: Env, tmp_path: Path) -> None:
    env.vars["DESTINATION__DUCKDB__CREDENTIALS"] = str(tmp_path / "no" / "such" / "w.duckdb")
    result = env.run("run", "--debug")
    assert result.code == 2
    assert "Traceback" in result.stderr


def test_a_reader_holding_the_serving_file_never_blocks_the_run(sim: Simulator, env: Env) -> None:
    first = env.run("run")
    assert first.code == 0, first.stderr
    serving = env.database.with_name("practice_sync_analytics.duckdb")
    assert f"serving file (for readers): {serving}" in first.stdout
    sessions = len(sim.bizstim.rows())
    # a BI tool keeps a read-only connection open all night, in another process
    reader = spawn(
        [
            sys.executable,
            "-c",
            "import duckdb, sys\n"
            "con = duckdb.connect(sys.argv[1], read_only=True)\n"
            "q = 'select count(*) from analytics.sessions'\n"
            "print(con.execute(q).fetchone()[0], flush=True)\n"
            "sys.stdin.readline()\n"
            "print(con.execute(q).fetchone()[0], flush=True)\n",
            str(serving),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert reader.stdout.readline().strip() == str(sessions)
    sim.bizstim.add()
    second = env.run("run")
    assert second.code == 0, second.stderr
    reader.stdin.write("\n")
    reader.stdin.flush()
    assert reader.stdout.readline().strip() == str(sessions)  # its consistent old copy
    assert reader.wait(timeout=30) == 0
    # a new connection sees the new night, with the contract's tables
    query = env.run("sql", "select count(*) as n from analytics.sessions")
    assert query.code == 0, query.stderr
    assert str(sessions + 1) in query.stdout
    assert not list(serving.parent.glob(".*.tmp"))


def test_wait_for_lock_waits_for_the_other_run(sim: Simulator, env: Env) -> None:
    inside, release = threading.Event(), threading.Event()
    sim.on_request(r"/sessions/", lambda: (inside.set(), release.wait(60)), after=0)
    env.vars["SOURCES__BIZSTIM__REQUEST_TIMEOUT"] = "120"
    first = env.start("run")
    assert inside.wait(60)
    timer = threading.Timer(3.0, release.set)
    timer.start()
    try:
        second = env.run("run", "--wait-for-lock", "2m")
    finally:
        release.set()
        timer.cancel()
    assert first.wait(timeout=120) == 0
    assert second.code == 0, second.stderr
    assert "0 new, 0 changed, 0 retired" in second.stdout
