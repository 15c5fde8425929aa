"""The read-only serving file: where analysts and BI tools read `analytics`, so they never block
the nightly run and the run never waits for them.

DuckDB allows one writing process or many readers of a file, never both, and BI tools keep
their connections open all day. So after every successful rebuild the `analytics` schema (tables
and comments) is copied into a new file that is then renamed over the serving file: a reader
holding the old file keeps a consistent old copy, a new connection sees the new night.

A run that publishes to `practice_sync.publish` destinations writes the file before them (readers
never wait for a remote server) and then once more with the run history alone brought up to date
(`refresh_history`), so `practice-sync status` sees how each destination's publish went.

The new file starts as a byte copy of the old one wherever that is exact: when the serving file
is the one this warehouse last wrote (`analytics_state.served` holds its build, size and mtime)
and holds the build tonight's incremental build updated, only the rows that build rewrote are
replaced in it (and the tables it rebuilt in full, and `ops`); when it already holds tonight's
build, only `ops`. Anything else (a first night, a full rebuild, a failed or skipped publish, a
file changed by someone else, a privacy policy changed since: the old file's bytes may still
hold values it now drops or hashes) writes every table anew. Either way readers get one rename,
and the file keeps the permission bits and group an administrator gave it.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from stat import S_IMODE

import dlt
import duckdb

from practice_sync import incremental, privacy, warehouse
from practice_sync.errors import ConfigError, LoadFailed

SETTING = "practice_sync.serve_path (PRACTICE_SYNC__SERVE_PATH)"
SCHEMAS = ("analytics", "ops")  # the contract, and the run history `status` reads
HISTORY_SCHEMAS = ("ops",)


def serve_path(database: Path) -> Path:
    """`practice_sync.serve_path`, or `<warehouse>_analytics.duckdb` beside the warehouse; a
    relative path is read from the project folder, as the warehouse's is (cron starts in $HOME)."""
    configured: object = dlt.config.get("practice_sync.serve_path")
    if configured:
        base = Path(os.environ.get("DLT_PROJECT_DIR") or ".")
        path = (base / Path(str(configured)).expanduser()).resolve()
    else:
        path = database.with_name(f"{database.stem}_analytics{database.suffix or '.duckdb'}")
    if path == database:
        raise ConfigError(f"{SETTING} must not be the warehouse file itself.")
    return path


def publish(con: duckdb.DuckDBPyConnection, target: Path) -> int:
    """Copy every `analytics` and `ops` table with its comments from `con` into `target` (or
    only what changed, see the module docstring), atomically; return the tables written."""
    try:
        build = incremental.builds(con)
        how = _plan(build, _served(con, target))
        if how == "history":
            tables = _replace(con, target, target, HISTORY_SCHEMAS)
        elif how == "patch":
            tables = _replace(con, target, target, SCHEMAS, incremental.updated_tables(con))
        else:
            tables = _replace(con, target, None, SCHEMAS)
        _mark(con, target, build[0] if build else None)
        return tables
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
        served, build = _served(con, target), incremental.builds(con)
        if served is None or served != (build[0] if build else None):
            # changed since `publish` wrote it (while the destinations published, say):
            # readers get tonight's tables again, not that change
            return publish(con, target)
        tables = _replace(con, target, target, HISTORY_SCHEMAS)
        _mark(con, target, served)
        return tables
    except (duckdb.Error, OSError) as exc:
        raise LoadFailed(
            f"The run history could not be written to {target} ({_first_line(exc)}); readers "
            "have tonight's tables, and `practice-sync status` sees this run's publishing after "
            f"the next run: check {SETTING}."
        ) from exc


def plan(con: duckdb.DuckDBPyConnection, target: Path) -> str:
    """How `publish` will write `target`: "history" (it holds tonight's build: `ops` only),
    "patch" (it holds the build tonight's incremental build updated) or "full"."""
    return _plan(incremental.builds(con), _served(con, target))


def _plan(build: tuple[str, str | None] | None, served: str | None) -> str:
    if build is None or served is None:
        return "full"
    if served == build[0]:
        return "history"
    return "patch" if served == build[1] else "full"


def _served(con: duckdb.DuckDBPyConnection, target: Path) -> str | None:
    """The build `target` holds, if this warehouse wrote it last, nothing changed it since and
    it was written under tonight's privacy policy (else its bytes may hold what it removed)."""
    if not warehouse.table_exists(con, incremental.STATE, "served"):
        return None
    # a file marked before the policy was recorded with it: written in full once
    kept = (
        "privacy"
        if warehouse.has_column(con, incremental.STATE, "served", "privacy")
        else "'unknown'"
    )
    row = con.execute(
        f"select build_id, size, mtime_ns, {kept} from {incremental.STATE}.served where path = ?",
        [str(target)],
    ).fetchone()
    try:
        stat = target.stat()
    except OSError:
        return None
    if row is None or (row[1], row[2]) != (stat.st_size, stat.st_mtime_ns):
        return None
    if row[3] != _privacy(con):
        return None
    if _wal(target).exists():  # someone opened it for writing: their change is in its log
        return None
    return None if row[0] is None else str(row[0])


def _mark(con: duckdb.DuckDBPyConnection, target: Path, build: str | None) -> None:
    """Remember which build `target` holds now, and how to tell it was not changed since."""
    stat = target.stat()
    con.execute(f"create schema if not exists {incremental.STATE}")
    con.execute(
        f"create table if not exists {incremental.STATE}.served "
        "(path varchar, build_id varchar, size bigint, mtime_ns bigint, privacy varchar)"
    )
    con.execute(f"alter table {incremental.STATE}.served add column if not exists privacy varchar")
    con.execute(f"delete from {incremental.STATE}.served where path = ?", [str(target)])
    con.execute(
        f"insert into {incremental.STATE}.served (path, build_id, size, mtime_ns, privacy) "
        "values (?, ?, ?, ?, ?)",
        [str(target), build, stat.st_size, stat.st_mtime_ns, _privacy(con)],
    )


def _privacy(con: duckdb.DuckDBPyConnection) -> str:
    """Every source's privacy policy as recorded with its stored history (`apply_to_history`
    records each change, with when it was applied): a change makes the next file a full one."""
    schema, table = privacy.RECORD.split(".")
    if not warehouse.table_exists(con, schema, table):
        return ""
    rows = con.execute(
        f"select dataset, policy, salt_check, applied_at::varchar from {privacy.RECORD} "
        "order by dataset"
    ).fetchall()
    return json.dumps(rows)


def _replace(
    con: duckdb.DuckDBPyConnection,
    target: Path,
    start: Path | None,
    schemas: Sequence[str],
    updated: dict[str, str] | None = None,
) -> int:
    """Write `schemas` from `con` into a copy of `start` (or a new file) and rename it over
    `target`; return the number of tables copied. A failure leaves `target` as it was.
    `updated`: analytics tables to patch in place (table -> the rows to replace), not copy."""
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    _remove_left_over(target)
    _remove(temporary)
    try:
        if start is not None:
            shutil.copyfile(start, temporary)
        tables = _copy(con, temporary, schemas, updated or {})
        _keep_access(target, temporary)
        os.replace(temporary, target)
    except BaseException:
        _remove(temporary)
        raise
    # a log left by someone who wrote to the file just replaced belongs to that file: beside
    # the new one, DuckDB would refuse to open it ("WAL does not match database file")
    with contextlib.suppress(FileNotFoundError):
        _wal(target).unlink()
    return tables


def _keep_access(target: Path, temporary: Path) -> None:
    """Give the new file the old one's permission bits and group (an administrator's `chmod
    640` and BI group), not the umask's default; a group this user may not set is left."""
    try:
        old = target.stat()
    except FileNotFoundError:
        return
    if temporary.stat().st_gid != old.st_gid:
        with contextlib.suppress(PermissionError):
            os.chown(temporary, -1, old.st_gid)
    os.chmod(temporary, S_IMODE(old.st_mode))  # after the group: a chown may clear set-group-id


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc).strip() else type(exc).__name__


def _copy(
    con: duckdb.DuckDBPyConnection, path: Path, schemas: Sequence[str], updated: dict[str, str]
) -> int:
    """Each of `schemas` (dropped first where the file has it) with its tables and comments;
    with `updated`, `analytics` is kept and patched: those tables get the rows the build
    rewrote, every other table is replaced whole."""
    tables = con.execute(
        "select schema_name, table_name from duckdb_tables() "
        "where database_name = current_database() and list_contains(?, schema_name) order by all",
        [list(schemas)],
    ).fetchall()
    # the warehouse's own database is named after its file: the alias must not be that name
    names = {
        row[0] for row in con.execute("select database_name from duckdb_databases()").fetchall()
    }
    alias = next(
        f"serving{n or ''}" for n in range(len(names) + 1) if f"serving{n or ''}" not in names
    )
    con.execute(f'attach ? as "{alias}"', [str(path)])
    # Row order is not part of any table's contract (an incremental build already appends its
    # rows at the end), and copying without it is ~1.5x faster and lighter on memory.
    con.execute("set session preserve_insertion_order = false")  # this connection only
    try:
        kept = {"analytics"} if updated else set()
        for schema in schemas:
            if schema not in kept:
                con.execute(f'drop schema if exists "{alias}".{schema} cascade')
        for schema in sorted({schema for schema, _ in tables} - kept):
            con.execute(f'create schema "{alias}".{schema}')
        for schema, table in tables:
            here, there = f'{schema}."{table}"', f'"{alias}".{schema}."{table}"'
            if schema in kept and table in updated:
                con.execute(f"delete from {there} where {updated[table]}")
                con.execute(f"insert into {there} select * from {here} where {updated[table]}")
            else:
                con.execute(f"create or replace table {there} as select * from {here}")
        for schema, table in con.execute(
            "select schema_name, table_name from duckdb_tables() where database_name = ? "
            "and list_contains(?, schema_name)",
            [alias, sorted(kept)],
        ).fetchall():
            if (schema, table) not in tables:  # gone from the warehouse since
                con.execute(f'drop table "{alias}".{schema}."{table}"')
        _copy_comments(con, schemas, alias)
    finally:
        con.execute("reset session preserve_insertion_order")
        con.execute(f'detach "{alias}"')
    return len(tables)


def _copy_comments(con: duckdb.DuckDBPyConnection, schemas: Sequence[str], alias: str) -> None:
    """Table and column comments, so BI tools show the contract in the serving file too."""
    where = "database_name = current_database() and list_contains(?, schema_name)"
    for schema, table, comment in con.execute(
        f"select schema_name, table_name, comment from duckdb_tables() where {where} "
        "and comment is not null",
        [list(schemas)],
    ).fetchall():
        con.execute(f'comment on table "{alias}".{schema}."{table}" is {_literal(comment)}')
    for schema, table, column, comment in con.execute(
        "select schema_name, table_name, column_name, comment from duckdb_columns() "
        f"where {where} and comment is not null",
        [list(schemas)],
    ).fetchall():
        target = f'"{alias}".{schema}."{table}"."{column}"'
        con.execute(f"comment on column {target} is {_literal(comment)}")


def _literal(text: str) -> str:
    """A SQL string literal (COMMENT ON takes no parameters)."""
    return "'" + text.replace("'", "''") + "'"


def _remove_left_over(target: Path) -> None:
    """Remove the copies in progress that runs killed while writing `target` left behind (one
    file the size of the serving file each), but not one whose process still runs."""
    for leftover in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        pid = leftover.name[len(target.name) + 2 : -len(".tmp")]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            _remove(leftover)
        except PermissionError:  # another user's process: alive
            continue


def _wal(path: Path) -> Path:
    """DuckDB's write-ahead log of the database file `path`."""
    return path.with_name(path.name + ".wal")


def _remove(path: Path) -> None:
    for leftover in (path, _wal(path)):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
