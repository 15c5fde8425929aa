#!/usr/bin/env python3
"""One-command entry points for newcomers and CI: `python3 dev.py demo` and `python3 dev.py test`
(also `lint`, `bench`, `install`, which only sets up `.venv`, and `lock`, which refreshes
`constraints.txt`).

Each command creates `.venv` (once, and again when pyproject.toml, setup.py or constraints.txt
changes) and installs the project into it, editable, with the dev tools, at exactly the versions
pinned in `constraints.txt`: a fresh clone gets what CI tested. Only the Python standard library
is used here, because this file runs before anything is installed.

`test` runs ruff, mypy, then pytest twice: every test not marked `serial` spread over worker
processes (pytest-xdist: one per CPU and one more, work-stealing), then the `serial` ones alone,
one at a time, because their outcome depends on having the machine to themselves (timing,
signals). The two runs split the suite by marker, so together they run every test exactly once;
a closing `total:` line adds them up.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import venv
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".practice-sync-installed"
CONSTRAINTS = ROOT / "constraints.txt"
# what the installed environment is made from: any change here reinstalls .venv
STAMPED = [ROOT / "pyproject.toml", ROOT / "setup.py", CONSTRAINTS]

# mypy runs as part of `lint` and `test`. Set to False to skip it (ruff and pytest still run).
TYPECHECK = True
# setup.py's mapping of folders onto the import package; mypy checks a copy laid out that way
PACKAGE_FOLDERS = {"practice_sync": "pipelines", "practice_sync/transforms": "transforms"}
TYPECHECK_TREE = VENV / "typecheck"

# pytest: the marker of tests that must run alone, and how many workers the rest get
SERIAL = "serial"
# One more worker than logical CPUs: many tests spend seconds waiting (a simulated slow answer, a
# pause point, a stale-age check) and the spare worker keeps both cores busy meanwhile.
# `python3 dev.py test -n 4` overrides it.
CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
WORKERS = str(CPUS + 1)
# worksteal: a worker that ran out of tests takes half of a busy one's queue, so a few long tests
# scheduled late do not leave one worker running alone at the end
DISTRIBUTION = "worksteal"
NO_TESTS = 5  # pytest's exit code when nothing was collected / selected

PIP_QUIET = ["--disable-pip-version-check", "-q"]


def _python(bin_dir: Path = BIN) -> str:
    return str(bin_dir / ("python.exe" if os.name == "nt" else "python"))


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _unpinned() -> list[str]:
    """Packages pyproject.toml asks for (dependencies and every extra) that the lock lacks."""
    project = _pyproject()["project"]
    wanted = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        wanted += extra
    pinned = set()
    for line in CONSTRAINTS.read_text().splitlines():
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==", line)
        if match:
            pinned.add(_canonical(match.group(1)))
    missing = []
    for requirement in wanted:
        if ";" in requirement:  # an environment marker: may rightly be absent from this lock
            continue
        name = _canonical(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1))
        if name not in pinned:
            missing.append(name)
    return missing


def _check_python() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - this file runs before anything checks it
        sys.exit(f"practice-sync needs Python 3.11 or newer; this is {sys.version.split()[0]}.")


def ensure_env() -> None:
    """Create and fill the virtualenv unless it already matches the stamped files."""
    _check_python()
    if not CONSTRAINTS.exists():
        sys.exit("constraints.txt is missing: `python3 dev.py lock` makes it.")
    missing = _unpinned()
    if missing:
        sys.exit(
            f"pyproject.toml asks for {', '.join(missing)}, which constraints.txt does not pin: "
            "run `python3 dev.py lock` (keeps every other pin) and commit constraints.txt."
        )
    digest = hashlib.sha256()
    for path in STAMPED:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    wanted = digest.hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    if not BIN.exists():
        print("Creating .venv ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("Installing practice-sync and its dependencies into .venv ...", flush=True)
    pip = [_python(), "-m", "pip", "install", *PIP_QUIET, "-c", str(CONSTRAINTS)]
    subprocess.run([*pip, "-e", f"{ROOT}[dev]"], check=True)
    STAMP.write_text(wanted)


def lock(args: list[str]) -> int:
    """Rewrite constraints.txt from a fresh virtualenv (pip only, nothing else to install).

    By default the current pins are kept (passed as constraints) and only what pyproject.toml
    newly asks for is resolved; `--upgrade` resolves everything afresh, to the newest versions
    pyproject.toml allows.
    """
    _check_python()
    if args not in ([], ["--upgrade"]):
        print("usage: python3 dev.py lock [--upgrade]", file=sys.stderr)
        return 2
    upgrade = args == ["--upgrade"]
    extras = ",".join(_pyproject()["project"].get("optional-dependencies", {}))
    target = f"{ROOT}[{extras}]" if extras else str(ROOT)
    with tempfile.TemporaryDirectory(prefix="practice-sync-lock-") as tmp:
        bin_dir = Path(tmp) / ("Scripts" if os.name == "nt" else "bin")
        print("Resolving in a fresh virtualenv ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(tmp)
        pip = [_python(bin_dir), "-m", "pip"]
        keep = [] if upgrade or not CONSTRAINTS.exists() else ["-c", str(CONSTRAINTS)]
        # editable, as dev.py installs it (and a build would leave build/ behind in the clone)
        if subprocess.call([*pip, "install", *PIP_QUIET, *keep, "-e", target]) != 0:
            if keep:
                print(
                    "The current pins do not fit pyproject.toml any more: "
                    "`python3 dev.py lock --upgrade` resolves everything afresh.",
                    file=sys.stderr,
                )
            return 1
        frozen = subprocess.run(
            [*pip, "freeze", "--disable-pip-version-check"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.splitlines()
    pins = sorted(
        (
            line
            for line in frozen
            if re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*==", line)
            and _canonical(line.split("==")[0]) != "practice-sync"
        ),
        key=lambda line: _canonical(line.split("==")[0]),
    )
    header = [
        "# Exact versions of everything `pip install .[dev]` brings in: what CI tests with.",
        "# Made by `python3 dev.py lock` (keeps these pins, adds what pyproject.toml newly asks",
        "# for) or `python3 dev.py lock --upgrade` (newest versions pyproject.toml allows);",
        "# do not edit by hand. Used as constraints, so it installs nothing by itself:",
        "#   python3 -m pip install -c constraints.txt .      (production: no dev tools)",
        "#   python3 dev.py install                           (.venv: -e .[dev], as CI)",
        f"# Resolved with Python {platform.python_version()} on {platform.system()}"
        f" {platform.machine()}.",
    ]
    CONSTRAINTS.write_text("\n".join([*header, *pins]) + "\n")
    print(f"Wrote {CONSTRAINTS.name}: {len(pins)} pins. Commit it with pyproject.toml.")
    return 0


def _ruff() -> int:
    return subprocess.call([_python(), "-m", "ruff", "check", str(ROOT)], cwd=ROOT)


def _mypy() -> int:
    """`mypy -p practice_sync` on a copy of the folders laid out as the installed package.

    The editable install maps pipelines/ onto `practice_sync` with an import hook, which mypy
    cannot follow; the copy (Python files only, under .venv/) gives it the real module names,
    and every path in its output is written back as the folder in the clone.
    """
    shutil.rmtree(TYPECHECK_TREE, ignore_errors=True)

    def python_only(folder: str, names: list[str]) -> list[str]:
        return [
            n
            for n in names
            if n == "__pycache__" or (Path(folder, n).is_file() and not n.endswith((".py", ".pyi")))
        ]

    for package, folder in PACKAGE_FOLDERS.items():
        shutil.copytree(
            ROOT / folder, TYPECHECK_TREE / package, ignore=python_only, dirs_exist_ok=True
        )
    proc = subprocess.run(
        [_python(), "-m", "mypy", "-p", "practice_sync"],
        cwd=ROOT,
        env={**os.environ, "MYPYPATH": str(TYPECHECK_TREE)},
        capture_output=True,
        text=True,
    )
    output = proc.stdout + proc.stderr
    # longest package first, so practice_sync/transforms/ is not taken for pipelines/transforms/
    for package, folder in sorted(PACKAGE_FOLDERS.items(), key=lambda item: -len(item[0])):
        copy = TYPECHECK_TREE / package
        for shown in (str(copy), os.path.relpath(copy, ROOT)):
            output = output.replace(shown + os.sep, folder + os.sep)
    print(output, end="", flush=True)
    return proc.returncode


def lint() -> int:
    """ruff, then mypy (both run, so one pass shows every finding); non-zero if either fails."""
    codes = [_ruff()]
    if TYPECHECK:
        codes.append(_mypy())
    return next((code for code in codes if code != 0), 0)


def _split_markexpr(args: list[str]) -> tuple[str | None, list[str]]:
    """The caller's `-m EXPR` (pytest keeps the last one) and the other arguments."""
    expr, rest, i = None, [], 0
    while i < len(args):
        if args[i] == "-m" and i + 1 < len(args):
            expr, i = args[i + 1], i + 2
            continue
        if args[i].startswith("-m") and len(args[i]) > 2 and not args[i].startswith("--"):
            expr, i = args[i][2:], i + 1
            continue
        rest.append(args[i])
        i += 1
    return expr, rest


def _junit_counts(report: Path) -> tuple[dict[str, int], set[str]] | None:
    """passed/failed/skipped and the test ids in a pytest junit report (None: none written)."""
    try:
        root = ET.parse(report).getroot()
    except (OSError, ET.ParseError):  # not written: pytest stopped early, or `--junitxml` given
        return None
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    ids: set[str] = set()
    for case in root.iter("testcase"):
        ids.add(f"{case.get('classname')}::{case.get('name')}")
        tags = {child.tag for child in case}
        if tags & {"failure", "error"}:
            counts["failed"] += 1
        elif "skipped" in tags:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts, ids


def test(args: list[str]) -> int:
    """Lint, then the parallel run and the serial run; non-zero if any part fails."""
    code = lint()
    if code != 0:
        return code
    expr, rest = _split_markexpr(args)

    def only(marker: str) -> str:
        return f"({expr}) and {marker}" if expr else marker

    stop_early = any(a in ("-x", "--exitfirst") or a.startswith("--maxfail") for a in rest)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="practice-sync-test-") as tmp:
        reports = [Path(tmp, "parallel.xml"), Path(tmp, "serial.xml")]
        pytest = [_python(), "-m", "pytest"]
        parallel = [
            *pytest,
            "-n",
            WORKERS,
            "--dist",
            DISTRIBUTION,
            "-m",
            only(f"not {SERIAL}"),
            f"--junitxml={reports[0]}",
            *rest,
        ]
        serial = [*pytest, "-m", only(SERIAL), f"--junitxml={reports[1]}", *rest, "-n", "0"]
        print(f"== tests not marked {SERIAL}, in parallel ==", flush=True)
        codes = [subprocess.call(parallel, cwd=ROOT)]
        if codes[0] not in (0, NO_TESTS) and stop_early:
            return codes[0]
        print(f"== tests marked {SERIAL}, one at a time ==", flush=True)
        codes.append(subprocess.call(serial, cwd=ROOT))
        results = [_junit_counts(report) for report in reports]
    elapsed = time.monotonic() - started
    if all(result is not None for result in results) and any(r[1] for r in results):
        (first, first_ids), (second, second_ids) = results
        both = first_ids & second_ids
        if both:  # cannot happen with `-m X` / `-m not X`; checked because it must not
            print(f"dev.py: ran in both parts: {', '.join(sorted(both))}", file=sys.stderr)
            codes.append(1)
        total = {key: first[key] + second[key] for key in first}
        print(
            f"parallel {sum(first.values())} + serial {sum(second.values())} tests"
            f" in {elapsed:.0f} s\n"
            f"total: {total['passed']} passed, {total['failed']} failed, {total['skipped']} skipped",
            flush=True,
        )
    failed = [code for code in codes if code not in (0, NO_TESTS)]
    if failed:
        return failed[0]
    # one part selecting nothing is normal (`-k name`); both selecting nothing is pytest's 5
    return NO_TESTS if all(code == NO_TESTS for code in codes) else 0


COMMANDS = {"demo", "test", "bench", "lint", "install", "lock"}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(
            "usage: python3 dev.py demo | test | lint | bench | install | lock [args ...]",
            file=sys.stderr,
        )
        return 2
    command, rest = argv[0], argv[1:]
    if command == "lock":
        return lock(rest)
    ensure_env()
    if command == "install":
        print(f"Ready: {BIN / 'practice-sync'}")
        return 0
    if command == "demo":
        return subprocess.call([str(BIN / "practice-sync"), "demo", *rest])
    if command == "bench":
        return subprocess.call([_python(), str(ROOT / "benchmarks" / "bench.py"), *rest])
    if command == "lint":
        return lint()
    return test(rest)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:  # Ctrl-C: the child already reported; no traceback from here
        sys.exit(130)
