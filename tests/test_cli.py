"""The commands a newcomer and an analyst type, run as real processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
from conftest import ROOT, Env


def test_demo_loads_both_sources_and_shows_a_query(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "practice_sync.cli",
            "demo",
            "--dir",
            str(tmp_path),
            "--sessions",
            "400",
            "--clients",
            "60",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    database = tmp_path / "practice_sync_demo.duckdb"
    assert f"Warehouse: {database}" in proc.stdout
    assert "bizstim.sessions: 400 new" in proc.stdout
    assert "practice-sync sql --database" in proc.stdout
    with duckdb.connect(str(database), read_only=True) as con:
        counts = con.execute(
            "select (select count(*) from analytics.sessions), (select count(*) from analytics.packages_sold)"
        ).fetchall()
    assert counts[0][0] == 400 and counts[0][1] > 0
    # the printed query ran: its header and a status row are in the output
    assert "status" in proc.stdout and "saved" in proc.stdout


def test_sql_and_transform_commands(env: Env, first_run) -> None:
    assert first_run("run").code == 0
    result = env.run("sql", "select count(*) as n from analytics.sessions")
    assert result.code == 0, result.stderr
    n = env.query("select count(*) from analytics.sessions")[0][0]
    assert f"{n}" in result.stdout
    bad = env.run("sql", "select * from nowhere")
    assert bad.code == 2 and "the query failed" in bad.stderr
    again = env.run("transform")
    assert again.code == 0, again.stderr
    assert f"sessions {n:,}" in again.stdout


def test_the_demo_leaves_a_projects_serving_file_and_destinations_alone(tmp_path: Path) -> None:
    """Run in a project folder whose .dlt publishes to PostgreSQL, the demo replaced the
    dashboards' `analytics` there with simulator data (and its configured serving file)."""
    project = tmp_path / "project"
    (project / ".dlt").mkdir(parents=True)
    (project / ".dlt" / "config.toml").write_text(
        '[practice_sync]\npublish = ["postgres"]\nserve_path = "production_analytics.duckdb"\n'
    )
    (project / ".dlt" / "secrets.toml").write_text(
        '[destination.postgres]\ncredentials = "postgresql://loader:x@127.0.0.1:9/production"\n'
    )
    production = project / "production_analytics.duckdb"
    production.write_bytes(b"the dashboards' file")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PRACTICE_SYNC", "DLT_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "practice_sync.cli", "demo", "--dir", str(tmp_path / "demo"),
         "--sessions", "200", "--clients", "20"],
        cwd=project, env={**env, "DLT_DATA_DIR": str(tmp_path / "dlt")},
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert production.read_bytes() == b"the dashboards' file"
    assert "postgres" not in proc.stdout + proc.stderr
    assert (tmp_path / "demo" / "practice_sync_demo_analytics.duckdb").exists()
    # not run from a clone's .venv: the next step names the command, not a path that is not there
    assert "\n  practice-sync sql --database" in proc.stdout and ".venv/bin" not in proc.stdout


def test_an_empty_query_is_not_an_error(env: Env, first_run) -> None:
    assert first_run("run").code == 0
    for query in ("", "-- nothing"):
        result = env.run("sql", query)
        assert result.code == 0, result.stderr
        assert "returned no rows" in result.stdout


def test_transform_refuses_the_serving_file(env: Env, first_run) -> None:
    """`transform --database <serving file>` rebuilt analytics from nothing inside the file the
    dashboards read (data_issues 19 -> 0) and exited 0."""
    assert first_run("run").code == 0
    serving = env.database.with_name("practice_sync_analytics.duckdb")
    with duckdb.connect(str(serving), read_only=True) as con:
        before = con.execute("select count(*) from analytics.sessions").fetchall()
    size = serving.stat().st_size
    result = env.run("transform", "--database", str(serving))
    assert result.code == 2, result.stdout + result.stderr
    assert "is a serving file, not a warehouse" in result.stderr
    assert serving.stat().st_size == size
    with duckdb.connect(str(serving), read_only=True) as con:
        assert con.execute("select count(*) from analytics.sessions").fetchall() == before
        assert con.execute(
            "select count(*) from information_schema.schemata where schema_name = 'analytics_state'"
        ).fetchall() == [(0,)]
    assert before[0][0] > 0
    # a warehouse of the release before the build state (`analytics_state`) is still one
    with duckdb.connect(str(env.database)) as con:
        con.execute("drop schema analytics_state cascade")
    upgraded = env.run("transform")
    assert upgraded.code == 0, upgraded.stderr
