"""The profiler in benchmarks/ runs in CI at a small size, so a rename in the product breaks a
test here rather than the next person who needs a profile."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import ROOT


def test_phase_profiler_reports_every_step_of_both_runs(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "phases.py"), "--sessions", "2000"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    runs = result.stdout.split("== bizstim ")[1:]
    assert [r.split(":")[0] for r in runs] == ["first full sync", "no-change re-run"]
    for text in runs:
        assert "exit 0" in text
        for step in ("extract", "normalize", "load", "transforms"):
            line = re.search(rf"^  {step} +(\d+\.\d+) s  peak RSS +(\d+) MiB$", text, re.M)
            assert line is not None, (step, text)
            assert float(line.group(1)) > 0 and int(line.group(2)) > 50
