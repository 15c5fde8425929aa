"""Apply the contract (`contract.py`) to a build, inside the rebuild's transaction.

After the models ran, for every `analytics` table this build wrote:
1. drift: its columns and DuckDB types (duckdb_columns()) must be exactly the contract's, in
   order; a table without a contract file, or one that gained, lost or retyped a column, fails
   the rebuild, so what readers get is always what the data dictionary says;
2. comments: `COMMENT ON TABLE/COLUMN` from the descriptions (the serving file copies them);
3. data tests: the key (unique + not null) and every test of severity error are fatal; tests
   of severity warn (relationships by default) append one row per failing record to
   `analytics.data_issues`, naming the test in `problem`. A relationships test looks the value
   up within the row's own `account` wherever both tables carry one. An incremental build runs
   the fatal tests on the rows it rewrote, and a reported test on them too where no other
   row's finding can have changed (`_narrowed`).

A fatal finding raises `TransformFailed` (exit 7): the caller rolls the transaction back, so
yesterday's analytics stay, and the message names the table, column, test and row count.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import duckdb

from practice_sync.contract import DataTest, Table
from practice_sync.errors import TransformFailed

_KEPT = "so the previous analytics tables were kept"
ACCOUNT = "account"  # the column naming a row's account; its own column in data_issues too


@dataclass(frozen=True)
class Rewritten:
    """The rows an incremental build rewrote in one table: those whose (account, *columns) is
    one of the changed keys listed in `keys` (incremental.Decision.restrict)."""

    condition: str  # SQL on the table's columns: the row is one of them
    columns: tuple[str, ...]  # the table's key columns besides account
    keys: str  # the relation of changed keys (account and every key column of the family)


def _rows(count: int) -> str:
    return f"{count:,} row" if count == 1 else f"{count:,} rows"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def built_columns(con: duckdb.DuckDBPyConnection, table: str) -> list[tuple[str, str]]:
    """(column, DuckDB type) of `analytics.<table>` in column order."""
    rows = con.execute(
        "select column_name, data_type from duckdb_columns() "
        "where database_name = current_database() and schema_name = 'analytics' "
        "and table_name = ? order by column_index",
        [table],
    ).fetchall()
    return [(str(name), str(type_)) for name, type_ in rows]


def drift(table: Table, actual: Sequence[tuple[str, str]]) -> str | None:
    """How the built columns differ from the contract's, or None when they match exactly."""
    expected = [(c.name, c.type) for c in table.columns]
    if actual == expected:
        return None
    built, described = dict(actual), dict(expected)
    for name, type_ in actual:
        if name not in described:
            return f"the build has a column {name} ({type_}) that the contract does not list"
        if described[name] != type_:
            return f"column {name} is {type_} in the build but {described[name]} in the contract"
    for name, _ in expected:
        if name not in built:
            return f"the contract lists a column {name} that the build does not have"
    return "the columns are in another order than the contract lists them"


def check_drift(
    con: duckdb.DuckDBPyConnection, contract: Mapping[str, Table], built: Sequence[str]
) -> None:
    """Every table built matches its contract file exactly (see the module docstring)."""
    for name in built:
        table = contract.get(name)
        if table is None:
            raise TransformFailed(
                f"analytics.{name} has no contract file (transforms/marts/{name}.yml), {_KEPT}."
            )
        difference = drift(table, built_columns(con, name))
        if difference:
            raise TransformFailed(
                f"analytics.{name} does not match its contract {table.path.name}: {difference}, "
                f"{_KEPT}."
            )


def apply_comments(con: duckdb.DuckDBPyConnection, table: Table) -> None:
    """Table and column comments from the contract's descriptions."""
    target = f"analytics.{_ident(table.name)}"
    comment = f"{table.description} Grain: one row per {table.grain}."
    if table.key:
        comment += f" Key: {', '.join(table.key)}."
    con.execute(f"comment on table {target} is {literal(comment)}")
    for column in table.columns:
        con.execute(
            f"comment on column {target}.{_ident(column.name)} is {literal(column.description)}"
        )


def _key_failures(con: duckdb.DuckDBPyConnection, table: Table, only: str, nulls: int) -> int:
    """Rows whose key is duplicated, plus the `nulls` rows with a NULL in the key (counted with
    the other tests, `_fatal_counts`); among the rows `only` selects (an incremental build
    checks the keys it wrote)."""
    key = ", ".join(map(_ident, table.key))
    duplicates = con.execute(
        f"select coalesce(sum(n), 0) from (select count(*) as n from "
        f"analytics.{_ident(table.name)} where {_known(table)} and {only} "
        f"group by {key} having count(*) > 1)"
    ).fetchall()[0][0]
    return int(duplicates) + nulls


def _known(table: Table) -> str:
    """SQL: no column of the table's key is NULL."""
    return " and ".join(f"{_ident(c)} is not null" for c in table.key)


def _fatal_counts(
    con: duckdb.DuckDBPyConnection, table: Table, conditions: Sequence[str], only: str
) -> list[int]:
    """The rows meeting each condition (on alias t) among those `only` selects, in one scan
    (a query per test was ~20 queries and scans a night, ~0.04 s of a 0.9 s update)."""
    if not conditions:
        return []
    counts = ", ".join(f"count(*) filter (where {condition})" for condition in conditions)
    row = con.execute(
        f"select {counts} from analytics.{_ident(table.name)} t where {only}"
    ).fetchall()[0]
    return [int(count) for count in row]


def failing_rows(
    test: DataTest, built: Sequence[str], contract: Mapping[str, Table], table: str
) -> str | None:
    """SQL condition on `table` (alias t) for the rows a test fails, None when it cannot run.

    A relationships test looks the value up within the row's own account wherever both tables
    carry `account`: ids are unique within an account only, so another account's row is no match.
    """
    column = f"t.{_ident(test.column)}"
    if test.kind == "not_null":
        return f"{column} is null"
    if test.kind == "accepted_values":
        values = ", ".join(literal(v) for v in test.values)
        return f"{column} is not null and cast({column} as varchar) not in ({values})"
    targets = [name for name in test.to if name in built]
    if not targets:
        return None  # the other table was not built this time (its source is not configured)
    missing = " and ".join(
        f"not exists (select 1 from analytics.{_ident(name)} r "
        f"where r.{_ident(test.field)} = {column}{_same_account(contract, table, name)})"
        for name in targets
    )
    return f"{column} is not null and {missing}"


def _same_account(contract: Mapping[str, Table], table: str, other: str) -> str:
    """The relationships join's account condition, or '' unless both tables carry `account`."""
    if all(t in contract and contract[t].column(ACCOUNT) for t in (table, other)):
        return f" and r.{_ident(ACCOUNT)} = t.{_ident(ACCOUNT)}"
    return ""


def problem(test: DataTest) -> str:
    """The data_issues `problem` text of a reported test."""
    if test.kind == "relationships":
        places = " or ".join(f"analytics.{t}.{test.field}" for t in test.to)
        return f"relationships test: not found in {places}"
    if test.kind == "accepted_values":
        return f"accepted_values test: not one of {', '.join(test.values)}"
    return "not_null test: missing"


def _report(
    con: duckdb.DuckDBPyConnection,
    table: Table,
    test: DataTest,
    where: str,
    narrowed: Rewritten | None = None,
    clear: bool = True,
) -> None:
    """One data_issues row per failing record: record_id is the key without `account`, which
    has its own column there (NULL for a table without one). The test's earlier findings go
    first: an incremental build keeps data_issues, and a finding may depend on another table.
    `narrowed` (see `_narrowed`): only the findings of the rewritten keys are made again.
    `clear` False: another test with the same data_issues fields cleared them already."""
    only = ""
    if narrowed is not None:
        # the finding's value is the row's key value as text: that names its key
        column = _ident(narrowed.columns[0])
        only = (
            f" and ({ACCOUNT}, value) in (select {ACCOUNT}, cast({column} as varchar) "
            f"from {narrowed.keys})"
        )
        where = f"({where}) and {narrowed.condition}"
    if clear:
        con.execute(
            "delete from analytics.data_issues where source = ? and entity = ? and field = ? "
            f"and problem = ?{only}",
            [table.source, table.entity, test.column, problem(test)],
        )
    ids = [c for c in table.key if c != ACCOUNT]
    record = (
        "concat_ws(':', " + ", ".join(f"cast(t.{_ident(c)} as varchar)" for c in ids) + ")"
        if ids
        else "''"
    )
    account = f"t.{_ident(ACCOUNT)}" if table.column(ACCOUNT) else "cast(null as varchar)"
    con.execute(
        "insert into analytics.data_issues "
        f"select {literal(table.source)}, {literal(table.entity)}, {record}, "
        f"{literal(test.column)}, cast(t.{_ident(test.column)} as varchar), "
        f"{literal(problem(test))}, {account} from analytics.{_ident(table.name)} t where {where}"
    )


def run_data_tests(
    con: duckdb.DuckDBPyConnection,
    contract: Mapping[str, Table],
    built: Sequence[str],
    updated: Mapping[str, Rewritten] | None = None,
) -> None:
    """Fatal tests first (the first failure raises), then the reported ones write data issues.

    `updated`: tables an incremental build changed only in part, with the rows it wrote; their
    fatal tests look at those rows (the others passed before). Reported tests run on whole
    tables (a relationship breaks when the other table changes), except where the rewritten
    keys alone can change their findings (`_narrowed`)."""
    tables = [contract[name] for name in built if name in contract]
    parts = updated or {}
    for table in tables:
        _run_fatal_tests(con, table, built, contract, parts)
    reported = [
        (table, test, where)
        for table in tables
        for test in table.tests
        if not test.fatal
        and (where := failing_rows(test, built, contract, table.name)) is not None
    ]
    # tests whose findings look alike in data_issues (package_reasons and package_services both
    # check package_id against packages) are cleared once and run whole: the second's clearing
    # deleted the first's fresh findings
    findings = Counter(_finding(table, test) for table, test, _ in reported)
    cleared: set[tuple[str, str, str, str]] = set()
    for table, test, where in reported:
        finding = _finding(table, test)
        alone = findings[finding] == 1
        narrowed = _narrowed(test, table, built, contract, parts) if alone else None
        _report(con, table, test, where, narrowed, clear=finding not in cleared)
        cleared.add(finding)


def _run_fatal_tests(
    con: duckdb.DuckDBPyConnection,
    table: Table,
    built: Sequence[str],
    contract: Mapping[str, Table],
    parts: Mapping[str, Rewritten],
) -> None:
    """The key test, then each fatal test in order: the first failure raises. The NULL keys and
    the tests on a row's own values are counted in one scan (`_fatal_counts`); a relationships
    test (a lookup in another table) runs on its own, after the tests before it passed."""
    only = parts[table.name].condition if table.name in parts else "true"
    tests = [
        (test, where)
        for test in table.tests
        if test.fatal and (where := failing_rows(test, built, contract, table.name)) is not None
    ]
    nulls = [f"not ({_known(table)})"] if table.key and not table.key_nulls else []
    counts = _fatal_counts(con, table, nulls + [w for t, w in tests if not _alone(t)], only)
    if table.key and (failed := _key_failures(con, table, only, counts.pop(0) if nulls else 0)):
        kind = "" if table.key_nulls else " or NULL"
        raise TransformFailed(
            f"analytics.{table.name} failed its key test on {', '.join(table.key)} in "
            f"{_rows(failed)} (duplicate{kind} keys), {_KEPT}."
        )
    for test, where in tests:
        failed = _fatal_counts(con, table, [where], only)[0] if _alone(test) else counts.pop(0)
        if failed:
            raise TransformFailed(
                f"analytics.{table.name}.{test.column} failed its {test.describe()} test in "
                f"{_rows(failed)}, {_KEPT}."
            )


def _alone(test: DataTest) -> bool:
    """A test counted on its own: a relationships test looks rows up in another table."""
    return test.kind == "relationships"


def _finding(table: Table, test: DataTest) -> tuple[str, str, str, str]:
    """What a reported test's rows share in data_issues: source, entity, field, problem."""
    return (table.source, table.entity, test.column, problem(test))


def _narrowed(
    test: DataTest,
    table: Table,
    built: Sequence[str],
    contract: Mapping[str, Table],
    parts: Mapping[str, Rewritten],
) -> Rewritten | None:
    """The rewritten rows of `table` when they are the only ones whose relationships finding
    can have changed, else None (the test runs on the whole table).

    That holds when the table is keyed by the tested column alone and every table it points to
    was rewritten for the same changed keys, keyed by that column among others, within the
    row's account: a row not rewritten points to rows that were not rewritten either, so its
    finding (or none) stands. session_cancellations -> sessions is such a pair: ~0.08 s a
    night at a million sessions, for a test that looked at every row.
    """
    mine = parts.get(table.name)
    if test.kind != "relationships" or mine is None or mine.columns != (test.column,):
        return None
    if test.field != test.column or not table.column(ACCOUNT):
        return None
    for name in (t for t in test.to if t in built):
        other = parts.get(name)
        if other is None or other.keys != mine.keys or test.field not in other.columns:
            return None
        if not _same_account(contract, table.name, name):
            return None
    return mine


def check_build(
    con: duckdb.DuckDBPyConnection,
    contract: Mapping[str, Table],
    built: Sequence[str],
    updated: Mapping[str, Rewritten] | None = None,
) -> None:
    """Drift, comments and data tests for the tables of this build (no-op without a contract).
    A table updated in part (`updated`, see run_data_tests) kept its comments."""
    if not contract:
        return
    check_drift(con, contract, built)
    for name in built:
        if name not in (updated or {}):
            apply_comments(con, contract[name])
    run_data_tests(con, contract, built, updated)
