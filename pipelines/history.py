"""The run history: one row per run and source in `ops.run_history`, written at the end of every
run (failed and interrupted ones included), so the on-call person and `practice-sync status`
can tell what happened on which night without dlt's trace, which a failed run does not leave.

Each `practice_sync.publish` destination gets a row of its own, `publish.<name>`, written once
its publish is over: a destination can fail (exit 10) on a night every source loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb

from practice_sync.report import RunReport, SourceReport
from practice_sync.status import DESTINATION_PREFIX

SCHEMA = "ops"
TABLE = f"{SCHEMA}.run_history"
COLUMNS = (
    ("run_id", "varchar"),
    # 'bizstim' | 'bizstim.<account>' | 'timetap'… | 'analytics' (the rebuild) | 'publish.<dest>'
    ("source", "varchar"),
    ("started_at", "timestamptz"),
    ("finished_at", "timestamptz"),
    ("duration_s", "double"),  # this source's own steps (extract, normalize, load)
    ("outcome", "varchar"),  # ok | withheld | failed | skipped | interrupted
    ("exit_code", "integer"),
    ("requests", "bigint"),
    ("retries", "bigint"),
    ("rows_new", "bigint"),
    ("rows_changed", "bigint"),
    ("rows_retired", "bigint"),
    ("rows_current", "bigint"),
    ("data_issues", "bigint"),
    ("error", "varchar"),
)


def source_outcome(source: SourceReport, interrupted: bool) -> tuple[str, int]:
    """What one source's night came to, and the exit code it alone would give."""
    outcome = source.outcome
    if interrupted and not source.finished and outcome not in ("skipped", "failed"):
        return "interrupted", 0
    return outcome, {"failed": source.exit_code or 1, "withheld": 3}.get(outcome, 0)


def rows(
    report: RunReport, code: int, signal_code: int | None = None, at: datetime | None = None
) -> list[tuple[Any, ...]]:
    """The history rows of one run: a row per source, then one for the analytics rebuild. `at`
    is the run's end, shared with its destinations' rows (`destination_rows`)."""
    started, finished = _instants(report, at)
    issues = report.issues_by_source
    out: list[tuple[Any, ...]] = []
    for source in report.sources:
        outcome, source_code = source_outcome(source, signal_code is not None)
        if outcome == "interrupted":
            source_code = signal_code or 0
        tables = source.tables.values()
        out.append(
            (
                report.run_id, source.name, started, finished, sum(source.phases.values()), outcome,
                source_code, source.http.requests, source.http.retries,
                sum(t.new for t in tables), sum(t.changed for t in tables),
                sum(t.retired for t in tables), sum(t.current for t in tables),
                # 0 for a source that loaded with none; NULL where nothing was loaded
                issues.get(source.name, 0 if outcome in ("ok", "withheld") else None),
                source.error or "; ".join(source.withheld) or None,
            )
        )  # fmt: skip
    if signal_code is not None:
        analytics = ("interrupted", signal_code)
    elif report.transform_error:
        analytics = ("failed", report.transform_exit_code)
    else:
        analytics = ("ok", 0)
    out.append(
        (
            report.run_id, "analytics", started, finished, report.phases.get("transforms", 0.0),
            analytics[0],
            analytics[1], None, None, None, None, None, None,
            report.data_issues, report.transform_error,
        )
    )  # fmt: skip
    return out


def destination_rows(report: RunReport, at: datetime | None = None) -> list[tuple[Any, ...]]:
    """A row per `practice_sync.publish` destination: `rows_new` is the rows sent there,
    `rows_retired` the rows deleted there, `rows_current` the rows it holds after an `ok`."""
    started, finished = _instants(report, at)
    out: list[tuple[Any, ...]] = []
    for item in report.destinations:
        out.append(
            (
                report.run_id, f"{DESTINATION_PREFIX}{item.name}", started, finished,
                item.seconds, item.outcome, item.exit_code, None, None, item.added, None,
                item.removed, item.rows, None, item.error,
            )
        )  # fmt: skip
    return out


def serving_failed(con: duckdb.DuckDBPyConnection, run_id: str, sentence: str) -> None:
    """Mark a run's analytics row failed (exit 8 unless it had failed already) when its serving
    file could not be replaced: the row is written before that attempt, since the serving file
    carries the history, and said `ok` for a night whose readers kept stale data."""
    con.execute(
        f"update {TABLE} set outcome = 'failed', "
        "exit_code = case when outcome = 'ok' then 8 else exit_code end, "
        "error = coalesce(error || ' ', '') || ? where run_id = ? and source = 'analytics'",
        [sentence, run_id],
    )


def _instants(report: RunReport, at: datetime | None) -> tuple[datetime, datetime]:
    """The run's start and end: `at` (now by default) less the run's duration."""
    finished = at or datetime.now(UTC)
    return finished - timedelta(seconds=report.seconds), finished


def record(con: duckdb.DuckDBPyConnection, history: Sequence[tuple[Any, ...]]) -> None:
    """Append a run's rows to `ops.run_history`, creating it on first use."""
    if not history:
        return
    columns = ", ".join(f"{name} {kind}" for name, kind in COLUMNS)
    con.execute(f"create schema if not exists {SCHEMA}")
    con.execute(f"create table if not exists {TABLE} ({columns})")
    marks = ", ".join("?" for _ in COLUMNS)
    con.executemany(f"insert into {TABLE} values ({marks})", [list(row) for row in history])
