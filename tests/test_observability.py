"""What the on-call person reads: timestamped log lines or JSON lines, progress in a log file,
--version, and a run history that failed and interrupted runs write too."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest
from conftest import Env, wait_until_paused

from practice_sync.simulator import Simulator

LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (DEBUG|INFO|WARNING|ERROR) +practice-sync: ")


def test_version(env: Env) -> None:
    from importlib.metadata import version

    result = env.run("--version")
    assert result.code == 0
    assert result.stdout.strip() == f"practice-sync {version('practice-sync')}"


def test_every_log_line_has_a_utc_timestamp_and_a_level(env: Env) -> None:
    env.vars["SOURCES__BIZSTIM__API_KEY"] = "wrong-key"  # so stderr has an error too
    result = env.run("run")
    assert result.code == 5
    lines = (result.stdout + result.stderr).splitlines()
    assert len(lines) > 5
    assert [line for line in lines if not LINE.match(line)] == []
    assert any(" ERROR   practice-sync: Bizstim rejected the credentials" in x for x in lines)
    assert any(" INFO    practice-sync: timetap: ok" in x for x in lines)


def test_json_logs_carry_the_events_fields(sim: Simulator, env: Env) -> None:
    result = env.run("run", "--log-format", "json")
    assert result.code == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    finished = {e["source"]: e for e in events if e["event"] == "source_finished"}
    assert finished["bizstim"]["tables"]["sessions"]["new"] == len(sim.bizstim.rows())
    assert finished["bizstim"]["requests"] >= 1 and finished["bizstim"]["outcome"] == "ok"
    assert set(finished["timetap"]["tables"]) == {"packages", "packages_sold"}
    assert set(finished["bizstim"]["phases"]) == {"extract", "normalize", "load"}
    run = next(e for e in events if e["event"] == "run_finished")
    assert (run["exit_code"], run["warehouse"]) == (0, str(env.database))
    assert run["duration_s"] > 0 and run["analytics"]["sessions"] == len(sim.bizstim.rows())
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", e["ts"]) for e in events)


def test_progress_lines_reach_a_log_file_on_time(sim: Simulator, env: Env) -> None:
    sim.latency = 0.03
    env.vars.update(
        PRACTICE_SYNC__PROGRESS_INTERVAL="0.3",
        SOURCES__TIMETAP__CONCURRENCY="1",  # 120 clients, one at a time: a few seconds
    )
    result = env.run("run", "--source", "timetap")
    assert result.code == 0, result.stderr
    progress = [x for x in result.stdout.splitlines() if "practice-sync: TimeTap clients:" in x]
    assert len(progress) >= 3, result.stdout
    pattern = r"TimeTap clients: ([\d,]+) / 120 \(\d+%\), [\d,]+/s(, about \d+ (min \d+ )?s left)?$"
    done = [int(re.search(pattern, x).group(1).replace(",", "")) for x in progress]
    assert done == sorted(done) and done[-1] == 120
    assert any("left" in x for x in progress[:-1])


def history(env: Env) -> list[tuple]:
    return env.query(
        "select source, outcome, exit_code, requests > 0, rows_current, error "
        "from ops.run_history order by finished_at, source"
    )


def test_run_history_records_ok_failed_and_interrupted_runs(
    sim: Simulator, env: Env, tmp_path: Path, first_run
) -> None:
    assert first_run("run").code == 0
    sessions, sold = len(sim.bizstim.rows()), len(sim.timetap.packages_sold())
    packages = len(sim.timetap.active_packages())
    env.vars["SOURCES__BIZSTIM__API_KEY"] = "wrong-key"
    assert env.run("run").code == 5
    env.vars["SOURCES__BIZSTIM__API_KEY"] = sim.bizstim_api_key
    paused = tmp_path / "paused"
    env.vars.update(PRACTICE_SYNC_PAUSEPOINT="after-normalize", PRACTICE_SYNC_PAUSEFILE=str(paused))
    process = env.start("run")
    wait_until_paused(process, paused)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 143
    rows = history(env)
    assert [r[:3] for r in rows] == [
        ("analytics", "ok", 0), ("bizstim", "ok", 0), ("timetap", "ok", 0),
        ("analytics", "ok", 0), ("bizstim", "failed", 5), ("timetap", "ok", 0),
        ("analytics", "interrupted", 143), ("bizstim", "interrupted", 143),
        ("timetap", "interrupted", 143),  # never started: it had no row, and status said ok
    ]  # fmt: skip
    assert rows[1][3:5] == (True, sessions) and rows[2][4] == packages + sold
    assert rows[4][5].startswith("Bizstim rejected the credentials")
    # the serving file carries the history too, for `status`
    serving = Env({}, env.database.with_name("practice_sync_analytics.duckdb"))
    assert serving.query("select count(*) from ops.run_history") == [(6,)]


def test_full_refresh_reloads_one_source_while_readers_keep_last_night(
    sim: Simulator, env: Env, tmp_path: Path, first_run
) -> None:
    assert first_run("run").code == 0
    sim.bizstim.night_of_changes(edit=0.1, delete=0.02, new=0.05, seed=4)
    assert env.run("run").code == 0
    versions = env.query("select count(*) from bizstim.sessions")[0][0]
    assert versions > len(sim.bizstim.rows())  # history: edited sessions have two versions
    timetap_before = env.query("select count(*), max(_dlt_load_id) from timetap.packages_sold")
    serving = Env({}, env.database.with_name("practice_sync_analytics.duckdb"))
    yesterday = serving.query("select count(*) from analytics.sessions")
    sim.bizstim.add()

    paused = tmp_path / "paused"
    env.vars.update(PRACTICE_SYNC_PAUSEPOINT="after-normalize", PRACTICE_SYNC_PAUSEFILE=str(paused))
    process = env.start("run", "--full-refresh", "--source", "bizstim")
    wait_until_paused(process, paused)
    assert serving.query("select count(*) from analytics.sessions") == yesterday  # readable
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 143  # an interrupted refresh changes nothing
    assert env.query("select count(*) from bizstim.sessions")[0][0] == versions

    del env.vars["PRACTICE_SYNC_PAUSEPOINT"]
    result = env.run("run", "--full-refresh", "--source", "bizstim")
    assert result.code == 0, result.stderr
    rows = sim.bizstim.rows()
    assert f"bizstim.sessions: {len(rows):,} new, 0 changed, 0 retired" in result.stdout
    assert env.query("select count(*), count(distinct id) from bizstim.sessions") == [
        (len(rows), len(rows))  # from scratch: one version per session
    ]
    assert serving.query("select count(*) from analytics.sessions") == [(len(rows),)]
    assert env.query("select count(*), max(_dlt_load_id) from timetap.packages_sold") == (
        timetap_before
    )


def test_on_a_terminal_progress_is_a_bar_redrawn_in_place(sim: Simulator, env: Env) -> None:
    import os
    import pty
    import subprocess
    import sys

    sim.latency = 0.02
    env.vars["SOURCES__TIMETAP__CONCURRENCY"] = "1"
    main, child = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "practice_sync.cli", "run", "--source", "timetap"],
        env={**os.environ, **env.vars},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=child,
    )
    os.close(child)
    output = b""
    try:
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(main)
        assert process.wait(timeout=60) == 0
    text = output.decode(errors="replace")
    redraws = re.findall(r"\rTimeTap clients: ([\d,]+) / 120", text)
    assert len(redraws) >= 3 and redraws[-1] == "120"
    assert "TimeTap clients" not in text.split("\r")[0]  # only ever drawn in place


def test_a_full_refresh_killed_mid_load_keeps_last_nights_analytics_until_it_lands(
    sim: Simulator, env: Env, first_run
) -> None:
    """dlt drops the refreshed raw tables when the refresh's load starts. Killed (or failed)
    after that, the raw tables are empty until the next run finishes the load: neither
    `transform` nor another source's run may build or publish analytics from them."""
    assert first_run("run").code == 0
    serving = Env({}, env.database.with_name("practice_sync_analytics.duckdb"))
    yesterday = serving.query("select count(*) from analytics.sessions")
    assert yesterday == [(len(sim.bizstim.rows()),)]
    sim.bizstim.add()
    env.vars["PRACTICE_SYNC_FAILPOINT"] = "mid-load"
    killed = env.run("run", "--full-refresh", "--source", "bizstim")
    assert killed.code == -signal.SIGKILL, killed.stderr
    del env.vars["PRACTICE_SYNC_FAILPOINT"]

    refused = env.run("transform", "--full-rebuild")
    assert refused.code == 7, refused.stderr
    assert (
        "The analytics tables were kept as they were: the full refresh of bizstim has not "
        "finished loading (its old raw tables are already dropped); `practice-sync run` "
        "finishes it first."
    ) in refused.stderr
    other = env.run("run", "--source", "timetap")  # TimeTap loads; analytics waits
    assert other.code == 7, other.stderr
    for reader in (env, serving):
        assert reader.query("select count(*) from analytics.sessions") == yesterday
    assert env.query(
        "select source, outcome, exit_code from ops.run_history "
        "where source = 'analytics' order by finished_at desc limit 2"
    ) == [("analytics", "failed", 7)] * 2

    landed = env.run("run")
    assert landed.code == 0, landed.stderr
    rows = len(sim.bizstim.rows())
    # the refresh's own rows, counted by the run that landed them (the killed one counted none)
    assert f"bizstim.sessions: {rows:,} new, 0 changed, 0 retired" in landed.stdout
    assert serving.query("select count(*) from analytics.sessions") == [(rows,)]
    assert env.query("select count(*), count(distinct id) from bizstim.sessions") == [(rows, rows)]


def test_dlts_own_log_goes_through_ours_and_only_with_debug(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """dlt set up its own stderr handler: a failed publish printed ~90 lines of its tracebacks,
    which broke `--log-format json` and drowned the one sentence."""
    import logging

    from dlt.common import logger as dlt_logger

    from practice_sync import logs

    fmt = "{asctime}|[{levelname}]|{name}|{message}"  # dlt's own, as its runtime sets it up
    root = logging.getLogger()
    kept = (root.handlers[:], root.level, logging.getLogger(logs.LOGGER).level)
    try:
        _dlt_records_through_ours(capsys, dlt_logger, fmt)
    finally:
        root.handlers[:], _, _ = kept
        root.setLevel(kept[1])
        logging.getLogger(logs.LOGGER).setLevel(kept[2])
        logging.getLogger("dlt").handlers.clear()


def _dlt_records_through_ours(capsys: pytest.CaptureFixture[str], dlt_logger, fmt: str) -> None:  # noqa: ANN001
    from practice_sync import logs

    for debug in (False, True):
        logs.setup("json", debug=debug)
        made = dlt_logger._create_logger("dlt", "WARNING", fmt, "pipeline", {})
        try:
            raise RuntimeError("COPY failed")
        except RuntimeError:
            made.error("Terminal exception in job", exc_info=True)
        err = capsys.readouterr().err
        if not debug:
            assert err == ""
            continue
        entries = [json.loads(line) for line in err.splitlines()]
        assert [(e["level"], e["message"]) for e in entries] == [
            ("ERROR", "Terminal exception in job")
        ]
        assert "RuntimeError: COPY failed" in entries[0]["traceback"]
