"""The test suite's warm CLI (cli_runner.py, cli_forkserver.py) must behave as a fresh
`python -m practice_sync.cli`: the same exit codes and output, the test's own environment and
folder, and a run past its timeout killed. Each check compares a forked run with a fresh one."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import duckdb
import pytest
from cli_runner import FORK_SERVER, FRESH_ENV, needs_fresh_interpreter, run_cli
from conftest import ROOT, Env, messages

from practice_sync.simulator import Simulator


def both(env: Env, *args: str) -> tuple[tuple[int, list[str], list[str]], ...]:
    """A forked and a fresh run of the same command: (code, stdout lines, stderr lines) each,
    without log timestamps and timings."""
    out = []
    for fresh in ("0", "1"):
        code, stdout, stderr = run_cli(
            args, {**os.environ, **env.vars, FRESH_ENV: fresh}, ROOT, 120
        )
        out.append((code, _lines(stdout), _lines(stderr)))
    return tuple(out)


def _lines(text: str) -> list[str]:
    return [line for line in messages(text) if not line.startswith("practice-sync: time:")]


def test_a_forked_run_answers_as_a_fresh_interpreter(env: Env, sim: Simulator) -> None:
    env.vars["SOURCES__BIZSTIM__API_KEY"] = "wrong-key"
    forked, fresh = both(env, "run", "--source", "bizstim")
    assert forked[0] == fresh[0] == 5
    assert forked == fresh
    assert any("rejected" in line for line in forked[2])
    forked, fresh = both(env, "status")  # no serving file yet: exit 2, one sentence
    assert forked == fresh and forked[0] == 2 and len(forked[2]) == 1


def test_a_forked_run_reads_the_tests_environment_and_folder(tmp_path: Path) -> None:
    # a relative warehouse path: found only from the test's folder, named only in its env
    with duckdb.connect(str(tmp_path / "probe_analytics.duckdb")) as con:
        con.execute("create table seen as select 42 as answer")
    env = {**os.environ, "DESTINATION__DUCKDB__CREDENTIALS": "probe.duckdb"}
    for fresh in ("0", "1"):
        code, stdout, stderr = run_cli(
            ["sql", "select answer from seen"], {**env, FRESH_ENV: fresh}, tmp_path, 60
        )
        assert code == 0, stderr
        assert "42" in stdout
    code, stdout, _ = run_cli(["--version"], env, tmp_path, 60)
    assert code == 0 and stdout.startswith("practice-sync ")


def test_a_run_past_its_timeout_is_killed(env: Env, sim: Simulator, tmp_path: Path) -> None:
    paused = tmp_path / "paused"
    env.vars.update(
        {"PRACTICE_SYNC_PAUSEPOINT": "after-extract", "PRACTICE_SYNC_PAUSEFILE": str(paused)}
    )
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        run_cli(["run", "--source", "bizstim"], {**os.environ, **env.vars}, ROOT, 8)
    assert paused.exists()  # it really ran up to the pause point, in the test's environment
    assert time.monotonic() - started < 60
    # killed: the warehouse lock is free again, so the next run goes through
    env.vars.pop("PRACTICE_SYNC_PAUSEPOINT")
    assert env.run("run", "--source", "bizstim").code == 0


def test_settings_read_at_import_time_get_a_fresh_interpreter() -> None:
    assert needs_fresh_interpreter(["run", "--config-dir", "/x"], {})
    assert needs_fresh_interpreter(["run", "--config-dir=/x"], {})
    assert needs_fresh_interpreter(["run"], {"DLT_CONFIG_FOLDER": "cfg"})
    assert needs_fresh_interpreter(["run"], {FRESH_ENV: "1"})
    assert not needs_fresh_interpreter(["run", "--source", "bizstim"], {})
    assert FORK_SERVER is not None
