#!/usr/bin/env python3
"""One-command entry points for newcomers and CI: `python3 dev.py demo` and `python3 dev.py test`
(also `lint`, `bench`, and `install`, which only sets up `.venv`).

Each command creates `.venv` (once, and again when pyproject.toml changes), installs the
project into it, and then runs. Only the Python standard library is used here, because this
file runs before anything is installed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".practice-sync-installed"


def _python() -> str:
    return str(BIN / ("python.exe" if os.name == "nt" else "python"))


def ensure_env() -> None:
    """Create and fill the virtualenv unless it already matches pyproject.toml."""
    if sys.version_info < (3, 11):  # noqa: UP036 - this file runs before anything checks it
        sys.exit(f"practice-sync needs Python 3.11 or newer; this is {sys.version.split()[0]}.")
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    if not BIN.exists():
        print("Creating .venv ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("Installing practice-sync and its dependencies into .venv ...", flush=True)
    pip = [_python(), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "-e", f"{ROOT}[dev]"], check=True)
    STAMP.write_text(wanted)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "test", "bench", "lint", "install"}:
        print("usage: python3 dev.py demo | test | lint | bench | install [args ...]", file=sys.stderr)
        return 2
    ensure_env()
    command, rest = argv[0], argv[1:]
    if command == "install":
        print(f"Ready: {BIN / 'practice-sync'}")
        return 0
    if command == "demo":
        return subprocess.call([str(BIN / "practice-sync"), "demo", *rest])
    if command == "bench":
        return subprocess.call([_python(), str(ROOT / "benchmarks" / "bench.py"), *rest])
    lint = subprocess.call([_python(), "-m", "ruff", "check", str(ROOT)], cwd=ROOT)
    if command == "lint" or lint != 0:
        return lint
    return subprocess.call([_python(), "-m", "pytest", *rest], cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
