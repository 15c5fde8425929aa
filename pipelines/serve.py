"""The read-only serving file: where analysts and BI tools read `analytics`, so they never block
the nightly run and the run never waits for them.

DuckDB allows one writing process or many readers of a file, never both, and BI tools keep
their connections open all day. So after every successful rebuild the `analytics` schema (tables
and comments) is copied into a new file that is then renamed over the serving file: a reader
holding the old file keeps a consistent old copy, a new connection sees the new night.

A run that publishes to `practice_sync.publish` destinations writes the file before them (readers
never wait for a remote server) and then once more with the run history alone brought up to date
(`refresh_history`), so `practice-sync status` sees how each destination's publish went.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import dlt
import duckdb

from practice_sync.errors import ConfigError, LoadFailed

SETTING = "practice_sync.serve_path (PRACTICE_SYNC__SERVE_PATH)"
SCHEMAS = ("analytics", "ops")  # the contract, and the run history `status` reads
HISTORY_SCHEMAS = ("ops",)


def serve_path(database: Path) -> Path:
    """`practice_sync.serve_path`, or `<warehouse>_analytics.duckdb` beside the warehouse."""
    configured: object = dlt.config.get("practice_sync.serve_path")
    if configured:
        path = Path(str(configured)).expanduser().resolve()
    else:
        path = database.with_name(f"{database.stem}_analytics{database.suffix or '.duckdb'}")
    if path == database:
        raise ConfigError(f"{SETTING} must not be the warehouse file itself.")
    return path


def publish(con: duckdb.DuckDBPyConnection, target: Path) -> int:
    """Copy every `analytics` and `ops` table with its comments from `con` into `target`,
    atomically; return the number of tables published."""
    try:
        return _replace(con, target, None, SCHEMAS)
    except (duckdb.Error, OSError) as exc:
        raise LoadFailed(
            f"The analytics tables were rebuilt but could not be published to {target} "
            f"({_first_line(exc)}); readers keep the previous night: check {SETTING}."
        ) from exc


def refresh_history(con: duckdb.DuckDBPyConnection, target: Path) -> int:
    """Bring the run history (`ops`) in `target` up to date, keeping its `analytics` as it is,
    atomically: a byte copy of the file, its `ops` tables replaced, renamed over. Cheaper than
    `publish` (nothing of `analytics` is read or compressed again); same guarantees to readers."""
    try:
        return _replace(con, target, target, HISTORY_SCHEMAS)
    except (duckdb.Error, OSError) as exc:
        raise LoadFailed(
            f"The run history could not be written to {target} ({_first_line(exc)}); readers "
            "have tonight's tables, and `practice-sync status` sees this run's publishing after "
            f"the next run: check {SETTING}."
        ) from exc


def _replace(
    con: duckdb.DuckDBPyConnection, target: Path, start: Path | None, schemas: Sequence[str]
) -> int:
    """Write `schemas` from `con` into a copy of `start` (or a new file) and rename it over
    `target`; return the number of tables copied. A failure leaves `target` as it was."""
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    _remove(temporary)
    try:
        if start is not None:
            shutil.copyfile(start, temporary)
        tables = _copy(con, temporary, schemas)
        os.replace(temporary, target)
    except BaseException:
        _remove(temporary)
        raise
    return tables


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc).strip() else type(exc).__name__


def _copy(con: duckdb.DuckDBPyConnection, path: Path, schemas: Sequence[str]) -> int:
    """Each of `schemas` (dropped first where the file has it) with its tables and comments."""
    tables = con.execute(
        "select schema_name, table_name from duckdb_tables() "
        "where database_name = current_database() and list_contains(?, schema_name) order by all",
        [list(schemas)],
    ).fetchall()
    con.execute("attach ? as serving", [str(path)])
    try:
        for schema in schemas:
            con.execute(f"drop schema if exists serving.{schema} cascade")
        for schema in sorted({schema for schema, _ in tables}):
            con.execute(f"create schema serving.{schema}")
        for schema, table in tables:
            con.execute(
                f'create table serving.{schema}."{table}" as select * from {schema}."{table}"'
            )
        _copy_comments(con, schemas)
    finally:
        con.execute("detach serving")
    return len(tables)


def _copy_comments(con: duckdb.DuckDBPyConnection, schemas: Sequence[str]) -> None:
    """Table and column comments, so BI tools show the contract in the serving file too."""
    where = "database_name = current_database() and list_contains(?, schema_name)"
    for schema, table, comment in con.execute(
        f"select schema_name, table_name, comment from duckdb_tables() where {where} "
        "and comment is not null",
        [list(schemas)],
    ).fetchall():
        con.execute(f'comment on table serving.{schema}."{table}" is {_literal(comment)}')
    for schema, table, column, comment in con.execute(
        "select schema_name, table_name, column_name, comment from duckdb_columns() "
        f"where {where} and comment is not null",
        [list(schemas)],
    ).fetchall():
        target = f'serving.{schema}."{table}"."{column}"'
        con.execute(f"comment on column {target} is {_literal(comment)}")


def _literal(text: str) -> str:
    """A SQL string literal (COMMENT ON takes no parameters)."""
    return "'" + text.replace("'", "''") + "'"


def _remove(path: Path) -> None:
    for leftover in (path, path.with_name(path.name + ".wal")):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
