"""Build the `analytics` schema from the raw dlt tables by running the plain SQL files in `transforms/`.

Order: `transforms/*.sql` (schema, macros, an empty `analytics.data_issues`), then
`transforms/staging/*.sql` (TEMP views that rename and type one raw table each), then
`transforms/marts/*.sql` (the `analytics` tables), each folder sorted by file name.

Everything runs in ONE transaction: readers never see a half-built schema, and a failing file
rolls back to the tables of the previous successful build.

A file may start with `-- requires: schema.table` lines; it is skipped when one of those tables is
missing, so a source that is not configured simply builds nothing.
"""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path

import duckdb

from practice_sync import interrupt
from practice_sync.failpoints import failpoint

# `practice_sync.transforms` (the transforms/ folder) is a package whose *.sql files ship as package data, so this works installed too.
TRANSFORMS_DIR: Path = Path(str(files("practice_sync.transforms")))

_STAGES = (".", "staging", "marts")
_REQUIRES = re.compile(r"^--\s*requires:\s*(.+)$", re.IGNORECASE)
_LEADING_COMMENTS = re.compile(r"^(\s*(--[^\n]*\n?|/\*.*?\*/))*\s*", re.DOTALL)
_BUILDS = re.compile(
    r"^(?:create\s+(?:or\s+replace\s+)?table|insert\s+into)\s+analytics\.\"?(\w+)",
    re.IGNORECASE,
)


def sql_files(transforms_dir: Path) -> list[Path]:
    """All transform files in execution order: setup, staging, marts; by name within each."""
    return [path for stage in _STAGES for path in sorted((transforms_dir / stage).glob("*.sql"))]


def required_tables(sql: str) -> list[str]:
    """Tables named in the `-- requires:` lines of the file's leading comment block."""
    tables: list[str] = []
    for line in sql.splitlines():
        line = line.strip()
        if not line:
            continue
        if not line.startswith("--"):
            break
        match = _REQUIRES.match(line)
        if match:
            tables += [name.strip() for name in match.group(1).split(",") if name.strip()]
    return tables


def _table_exists(con: duckdb.DuckDBPyConnection, qualified_name: str) -> bool:
    schema, _, table = qualified_name.rpartition(".")
    rows = con.execute(
        """
        select count(*) from information_schema.tables
        where table_catalog = current_database()
          and table_schema = coalesce(nullif(?, ''), current_schema())
          and table_name = ?
        """,
        [schema, table],
    ).fetchall()
    return rows[0][0] > 0


def run_transforms(
    con: duckdb.DuckDBPyConnection, transforms_dir: Path | None = None
) -> dict[str, int]:
    """Rebuild the analytics schema on `con`; return {analytics table: row count} for tables built.

    `transforms_dir` defaults to TRANSFORMS_DIR (tests point it at a copy). Any error rolls the whole
    build back and is re-raised with the failing file named in a note.
    """
    root = transforms_dir or TRANSFORMS_DIR
    built: list[str] = []
    con.execute("begin transaction")
    try:
        for path in sql_files(root):
            sql = path.read_text(encoding="utf-8")
            if not all(_table_exists(con, table) for table in required_tables(sql)):
                continue
            try:
                # DuckDB's own parser splits the file, so ';' inside strings or comments is safe.
                for statement in con.extract_statements(sql):
                    interrupt.check()
                    con.execute(statement.query)
                    match = _BUILDS.match(_LEADING_COMMENTS.sub("", statement.query, count=1))
                    if match and match.group(1) not in built:
                        built.append(match.group(1))
                        failpoint("mid-transform")
            except duckdb.Error as error:
                error.add_note(f"while running transform {path.relative_to(root).as_posix()}")
                raise
        counts = {
            table: con.execute(f'select count(*) from analytics."{table}"').fetchall()[0][0]
            for table in built
        }
        con.execute("commit")
    except BaseException:
        try:
            con.execute("rollback")
        except duckdb.Error:
            pass  # the original error is the one worth seeing
        raise
    return counts
