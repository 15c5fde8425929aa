"""The DuckDB warehouse file: where it is, whether it can be written, the one-run lock, and the
few reads the job makes of it (current records for the deletion guard, the change summary).

DuckDB allows one writing process at a time, so every check that can fail happens here, before
any API is called: a run that cannot write should say so in one sentence and change nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path

import dlt
import duckdb
import pyarrow as pa

from practice_sync import interrupt
from practice_sync.context import CurrentVersions
from practice_sync.errors import ConfigError, LoadFailed, WarehouseLocked
from practice_sync.report import TableChange

DEFAULT_DATABASE = "practice_sync.duckdb"
# DuckDB admits one writer, and in one process every connection to a file must share one
# configuration: accounts extracting concurrently take turns for every open of the warehouse
access = threading.RLock()
DEFAULT_MEMORY_LIMIT = "512MB"
SETTING = "destination.duckdb.credentials (DESTINATION__DUCKDB__CREDENTIALS)"
ACCOUNT_COLUMN = "account"  # as accounts.ACCOUNT_COLUMN; stamped on every raw row


def database_from_config(explicit: str | None = None) -> Path:
    """The DuckDB file from `--database` (relative to the current folder), or from
    DESTINATION__DUCKDB__CREDENTIALS / `.dlt/config.toml` (relative to the project folder, the
    parent of `--config-dir`, so cron finds the same file from any folder)."""
    if explicit:
        return Path(explicit).expanduser().resolve()
    value: object = dlt.config.get("destination.duckdb.credentials") or DEFAULT_DATABASE
    if not isinstance(value, str):
        raise ConfigError(f"{SETTING} must be a file path.")
    if value.startswith("duckdb:///"):
        value = value[len("duckdb:///") :]
    if value == ":memory:":
        raise ConfigError(
            f"{SETTING} must be a file, not :memory:, or the warehouse is gone when the run ends."
        )
    base = Path(os.environ.get("DLT_PROJECT_DIR") or ".")
    return (base / Path(value).expanduser()).resolve()


def duckdb_config() -> dict[str, str | bool | int | float | list[str]]:
    """DuckDB's own default takes 80% of RAM for a big merge; a bounded limit spills to disk
    instead, so a million-session night fits beside whatever else the server runs."""
    limit: object = dlt.config.get("practice_sync.memory_limit") or DEFAULT_MEMORY_LIMIT
    return {"memory_limit": str(limit)}


def check_writable(database: Path) -> None:
    where = database.parent
    problem = None
    if database.is_dir():
        problem = f"{database} is a folder, not a file"
    elif not where.is_dir():
        problem = f"folder {where} does not exist"
    elif not os.access(where, os.W_OK) or (database.exists() and not os.access(database, os.W_OK)):
        problem = f"{database} is not writable"
    elif "'" in str(where) or "'" in database.stem:
        # dlt's DuckDB loader quotes the load files' paths (beside the warehouse) without
        # escaping them: every night failed with exit 8 and a parser's `^^^^`
        problem = f"{database}: dlt cannot load files from a path holding an apostrophe (')"
    if problem:
        raise ConfigError(f"The warehouse cannot be written ({problem}): fix {SETTING}.")


# the warehouses this process holds for a run (`lock`): the connection keeping each one's DuckDB
# instance open, None until the file exists (a first run's load creates it)
_held: dict[Path, duckdb.DuckDBPyConnection | None] = {}


def connect(database: Path) -> duckdb.DuckDBPyConnection:
    """A connection to the warehouse, opened exactly as dlt opens its own.

    In one process every connection to a file shares one DuckDB instance and must be opened
    with the same configuration, so the memory limit is a global setting here (as dlt applies
    it) rather than a connect option. While a run holds the warehouse (`lock`) its instance
    stays open: an open does not re-read the file, a close does not checkpoint it.
    """
    if database in _held and _held[database] is None:  # the run's first open of the file
        _held[database] = _open(database)
    return _open(database)


def _open(database: Path) -> duckdb.DuckDBPyConnection:
    try:
        con = duckdb.connect(str(database))
    except duckdb.IOException as exc:  # on a first run, a program may open the new file
        raise _refused(database, exc) from None
    limit = str(duckdb_config()["memory_limit"]).replace("'", "")
    con.execute(f"set global memory_limit = '{limit}'")
    return con


def _hold(database: Path) -> None:
    """Open the warehouse for the whole run, if there is one yet; DuckDB allows one writing
    process, so a program holding it is found now, not halfway through a load."""
    _held[database] = None
    if not database.exists():
        return
    try:
        _held[database] = _open(database)
    except (ConfigError, LoadFailed):
        del _held[database]
        raise


def _refused(database: Path, exc: duckdb.IOException) -> ConfigError | LoadFailed:
    """The sentence for a warehouse DuckDB would not open: held by another program (exit 8),
    or not a DuckDB file at all (exit 2)."""
    if "lock" not in str(exc).lower():  # not a holder: the file itself is wrong
        return ConfigError(
            f"The warehouse {database} cannot be opened ({str(exc).strip().splitlines()[0]}"
            f"): restore it from a copy or fix {SETTING}."
        )
    return LoadFailed(
        f"The warehouse {database} is open in another program (a DuckDB shell, notebook or BI "
        "tool, even read-only: readers belong on the serving file); close it and run again. "
        "Nothing was changed."
    )


def _release(database: Path) -> None:
    with access:
        held = _held.pop(database, None)
        if held is not None:
            held.close()


@contextlib.contextmanager
def lock(database: Path, wait: float = 0.0) -> Iterator[None]:
    """One run per warehouse: a second one waits up to `wait` seconds, then is refused
    instead of racing the first's state."""
    lock_path = database.with_name(database.name + ".lock")
    handle = open(lock_path, "a+")  # noqa: SIM115 - held for the whole run
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                handle.close()
                waited = f" after waiting {wait:g} s" if wait else ""
                raise WarehouseLocked(
                    f"Another practice-sync run is using {database}; this run changed nothing"
                    f"{waited} (the lock frees itself when that run ends; --wait-for-lock waits)."
                ) from None
            interrupt.sleep(min(0.5, max(deadline - time.monotonic(), 0.01)))
    try:
        _hold(database)  # after the lock: our own other run is reported as such
        try:
            yield
        finally:
            _release(database)
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def table_exists(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    row = con.execute(
        """
        select count(*) from information_schema.tables
        where table_catalog = current_database()
          and table_schema = coalesce(nullif(?, ''), current_schema())
          and table_name = ?
        """,
        [schema, table],
    ).fetchall()
    return bool(row[0][0])


def has_dataset(database: Path, dataset: str) -> bool:
    """Whether a source has ever loaded into this warehouse (its dataset has tables)."""
    if not database.exists() or database.is_dir():
        return False
    with _read_only(database) as con:
        rows = con.execute(
            "select count(*) from duckdb_tables() where schema_name = ? "
            "and not starts_with(table_name, '_dlt')",
            [dataset],
        ).fetchall()
    return bool(rows[0][0])


@contextlib.contextmanager
def _read_only(database: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    with access, contextlib.closing(connect(database)) as con:
        yield con


@contextlib.contextmanager
def writer(database: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A writing connection, taken under the one-writer lock that account threads share."""
    with access, contextlib.closing(connect(database)) as con:
        yield con


def stamp_account(database: Path, dataset: str, account: str) -> None:
    """Name the account on raw rows loaded before accounts existed: a single-account warehouse
    upgrades in place, history kept, as account `default`. A table tonight's load did not
    touch (no changed packages) gets the column here; dlt compares its schema updates with the
    table's real columns, so it never adds it twice."""
    if not database.exists():
        return
    with writer(database) as con:
        tables = con.execute(
            "select table_name, bool_or(column_name = 'account') from duckdb_columns() "
            "where schema_name = ? and not starts_with(table_name, '_dlt') group by table_name",
            [dataset],
        ).fetchall()
        for table, has_account in tables:
            if not has_account:
                con.execute(f'alter table "{dataset}"."{table}" add column account varchar')
            con.execute(
                f'update "{dataset}"."{table}" set account = ? where account is null', [account]
            )


def remove_replayed_rows(database: Path, dataset: str) -> int:
    """Delete exact copies of history rows that a resumed load wrote twice; return how many.

    dlt prepares a package's scd2 staging tables once per package: a run killed after a staging
    copy committed but before dlt marked that job done copies the rows again when the next run
    resumes the package, and the merge then inserts each of them twice. `_dlt_id` is the row's
    content hash, so two rows with the same `_dlt_id` and `_dlt_valid_from` are the same
    version: keeping one is exact (the chaos test found this)."""
    if not database.exists():
        return 0
    removed = 0
    with writer(database) as con:
        tables = con.execute(
            "select table_name from duckdb_columns() where schema_name = ? "
            "and column_name = '_dlt_valid_from'",
            [dataset],
        ).fetchall()
        for (table,) in tables:
            name = f'"{dataset}"."{table}"'
            row = con.execute(
                f"delete from {name} where rowid in (select rowid from (select rowid, "
                "row_number() over (partition by _dlt_id, _dlt_valid_from order by rowid) as n "
                f"from {name}) where n > 1)"
            ).fetchone()
            removed += int(row[0]) if row else 0
    return removed


def current_rows(
    database: Path, dataset: str, table: str, columns: Sequence[str], condition: str = "true"
) -> pa.Table:
    """Columns of the current (not yet retired) rows of a raw table, as text; empty if none.

    Arrow, never Python objects: a million ids are a few MB this way.
    """
    empty = pa.table({name: pa.array([], pa.string()) for name in columns})
    if not database.exists():
        return empty
    with _read_only(database) as con:
        if not table_exists(con, dataset, table):
            return empty
        selected = ", ".join(f'"{name}"::varchar as "{name}"' for name in columns)
        return con.sql(
            f'select {selected} from "{dataset}"."{table}" '
            f"where _dlt_valid_to is null and ({condition})"
        ).to_arrow_table()


def current_versions(database: Path, dataset: str, table: str, key: str) -> CurrentVersions:
    """The key and row hash of each record's current version, for deciding before the load which
    rows changed; keys with several current versions are left out (see `CurrentVersions`).

    None for a table loaded before accounts existed: its upgrade night hands dlt every row, so
    that night's load adds `account` and records dlt's schema as it always did. One scan and one
    aggregate of the keys alone; two Arrow string arrays (~45 MB at a million records), never
    Python objects.
    """
    if not database.exists():
        return CurrentVersions()
    name = f'"{dataset}"."{table}"'
    with _read_only(database) as con:
        if not has_column(con, dataset, table, ACCOUNT_COLUMN):
            return CurrentVersions()
        found = con.sql(
            f'with now as (select "{key}"::varchar as k, _dlt_id::varchar as h from {name} '
            f'where _dlt_valid_to is null and "{key}" is not null) '
            "select k, h from now where k not in "
            "(select k from now group by k having count(*) > 1)"
        ).to_arrow_table()
        keyless = con.execute(
            f'select count(*) from {name} where _dlt_valid_to is null and "{key}" is null'
        ).fetchall()
    return CurrentVersions(
        keys=found["k"].combine_chunks().cast(pa.string()),
        hashes=found["h"].combine_chunks().cast(pa.string()),
        keyless=int(keyless[0][0]),
    )


def has_column(con: duckdb.DuckDBPyConnection, schema: str, table: str, column: str) -> bool:
    """Whether the table exists and has the column (False when there is no such table)."""
    rows = con.execute(
        "select count(*) from duckdb_columns() where database_name = current_database() "
        "and schema_name = ? and table_name = ? and column_name = ?",
        [schema, table, column],
    ).fetchall()
    return bool(rows[0][0])


def table_changes(
    database: Path, dataset: str, keys: Mapping[str, str], since: datetime
) -> dict[str, TableChange]:
    """New, changed and retired records of this run, read back from the scd2 validity columns.

    A row without a key is a record of its own: new when this run loaded it, retired when this
    run closed it. Only keys this run loaded are looked for among older versions, and only keys
    it closed among the current ones, so a night reads three narrow columns rather than grouping
    every key of the table (0.19 -> 0.09 s a night at a million sessions)."""
    out: dict[str, TableChange] = {}
    with _read_only(database) as con:
        for table, key in keys.items():
            if not table_exists(con, dataset, table):
                continue
            row = con.execute(
                f"""
                with t as (select "{key}" as k, _dlt_valid_from as f, _dlt_valid_to as v
                           from "{dataset}"."{table}"),
                     added as (select distinct k from t where f >= $since and k is not null),
                     seen as (select distinct k from t
                              where f < $since and k in (select k from added)),
                     closed as (select distinct k from t where v >= $since and k is not null
                                and k not in (select k from added)),
                     kept as (select distinct k from t
                              where v is null and k in (select k from closed))
                select
                    (select count(*) from added) - (select count(*) from seen)
                        + (select count(*) from t where f >= $since and k is null),
                    (select count(*) from seen),
                    (select count(*) from closed) - (select count(*) from kept)
                        + (select count(*) from t where v >= $since and k is null),
                    (select count(*) from t where v is null)
                """,
                {"since": since},
            ).fetchone()
            assert row is not None
            out[table] = TableChange(*map(int, row))
    return out
