"""Build the `analytics` schema from the raw dlt tables by running the plain SQL files in `transforms/`.

Two kinds of file:
- setup, `transforms/*.sql`: the analytics schema, an empty `analytics.data_issues`, the TEMP
  macros. Setup files run first, by file name, and every model may use what they create.
- models, `transforms/staging/*.sql` (TEMP tables that rename and type the raw tables) and
  `transforms/marts/*.sql` (the `analytics` tables). A model is named by its file stem.

A file's leading comment block says what it reads, so the run order needs no naming convention:

    -- requires: bizstim.sessions           raw tables; the file is skipped when one is missing,
                                            so a source that is not configured builds nothing
    -- depends_on: stg_bizstim__sessions    models; they run first, and a model whose dependency
                                            was skipped is skipped too

Models run in dependency order; between models that do not depend on each other the order stays
setup, staging, marts, by file name, so every build runs the same files in the same order. An
unknown dependency or a cycle is an error naming the file, raised before anything runs.

Everything runs in ONE transaction: readers never see a half-built schema, and a failing file
rolls back to the tables of the previous successful build. The contract (`marts/<table>.yml`,
see contract.py) is checked in the same transaction after the models: every table built must
match its file, gets its comments from it, and passes its data tests (contract_checks.py).
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import duckdb

from practice_sync import interrupt
from practice_sync.contract import load_contract
from practice_sync.contract_checks import check_build
from practice_sync.failpoints import failpoint
from practice_sync.warehouse import table_exists

# `practice_sync.transforms` (the transforms/ folder) is a package whose *.sql files ship as package data, so this works installed too.
TRANSFORMS_DIR: Path = Path(str(files("practice_sync.transforms")))

_FOLDERS = (".", "staging", "marts")  # "." holds the setup files
_REQUIRES = re.compile(r"^--\s*requires:\s*(.+)$", re.IGNORECASE)
_DEPENDS_ON = re.compile(r"^--\s*depends_on:\s*(.+)$", re.IGNORECASE)
_LEADING_COMMENTS = re.compile(r"^(\s*(--[^\n]*\n?|/\*.*?\*/))*\s*", re.DOTALL)
_BUILDS = re.compile(
    r"^(?:create\s+(?:or\s+replace\s+)?table|insert\s+into)\s+analytics\.\"?(\w+)",
    re.IGNORECASE,
)


class TransformOrderError(ValueError):
    """The transform files cannot be ordered: an unknown dependency, a cycle, or a duplicate name."""


@dataclass(frozen=True)
class Transform:
    """One SQL file with what its header declares."""

    path: Path
    label: str  # the path relative to the transforms folder, as shown in messages
    name: str  # the file stem, which `-- depends_on:` lines use
    sql: str
    is_setup: bool
    requires: tuple[str, ...]
    depends_on: tuple[str, ...]


def _header_values(sql: str, pattern: re.Pattern[str]) -> list[str]:
    """Comma-separated values of the `pattern` lines in the file's leading comment block."""
    values: list[str] = []
    for line in sql.splitlines():
        line = line.strip()
        if not line:
            continue
        if not line.startswith("--"):
            break
        match = pattern.match(line)
        if match:
            values += [name.strip() for name in match.group(1).split(",") if name.strip()]
    return values


def required_tables(sql: str) -> list[str]:
    """Raw tables named in the `-- requires:` lines of the file's leading comment block."""
    return _header_values(sql, _REQUIRES)


def model_dependencies(sql: str) -> list[str]:
    """Models named in the `-- depends_on:` lines of the file's leading comment block."""
    return _header_values(sql, _DEPENDS_ON)


def load_transforms(transforms_dir: Path) -> list[Transform]:
    """Every transform file with its header, listed setup, staging, marts and by name in each."""
    transforms: list[Transform] = []
    seen: dict[str, str] = {}
    for folder in _FOLDERS:
        for path in sorted((transforms_dir / folder).glob("*.sql")):
            sql = path.read_text(encoding="utf-8")
            label = path.relative_to(transforms_dir).as_posix()
            if path.stem in seen:
                raise TransformOrderError(
                    f"transforms {seen[path.stem]} and {label} have the same name "
                    f"{path.stem!r}: depends_on could not tell them apart"
                )
            seen[path.stem] = label
            transforms.append(
                Transform(
                    path=path,
                    label=label,
                    name=path.stem,
                    sql=sql,
                    is_setup=folder == ".",
                    requires=tuple(required_tables(sql)),
                    depends_on=tuple(model_dependencies(sql)),
                )
            )
    return transforms


def _prerequisites(transforms: Sequence[Transform]) -> list[set[int]]:
    """For each transform, the positions of the transforms that must run before it."""
    position = {transform.name: index for index, transform in enumerate(transforms)}
    setup = {index for index, transform in enumerate(transforms) if transform.is_setup}
    prerequisites: list[set[int]] = []
    for transform in transforms:
        unknown = [name for name in transform.depends_on if name not in position]
        if unknown:
            raise TransformOrderError(
                f"transform {transform.label} depends on {', '.join(map(repr, unknown))}, which "
                "is not a transform file (depends_on takes file stems, e.g. stg_bizstim__sessions)"
            )
        before = {position[name] for name in transform.depends_on}
        prerequisites.append(before if transform.is_setup else before | setup)
    return prerequisites


def _cycle(transforms: Sequence[Transform], prerequisites: list[set[int]], left: set[int]) -> str:
    """One dependency cycle among the unordered transforms, as 'a.sql -> b.sql -> a.sql'."""
    # Every transform left over waits for another one left over, so following those waits from
    # any of them must come back to a transform already visited: that loop is a cycle.
    path = [min(left)]
    while True:
        following = min(prerequisites[path[-1]] & left)
        if following in path:
            loop = path[path.index(following) :] + [following]
            return " -> ".join(transforms[index].label for index in loop)
        path.append(following)


def order_transforms(transforms: Sequence[Transform]) -> list[Transform]:
    """Topological order: each file after its prerequisites, otherwise in the listed order.

    Keeping the listed order wherever dependencies allow makes the order deterministic and keeps
    files that do not depend on each other where a reader expects them (setup, staging, marts).
    """
    prerequisites = _prerequisites(transforms)
    waiting_for = [len(before) for before in prerequisites]
    unlocks: list[list[int]] = [[] for _ in transforms]
    for index, before in enumerate(prerequisites):
        for prerequisite in before:
            unlocks[prerequisite].append(index)
    ready = [index for index, count in enumerate(waiting_for) if count == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        index = heapq.heappop(ready)
        order.append(index)
        for follower in unlocks[index]:
            waiting_for[follower] -= 1
            if waiting_for[follower] == 0:
                heapq.heappush(ready, follower)
    left = set(range(len(transforms))) - set(order)
    if left:
        raise TransformOrderError(
            "transforms depend on each other in a cycle (each needs the next): "
            + _cycle(transforms, prerequisites, left)
        )
    return [transforms[index] for index in order]


def sql_files(transforms_dir: Path) -> list[Path]:
    """All transform files in execution order (see `order_transforms`)."""
    return [transform.path for transform in order_transforms(load_transforms(transforms_dir))]


def _table_exists(con: duckdb.DuckDBPyConnection, qualified_name: str) -> bool:
    schema, _, table = qualified_name.rpartition(".")
    return table_exists(con, schema, table)


def _run_file(con: duckdb.DuckDBPyConnection, transform: Transform, built: list[str]) -> None:
    """Run one file statement by statement, adding the analytics tables it writes to `built`."""
    try:
        # DuckDB's own parser splits the file, so ';' inside strings or comments is safe.
        for statement in con.extract_statements(transform.sql):
            interrupt.check()
            con.execute(statement.query)
            match = _BUILDS.match(_LEADING_COMMENTS.sub("", statement.query, count=1))
            if match and match.group(1) not in built:
                built.append(match.group(1))
                failpoint("mid-transform")
    except duckdb.Error as error:
        error.add_note(f"while running transform {transform.label}")
        raise


def _run_all(con: duckdb.DuckDBPyConnection, plan: Sequence[Transform]) -> list[str]:
    """Run the plan in order, skipping files whose raw tables or dependencies are missing."""
    built: list[str] = []
    skipped: set[str] = set()
    for transform in plan:
        if any(name in skipped for name in transform.depends_on) or not all(
            _table_exists(con, table) for table in transform.requires
        ):
            skipped.add(transform.name)
            continue
        _run_file(con, transform, built)
    return built


def run_transforms(
    con: duckdb.DuckDBPyConnection, transforms_dir: Path | None = None
) -> dict[str, int]:
    """Rebuild the analytics schema on `con`; return {analytics table: row count} for tables built.

    `transforms_dir` defaults to TRANSFORMS_DIR (tests point it at a copy). The files are ordered
    before the transaction starts, so a bad dependency changes nothing. Any error while running
    rolls the whole build back and is re-raised with the failing file named in a note. A table
    that breaks its contract (drift or a fatal data test) rolls it back with `TransformFailed`.
    """
    folder = transforms_dir or TRANSFORMS_DIR
    plan = order_transforms(load_transforms(folder))
    contract = load_contract(folder / "marts")
    con.execute("begin transaction")
    try:
        built = _run_all(con, plan)
        interrupt.check()
        check_build(con, contract, built)
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
