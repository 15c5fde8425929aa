"""The serving file as a file: after a privacy policy change it is written anew (no byte of last
night's copy, which held the values the policy now hashes), it keeps the permission bits and
group an administrator gave it, and a killed run's copy in progress is removed whatever the
file's name."""

from __future__ import annotations

import contextlib
import json
import os
import stat
from pathlib import Path

import duckdb
from conftest import make_env

from practice_sync import serve
from practice_sync.simulator import Simulator

SECRET = "ZZPRIVATE-NOTE-not-for-the-bi-team-"


def test_a_privacy_policy_added_later_leaves_no_plaintext_in_the_serving_files_bytes(
    sim: Simulator, tmp_path: Path
) -> None:
    """The night the policy is added builds incrementally (six records rewritten), which used to
    patch a byte copy of last night's file: its freed blocks still held every plaintext note."""
    env = make_env(sim, tmp_path, timetap=False)
    for index, row in enumerate(sim.bizstim.rows()):  # six notes, so the build is incremental
        note = f"{SECRET}{index}" if index < 6 else ""
        if row["session_private_note"] != note:
            sim.bizstim.edit(row["id"], session_private_note=note)
    assert env.run("run").code == 0
    serving = env.database.with_name(f"{env.database.stem}_analytics.duckdb")
    assert serving.read_bytes().count(SECRET.encode()) >= 6  # the test sees plaintext in bytes

    env.vars["SOURCES__BIZSTIM__PRIVACY"] = json.dumps({"hash": ["session_private_note"]})
    env.vars["PRACTICE_SYNC__PRIVACY_SALT"] = "0123456789abcdef0123456789abcdef"
    night = env.run("run")
    assert night.code == 0, night.stderr
    assert "analytics build: incremental" in night.stdout  # the patching case
    assert SECRET.encode() not in serving.read_bytes()

    sim.bizstim.add()  # and the nights after patch again: the policy is unchanged
    assert env.run("run").code == 0
    assert SECRET.encode() not in serving.read_bytes()


def _warehouse(path: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(path))
    con.execute("create schema analytics")
    con.execute("create table analytics.visits as select range as visit_id from range(3)")
    return con


def test_the_serving_file_keeps_its_permission_bits_and_group(tmp_path: Path) -> None:
    target = tmp_path / "serving.duckdb"
    old_umask = os.umask(0o022)
    try:
        with contextlib.closing(_warehouse(tmp_path / "w.duckdb")) as con:
            serve.publish(con, target)
            assert stat.S_IMODE(target.stat().st_mode) == 0o644
            os.chmod(target, 0o640)  # only the BI group may read the analytics
            group = os.getgid() if os.geteuid() else 4321  # as root: any group
            os.chown(target, -1, group)
            con.execute("insert into analytics.visits values (9)")
            serve.publish(con, target)  # a new file renamed over the old
            serve.refresh_history(con, target)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert target.stat().st_gid == group


def test_a_killed_runs_copy_is_removed_when_the_name_holds_brackets(tmp_path: Path) -> None:
    for name in ("analytics.duckdb", "analytics[prod].duckdb", "a*?.duckdb"):
        target = tmp_path / name
        leftover = tmp_path / f".{name}.4999999.tmp"  # a pid no process has
        leftover.write_bytes(b"x" * 1000)
        serve._remove_left_over(target)
        assert not leftover.exists(), name
