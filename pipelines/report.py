"""What a run did, for the closing summary and the exit code, plus progress on long sweeps."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from practice_sync.http import HttpStats

# The supported hook for profilers (benchmarks/phases.py): called with ("start" | "end", step)
# around every timed step of a run, in the thread that runs it.
PhaseObserver = Callable[[str, str], None]
phase_observers: list[PhaseObserver] = []


@contextlib.contextmanager
def phase(seconds: dict[str, float], name: str) -> Iterator[None]:
    """Add the wall time of one step (extract, normalize, load, transforms) to `seconds`."""
    for observer in phase_observers:
        observer("start", name)
    started = time.perf_counter()
    try:
        yield
    finally:
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - started
        for observer in phase_observers:
            observer("end", name)


@dataclass
class TableChange:
    new: int = 0
    changed: int = 0
    retired: int = 0
    current: int = 0


@dataclass
class SourceReport:
    """Filled by a source while it extracts and by the pipeline after it loads."""

    name: str
    http: HttpStats = field(default_factory=HttpStats)
    rows_read: dict[str, int] = field(default_factory=dict)
    sweeps: int = 0
    withheld: list[str] = field(default_factory=list)  # sentences: deletions not applied
    notes: list[str] = field(default_factory=list)
    tables: dict[str, TableChange] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)  # step -> seconds
    error: str | None = None
    skipped: str | None = None

    def count(self, table: str, rows: int) -> None:
        self.rows_read[table] = self.rows_read.get(table, 0) + rows


@dataclass
class RunReport:
    database: Path | None = None  # the warehouse file, always named in the summary
    serving: Path | None = None  # the serving file published this run
    sources: list[SourceReport] = field(default_factory=list)
    analytics: dict[str, int] = field(default_factory=dict)
    data_issues: int | None = None
    transform_error: str | None = None
    phases: dict[str, float] = field(default_factory=dict)  # "transforms" -> seconds
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    @property
    def seconds(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    def problems(self) -> list[str]:
        """Every sentence a person must act on, in the order they happened."""
        out: list[str] = []
        for src in self.sources:
            out.extend(src.withheld)
            if src.error:
                out.append(src.error)
        if self.transform_error:
            out.append(self.transform_error)
        return out

    def render(self) -> str:
        """A few lines a person reads over coffee: what changed, what went wrong, how long."""
        lines: list[str] = []
        for src in self.sources:
            if src.skipped:
                lines.append(f"{src.name}: skipped ({src.skipped})")
                continue
            status = "FAILED" if src.error else "ok"
            lines.append(
                f"{src.name}: {status} — {src.http.requests:,} requests, "
                f"{src.http.retries:,} retries, {src.http.bytes / 1e6:,.1f} MB"
                + (f", {src.sweeps} sweeps" if src.sweeps > 1 else "")
            )
            for table, change in sorted(src.tables.items()):
                lines.append(
                    f"  {src.name}.{table}: {change.new:,} new, {change.changed:,} changed, "
                    f"{change.retired:,} retired, {change.current:,} current"
                )
            lines.extend(f"  ! {sentence}" for sentence in src.withheld)
            lines.extend(f"  {note}" for note in src.notes)
            if src.error:
                lines.append(f"  error: {src.error}")
        if self.transform_error:
            lines.append(f"transforms: FAILED — {self.transform_error}")
        elif self.analytics:
            tables = ", ".join(f"{name} {rows:,}" for name, rows in sorted(self.analytics.items()))
            lines.append(f"analytics: {tables}")
        if self.data_issues is not None:
            lines.append(f"data issues: {self.data_issues:,} (see analytics.data_issues)")
        if self.database is not None:
            lines.append(f"warehouse: {self.database}")
        if self.serving is not None:
            lines.append(f"serving file (for readers): {self.serving}")
        lines.append(f"time: {self.seconds:,.1f} s")
        return "\n".join(lines)


class Progress:
    """Rows-so-far on stderr: redrawn in place on a terminal, a line per 10% in a log file."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None) -> None:
        self.label = label
        self.total = max(total, 0)
        self.done = 0
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._next_tenth = 1
        self._lock = threading.Lock()
        self._last_draw = 0.0

    def advance(self, rows: int) -> None:
        with self._lock:
            self.done += rows
            if self.tty:
                now = time.monotonic()
                if now - self._last_draw > 0.2 or self.done >= self.total:
                    self._last_draw = now
                    self.stream.write(f"\r{self.label}: {self.done:,} / {self.total:,}")
                    self.stream.flush()
            elif self.total >= 10_000:
                while self.total and self.done * 10 >= self._next_tenth * self.total:
                    if self._next_tenth <= 10:
                        self.stream.write(
                            f"{self.label}: {self.done:,} / {self.total:,} "
                            f"({self._next_tenth * 10}%)\n"
                        )
                    self._next_tenth += 1

    def close(self) -> None:
        if self.tty and self.total:
            self.stream.write("\n")
            self.stream.flush()
