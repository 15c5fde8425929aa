"""Publish `analytics` to the dlt destinations in `practice_sync.publish` after every rebuild.

DuckDB stays the transform engine; dlt is the transport. For PostgreSQL a night costs what the
night changed, and readers see last night's tables or tonight's, never a mix:

1. every `analytics` row gets a key, a hash of its content plus a counter for identical rows
   (tables need no primary key of their own); the keys last published to a destination live
   in the warehouse (`publish_state`), so the night's change is one join per table in DuckDB;
2. DuckDB writes only the rows to add and the keys to delete as csv files, and dlt loads them
   (PostgreSQL's COPY) into a staging schema on the server (`<schema>_publish`);
3. one transaction on the server (dlt's sql_client) applies them to every table at once: deletes
   by key, inserts, new or reshaped tables recreated, column comments; PostgreSQL's DDL and DML
   are transactional, so a reader sees the old night or the new one;
4. only after the commit does the warehouse's record of what was published advance. A failure
   anywhere leaves the server at its last complete state, and the next run sends what is due.

The server keeps a version stamp written in that same transaction: when it does not match the
warehouse's (a new server, a dropped schema, a crash between commit and bookkeeping) every table
is sent whole. Destinations without transactional DDL get dlt's `replace` instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import shutil
import socket
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dlt
import duckdb
from dlt.common.schema.typing import TColumnSchema

from practice_sync import dlt_glue, interrupt
from practice_sync.errors import ConfigError, ExitCode, find_cause
from practice_sync.failpoints import failpoint
from practice_sync.report import DestinationReport, RunReport, phase

SETTING = "practice_sync.publish (PRACTICE_SYNC__PUBLISH)"
SCHEMA_SETTING = "practice_sync.publish_schema (PRACTICE_SYNC__PUBLISH_SCHEMA)"
SOURCE_SCHEMA = "analytics"
STATE = "publish_state"  # in the warehouse: what each destination was last sent
ROW_KEY = "_dlt_id"  # the published tables' row identity, named as in every table dlt writes
TRANSACTIONAL = ("postgres",)  # destinations the one-transaction apply is written (and tested) for
BATCH_ROWS = 100_000
TEXT_MARK = "."
MAX_NAME = 63  # PostgreSQL's longest name, in bytes (a longer one is cut, and no longer matches)
log = logging.getLogger("practice-sync")

# DuckDB type -> PostgreSQL type; any other type is sent as text
PG_TYPES = {
    "BIGINT": "bigint",
    "INTEGER": "integer",
    "SMALLINT": "smallint",
    "TINYINT": "smallint",
    "BOOLEAN": "boolean",
    "VARCHAR": "text",
    "JSON": "json",  # kept as written (jsonb would reorder keys)
    "DATE": "date",
    "TIME": "time without time zone",  # as the server names it: a kept table's type matches
    "TIMESTAMP": "timestamp without time zone",
    "TIMESTAMP WITH TIME ZONE": "timestamp with time zone",
    "DOUBLE": "double precision",
    "FLOAT": "real",
    "UUID": "uuid",
    "INTERVAL": "interval",
    "HUGEINT": "numeric(38,0)",
    "UBIGINT": "numeric(20,0)",
    "UINTEGER": "bigint",
}


class NameTooLong(ConfigError):
    """A table or column name PostgreSQL cannot hold; its message is the whole sentence."""


@dataclass
class Table:
    """One `analytics` table as DuckDB describes it."""

    name: str
    comment: str | None
    columns: list[tuple[str, str, str | None]] = field(default_factory=list)  # name, type, comment

    @property
    def signature(self) -> str:
        """Names and types in order: when this changes the table is recreated and sent whole."""
        return json.dumps([[name, kind] for name, kind, _ in self.columns])

    @property
    def staged(self) -> str:
        """Its staging table: named by its shape, so dlt never has to change a column's type."""
        digest = hashlib.md5(self.signature.encode()).hexdigest()[:8]
        return f"{self.name}__rows_{digest}"


@dataclass
class Plan:
    """What one table sends tonight."""

    destination: str
    table: Table
    whole: bool  # recreate it and send every row (new, reshaped, or the server lost track)
    added: int = 0
    removed: int = 0
    rows: int = 0  # the table's rows tonight: what the destination holds once it commits

    @property
    def keys(self) -> str:
        """The temp table of tonight's row keys (row_key, rid: the DuckDB rowid)."""
        return f'"_publish_keys_{self.table.name}"'

    @property
    def temp_tables(self) -> tuple[str, ...]:
        """Every temp table the plan makes (dropped after the publish)."""
        return self.keys, self._diff

    @property
    def _diff(self) -> str:
        return f'"_publish_diff_{self.table.name}"'

    @property
    def published(self) -> str:
        """The keys this destination last committed for the table."""
        return (
            f"select row_key from {STATE}.rows where destination = {_literal(self.destination)} "
            f"and table_name = {_literal(self.table.name)}"
        )

    def compare(self, con: duckdb.DuckDBPyConnection) -> None:
        """Find tonight's new keys and the published ones gone, in one join, once: the counts,
        the files and the bookkeeping after the commit all read them (one comparison of a
        million keys costs ~0.2 s)."""
        con.execute(
            f"create or replace temp table {self._diff} as select k.row_key as new_key, k.rid, "
            f"p.row_key as old_key from {self.keys} k full join ({self.published}) p "
            "on p.row_key = k.row_key where k.row_key is null or p.row_key is null"
        )
        self.added = _count(con, f"select count(*) from ({self.new_keys})")
        self.removed = _count(con, f"select count(*) from ({self.gone_keys})")

    @property
    def new_keys(self) -> str:
        """Tonight's keys the destination does not hold (after `compare`)."""
        return f"select new_key as row_key, rid from {self._diff} where old_key is null"

    @property
    def gone_keys(self) -> str:
        """The keys the destination holds that tonight does not (after `compare`)."""
        return f"select old_key as row_key from {self._diff} where new_key is null"


@dataclass(frozen=True)
class Sent:
    """What one publish sent, for the summary and the destination's row in the run history."""

    schema: str
    added: int  # rows sent
    removed: int | None  # rows deleted there; None: every table was replaced whole
    rows: int  # rows the destination holds now

    @property
    def text(self) -> str:
        """`analytics: 5 rows added, 1 removed`, or `analytics: 52 rows replaced`."""
        if self.removed is None:
            return f"{self.schema}: {self.rows:,} rows replaced"
        return f"{self.schema}: {self.added:,} rows added, {self.removed:,} removed"


def destinations() -> list[str]:
    """The destinations named by `practice_sync.publish`: a list, or a JSON list in the env."""
    value: object = dlt.config.get("practice_sync.publish")
    if value in (None, "", []):
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip().startswith("[") else [value]
        except ValueError:
            value = None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f'{SETTING} must be a list of dlt destinations such as ["postgres"].')
    for name in value:
        check_destination(name)
    return list(value)


def check_destination(name: str) -> None:
    """A destination dlt does not know is a configuration error, found before anything runs."""
    from dlt.common.destination import Destination

    try:
        Destination.from_reference(name)
    except Exception:
        raise ConfigError(
            f"{SETTING} names {name!r}, which is not a dlt destination (postgres, motherduck, "
            "snowflake, bigquery, ...)."
        ) from None


def target_schema() -> str:
    """The schema the tables are published into on each destination (`analytics` by default)."""
    value = str(dlt.config.get("practice_sync.publish_schema") or SOURCE_SCHEMA)
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", value):
        raise ConfigError(f"{SCHEMA_SETTING} must be a lowercase SQL name such as analytics.")
    return value


def credentials_setting(name: str) -> str:
    return f"destination.{name}.credentials (DESTINATION__{name.upper()}__CREDENTIALS)"


def publish_all(con: duckdb.DuckDBPyConnection, database: Path, report: RunReport) -> ExitCode:
    """Publish the rebuilt `analytics` to every configured destination and return the first
    failure's exit code (the others still publish). Each destination's outcome lands in
    `report.destinations`, so the run history has a row for it whatever happened: after a failed
    rebuild none is attempted (`skipped`); a stop request marks the rest `interrupted` and is
    raised again once they are marked."""
    todo = not_started(report)
    if report.transform_error:
        for item in todo:
            item.error = (
                f"Not published to {item.name}: the analytics tables could not be rebuilt, so "
                "it keeps its last complete state."
            )
        return ExitCode.OK
    code = ExitCode.OK
    for index, item in enumerate(todo):
        try:
            _publish_one(con, item, database, report)
        except BaseException as exc:
            stop = find_cause(exc, interrupt.Interrupted)  # ours, or one dlt wrapped in its own
            if stop is not None:
                for left in todo[index:]:
                    left.outcome, left.exit_code = "interrupted", stop.exit_code
                raise stop from None
            if not isinstance(exc, Exception):
                raise
            item.outcome, item.exit_code = "failed", int(ExitCode.PUBLISH_FAILED)
            item.error = failure_sentence(item.name, exc)
            log.debug("publishing to %s failed", item.name, exc_info=exc)
            code = code or ExitCode.PUBLISH_FAILED
    return code


def not_started(report: RunReport) -> list[DestinationReport]:
    """Each configured destination the report has no outcome for yet, added to it (`skipped`
    until the caller says otherwise)."""
    seen = {item.name for item in report.destinations}
    todo = [DestinationReport(name) for name in destinations() if name not in seen]
    report.destinations.extend(todo)
    return todo


def _publish_one(
    con: duckdb.DuckDBPyConnection, item: DestinationReport, database: Path, report: RunReport
) -> None:
    """One destination, timed into `item` (failed attempts too) and the report's phases."""
    interrupt.check()  # a stop request: this destination and the rest are not started
    step = f"publish:{item.name}"
    before = report.phases.get(step, 0.0)
    try:
        with phase(report.phases, step):
            sent = publish_to(con, item.name, database)
    finally:
        item.seconds = report.phases.get(step, 0.0) - before
    item.outcome, item.exit_code, item.sent = "ok", 0, sent.text
    item.added, item.removed, item.rows = sent.added, sent.removed, sent.rows


def failure_sentence(name: str, exc: BaseException) -> str:
    """One sentence; never a password (from a URL or a libpq connection string the driver
    quoted), since it lands in logs and the run history. Only a failure to connect or log in
    points at the destination's credentials setting; any other error is named by its own first
    line (a view depending on a dropped column, a permission, a full disk)."""
    cause = _root(exc)
    if isinstance(cause, NameTooLong):
        return str(cause)
    first = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    text = mask_secrets(first)[:200] if first else type(cause).__name__
    if dlt_glue.missing_setting(cause) is not None:
        text = "it has no credentials"
    elif not _connecting(cause, first):
        return (
            f"The analytics tables were rebuilt but could not be published to {name} ({text}); "
            "the server keeps its last complete state, and the next run tries again."
        )
    return (
        f"The analytics tables were rebuilt but could not be published to {name} ({text}); "
        f"the server keeps its last complete state and the next run catches it up: check "
        f"{credentials_setting(name)}."
    )


def _connecting(cause: BaseException, first: str) -> bool:
    """Whether `cause` is a failure to reach the server or log in (or quotes the connection
    string): what the credentials setting decides. An error the server raised on a statement
    carries its SQLSTATE; only its connection (08), login (28) and database (3D) classes count."""
    if mask_secrets(first) != first:
        return True
    code = getattr(cause, "pgcode", None)
    if code:
        return str(code)[:2] in ("08", "28", "3D")
    if isinstance(cause, (ConnectionError, TimeoutError, socket.gaierror)):
        return True
    # libpq's failures to connect (refused, unknown host or role, bad password) carry no code
    return type(cause).__name__ in ("OperationalError", "InterfaceError")


def mask_secrets(text: str) -> str:
    """`***` for a URL's `user:password@` (up to the last `@`: a password may hold one) and a
    libpq connection string's `password=...`; masked before any cut, so none is half-shown."""
    text = re.sub(r"://\S*@", "://***@", text)
    return re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", text, flags=re.IGNORECASE)


def _root(exc: BaseException) -> BaseException:
    """The innermost error (dlt wraps the driver's in its own, sometimes twice)."""
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "exception", None) or exc.__cause__
        if not isinstance(inner, BaseException):
            break
        exc = inner
    return exc


def publish_to(con: duckdb.DuckDBPyConnection, name: str, database: Path) -> Sent:
    """Publish to one destination; return what was sent. A stop request is honoured before
    anything is sent and before the server's transaction, never inside it."""
    tables = read_tables(con)
    schema = target_schema()
    pipelines_dir = database.parent / ".practice_sync" / database.stem
    if name not in TRANSACTIONAL:
        return _replace(con, name, tables, schema, pipelines_dir)
    _check_names(name, tables)
    staging_schema = f"{schema}_publish"
    staging = dlt.pipeline(
        pipeline_name=f"practice_sync_publish_{name}",
        pipelines_dir=str(pipelines_dir),
        destination=name,
        dataset_name=staging_schema,
    )
    _ensure_state(con)
    plans: list[Plan] = []
    try:
        with staging.sql_client() as client:
            on_server = _server_version(client, staging_schema)
            present = _server_tables(client, schema)
        whole = on_server is None or on_server != _state_version(con, name)
        plans = _plan(con, name, tables, whole, present)
        interrupt.check()
        if any(p.added or p.removed for p in plans):
            _stage(con, staging, plans, pipelines_dir / "publish_files")
        interrupt.check()  # staged but not applied: the server still holds last night
        version = uuid.uuid4().hex
        with staging.sql_client() as client, client.begin_transaction():
            _apply(client, schema, staging_schema, plans, _gone_tables(con, name, tables))
            _stamp(client, staging_schema, version)
            failpoint("mid-publish")  # tests: readers still see last night; a kill commits nothing
        _advance_state(con, name, plans, version)
    finally:
        for plan in plans:
            for temp in plan.temp_tables:
                con.execute(f"drop table if exists {temp}")
        _clear_packages(staging)
    added = sum(p.added for p in plans)
    removed = sum(p.removed for p in plans)
    return Sent(schema, added, removed, sum(p.rows for p in plans))


def read_tables(con: duckdb.DuckDBPyConnection) -> list[Table]:
    """Every `analytics` table, its columns, types and comments, read from DuckDB's catalog."""
    where = "database_name = current_database() and schema_name = ?"
    tables = {
        name: Table(name, comment)
        for name, comment in con.execute(
            f"select table_name, comment from duckdb_tables() where {where} order by 1",
            [SOURCE_SCHEMA],
        ).fetchall()
    }
    for table, column, kind, comment in con.execute(
        "select table_name, column_name, data_type, comment from duckdb_columns() "
        f"where {where} order by table_name, column_index",
        [SOURCE_SCHEMA],
    ).fetchall():
        if table in tables:
            tables[table].columns.append((column, kind, comment))
    return list(tables.values())


def _ensure_state(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(f"create schema if not exists {STATE}")
    con.execute(
        f"create table if not exists {STATE}.destinations (destination varchar primary key, "
        "version varchar, published_at timestamptz)"
    )
    con.execute(
        f"create table if not exists {STATE}.tables (destination varchar, table_name varchar, "
        "signature varchar)"
    )
    con.execute(
        f"create table if not exists {STATE}.rows (destination varchar, table_name varchar, "
        "row_key varchar)"
    )


def _state_version(con: duckdb.DuckDBPyConnection, name: str) -> str | None:
    rows = con.execute(
        f"select version from {STATE}.destinations where destination = ?", [name]
    ).fetchall()
    return str(rows[0][0]) if rows else None


def _server_version(client: Any, staging: str) -> str | None:
    """The version stamp the server's last publish committed, or None (nothing published)."""
    rows = client.execute_sql(
        "select 1 from information_schema.tables where table_schema = %s and table_name = %s",
        staging,
        "published_version",
    )
    if not rows:
        return None
    rows = client.execute_sql(f'select version from "{staging}".published_version')
    return str(rows[0][0]) if rows else None


def _server_tables(client: Any, schema: str) -> set[str]:
    """The tables the target schema holds now (one dropped by hand is sent whole again)."""
    rows = client.execute_sql(
        "select table_name from information_schema.tables where table_schema = %s", schema
    )
    return {str(row[0]) for row in rows or []}


def _row_keys_sql(table: Table) -> str:
    """Each row's key: DuckDB's 64-bit hash of its content, numbered among identical rows
    (`<hash>:1`, `<hash>:2`, …; a row with no twin is `<hash>:1`).

    md5 of the row's text would cost 17 s per million rows, the hash 0.6 s; two different rows
    of one table share a hash with a chance of about n^2 / 2^65 (3 in 100 million at 1,000,000).
    Only the hashes that occur twice are numbered by a window: numbering every row cost 1.3 s
    for a million sessions, this ~0.25 s, with the same keys.
    """
    return (
        # the row is named by an alias no column can have: a column `t` was hashed instead
        f'with hashed as (select hash("table row") as digest, rowid as rid '
        f'from {SOURCE_SCHEMA}."{table.name}" "table row"), '
        "twins as (select digest from hashed group by digest having count(*) > 1) "
        "select digest::varchar || ':1' as row_key, rid from hashed anti join twins using (digest) "
        "union all "
        "select digest::varchar || ':' || row_number() over (partition by digest) as row_key, rid "
        "from hashed semi join twins using (digest)"
    )


def _plan(
    con: duckdb.DuckDBPyConnection,
    name: str,
    tables: Sequence[Table],
    whole: bool,
    present: set[str],
) -> list[Plan]:
    """Compare tonight's row keys with those last published; the keys stay in temp tables."""
    signatures = dict(
        con.execute(
            f"select table_name, signature from {STATE}.tables where destination = ?", [name]
        ).fetchall()
    )
    plans = []
    for table in tables:
        same = signatures.get(table.name) == table.signature and table.name in present
        plan = Plan(name, table, whole or not same)
        con.execute(f"create or replace temp table {plan.keys} as {_row_keys_sql(table)}")
        plan.rows = _count(con, f"select count(*) from {plan.keys}")
        if plan.whole:
            plan.added = plan.rows
        else:
            plan.compare(con)
        plans.append(plan)
    return plans


def _count(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    rows = con.execute(sql).fetchall()  # fetchall: DuckDB 2 keeps a result open until drained
    return int(rows[0][0]) if rows else 0


def _resources(con: duckdb.DuckDBPyConnection, plans: Sequence[Plan], folder: Path) -> Any:
    """One dlt resource importing, table by table, csv files DuckDB writes itself: the rows to
    add (`<table>__rows_<shape>`) and the keys to delete (`<table>__gone`). dlt's own writer
    would parse every row again in Python (~90 s a million rows); an imported file goes
    straight to COPY. Every staged column is text: the apply casts to the exact type."""
    queries: list[tuple[str, str, list[str]]] = []
    for plan in plans:
        table = plan.table
        if plan.added:
            chosen = plan.keys if plan.whole else f"({plan.new_keys})"
            names = ["row_key", *_staged_names(table)]
            columns = ", ".join(
                _as_sent(column, kind, alias=alias)
                for (column, kind, _), alias in zip(table.columns, names[1:], strict=True)
            )
            sql = (
                f'select k.row_key, {columns} from {SOURCE_SCHEMA}."{table.name}" t '
                f"join {chosen} k on t.rowid = k.rid"
            )
            queries.append((table.staged, sql, names))
        if plan.removed:
            queries.append((f"{table.name}__gone", plan.gone_keys, ["row_key"]))

    def files() -> Iterator[Any]:
        for table_name, sql, names in queries:
            path = folder / f"{table_name}.csv"
            con.execute(f"copy ({sql}) to {_literal(str(path))} (header, delimiter ',')")
            columns: list[TColumnSchema] = [
                {"name": name, "data_type": "text", "nullable": True} for name in names
            ]
            hints = dlt.mark.make_hints(table_name=table_name, columns=columns)
            yield dlt.mark.with_file_import(str(path), "csv", hints=hints)

    return dlt.resource(files, name="publish", write_disposition="replace")


def _stage(
    con: duckdb.DuckDBPyConnection, staging: dlt.Pipeline, plans: Sequence[Plan], folder: Path
) -> None:
    """Load the night's rows and deleted keys into the staging schema with dlt."""
    _clear_packages(staging)  # a killed night's files: tonight's plan replaces them
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    # instants written in UTC: in a local zone DuckDB writes an offset like -04:56:02 (New
    # York before 1883) as -04:56, and the server read them two seconds off
    zone = con.execute("select current_setting('TimeZone')").fetchall()[0][0]
    con.execute("set TimeZone = 'UTC'")
    try:
        staging.run(_resources(con, plans, folder), loader_file_format="csv")
    finally:
        con.execute(f"set TimeZone = {_literal(str(zone))}")  # the connection's own again
        shutil.rmtree(folder, ignore_errors=True)


def _clear_packages(staging: dlt.Pipeline) -> None:
    """Delete the staging pipeline's load packages, pending, failed and loaded alike: each holds
    a csv copy of analytics rows, which must not outlive the night (a value a privacy policy
    drops later would stay on disk). Nothing is retried from them: every night stages anew.
    Its trace goes too (a server's error may quote a row's value)."""
    working = Path(staging.working_dir)
    for folder in ("normalize/extracted", "load/new", "load/normalized", "load/loaded"):
        with contextlib.suppress(FileNotFoundError):
            for package in (working / folder).iterdir():
                shutil.rmtree(package, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        (working / "trace.pickle").unlink()


def _check_names(name: str, tables: Sequence[Table]) -> None:
    """A name PostgreSQL would cut to 63 bytes cannot be published as it is: one sentence. A
    table's staging table adds `__rows_<shape>` to its name, so its own limit is shorter."""
    start = f"The analytics tables were rebuilt but could not be published to {name}:"
    for table in tables:
        if len(table.staged.encode()) > MAX_NAME:
            raise NameTooLong(
                f"{start} table {SOURCE_SCHEMA}.{table.name} has a name longer than "
                f"{MAX_NAME - len(table.staged) + len(table.name)} characters (PostgreSQL's "
                "limit, less the staging table's suffix), so rename it in the transform."
            )
        for column, _, _ in table.columns:
            if len(column.encode()) > MAX_NAME:
                raise NameTooLong(
                    f'{start} {SOURCE_SCHEMA}.{table.name} column "{column}" has a name longer '
                    f"than PostgreSQL's {MAX_NAME} characters, so rename it in the transform."
                )


def _as_text(kind: str) -> bool:
    """Columns that travel as text: VARCHAR, and types PostgreSQL has no match for."""
    return kind in ("VARCHAR", "JSON") or not (kind in PG_TYPES or kind.startswith("DECIMAL"))


def _staged_names(table: Table) -> list[str]:
    """The staged columns' names, by position (`c1`, `c2`, …): dlt's naming convention would
    rename `Amount`, `totalUSD` or `a b`, and a column `row_key` would meet the key's."""
    return [f"c{index}" for index in range(1, len(table.columns) + 1)]


def _as_sent(column: str, kind: str, marked: bool = True, alias: str | None = None) -> str:
    """The column as sent. dlt's COPY reads an empty csv field as NULL (`FORCE_NULL`), so text
    travels behind a one-character prefix that the server strips: '' stays '', NULL stays NULL.
    PostgreSQL's text cannot hold U+0000: there it travels as U+FFFD, so the record publishes."""
    alias = alias or column
    if _as_text(kind) and marked:
        value = f"replace(t.\"{column}\"::varchar, chr(0), '\ufffd')"
        return f"'{TEXT_MARK}' || {value} as \"{alias}\""
    if _as_text(kind):
        return f't."{column}"::varchar as "{alias}"'
    return f't."{column}" as "{alias}"'


def _as_stored(staged: str, kind: str) -> str:
    """The staged column as the published table stores it."""
    if _as_text(kind):
        return f'substr("{staged}", 2)::{pg_type(kind)}'
    return f'"{staged}"::{pg_type(kind)}'


def _resource(
    con: duckdb.DuckDBPyConnection, queries: Sequence[tuple[str, str, Table | None]], name: str
) -> Any:
    def batches() -> Iterator[Any]:
        for table_name, sql, table in queries:
            hints = dlt.mark.make_hints(table_name=table_name, columns=_hints(table))
            reader = con.sql(sql).to_arrow_reader(BATCH_ROWS)
            empty = True
            for batch in reader:
                empty = False
                yield dlt.mark.with_hints(batch, hints)
            if empty:  # an empty table still exists, and `replace` must empty it
                yield dlt.mark.with_hints(reader.schema.empty_table(), hints)

    return dlt.resource(batches, name=name, write_disposition="replace")


def _hints(table: Table | None) -> list[TColumnSchema]:
    """dlt reads a naive Arrow timestamp as an instant (`timestamptz`); say it is wall-clock."""
    columns = table.columns if table is not None else []
    return [
        {"name": column, "data_type": "timestamp", "timezone": False}
        for column, kind, _ in columns
        if kind == "TIMESTAMP"
    ]


def pg_type(kind: str) -> str:
    """The PostgreSQL type a DuckDB column is published as."""
    if kind.startswith("DECIMAL"):
        return kind.replace("DECIMAL", "numeric")
    return PG_TYPES.get(kind, "text")


def _apply(
    client: Any, schema: str, staging: str, plans: Sequence[Plan], gone: Sequence[str]
) -> None:
    """Every change of the night, inside the caller's transaction."""
    client.execute_sql(f'create schema if not exists "{schema}"')
    for table_name in gone:
        client.execute_sql(f'drop table if exists "{schema}"."{table_name}"')
    for plan in plans:
        _apply_table(client, schema, staging, plan)
        _comment(client, schema, plan.table)


def _apply_table(client: Any, schema: str, staging: str, plan: Plan) -> None:
    table = plan.table
    target = f'"{schema}"."{table.name}"'
    keyed = not plan.whole or _reset_table(client, schema, table)
    if plan.removed:
        client.execute_sql(
            f'delete from {target} where "{ROW_KEY}" in '
            f'(select row_key from "{staging}"."{table.name}__gone")'
        )
    if plan.added:
        names = ", ".join(f'"{c}"' for c, _, _ in table.columns)
        values = ", ".join(
            _as_stored(staged, kind)
            for (_, kind, _), staged in zip(table.columns, _staged_names(table), strict=True)
        )
        conflict = "" if plan.whole else f' on conflict ("{ROW_KEY}") do nothing'
        client.execute_sql(
            f'insert into {target} ({names}, "{ROW_KEY}") select {values}, row_key '
            f'from "{staging}"."{table.staged}"{conflict}'
        )
    if not keyed:
        client.execute_sql(f'alter table {target} add primary key ("{ROW_KEY}")')
    # applied: the staged copy need not take the server's disk until the next night
    for staged, needed in ((table.staged, plan.added), (f"{table.name}__gone", plan.removed)):
        if needed:
            client.execute_sql(f'truncate "{staging}"."{staged}"')


def _reset_table(client: Any, schema: str, table: Table) -> bool:
    """Make the table ready for every row: a table the server has is kept (views on it and
    grants survive), emptied and its columns brought in line in place; else it is created.
    A view on a column that goes fails the transaction with the server's own message. Returns
    whether the table has its primary key (a new one gets it after the rows, faster)."""
    target = f'"{schema}"."{table.name}"'
    have = _server_columns(client, schema, table.name)
    if not have:
        columns = ", ".join(f'"{c}" {pg_type(k)}' for c, k, _ in table.columns)
        client.execute_sql(f'create table {target} ({columns}, "{ROW_KEY}" text not null)')
        return False
    client.execute_sql(f"truncate table {target}")
    want = {column: pg_type(kind) for column, kind, _ in table.columns}
    want[ROW_KEY] = "text"
    for column in have.keys() - want.keys():
        client.execute_sql(f'alter table {target} drop column "{column}"')
    for column, kind in want.items():
        if column not in have:
            client.execute_sql(f'alter table {target} add column "{column}" {kind}')
        elif have[column] != kind:  # empty now: nothing to convert
            client.execute_sql(
                f'alter table {target} alter column "{column}" type {kind} using null'
            )
    client.execute_sql(f'alter table {target} alter column "{ROW_KEY}" set not null')
    keys = client.execute_sql(
        "select 1 from pg_constraint where conrelid = %s::regclass and contype = 'p'", target
    )
    return bool(keys)


def _server_columns(client: Any, schema: str, table: str) -> dict[str, str]:
    """The columns of a table the server has, with their types as it names them; {} if none."""
    rows = client.execute_sql(
        "select a.attname, format_type(a.atttypid, a.atttypmod) from pg_attribute a "
        "join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace "
        "where n.nspname = %s and c.relname = %s and c.relkind in ('r', 'p') "
        "and a.attnum > 0 and not a.attisdropped order by a.attnum",
        schema,
        table,
    )
    return {str(name): str(kind) for name, kind in rows or []}


def _comment(client: Any, schema: str, table: Table) -> None:
    """The table's and columns' comments, so BI tools show the contract on the server too."""
    target = f'"{schema}"."{table.name}"'
    client.execute_sql(f"comment on table {target} is {_literal(table.comment)}")
    for column, _, comment in table.columns:
        client.execute_sql(f'comment on column {target}."{column}" is {_literal(comment)}')
    client.execute_sql(
        f'comment on column {target}."{ROW_KEY}" is '
        "'The row''s identity for publishing: a hash of its content and a counter for identical rows.'"
    )


def _literal(text: str | None) -> str:
    """A SQL string literal, or NULL (COMMENT ON takes no parameters)."""
    return "null" if text is None else "'" + text.replace("'", "''") + "'"


def _stamp(client: Any, staging: str, version: str) -> None:
    client.execute_sql(f'create schema if not exists "{staging}"')
    client.execute_sql(
        f'create table if not exists "{staging}".published_version '
        "(version text not null, published_at timestamptz not null)"
    )
    client.execute_sql(f'delete from "{staging}".published_version')
    client.execute_sql(f'insert into "{staging}".published_version values (%s, now())', version)


def _gone_tables(con: duckdb.DuckDBPyConnection, name: str, tables: Sequence[Table]) -> list[str]:
    """Tables published before that `analytics` no longer has (never a table we did not make)."""
    current = [t.name for t in tables]
    rows = con.execute(
        f"select table_name from {STATE}.tables where destination = ? "
        "and not list_contains(?, table_name)",
        [name, current],
    ).fetchall()
    return [row[0] for row in rows]


def _advance_state(
    con: duckdb.DuckDBPyConnection, name: str, plans: Sequence[Plan], version: str
) -> None:
    """Record what the server now holds, only after its transaction committed."""
    con.execute("begin")
    try:
        con.execute(f"delete from {STATE}.tables where destination = ?", [name])
        for plan in plans:
            _advance_table(con, plan)
        current = [plan.table.name for plan in plans]
        con.execute(
            f"delete from {STATE}.rows where destination = ? and not list_contains(?, table_name)",
            [name, current],
        )
        con.execute(
            f"insert or replace into {STATE}.destinations values (?, ?, now())", [name, version]
        )
        con.execute("commit")
    except BaseException:
        con.execute("rollback")
        raise


def _advance_table(con: duckdb.DuckDBPyConnection, plan: Plan) -> None:
    ids = [plan.destination, plan.table.name]
    con.execute(f"insert into {STATE}.tables values (?, ?, ?)", [*ids, plan.table.signature])
    where = "destination = ? and table_name = ?"
    if plan.whole:
        con.execute(f"delete from {STATE}.rows where {where}", ids)
        con.execute(f"insert into {STATE}.rows select ?, ?, row_key from {plan.keys}", ids)
        return
    if plan.added:
        con.execute(f"insert into {STATE}.rows select ?, ?, row_key from ({plan.new_keys})", ids)
    if plan.removed:
        con.execute(
            f"delete from {STATE}.rows where {where} and row_key in ({plan.gone_keys})", ids
        )


def _replace(
    con: duckdb.DuckDBPyConnection,
    name: str,
    tables: Sequence[Table],
    schema: str,
    pipelines_dir: Path,
) -> Sent:
    """Destinations without transactional DDL: dlt's `replace` of every table (each table is
    swapped whole; not tested here)."""
    pipeline = dlt.pipeline(
        pipeline_name=f"practice_sync_publish_{name}",
        pipelines_dir=str(pipelines_dir),
        destination=name,
        dataset_name=schema,
    )
    queries = []
    for table in tables:
        columns = ", ".join(_as_sent(c, k, marked=False) for c, k, _ in table.columns)
        sql = f'select {columns} from {SOURCE_SCHEMA}."{table.name}" t'
        queries.append((table.name, sql, table))
    pipeline.run(_resource(con, queries, "analytics"))
    rows = sum(_count(con, f'select count(*) from {SOURCE_SCHEMA}."{t.name}"') for t in tables)
    return Sent(schema, rows, None, rows)
