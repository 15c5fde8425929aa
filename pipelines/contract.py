"""The `analytics` contract as data: one YAML file per table, `transforms/marts/<table>.yml`.

Each file says what the table is for, its grain and key, every column with its DuckDB type and
meaning, and its data tests (the format is dbt's schema.yml, one table per file):

    name: sessions
    description: One row per current Bizstim session.
    grain: current Bizstim session
    key: [session_id]                  # unique + not null: a failure is fatal
    source: bizstim                    # which source's data_issues rows a reported test writes
    entity: session                    # the data_issues `entity` of those rows
    key_nulls: why a NULL key is allowed (optional; the rows are already data issues)
    columns:
      - name: session_id
        type: BIGINT                   # as duckdb_columns().data_type shows it
        description: Bizstim's session id.
        tests: [not_null, {accepted_values: {values: [a, b], severity: warn}}]
    tests:
      - relationships: {column: session_id, to: sessions, field: session_id}

This module only reads and checks the files; `contract_checks` applies them to a build and
`docs` renders them. A malformed file is a `ContractError` naming the file and what is wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

TEST_KINDS = ("not_null", "accepted_values", "relationships")
SEVERITIES = ("error", "warn")
# A relationship is reported by default (a data issue), the other tests are fatal by default.
DEFAULT_SEVERITY = {"not_null": "error", "accepted_values": "error", "relationships": "warn"}
_TABLE_KEYS = {
    "name",
    "description",
    "grain",
    "key",
    "source",
    "entity",
    "key_nulls",
    "columns",
    "tests",
}
_COLUMN_KEYS = {"name", "type", "description", "tests"}


class ContractError(ValueError):
    """A contract file that cannot be used: the message names the file and the problem."""


@dataclass(frozen=True)
class DataTest:
    """One test of one column: `kind` is one of TEST_KINDS."""

    kind: str
    column: str
    severity: str
    values: tuple[str, ...] = ()  # accepted_values
    to: tuple[str, ...] = ()  # relationships: the tables that may hold the value
    field: str = ""  # relationships: the column in those tables

    @property
    def fatal(self) -> bool:
        return self.severity == "error"

    def describe(self) -> str:
        """Short text for messages and the data dictionary."""
        if self.kind == "accepted_values":
            return f"accepted_values ({', '.join(self.values)})"
        if self.kind == "relationships":
            return f"relationships (in {' or '.join(f'{t}.{self.field}' for t in self.to)})"
        return self.kind


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    description: str


@dataclass(frozen=True)
class Table:
    """One `analytics` table as its contract file describes it."""

    name: str
    description: str
    grain: str
    key: tuple[str, ...]
    columns: tuple[Column, ...]
    tests: tuple[DataTest, ...]
    path: Path
    source: str = ""
    entity: str = ""
    key_nulls: str = ""

    def column(self, name: str) -> Column | None:
        return next((c for c in self.columns if c.name == name), None)


def _text(where: str, data: Mapping[str, Any], key: str, required: bool = True) -> str:
    value = data.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value.strip():
        raise ContractError(f"{where}: `{key}` must be a non-empty text")
    return " ".join(value.split())


def _names(where: str, value: Any, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ContractError(f"{where}: `{what}` must be a name or a list of names")
    return tuple(value)


def _test(where: str, item: Any, column: str | None) -> DataTest:
    """One entry of a `tests` list: `kind` or `{kind: {options}}`."""
    options: Any
    if isinstance(item, str):
        kind, options = item, {}
    elif isinstance(item, dict) and len(item) == 1:
        kind, options = next(iter(item.items()))
        options = options or {}
    else:
        raise ContractError(
            f"{where}: a test must be a name or {{name: {{options}}}}, not {item!r}"
        )
    if kind not in TEST_KINDS:
        raise ContractError(f"{where}: unknown test {kind!r} (known: {', '.join(TEST_KINDS)})")
    if not isinstance(options, dict):
        raise ContractError(f"{where}: the options of {kind} must be a mapping")
    severity = options.get("severity", DEFAULT_SEVERITY[kind])
    if severity not in SEVERITIES:
        raise ContractError(f"{where}: severity {severity!r} of {kind} is not error or warn")
    column = options.get("column", column)
    if not isinstance(column, str) or not column:
        raise ContractError(f"{where}: a table-level {kind} test needs `column`")
    allowed = {"severity"} | ({"column"} if "column" in options else set())
    allowed |= {"values"} if kind == "accepted_values" else set()
    allowed |= {"to", "field"} if kind == "relationships" else set()
    if unknown := set(options) - allowed:
        raise ContractError(f"{where}: {kind} does not take {', '.join(sorted(unknown))}")
    if kind == "accepted_values":
        values = options.get("values")
        if not isinstance(values, list) or not values:
            raise ContractError(f"{where}: accepted_values needs a list of `values`")
        # compared as the column's text: YAML's true reads as 'True' where DuckDB writes 'true',
        # 10.5 as '10.5' where a DECIMAL(18,2) is '10.50', and valid rows failed the test
        if not all(isinstance(v, str) for v in values):
            raise ContractError(
                f"{where}: accepted_values must be quoted text as the column reads when cast to "
                "VARCHAR ('true', '10.50')"
            )
        return DataTest(kind, column, severity, values=tuple(values))
    if kind == "relationships":
        to = _names(where, options.get("to"), "to")
        field = options.get("field", column)
        return DataTest(kind, column, severity, to=to, field=str(field))
    return DataTest(kind, column, severity)


def _column(where: str, item: Any) -> tuple[Column, list[DataTest]]:
    if not isinstance(item, dict):
        raise ContractError(f"{where}: each column must be a mapping with name, type, description")
    if unknown := set(item) - _COLUMN_KEYS:
        raise ContractError(
            f"{where}: unknown column entries {', '.join(sorted(map(str, unknown)))}"
        )
    name = _text(where, item, "name")
    here = f"{where}, column {name}"
    column = Column(name, _text(here, item, "type").upper(), _text(here, item, "description"))
    tests = [_test(here, test, name) for test in _list(here, item.get("tests"), "tests")]
    return column, tests


def _list(where: str, value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ContractError(f"{where}: `{what}` must be a list")
    return value


def parse_table(path: Path, data: Any) -> Table:
    """Check one file's content and return the table it describes."""
    where = str(path)
    if not isinstance(data, dict):
        raise ContractError(f"{where}: the file must hold one mapping (name, description, …)")
    if unknown := set(data) - _TABLE_KEYS:
        raise ContractError(f"{where}: unknown entries {', '.join(sorted(map(str, unknown)))}")
    name = _text(where, data, "name")
    if name != path.stem:
        raise ContractError(f"{where}: `name` is {name!r} but the file describes {path.stem!r}")
    pairs = [_column(where, item) for item in _list(where, data.get("columns"), "columns")]
    columns = tuple(column for column, _ in pairs)
    if not columns:
        raise ContractError(f"{where}: `columns` must list every column of the table")
    names = [c.name for c in columns]
    if duplicates := sorted({n for n in names if names.count(n) > 1}):
        raise ContractError(f"{where}: column {duplicates[0]} is listed twice")
    tests = [t for _, column_tests in pairs for t in column_tests]
    tests += [_test(where, item, None) for item in _list(where, data.get("tests"), "tests")]
    key = _names(where, data.get("key", []), "key") if data.get("key") else ()
    for column in [*key, *(t.column for t in tests)]:
        if column not in names:
            raise ContractError(
                f"{where}: {column!r} is used by `key` or a test but is not a column"
            )
    table = Table(
        name=name, description=_text(where, data, "description"), grain=_text(where, data, "grain"),
        key=key, columns=columns, tests=tuple(tests), path=path,
        source=_text(where, data, "source", required=False),
        entity=_text(where, data, "entity", required=False),
        key_nulls=_text(where, data, "key_nulls", required=False),
    )  # fmt: skip
    if any(not t.fatal for t in tests) and not (table.source and table.entity):
        raise ContractError(f"{where}: a reported (warn) test needs `source` and `entity`")
    return table


# libyaml's loader where PyYAML was built with it: the same documents, parsed ~6x faster (every
# rebuild reads the contract)
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_table(path: Path) -> Table:
    """Read one contract file; unreadable YAML is a ContractError naming the file and line."""
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_LOADER)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise ContractError(
            f"{path}{line}: not valid YAML ({getattr(error, 'problem', error)})"
        ) from None
    return parse_table(path, data)


def load_contract(marts_dir: Path) -> dict[str, Table]:
    """Every `<table>.yml` in the marts folder, by table name (empty when there are none)."""
    tables = [load_table(path) for path in sorted(marts_dir.glob("*.yml"))]
    contract = {table.name: table for table in tables}
    for table in tables:
        for test in table.tests:
            for target in test.to:
                other = contract.get(target)
                if other is None or other.column(test.field) is None:
                    raise ContractError(
                        f"{table.path}: relationships test on {test.column} points to "
                        f"{target}.{test.field}, which no contract file describes"
                    )
    return contract
