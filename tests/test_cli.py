"""The commands a newcomer and an analyst type, run as real processes."""

from __future__ import annotations

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
