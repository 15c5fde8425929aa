"""What a run did, for the closing summary and the exit code, plus progress on long sweeps."""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
import uuid
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

    name: str  # "bizstim", or "bizstim.uptown" for a listed account other than default
    account: str = "default"
    http: HttpStats = field(default_factory=HttpStats)
    rows_read: dict[str, int] = field(default_factory=dict)
    sweeps: int = 0
    withheld: list[str] = field(default_factory=list)  # sentences: deletions not applied
    notes: list[str] = field(default_factory=list)
    tables: dict[str, TableChange] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)  # step -> seconds
    error: str | None = None
    exit_code: int = 0  # of the error, when there is one
    skipped: str | None = None
    finished: bool = False  # loaded (or failed) before the run ended

    @property
    def outcome(self) -> str:
        """skipped | failed | withheld | ok: what the summary, the JSON logs and the run history
        (`history.source_outcome`, which adds `interrupted`) say of this source's night."""
        if self.skipped:
            return "skipped"
        if self.error:
            return "failed"
        return "withheld" if self.withheld else "ok"

    def count(self, table: str, rows: int) -> None:
        self.rows_read[table] = self.rows_read.get(table, 0) + rows

    def render(self) -> str:
        """This source's lines of the summary."""
        if self.skipped:
            return f"{self.name}: skipped ({self.skipped})"
        status = "FAILED" if self.error else self.outcome
        lines = [
            f"{self.name}: {status} — {self.http.requests:,} requests, "
            f"{self.http.retries:,} retries, {self.http.bytes / 1e6:,.1f} MB"
            + (f", {self.sweeps} sweeps" if self.sweeps > 1 else "")
        ]
        for table, change in sorted(self.tables.items()):
            lines.append(
                f"  {self.name}.{table}: {change.new:,} new, {change.changed:,} changed, "
                f"{change.retired:,} retired, {change.current:,} current"
            )
        lines.extend(f"  ! {sentence}" for sentence in self.withheld)
        lines.extend(f"  {note}" for note in self.notes)
        if self.error:
            lines.append(f"  error: {self.error}")
        return "\n".join(lines)

    def fields(self) -> dict[str, object]:
        """This source's figures for JSON logs."""
        return {
            "source": self.name,
            "account": self.account,
            "outcome": self.outcome,
            "requests": self.http.requests,
            "retries": self.http.retries,
            "bytes": self.http.bytes,
            "tables": {name: vars(change) for name, change in self.tables.items()},
            "phases": {name: round(seconds, 3) for name, seconds in self.phases.items()},
            "withheld": list(self.withheld),
            "error": self.error,
        }


@dataclass
class DestinationReport:
    """One `practice_sync.publish` destination's part of a run, for the summary and its row
    in `ops.run_history` (`publish.<name>`)."""

    name: str
    outcome: str = "skipped"  # ok | failed | interrupted | skipped (not attempted tonight)
    exit_code: int = 0
    error: str | None = None  # the one sentence (why it failed, or why it was not attempted)
    sent: str | None = None  # what was sent, for the summary: "analytics: 5 rows added, 1 removed"
    added: int | None = None  # rows sent to it
    removed: int | None = None  # rows deleted there
    rows: int | None = None  # rows it holds afterwards
    seconds: float = 0.0


@dataclass
class RunReport:
    database: Path | None = None  # the warehouse file, always named in the summary
    serving: Path | None = None  # the serving file published this run
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    issues_by_source: dict[str, int] = field(default_factory=dict)
    sources: list[SourceReport] = field(default_factory=list)
    analytics: dict[str, int] = field(default_factory=dict)
    analytics_build: str | None = None  # "incremental (…)" or "full (why)": transform.Build
    data_issues: int | None = None
    transform_error: str | None = None
    transform_exit_code: int = 7  # 8 when the build failed to write (a full disk)
    destinations: list[DestinationReport] = field(default_factory=list)  # in publishing order
    phases: dict[str, float] = field(default_factory=dict)  # "transforms" -> seconds
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    @property
    def seconds(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    @property
    def published(self) -> dict[str, str]:
        """Destination -> what was sent, for each one published tonight."""
        return {d.name: d.sent for d in self.destinations if d.outcome == "ok" and d.sent}

    @property
    def publish_errors(self) -> list[str]:
        """The sentence of each destination that could not be published to."""
        return [d.error for d in self.destinations if d.outcome == "failed" and d.error]

    def problems(self) -> list[str]:
        """Every sentence a person must act on, in the order they happened."""
        out: list[str] = []
        for src in self.sources:
            out.extend(src.withheld)
            if src.error:
                out.append(src.error)
        if self.transform_error:
            out.append(self.transform_error)
        out.extend(self.publish_errors)
        return out

    def render(self) -> str:
        """A few lines a person reads over coffee: what changed, what went wrong, how long."""
        return "\n".join([*(src.render() for src in self.sources), self.render_run()])

    def render_run(self) -> str:
        """The run's closing lines: analytics, data issues, where it wrote, how long."""
        lines: list[str] = []
        if self.transform_error:
            lines.append(f"transforms: FAILED — {self.transform_error}")
        elif self.analytics:
            tables = ", ".join(f"{name} {rows:,}" for name, rows in sorted(self.analytics.items()))
            lines.append(f"analytics: {tables}")
            if self.analytics_build:
                lines.append(f"analytics build: {self.analytics_build}")
        if self.data_issues is not None:
            lines.append(f"data issues: {self.data_issues:,} (see analytics.data_issues)")
        if self.database is not None:
            lines.append(f"warehouse: {self.database}")
        if self.serving is not None:
            lines.append(f"serving file (for readers): {self.serving}")
        for destination in self.destinations:
            if destination.outcome == "ok":
                took = f"{destination.seconds:,.1f}"
                lines.append(f"published to {destination.name}: {destination.sent} in {took} s")
        lines.append(f"time: {self.seconds:,.1f} s")
        return "\n".join(lines)

    def fields(self) -> dict[str, object]:
        """The run's figures for JSON logs."""
        return {
            "run_id": self.run_id,
            "duration_s": round(self.seconds, 3),
            "analytics": dict(self.analytics),
            "analytics_build": self.analytics_build,
            "data_issues": self.data_issues,
            "warehouse": str(self.database) if self.database else None,
            "serving_file": str(self.serving) if self.serving else None,
            "published": dict(self.published),
            "error": self.transform_error or next(iter(self.publish_errors), None),
        }


class Progress:
    """How far a long phase is: an interactive bar on a terminal; in a log file a line at least
    every `interval` seconds (done of total, rate, time left), so a night's log shows where a
    slow run was, and a final line when the phase ends."""

    def __init__(
        self, label: str, total: int, stream: TextIO | None = None, interval: float | None = None
    ) -> None:
        self.label = label
        self.total = max(total, 0)
        self.done = 0
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval = progress_interval() if interval is None else interval
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._last_draw = 0.0
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        if not self.tty and self.total:
            self._ticker = threading.Thread(target=self._tick, name="progress", daemon=True)
            self._ticker.start()

    def advance(self, rows: int) -> None:
        with self._lock:
            self.done += rows
            if self.tty:
                now = time.monotonic()
                if now - self._last_draw > 0.2 or self.done >= self.total:
                    self._last_draw = now
                    self.stream.write(f"\r{self.line()}\x1b[K")
                    self.stream.flush()

    def line(self) -> str:
        """`Bizstim sessions: 120,000 / 1,000,000 (12%), 8,400/s, about 1 min 45 s left`"""
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.done / elapsed
        share = f" ({self.done / self.total:.0%})" if self.total else ""
        left = ""
        if 0 < self.done < self.total and rate > 0:
            left = f", about {_duration((self.total - self.done) / rate)} left"
        return f"{self.label}: {self.done:,} / {self.total:,}{share}, {rate:,.0f}/s{left}"

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                text = self.line()
            logging.getLogger("practice_sync.progress").info(text)

    def close(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=5)
            logging.getLogger("practice_sync.progress").info(self.line())
        if self.tty and self.total:
            self.stream.write("\n")
            self.stream.flush()


def progress_interval() -> float:
    """`practice_sync.progress_interval` seconds between progress lines in a log (default 10)."""
    import dlt

    value: object = dlt.config.get("practice_sync.progress_interval")
    try:
        return max(float(str(value)), 0.1) if value is not None else 10.0
    except (TypeError, ValueError):
        return 10.0


def _duration(seconds: float) -> str:
    minutes, rest = divmod(int(seconds + 0.5), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"
