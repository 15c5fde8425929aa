"""`practice-sync status`: what the last nights did, per source, for the person on call at 3 a.m.

It reads the run history (`ops.run_history`, one row per run and source) from the *serving file*,
read-only, so it answers at once even while a run holds the warehouse. Exit codes: 0 when every
configured source is fresh (or no `--max-age` was given), 2 when there is no serving file or no
run history in it yet, 9 (`STALE_EXIT`, beside the run's 0-10) when `--max-age` was given and a
source's last success is older than that or it never succeeded. A source every recent run skipped
(no credentials: not configured here) is listed but never counts as stale.

A `practice_sync.publish` destination (`publish.postgres`) is listed and judged as a source is:
dashboards reading the server are as stale as its last successful publish, whatever the sources
did. Only runs that publish to it write its rows, so even a `skipped` one (the rebuild failed,
nothing new to send) means it is configured: it counts as stale.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from practice_sync.errors import ConfigError

if TYPE_CHECKING:  # duckdb is imported when a command runs, not when the CLI parses arguments
    import duckdb

STALE_EXIT = 9
DEFAULT_MAX_AGE = 26 * 3600.0  # a nightly run plus two hours of slack
SUCCESS = ("ok", "withheld")  # withheld: loaded, only the deletions were held back (exit 3)
SOURCE_ORDER = ("bizstim", "timetap", "analytics", "publish")
DESTINATION_PREFIX = "publish."  # a destination's rows: `publish.postgres`
COUNTS = ("rows_new", "rows_changed", "rows_retired", "rows_current")


class NoHistory(ConfigError):
    """The file has no run history yet: written by a version before it, or never run."""


def parse_age(text: str) -> float:
    """`90`, `30s`, `10m`, `26h`, `2d` as seconds (an argparse type)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not an age such as 90s, 30m, 26h or 2d")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def add_command(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """The `status` subcommand's options, kept here so cli.py only names it."""
    cmd = commands.add_parser(
        "status",
        parents=[common],
        help="per source: last successful run, its age and counts, open data issues",
        description="Read the serving file's run history (read-only, never waits for a run). "
        f"Exit 0: fresh; 2: no serving file or no history yet; {STALE_EXIT}: with --max-age, a "
        "source's (or a publish destination's) last success is older than that or it never "
        "succeeded.",
    )
    cmd.add_argument(
        "--database", help="a DuckDB file to read (default: the warehouse's serving file)"
    )
    cmd.add_argument(
        "--max-age",
        type=parse_age,
        metavar="AGE",
        help=f"exit {STALE_EXIT} when a source's or destination's last success is older than "
        "this (e.g. 26h, 2d)",
    )
    cmd.add_argument("--json", action="store_true", help="one JSON document, for machines")


@dataclass
class SourceStatus:
    """One source's line: its last success (what the data is as of) and its last run."""

    source: str
    kind: str  # source | analytics (the rebuild) | destination (`publish.<name>`)
    configured: bool  # False: every run so far skipped it (no credentials)
    last_run_at: datetime | None
    last_outcome: str
    last_exit_code: int | None
    last_error: str | None
    last_success_at: datetime | None = None
    last_success_outcome: str | None = None
    age_s: float | None = None
    rows_new: int | None = None
    rows_changed: int | None = None
    rows_retired: int | None = None
    rows_current: int | None = None
    open_issues: int | None = None  # analytics.data_issues rows of this source
    stale: bool = False


@dataclass
class Status:
    path: Path
    checked_at: datetime
    max_age_s: float | None
    sources: list[SourceStatus] = field(default_factory=list)

    @property
    def stale(self) -> bool:
        return any(s.stale for s in self.sources)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types: instants as ISO 8601 in UTC."""

        def plain(value: Any) -> Any:
            return value.isoformat() if isinstance(value, datetime) else value

        return {
            "serving_file": str(self.path),
            "checked_at": self.checked_at.isoformat(),
            "max_age_s": self.max_age_s,
            "stale": self.stale,
            "sources": [{k: plain(v) for k, v in asdict(s).items()} for s in self.sources],
        }

    def render(self) -> str:
        return render_text(self)


@contextlib.contextmanager
def open_serving(path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """The file read-only: many readers may share it, and a run replaces it, never waits."""
    import duckdb

    if not path.is_file():
        raise ConfigError(
            f"There is no serving file at {path}: run `practice-sync run` first, or name a file "
            "with --database."
        )
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error as exc:
        raise ConfigError(f"{path} cannot be read ({str(exc).splitlines()[0][:200]}).") from None
    try:
        yield con
    finally:
        con.close()


def has_table(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    # imported here: `practice-sync --help` should not pay for dlt
    from practice_sync.warehouse import table_exists

    return table_exists(con, schema, table)


def issues_by_source(con: duckdb.DuckDBPyConnection) -> dict[str, int] | None:
    """Open data issues per source; None when the file has no analytics.data_issues."""
    if not has_table(con, "analytics", "data_issues"):
        return None
    # labelled as the run history labels a load: `bizstim`, or `bizstim.uptown` for an account
    has_account = con.execute(
        "select count(*) from duckdb_columns() where schema_name = 'analytics' "
        "and table_name = 'data_issues' and column_name = 'account'"
    ).fetchall()[0][0]
    label = (
        "source || case when coalesce(account, 'default') = 'default' then '' "
        "else '.' || account end"
        if has_account
        else "source"
    )
    rows = con.execute(f"select {label}, count(*) from analytics.data_issues group by 1").fetchall()
    return {str(source): int(n) for source, n in rows}


_LATEST = """
with h as (select *, epoch(started_at) as st, epoch(finished_at) as fin from ops.run_history),
last_run as (
    select * from h qualify row_number() over (
        partition by source order by started_at desc nulls last, finished_at desc nulls last) = 1),
last_ok as (
    select * from h where outcome in ('ok', 'withheld') qualify row_number() over (
        partition by source order by finished_at desc nulls last, started_at desc nulls last) = 1)
select r.source, r.st, r.outcome, r.exit_code, r.error,
       o.fin, o.outcome, o.rows_new, o.rows_changed, o.rows_retired, o.rows_current
from last_run r left join last_ok o using (source)
"""


def read_status(
    con: duckdb.DuckDBPyConnection, path: Path, max_age_s: float | None, now: datetime
) -> Status:
    """Each source's last run and last success; raises NoHistory when there is none yet."""
    if not has_table(con, "ops", "run_history"):
        raise NoHistory(
            f"{path} has no run history yet (ops.run_history): it is written by every run from "
            "this version on, so run `practice-sync run` once."
        )
    rows = con.execute(_LATEST).fetchall()
    if not rows:
        raise NoHistory(f"{path} has no runs recorded yet: run `practice-sync run` once.")
    issues = issues_by_source(con)
    status = Status(path, now, max_age_s)
    for row in sorted(rows, key=lambda r: _source_rank(str(r[0]))):
        status.sources.append(_source_status(row, issues, max_age_s, now))
    return status


def _source_rank(source: str) -> tuple[int, str]:
    vendor = source.split(".")[0]  # an account's load, `bizstim.uptown`, sorts with its vendor
    return (SOURCE_ORDER.index(vendor) if vendor in SOURCE_ORDER else len(SOURCE_ORDER), source)


def _instant(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(float(epoch), UTC)


def _source_status(
    row: Sequence[Any], issues: dict[str, int] | None, max_age_s: float | None, now: datetime
) -> SourceStatus:
    source, started, outcome, exit_code, error, finished, ok_outcome, *counts = row
    kind = kind_of(str(source))
    item = SourceStatus(
        source=str(source),
        kind=kind,
        configured=outcome != "skipped" or kind == "destination",
        last_run_at=_instant(started),
        last_outcome=str(outcome),
        last_exit_code=None if exit_code is None else int(exit_code),
        last_error=error,
        last_success_at=_instant(finished),
        last_success_outcome=ok_outcome,
    )
    if item.last_success_at is not None:
        item.age_s = max((now - item.last_success_at).total_seconds(), 0.0)
        for name, value in zip(COUNTS, counts, strict=True):
            setattr(item, name, None if value is None else int(value))
    if kind == "source":  # the rebuild's issues are the sources' issues
        item.open_issues = None if issues is None else issues.get(item.source, 0)
    too_old = max_age_s is not None and item.age_s is not None and item.age_s > max_age_s
    item.stale = item.configured and (item.last_success_at is None or too_old)
    return item


def kind_of(source: str) -> str:
    """What a run-history row is about, from its `source` label."""
    if source == "analytics":
        return "analytics"
    return "destination" if source.startswith(DESTINATION_PREFIX) else "source"


def format_age(seconds: float | None) -> str:
    """`45s`, `41m`, `3h 05m`, `2d 4h`: precise where it matters, short where it does not."""
    if seconds is None:
        return "never"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def when_text(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S")


def count_text(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def state_text(item: SourceStatus) -> str:
    if not item.configured:
        return "skipped"
    if item.last_success_at is None:
        return "NEVER"
    return "STALE" if item.stale else "ok"


def last_run_text(item: SourceStatus) -> str:
    code = "" if item.last_exit_code in (None, 0) else f" (exit {item.last_exit_code})"
    return f"{item.last_outcome}{code}"


HEADERS = ("source", "state", "last success (UTC)", "age", "new", "changed", "retired")
HEADERS_2 = ("current", "open issues", "last run")
RIGHT = {"age", "new", "changed", "retired", "current", "open issues"}


def render_text(status: Status) -> str:
    """A small aligned table, then one line per source whose last run went wrong."""
    rows = [
        (
            item.source,
            state_text(item),
            when_text(item.last_success_at),
            format_age(item.age_s),
            count_text(item.rows_new),
            count_text(item.rows_changed),
            count_text(item.rows_retired),
            count_text(item.rows_current),
            count_text(item.open_issues),
            last_run_text(item),
        )
        for item in status.sources
    ]
    limit = "" if status.max_age_s is None else f", max age {format_age(status.max_age_s)}"
    lines = [
        f"Runs recorded in {status.path} as of {when_text(status.checked_at)} UTC{limit}:",
        "",
        *_aligned([HEADERS + HEADERS_2, *rows]),
    ]
    for item in status.sources:
        quiet = ("skipped",) if item.kind != "destination" else ()  # not configured here
        if item.last_outcome not in (*SUCCESS, *quiet):
            lines.append(
                f"! {item.source}: last run {when_text(item.last_run_at)} {last_run_text(item)}"
                + (f": {item.last_error}" if item.last_error else "")
            )
        elif item.last_outcome == "withheld":
            lines.append(f"! {item.source}: deletions withheld (exit 3): {item.last_error or ''}")
    return "\n".join(line.rstrip() for line in lines)


def _aligned(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right = [name in RIGHT for name in rows[0]]
    return [
        "  ".join(
            cell.rjust(w) if r else cell.ljust(w)
            for cell, w, r in zip(row, widths, right, strict=True)
        )
        for row in rows
    ]


def main(args: argparse.Namespace, path: Path) -> int:
    """Print the status of `path`; exit 9 when `--max-age` was given and a source is stale."""
    with open_serving(path) as con:
        status = read_status(con, path, args.max_age, datetime.now(UTC))
    print(json.dumps(status.to_json(), indent=2) if args.json else status.render(), flush=True)
    return STALE_EXIT if args.max_age is not None and status.stale else 0
