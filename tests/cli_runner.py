"""Run the real CLI in a child process for a test: forked from a warm server when that is the
same as a fresh `python -m practice_sync.cli` (see cli_forkserver.py), a fresh interpreter
otherwise. Either way the test gets the child's exit code, stdout and stderr, and a run that
outlives its timeout is killed and raises `subprocess.TimeoutExpired`, as `subprocess.run`.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
FRESH_ENV = "PRACTICE_SYNC_TEST_FRESH_CLI"  # "1": every run starts a fresh interpreter
START_TIMEOUT = 120.0


def needs_fresh_interpreter(argv: Sequence[str], env: Mapping[str, str]) -> bool:
    """Whether a run depends on what happens before the imports, which a fork cannot replay:
    dlt reads the settings folder's name (`DLT_CONFIG_FOLDER`, set by `--config-dir`) when
    it is imported."""
    return (
        env.get(FRESH_ENV) == "1"
        or "DLT_CONFIG_FOLDER" in env
        or any(arg == "--config-dir" or arg.startswith("--config-dir=") for arg in argv)
    )


class ForkServer:
    """One warm CLI server per test process, started on first use, stopped at exit."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._folder: str | None = None
        self._path = ""

    def _ensure(self) -> str:
        with self._lock:
            if self._process is not None and self._process.poll() is None:
                return self._path
            self._folder = tempfile.mkdtemp(prefix="practice-sync-forkserver-")
            self._path = os.path.join(self._folder, "cli.sock")
            self._process = subprocess.Popen(
                [sys.executable, str(HERE / "cli_forkserver.py"), self._path],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                text=True,
                env={**os.environ, "RUNTIME__DLTHUB_TELEMETRY": "false"},
            )
            assert self._process.stdout is not None
            ready = _read_line(self._process.stdout, START_TIMEOUT)
            if ready != "ready\n":
                self._process.kill()
                raise RuntimeError(f"the CLI fork server did not start (said {ready!r})")
            atexit.register(self.stop)
            return self._path

    def stop(self) -> None:
        with self._lock:
            if self._process is not None:
                self._process.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._process.wait(timeout=10)
                if self._process.stdout is not None:
                    self._process.stdout.close()
                self._process = None
            if self._folder:
                with contextlib.suppress(OSError):
                    os.unlink(self._path)
                    os.rmdir(self._folder)
                self._folder = None

    def run(
        self, argv: Sequence[str], env: Mapping[str, str], cwd: Path, timeout: float
    ) -> tuple[int, str, str]:
        """The exit code, stdout and stderr of one forked `practice_sync.cli` run."""
        path = self._ensure()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        stdin = os.open(os.devnull, os.O_RDONLY)
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            conn.connect(path)
            request = {"argv": list(argv), "env": dict(env), "cwd": str(cwd)}
            socket.send_fds(conn, [json.dumps(request).encode()], [stdin, out_w, err_w])
        finally:
            for fd in (stdin, out_w, err_w):
                os.close(fd)
        deadline = time.monotonic() + timeout
        readers = [_Drain(out_r), _Drain(err_r)]
        try:
            conn.settimeout(START_TIMEOUT)
            pid = json.loads(conn.recv(4096))["pid"]
            code = self._wait(conn, pid, deadline, argv, timeout)
            stdout, stderr = (
                reader.text(max(deadline - time.monotonic(), 5)) for reader in readers
            )
        finally:
            conn.close()
        return code, stdout, stderr

    @staticmethod
    def _wait(
        conn: socket.socket, pid: int, deadline: float, argv: Sequence[str], timeout: float
    ) -> int:
        conn.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            return int(json.loads(conn.recv(4096))["returncode"])
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
            raise subprocess.TimeoutExpired(["practice_sync.cli", *argv], timeout) from None


class _Drain(threading.Thread):
    """Reads one pipe to its end, so a child writing much output never blocks on it."""

    def __init__(self, fd: int) -> None:
        super().__init__(daemon=True)
        self._file = os.fdopen(fd, "rb")
        self._chunks: list[bytes] = []
        self.start()

    def run(self) -> None:
        with self._file:
            while chunk := self._file.read1(1 << 16):
                self._chunks.append(chunk)

    def text(self, timeout: float) -> str:
        """The output decoded as `subprocess.run(text=True)` does (locale encoding, universal
        newlines)."""
        self.join(timeout)
        return io.TextIOWrapper(io.BytesIO(b"".join(self._chunks))).read()


def _read_line(stream: object, timeout: float) -> str:
    """The first line a child prints, or "" when it prints none within `timeout`."""
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(stream.readline()), daemon=True)  # type: ignore[attr-defined]
    reader.start()
    reader.join(timeout)
    return line[0] if line else ""


FORK_SERVER = ForkServer()


def run_cli(
    argv: Sequence[str], env: Mapping[str, str], cwd: Path, timeout: float
) -> tuple[int, str, str]:
    """`python -m practice_sync.cli *argv` in a child process: (exit code, stdout, stderr)."""
    if needs_fresh_interpreter(argv, env):
        proc = subprocess.run(
            [sys.executable, "-m", "practice_sync.cli", *argv],
            cwd=cwd,
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return proc.returncode, proc.stdout, proc.stderr
    return FORK_SERVER.run(argv, env, cwd, timeout)
