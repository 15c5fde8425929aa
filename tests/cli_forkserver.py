"""A warm `python -m practice_sync.cli` for the test suite: imports once, forks a child per run.

Most end-to-end tests run the real CLI in a child process, as cron would, about 190 times per
suite; each fresh interpreter spends most of a CPU-second importing dlt, DuckDB, pyarrow and the
package before doing any work, which on a 2-core machine was a third of the suite's time. This
server imports all of that once; each run is a `fork()` of it that takes the test's argv, full
environment, working directory and stdio pipes, runs `practice_sync.cli` as `__main__` exactly
as `python -m` does, and exits with its code. The child is a real separate process: it talks to
the simulator over loopback, holds its own locks and files, and can be killed.

What a fork cannot reproduce is what happens *before* the imports, so `conftest.Env.run` starts
a fresh interpreter instead whenever that matters (`needs_fresh_interpreter`): dlt reads
`DLT_CONFIG_FOLDER` when imported (`--config-dir` sets it). Tests about signals and process
start-up (inherited SIG_IGN, terminals, `Env.start`) always use a fresh interpreter.
`PRACTICE_SYNC_TEST_FRESH_CLI=1` makes every run a fresh interpreter, to compare.

Protocol, one AF_UNIX SOCK_SEQPACKET connection per run: the client sends one JSON message
{argv, env, cwd} with three file descriptors (stdin, stdout, stderr); the server answers
{"pid": n} once forked and {"returncode": n} when the child ended (negative: killed by that
signal, as `subprocess` reports it).

    python tests/cli_forkserver.py SOCKET_PATH
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import runpy
import select
import signal
import socket
import sys
import traceback

# what `python -m practice_sync.cli run` imports, and the heavy modules it imports later
PRELOAD = (
    "dlt",
    "duckdb",
    "pyarrow",
    "pyarrow.compute",
    "pyarrow.parquet",
    "pendulum",
    "requests",
    "orjson",
    "yaml",
    "dlt.destinations.impl.duckdb.factory",
    "dlt.destinations.impl.duckdb.duck",
    "dlt.destinations.impl.postgres.factory",
    # what dlt imports only once a pipeline runs (found by diffing sys.modules around a run)
    "dlt.common.libs.pyarrow",
    "dlt.common.libs.sql_alchemy_compat",
    "dlt.common.configuration.plugins",
    "dlt.sources.helpers.requests",
    "dlt._workspace.cli",
    "dlt._workspace._plugins",
    "pendulum.locales.en.locale",
    "pluggy",
    "sqlalchemy",
    "practice_sync.cli",
    "practice_sync.config_check",
    "practice_sync.pipeline",
    "practice_sync.transform",
    "practice_sync.contract",
    "practice_sync.contract_checks",
    "practice_sync.bizstim",
    "practice_sync.timetap",
    "practice_sync.publish",
    "practice_sync.status",
    "practice_sync.html_report",
    "practice_sync.docs",
)
MAX_MESSAGE = 1 << 20


def serve(path: str) -> None:
    """Accept runs until the listening socket is closed or SIGTERM ends the server."""
    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(64)
    sys.stdout.flush()
    sys.stderr.flush()
    waiting: dict[int, tuple[int, socket.socket]] = {}  # pidfd -> (pid, connection)
    print("ready", flush=True)
    while True:
        readable, _, _ = select.select([listener, *waiting], [], [])
        for ready in readable:
            if ready is listener:
                _accept(listener, waiting)
            else:
                pid, conn = waiting.pop(ready)
                _, status = os.waitpid(pid, 0)
                os.close(ready)
                with contextlib.suppress(OSError):
                    conn.send(
                        json.dumps({"returncode": os.waitstatus_to_exitcode(status)}).encode()
                    )
                conn.close()


def _accept(listener: socket.socket, waiting: dict[int, tuple[int, socket.socket]]) -> None:
    conn, _ = listener.accept()
    try:
        data, fds, _, _ = socket.recv_fds(conn, MAX_MESSAGE, 3)
        request = json.loads(data)
    except (OSError, ValueError):
        conn.close()
        return
    pid = os.fork()
    if pid == 0:  # the run
        try:
            listener.close()
            for _, other in waiting.values():
                other.close()
            conn.close()
            code = _child(request, fds)
        except BaseException:  # never return into the server's loop
            code = 1
        os._exit(code)
    for fd in fds:
        os.close(fd)
    waiting[os.pidfd_open(pid)] = (pid, conn)
    conn.send(json.dumps({"pid": pid}).encode())


def _child(request: dict, fds: list[int]) -> int:
    """Become `python -m practice_sync.cli *argv` in the request's environment and folder."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    os.closerange(3, 1 << 16)  # as subprocess's close_fds: nothing of the server's stays open
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sys.path[0] = os.getcwd()  # what `python -m` puts first
    sys.argv = [sys.executable, *request["argv"]]
    # as in a fresh `python -m`: the module runs once, as __main__, not also as itself
    sys.modules.pop("practice_sync.cli", None)
    code = 0
    try:
        runpy.run_module("practice_sync.cli", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = _exit_code(exc.code)
    except BaseException:
        traceback.print_exc()
        code = 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    return code


def _exit_code(value: object) -> int:
    """What the interpreter makes of `sys.exit(value)`."""
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    print(value, file=sys.stderr)
    return 1


if __name__ == "__main__":
    serve(sys.argv[1])
