"""Shared fixtures: an isolated dlt home per test, the simulator, and a CLI runner.

Every test gets its own temp dir for dlt's global state and the warehouse, so nothing touches
`~/.dlt` and tests can run in any order. No test may wait forever: every child process a test
starts goes through `spawn()` and is killed, and waited for with a timeout, when the test ends.
`first_run` gives a test the warehouse of a first load of the untouched simulator without paying
for that load again in every test.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest
from cli_runner import run_cli

from practice_sync.simulator import Simulator

ROOT = Path(__file__).resolve().parents[1]

# retries in tests: same rules, shorter pauses
FAST_RETRIES = {
    "SOURCES__BIZSTIM__BACKOFF_BASE": "0.01",
    "SOURCES__BIZSTIM__BACKOFF_CAP": "0.2",
    "SOURCES__BIZSTIM__MAX_ATTEMPTS": "4",
    "SOURCES__BIZSTIM__REQUEST_TIMEOUT": "2",
    "SOURCES__TIMETAP__BACKOFF_BASE": "0.01",
    "SOURCES__TIMETAP__BACKOFF_CAP": "0.2",
    "SOURCES__TIMETAP__MAX_ATTEMPTS": "4",
    "SOURCES__TIMETAP__REQUEST_TIMEOUT": "2",
}


_CHILDREN: list[subprocess.Popen] = []
_LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (DEBUG|INFO|WARNING|ERROR|CRITICAL) +")


def messages(stream: str) -> list[str]:
    """The lines of a run's output without their log timestamp and level."""
    return [_LOG_PREFIX.sub("", line) for line in stream.splitlines()]


def wait_until_paused(process: subprocess.Popen, paused: Path, timeout: float = 120) -> None:
    """Wait for a run started with PRACTICE_SYNC_PAUSEPOINT to reach its pause point."""
    deadline = time.monotonic() + timeout
    while not paused.exists():
        assert process.poll() is None and time.monotonic() < deadline, process.returncode
        time.sleep(0.05)


def summary_lines(stream: str) -> list[str]:
    """The lines of a run's summary as a person reads them (no timestamp, level or name)."""
    return [line.removeprefix("practice-sync: ") for line in messages(stream)]


def spawn(command: list[str], **kwargs: object) -> subprocess.Popen:
    """`subprocess.Popen` whose process is killed when the test ends, whatever happened."""
    process = subprocess.Popen(command, **kwargs)  # type: ignore[call-overload]
    _CHILDREN.append(process)
    return process


@pytest.fixture(autouse=True)
def reap_children() -> Iterator[None]:
    """Kill what a test started and left running (a failed assertion mid-way, say)."""
    yield
    while _CHILDREN:
        process = _CHILDREN.pop()
        if process.poll() is None:
            process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture(autouse=True)
def isolated_dlt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "dlt_home"
    home.mkdir()
    monkeypatch.setenv("DLT_DATA_DIR", str(home))
    monkeypatch.setenv("RUNTIME__DLTHUB_TELEMETRY", "false")
    for key in list(os.environ):
        if key.startswith(("SOURCES__", "DESTINATION__")):
            monkeypatch.delenv(key)
    return home


# the `sim` fixture's data; `first_run` builds its warehouses from a simulator made the same way
SIM_SETTINGS: dict[str, int] = {"seed": 7, "sessions": 600, "clients": 120, "packages": 20}


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(**SIM_SETTINGS) as simulator:
        yield simulator


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


@dataclass
class Env:
    """The environment a scheduler would give `practice-sync run`."""

    vars: dict[str, str]
    database: Path

    def run(self, *args: str, timeout: float = 180) -> Result:
        """Run the real CLI in a child process, as cron would (forked from a warm one where
        that is the same: cli_runner.py)."""
        return Result(*run_cli(args, {**os.environ, **self.vars}, ROOT, timeout))

    def start(self, *args: str, capture: bool = False) -> subprocess.Popen:
        """The same run, not waited for: a test may kill it wherever it happens to be."""
        output = subprocess.PIPE if capture else subprocess.DEVNULL
        return spawn(
            [sys.executable, "-m", "practice_sync.cli", *args],
            cwd=ROOT,
            env={**os.environ, **self.vars},
            stdout=output,
            stderr=output,
            text=True,
        )

    def query(self, sql: str, params: list[object] | None = None) -> list[tuple]:
        with contextlib.closing(duckdb.connect(str(self.database), read_only=True)) as con:
            return con.execute(sql, params or []).fetchall()


def make_env(sim: Simulator, tmp_path: Path, *, bizstim: bool = True, timetap: bool = True) -> Env:
    database = tmp_path / "warehouse" / "practice_sync.duckdb"
    database.parent.mkdir(exist_ok=True)
    env = {
        "DESTINATION__DUCKDB__CREDENTIALS": str(database),
        "DLT_DATA_DIR": os.environ["DLT_DATA_DIR"],
        "RUNTIME__DLTHUB_TELEMETRY": "false",
        **FAST_RETRIES,
    }
    if bizstim:
        env["SOURCES__BIZSTIM__BASE_URL"] = sim.bizstim_url
        env["SOURCES__BIZSTIM__API_KEY"] = sim.bizstim_api_key
    if timetap:
        env["SOURCES__TIMETAP__BASE_URL"] = sim.timetap_url
        env["SOURCES__TIMETAP__API_KEY"] = sim.timetap_api_key
        env["SOURCES__TIMETAP__PRIVATE_KEY"] = sim.timetap_private_key
    return Env(env, database)


@pytest.fixture
def env(sim: Simulator, tmp_path: Path) -> Env:
    return make_env(sim, tmp_path)


# settings that name this test's own files and simulator port: not part of what a run loads
_PER_TEST = {
    "DESTINATION__DUCKDB__CREDENTIALS",
    "DLT_DATA_DIR",
    "SOURCES__BIZSTIM__BASE_URL",
    "SOURCES__TIMETAP__BASE_URL",
}


def _pristine(sim: Simulator) -> bool:
    """True while `sim` holds exactly the data of a fresh `sim` fixture and served nothing."""
    fresh = Simulator(**SIM_SETTINGS)
    return (
        not sim.request_log
        and sim.latency == fresh.latency
        and not sim._faults._armed
        and not sim._hooks._armed
        and sim.bizstim.rows() == fresh.bizstim.rows()
        and sim.timetap.client_ids() == fresh.timetap.client_ids()
        and sim.timetap.active_packages() == fresh.timetap.active_packages()
        and sim.timetap.packages_sold() == fresh.timetap.packages_sold()
    )


@pytest.fixture(scope="session")
def _first_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where this test session keeps the warehouses `first_run` made (shared by xdist workers)."""
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    base = tmp_path_factory.getbasetemp()
    folder = base.parent / f"practice-sync-first-runs-{run_id}" if run_id else base / "first-runs"
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture
def first_run(env: Env, sim: Simulator, _first_runs: Path) -> Callable[..., Result]:
    """`env.run(*args)` for a test's first run, on a warehouse and simulator nothing touched yet.

    Dozens of tests start by loading the same seeded simulator before doing what they test. The
    first of them in a session (per arguments and settings) runs the real CLI against a simulator
    made like `sim`; each one gets a copy of the warehouse folder it left (the DuckDB file, the
    serving file, dlt's state) and its exit code and output. Asserts that nothing differs from
    that run: the same data upstream, no request served yet, no warehouse yet.
    """

    def run(*args: str) -> Result:
        assert not env.database.exists(), "first_run: this warehouse was loaded already"
        assert _pristine(sim), "first_run: the simulator was changed or used before the run"
        for source, url in (("BIZSTIM", sim.bizstim_url), ("TIMETAP", sim.timetap_url)):
            assert env.vars.get(f"SOURCES__{source}__BASE_URL", url) == url
        settings = {k: v for k, v in env.vars.items() if k not in _PER_TEST}
        sources = sorted(k for k in env.vars if k.endswith("__BASE_URL"))
        key = json.dumps([list(args), sorted(settings.items()), sources])
        kept = _first_runs / hashlib.sha256(key.encode()).hexdigest()[:16]
        with open(kept.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # xdist workers: the first one runs it
            if not (kept / "result.json").exists():
                _record_first_run(kept, args, settings, sources)
        shutil.copytree(kept / "warehouse", env.database.parent, dirs_exist_ok=True)
        return Result(**json.loads((kept / "result.json").read_text()))

    return run


def _record_first_run(
    kept: Path, args: tuple[str, ...], settings: dict[str, str], sources: list[str]
) -> None:
    building = kept.with_suffix(".building")
    shutil.rmtree(building, ignore_errors=True)
    (building / "dlt_home").mkdir(parents=True)
    with Simulator(**SIM_SETTINGS) as fresh:
        env = make_env(fresh, building, bizstim=False, timetap=False)
        urls = {"BIZSTIM": fresh.bizstim_url, "TIMETAP": fresh.timetap_url}
        env.vars.update(settings, DLT_DATA_DIR=str(building / "dlt_home"))
        env.vars.update({key: urls[key.split("__")[1]] for key in sources})
        result = env.run(*args)
    (building / "result.json").write_text(json.dumps(result.__dict__))
    building.rename(kept)
