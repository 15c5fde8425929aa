"""Ctrl-C and SIGTERM stop every long-running command within seconds, whichever thread the
kernel hands the signal to, and even when the command was started with SIGINT ignored (as every
background job of a non-interactive shell is): the cause of the suite hang this file guards."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import ROOT, Env, messages, spawn, wait_until_paused
from test_crash import assert_warehouse_equals_upstream

from practice_sync import interrupt
from practice_sync.simulator import Simulator

_libc = ctypes.CDLL(None, use_errno=True)


def send(process: subprocess.Popen, sig: int, where: str) -> None:
    """`process`: to the process, as `kill` does; `thread`: to one of its other threads only."""
    if where == "process":
        process.send_signal(sig)
        return
    tasks = f"/proc/{process.pid}/task"
    others = sorted(int(t) for t in os.listdir(tasks) if int(t) != process.pid)
    # as the kernel picks for a process-directed signal: a thread that does not block it
    # (pyarrow's jemalloc background thread blocks every signal; one sent to it would wait there)
    takers = [tid for tid in others if not _blocks(f"{tasks}/{tid}/status", sig)]
    assert takers, "the process has no thread besides its main one that takes the signal"
    assert _libc.tgkill(process.pid, takers[-1], sig) == 0, ctypes.get_errno()


def _blocks(status: str, sig: int) -> bool:
    """Whether the thread whose /proc status file this is blocks `sig`."""
    try:
        with open(status) as lines:
            mask = next(line for line in lines if line.startswith("SigBlk:")).split()[1]
    except (OSError, StopIteration):
        return True  # the thread is gone: not one to send to
    return bool(int(mask, 16) >> (sig - 1) & 1)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.slow
def test_simulator_command_line_stops_on_every_signal_50_times_in_a_row() -> None:
    command = [sys.executable, "-m", "practice_sync.simulator", "--port", "0", "--sessions", "50"]
    for round_ in range(50):
        sig = (signal.SIGINT, signal.SIGTERM)[round_ % 2]
        where = ("process", "thread")[round_ // 2 % 2]
        ignored = bool(round_ // 4 % 2)  # as a background job of a script starts it
        process = spawn(
            command,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=_ignore_sigint if ignored else None,
        )
        banner = [process.stdout.readline() for _ in range(4)]
        assert banner[-1].strip() == "Ctrl-C stops it."
        send(process, sig, where)
        assert process.wait(timeout=5) == 0, (round_, sig, where, ignored)
        assert process.stdout.read().strip() == f"Stopped ({signal.Signals(sig).name}).", round_
        process.stdout.close()


@pytest.mark.parametrize(
    ("sig", "where"), [(signal.SIGINT, "thread"), (signal.SIGTERM, "process")]
)
def test_a_run_stops_within_seconds_and_the_next_run_recovers(
    sim: Simulator, env: Env, sig: int, where: str
) -> None:
    # the run is held inside its sweep, in a network read: it cannot notice a stop by itself
    inside, release = threading.Event(), threading.Event()
    sim.on_request(r"/sessions/", lambda: (inside.set(), release.wait(60)), after=1)
    env.vars["SOURCES__BIZSTIM__PAGE_SIZE"] = "100"
    env.vars["SOURCES__BIZSTIM__REQUEST_TIMEOUT"] = "120"
    process = env.start("run", capture=True)
    try:
        assert inside.wait(60)
        send(process, sig, where)
        stdout, stderr = process.communicate(timeout=15)
    finally:
        release.set()
    assert process.returncode == 128 + sig, stderr
    name = signal.Signals(sig).name
    assert messages(stderr.strip()) == [
        f"practice-sync: interrupted ({name}): the warehouse keeps its last complete state; "
        "the next run picks up."
    ]
    result = env.run("run")
    assert result.code == 0, result.stderr
    assert_warehouse_equals_upstream(env, sim)


@pytest.mark.serial
def test_a_job_that_checks_stops_cleanly_with_the_signal_exit_code() -> None:
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)

    def work() -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # our handlers are installed while work runs
        for _ in range(100):
            interrupt.sleep(0.1)

    with pytest.raises(interrupt.Interrupted) as stopped:
        interrupt.run_in_foreground(work)
    assert (stopped.value.signum, stopped.value.exit_code, stopped.value.finished) == (
        signal.SIGTERM,
        143,
        True,
    )
    # handlers restored, whatever they were (ignored, when the suite runs as a background job)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


@pytest.mark.serial
def test_a_job_stuck_in_a_call_is_given_up_after_the_grace_period() -> None:
    stuck = threading.Event()

    def work() -> None:
        os.kill(os.getpid(), signal.SIGINT)
        stuck.wait(30)  # never looks at the stop request

    started = time.monotonic()
    with pytest.raises(interrupt.Interrupted) as stopped:
        interrupt.run_in_foreground(work, grace=0.2)
    stuck.set()
    assert (stopped.value.exit_code, stopped.value.finished) == (130, False)
    assert time.monotonic() - started < 25  # not the 30 s the work would have taken


@pytest.mark.serial
def test_results_and_errors_of_the_job_reach_the_caller() -> None:
    assert interrupt.run_in_foreground(lambda: 42) == 42
    with pytest.raises(ValueError, match="boom"):
        interrupt.run_in_foreground(lambda: (_ for _ in ()).throw(ValueError("boom")))
    interrupt.check()  # no stop pending once a job ends normally


@pytest.mark.parametrize(
    ("sig", "step"),
    [
        (signal.SIGTERM, "mid-extract"),
        (signal.SIGINT, "after-extract"),
        (signal.SIGTERM, "after-normalize"),
        (signal.SIGINT, "mid-load"),
        (signal.SIGTERM, "mid-transform"),
    ],
)
def test_a_signal_at_any_step_exits_with_its_code_and_the_next_run_recovers(
    sim: Simulator, env: Env, tmp_path, sig: int, step: str, first_run
) -> None:
    assert first_run("run").code == 0
    sim.bizstim.night_of_changes(edit=0.05, delete=0.01, new=0.03, seed=11)
    paused = tmp_path / "paused"
    env.vars.update(
        SOURCES__BIZSTIM__PAGE_SIZE="100",
        PRACTICE_SYNC_PAUSEPOINT=step,
        PRACTICE_SYNC_PAUSEFILE=str(paused),
    )
    process = env.start("run", capture=True)
    wait_until_paused(process, paused)
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=15)
    assert process.returncode == 128 + sig, stderr
    assert messages(stderr.strip())[-1] == (
        f"practice-sync: interrupted ({signal.Signals(sig).name}): the warehouse keeps its last "
        "complete state; the next run picks up."
    )
    del env.vars["PRACTICE_SYNC_PAUSEPOINT"]
    result = env.run("run")
    assert result.code == 0, result.stderr
    assert_warehouse_equals_upstream(env, sim)


def test_an_interrupted_transform_is_recorded_in_the_history(
    env: Env, tmp_path, first_run
) -> None:
    """As a run's interruption is: `transform` appended no row at all."""
    assert first_run("run").code == 0
    paused = tmp_path / "paused"
    env.vars.update(PRACTICE_SYNC_PAUSEPOINT="mid-transform", PRACTICE_SYNC_PAUSEFILE=str(paused))
    process = env.start("transform", "--full-rebuild", capture=True)
    wait_until_paused(process, paused)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=15)
    assert process.returncode == 143, stderr
    assert env.query(
        "select source, outcome, exit_code from ops.run_history order by finished_at desc limit 1"
    ) == [("analytics", "interrupted", 143)]


@pytest.mark.parametrize("command", ["run", "transform"])
def test_a_stop_raised_by_another_framework_is_recorded_as_interrupted(
    env: Env, first_run, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """Dagster turns SIGTERM into its own BaseException (and Ctrl-C without our handlers is
    KeyboardInterrupt): a stopped launch wrote no history row, where the CLI writes
    `interrupted` ones, so `status` went on showing the night before."""
    from practice_sync import pipeline

    assert first_run("run").code == 0
    monkeypatch.setenv("DESTINATION__DUCKDB__CREDENTIALS", str(env.database))

    def stopped(*_: object, **__: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "_load_and_transform", stopped)
    monkeypatch.setattr(pipeline, "_transform_into", stopped)
    with pytest.raises(KeyboardInterrupt):
        if command == "run":
            pipeline.run(pipeline.Job(database=env.database))
        else:
            pipeline.transform(env.database)
    assert env.query(
        "select source, outcome, exit_code from ops.run_history "
        "where finished_at = (select max(finished_at) from ops.run_history) order by source"
    )[0] == ("analytics", "interrupted", 130)
