"""Shared fixtures: an isolated dlt home per test, the simulator, and a CLI runner.

Every test gets its own temp dir for dlt's global state and the warehouse, so nothing touches
`~/.dlt` and tests can run in any order. No test may wait forever: every child process a test
starts goes through `spawn()` and is killed, and waited for with a timeout, when the test ends.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest

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


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(seed=7, sessions=600, clients=120, packages=20) as simulator:
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
        """Run the real console script in a child process, as cron would."""
        env = {**os.environ, **self.vars}
        proc = subprocess.run(
            [sys.executable, "-m", "practice_sync.cli", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

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
