"""Bad configuration ends the run with one sentence naming the setting, a meaningful exit code,
no traceback, and the warehouse as it was."""

from __future__ import annotations

import fcntl
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import Env, make_env, messages, spawn

from practice_sync.simulator import Simulator


def assert_one_sentence(stderr: str, *fragments: str) -> None:
    assert "Traceback" not in stderr
    lines = [line for line in messages(stderr) if line.startswith("practice-sync:")]
    assert len(lines) == 1, stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def loaded(env: Env, first_run) -> Env:
    result = first_run("run")
    assert result.code == 0, result.stderr
    return env


def snapshot(env: Env) -> list[tuple]:
    return env.query(
        "select (select count(*) from bizstim.sessions), (select count(*) from analytics.sessions),"
        " (select count(*) from timetap.packages_sold), (select max(load_id) from bizstim._dlt_loads)"
    )


def test_rejected_bizstim_key(loaded: Env) -> None:
    before = snapshot(loaded)
    loaded.vars["SOURCES__BIZSTIM__API_KEY"] = "wrong-key"
    result = loaded.run("run", "--source", "bizstim")
    assert result.code == 5
    assert "Bizstim rejected the credentials" in result.stdout
    assert "SOURCES__BIZSTIM__API_KEY" in result.stdout
    assert "Traceback" not in result.stderr
    assert snapshot(loaded) == before


def test_rejected_timetap_keys(loaded: Env) -> None:
    loaded.vars["SOURCES__TIMETAP__PRIVATE_KEY"] = "not-the-private-key"
    result = loaded.run("run", "--source", "timetap")
    assert result.code == 5
    assert "TimeTap rejected the credentials" in result.stdout
    assert "SOURCES__TIMETAP__PRIVATE_KEY" in result.stdout
    assert "not-the-private-key" not in result.stdout + result.stderr


def test_missing_key_for_a_named_source(sim: Simulator, tmp_path: Path) -> None:
    env = make_env(sim, tmp_path, timetap=False)
    result = env.run("run", "--source", "timetap")
    assert result.code == 2
    assert_one_sentence(result.stderr, "TimeTap", "SOURCES__TIMETAP__API_KEY")


def test_no_source_configured(sim: Simulator, tmp_path: Path) -> None:
    env = make_env(sim, tmp_path, bizstim=False, timetap=False)
    result = env.run("run")
    assert result.code == 2
    assert_one_sentence(result.stderr, "No source has credentials")


def test_wrong_base_url_path(loaded: Env, sim: Simulator) -> None:
    before = snapshot(loaded)
    loaded.vars["SOURCES__BIZSTIM__BASE_URL"] = sim.url + "/not-bizstim"
    result = loaded.run("run", "--source", "bizstim")
    assert result.code == 2  # a setting to fix, not an outage that retries tomorrow
    assert "SOURCES__BIZSTIM__BASE_URL" in result.stdout
    assert_one_sentence(
        result.stderr,
        f"Bizstim answered HTTP 404 (not found) at {sim.url}/not-bizstim/sessions/0/1000",
        "SOURCES__BIZSTIM__BASE_URL",
    )
    assert snapshot(loaded) == before


def test_unreachable_host(loaded: Env) -> None:
    before = snapshot(loaded)
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    loaded.vars["SOURCES__BIZSTIM__BASE_URL"] = f"http://127.0.0.1:{port}/api"
    result = loaded.run("run", "--source", "bizstim")
    assert result.code == 4
    assert f"Bizstim could not be reached at 127.0.0.1:{port}" in result.stdout
    assert "SOURCES__BIZSTIM__BASE_URL" in result.stdout
    assert snapshot(loaded) == before


def test_not_a_url(env: Env) -> None:
    env.vars["SOURCES__BIZSTIM__BASE_URL"] = "www.bizstim.com/api"
    result = env.run("run", "--source", "bizstim")
    assert result.code == 2
    assert "SOURCES__BIZSTIM__BASE_URL" in result.stdout + result.stderr


def test_unwritable_warehouse_path(env: Env, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    env.vars["DESTINATION__DUCKDB__CREDENTIALS"] = str(blocker / "warehouse.duckdb")
    result = env.run("run")
    assert result.code == 2
    assert_one_sentence(result.stderr, "DESTINATION__DUCKDB__CREDENTIALS")


def test_second_run_on_the_same_warehouse_is_refused(loaded: Env) -> None:
    before = snapshot(loaded)
    lock = loaded.database.with_name(loaded.database.name + ".lock")
    with open(lock, "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running job holds
        result = loaded.run("run")
    assert result.code == 6
    assert_one_sentence(result.stderr, "Another practice-sync run is using")
    assert snapshot(loaded) == before


def test_transform_without_a_warehouse(env: Env) -> None:
    result = env.run("transform")
    assert result.code == 2
    assert_one_sentence(result.stderr, "practice-sync run")


def test_debug_shows_the_traceback(env: Env, tmp_path: Path) -> None:
    env.vars["DESTINATION__DUCKDB__CREDENTIALS"] = str(tmp_path / "missing" / "dir" / "w.duckdb")
    result = env.run("--debug", "run")
    assert result.code == 2
    assert "Traceback" in result.stderr


def test_two_real_runs_at_once(sim: Simulator, env: Env) -> None:
    # the first run is held inside its sweep until the second one has tried, whatever the load
    inside, release = threading.Event(), threading.Event()
    sim.on_request(r"/sessions/", lambda: (inside.set(), release.wait(60)), after=1)
    env.vars["SOURCES__BIZSTIM__PAGE_SIZE"] = "100"
    env.vars["SOURCES__BIZSTIM__REQUEST_TIMEOUT"] = "120"
    first = env.start("run")
    try:
        assert inside.wait(60) and first.poll() is None
        second = env.run("run")
    finally:
        release.set()
    assert second.code == 6
    assert_one_sentence(second.stderr, "Another practice-sync run is using")
    assert first.wait(timeout=120) == 0
    # the first run was not disturbed: everything it read is there exactly once
    rows = env.query("select count(*), count(distinct id) from bizstim.sessions")
    assert rows == [(len(sim.bizstim.rows()), len(sim.bizstim.rows()))]


def test_warehouse_held_by_another_program(loaded: Env) -> None:
    before = snapshot(loaded)
    holder = spawn(
        [
            sys.executable,
            "-c",
            "import duckdb,sys,time; c=duckdb.connect(sys.argv[1]); print('held', flush=True); time.sleep(60)",
            str(loaded.database),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        result = loaded.run("run")
    finally:
        holder.kill()
        holder.wait(timeout=10)
    assert result.code == 8
    assert_one_sentence(result.stderr, "is open in another program")
    assert snapshot(loaded) == before


def test_a_warehouse_file_that_is_not_duckdb_is_not_blamed_on_another_program(env: Env) -> None:
    """Every IOException at the first open read "open in another program ... run again", which
    can never help a damaged or foreign file."""
    env.database.write_bytes(b"this is not a DuckDB file" * 1000)
    result = env.run("run")
    assert result.code == 2
    assert_one_sentence(
        result.stderr, f"The warehouse {env.database} cannot be opened (", "restore it from a copy"
    )
    assert "another program" not in result.stderr


def test_a_failed_load_job_is_named_by_its_cause() -> None:
    """dlt's retry error ends in "Last failure message was: Traceback (most recent call
    last):"; the sentence needs the cause's last line."""
    from dlt.load.exceptions import LoadClientJobRetry

    from practice_sync import dlt_glue

    failed = LoadClientJobRetry(
        "1796321178.6", "sessions.8cbb3ac9c3.parquet", 5, 5,
        "Traceback (most recent call last):\n  File \"duck.py\", line 1, in run\n"
        "duckdb.duckdb.IOException: IO Error: Could not write file: No space left on device\n",
        OSError("No space left on device"),
    )  # fmt: skip
    assert dlt_glue.write_cause(failed) == (
        "duckdb.duckdb.IOException: IO Error: Could not write file: No space left on device"
    )
    assert dlt_glue.write_cause(OSError("disk gone")) == "disk gone"
    # any other OSError names its file: "Permission denied" alone said nowhere to look
    denied = PermissionError(13, "Permission denied", "/srv/warehouse/.practice_sync/x/load")
    assert dlt_glue.write_cause(denied) == (
        "Permission denied: /srv/warehouse/.practice_sync/x/load"
    )


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("PRACTICE_SYNC__PUBLISH_SCHEMA", "Reporting", "PRACTICE_SYNC__PUBLISH_SCHEMA"),
        ("PRACTICE_SYNC__SERVE_PATH", "warehouse.duckdb", "must not be the warehouse file itself"),
        ("PRACTICE_SYNC__PUBLISH", '["no_such_destination"]', "not a dlt destination"),
        ("PRACTICE_SYNC__PUBLISH", '["postgres"]', "DESTINATION__POSTGRES__CREDENTIALS"),
        ("PRACTICE_SYNC__SERVE_PATH", "no such folder/served.duckdb", "does not exist"),
    ],
)
def test_an_output_setting_that_cannot_work_is_refused_before_anything_loads(
    env: Env, name: str, value: str, fragment: str
) -> None:
    """These were checked only when the night's loads and build were done: exit 10 blaming the
    destination's credentials every night, or exit 2 after the whole load."""
    if value == "warehouse.duckdb":
        value = str(env.database)
    env.vars[name] = value
    result = env.run("run", "--source", "bizstim")
    assert result.code == 2, result.stderr
    assert_one_sentence(result.stderr, fragment)
    assert not env.database.exists()  # nothing loaded


def test_a_full_disk_while_extracting_is_exit_8_naming_the_disk(tmp_path: Path) -> None:
    """dlt's extract files sit beside the warehouse, so a full disk first failed the extract
    step: "unexpected error" (exit 1), where the README promises 8 and "free the disk"."""
    import errno

    import dlt

    from practice_sync import dlt_glue
    from practice_sync.errors import ExitCode, LoadFailed
    from practice_sync.pipeline import SOURCES, AccountLoad, Job, _explain

    @dlt.resource(name="sessions")
    def sessions():  # noqa: ANN202
        yield {"id": 1}
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.parquet"))

    pipeline = dlt.pipeline("disk_full", pipelines_dir=str(tmp_path), destination="duckdb")
    with pytest.raises(Exception) as caught:
        pipeline.extract(sessions())
    assert dlt_glue.write_cause(dlt_glue.failed_write(caught.value)) == "No space left on device"
    job = Job(database=tmp_path / "w.duckdb")
    explained = _explain(caught.value, AccountLoad(SOURCES["bizstim"]), job)
    assert isinstance(explained, LoadFailed) and explained.exit_code == ExitCode.LOAD_FAILED
    assert str(explained) == (
        f"Bizstim data could not be written to {job.database} (No space left on device); "
        "nothing of it was applied and the next run reads it again."
    )
    assert dlt_glue.failed_write(RuntimeError("a bug")) is None


def test_a_full_disk_during_the_build_is_exit_8() -> None:
    import duckdb

    from practice_sync.pipeline import _disk_problem

    full = duckdb.IOException('Could not write file "w.duckdb.wal": No space left on device')
    gone = duckdb.FatalException("database has been invalidated because of a previous fatal error")
    assert _disk_problem(full) == "No space left on device"
    assert _disk_problem(gone) == "DuckDB stopped writing after a failed write"
    assert _disk_problem(duckdb.BinderException("column x not found")) is None


def test_publish_credentials_under_the_publish_pipelines_own_name_count(env: Env) -> None:
    """dlt reads `PRACTICE_SYNC_PUBLISH_POSTGRES__DESTINATION__POSTGRES__CREDENTIALS` for the
    publish pipeline; the early check looked outside that section and refused the run."""
    env.vars["PRACTICE_SYNC__PUBLISH"] = '["postgres"]'
    scoped = "PRACTICE_SYNC_PUBLISH_POSTGRES__DESTINATION__POSTGRES__CREDENTIALS"
    env.vars[scoped] = "postgresql://loader:x@127.0.0.1:9/nowhere"  # nothing listens on port 9
    result = env.run("run", "--source", "bizstim")
    assert result.code == 10, result.stderr
    assert "could not be published to postgres" in result.stderr


def test_a_warehouse_path_with_an_apostrophe_is_refused_before_anything_loads(
    env: Env, tmp_path: Path
) -> None:
    """dlt's DuckDB loader pastes the load files' paths into SQL unescaped: under
    "O'Brien clinic" every night failed with exit 8 and the sentence "(^^^^^)"."""
    folder = tmp_path / "O'Brien clinic"
    folder.mkdir()
    env.vars["DESTINATION__DUCKDB__CREDENTIALS"] = str(folder / "warehouse.duckdb")
    result = env.run("run")
    assert result.code == 2, result.stderr
    assert_one_sentence(result.stderr, "holding an apostrophe", "DESTINATION__DUCKDB__CREDENTIALS")
    assert not (folder / "warehouse.duckdb").exists()


def test_a_program_opening_a_first_runs_new_warehouse_is_named_not_a_bug(tmp_path: Path) -> None:
    """Nothing holds a warehouse a first run has not made yet: a reader that opened it between
    dlt's connections made the next open raise DuckDB's own error (exit 1, "report the
    output"), where the README promises exit 8."""
    from practice_sync import warehouse
    from practice_sync.errors import ExitCode, LoadFailed

    database = tmp_path / "w.duckdb"
    holder = spawn(
        [sys.executable, "-c",
         "import duckdb,sys,time; c=duckdb.connect(sys.argv[1]); print('held', flush=True); "
         "time.sleep(60)", str(database)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(LoadFailed) as refused:
            warehouse.connect(database)
    finally:
        holder.kill()
        holder.wait(timeout=10)
    assert refused.value.exit_code == ExitCode.LOAD_FAILED
    assert "is open in another program" in str(refused.value)


def test_transform_waits_for_the_lock_when_asked(loaded: Env) -> None:
    """`--wait-for-lock` was `run`'s alone, while the refusal told `transform` to use it."""
    lock = loaded.database.with_name(loaded.database.name + ".lock")
    held = open(lock, "a+")  # noqa: SIM115
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    threading.Timer(1.5, held.close).start()  # the other run ends
    result = loaded.run("transform", "--wait-for-lock", "30s")
    assert result.code == 0, result.stderr
    refused = open(lock, "a+")  # noqa: SIM115
    fcntl.flock(refused, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        assert loaded.run("transform").code == 6
    finally:
        refused.close()
