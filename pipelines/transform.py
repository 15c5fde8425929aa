"""Build the `analytics` schema from the raw dlt tables by running the plain SQL files in `transforms/`.

Two kinds of file:
- setup, `transforms/*.sql`: the analytics schema, an empty `analytics.data_issues`, the TEMP
  macros. Setup files run first, by file name, and every model may use what they create.
- models, `transforms/staging/*.sql` (TEMP tables that rename and type the raw tables) and
  `transforms/marts/*.sql` (the `analytics` tables). A model is named by its file stem.

A file's leading comment block says what it reads, so the run order needs no naming convention:

    -- requires: bizstim.sessions           raw tables; the file is skipped when one is missing,
                                            so a source that is not configured builds nothing;
                                            the model reads them as `raw_bizstim__sessions`, the
                                            union of every account's dataset with `account`
    -- depends_on: stg_bizstim__sessions    models; they run first, and a model whose dependency
                                            was skipped is skipped too

Models run in dependency order; between models that do not depend on each other the order stays
setup, staging, marts, by file name, so every build runs the same files in the same order. An
unknown dependency or a cycle is an error naming the file, raised before anything runs.

Three more header lines make a night's build touch only the records that changed
(`-- incremental_by:`, `-- incremental_if:` on a staging model, `-- incremental_key:` on the marts
that read it; see incremental.py, which decides per build and rewrites the statements).

Everything runs in ONE transaction: readers never see a half-built schema, and a failing file
rolls back to the tables of the previous successful build. The contract (`marts/<table>.yml`,
see contract.py) is checked in the same transaction after the models: every table built must
match its file, gets its comments from it, and passes its data tests (contract_checks.py).
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import duckdb

from practice_sync import accounts, incremental, interrupt
from practice_sync.contract import Table, load_contract
from practice_sync.contract_checks import Rewritten, check_build
from practice_sync.failpoints import failpoint

# `practice_sync.transforms` (the transforms/ folder) is a package whose *.sql files ship as package data, so this works installed too.
TRANSFORMS_DIR: Path = Path(str(files("practice_sync.transforms")))

_FOLDERS = (".", "staging", "marts")  # "." holds the setup files
_REQUIRES = re.compile(r"^--\s*requires:\s*(.+)$", re.IGNORECASE)
_DEPENDS_ON = re.compile(r"^--\s*depends_on:\s*(.+)$", re.IGNORECASE)
_INCREMENTAL_BY = re.compile(r"^--\s*incremental_by:\s*(.+)$", re.IGNORECASE)
_INCREMENTAL_IF = re.compile(r"^--\s*incremental_if:\s*(.+)$", re.IGNORECASE)
_INCREMENTAL_KEY = re.compile(r"^--\s*incremental_key:\s*(.+)$", re.IGNORECASE)
_LEADING_COMMENTS = re.compile(r"^(\s*(--[^\n]*\n?|/\*.*?\*/))*\s*", re.DOTALL)
_REPLACES = re.compile(
    rf"^\s*create\s+or\s+replace\s+table\s+{incremental.ANALYTICS}(\w+)",
    re.IGNORECASE | re.MULTILINE,
)
_BUILDS = re.compile(
    rf"^(?:create\s+(?:or\s+replace\s+)?table|insert\s+into)\s+{incremental.ANALYTICS}(\w+)",
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
    incremental_by: str | None = None  # see incremental.py
    incremental_if: str | None = None
    incremental_key: tuple[str, ...] = ()


def _header_matches(sql: str, pattern: re.Pattern[str]) -> Iterator[str]:
    """The value of each `pattern` line in the file's leading comment block."""
    for line in sql.splitlines():
        line = line.strip()
        if not line:
            continue
        if not line.startswith("--"):
            break
        if match := pattern.match(line):
            yield match.group(1).strip()


def _header_values(sql: str, pattern: re.Pattern[str]) -> list[str]:
    """Comma-separated values of the `pattern` lines in the file's leading comment block."""
    return [
        name.strip()
        for value in _header_matches(sql, pattern)
        for name in value.split(",")
        if name.strip()
    ]


def required_tables(sql: str) -> list[str]:
    """Raw tables named in the `-- requires:` lines of the file's leading comment block."""
    return _header_values(sql, _REQUIRES)


def _header_text(sql: str, pattern: re.Pattern[str]) -> str | None:
    """The whole value of the `pattern` lines of the leading comment block, joined by spaces."""
    return " ".join(_header_matches(sql, pattern)) or None


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
                    incremental_by=_header_text(sql, _INCREMENTAL_BY),
                    incremental_if=_header_text(sql, _INCREMENTAL_IF),
                    incremental_key=tuple(_header_values(sql, _INCREMENTAL_KEY)),
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


def raw_view(qualified_name: str) -> str:
    """The view a model reads for a required raw table: `bizstim.sessions` -> `raw_bizstim__sessions`."""
    source, _, table = qualified_name.rpartition(".")
    return f"raw_{source}__{table}"


RAW_ROW = incremental.RAW_ROW
_PART_ROWS = 2**40  # rowids of one account's table stay below this


def _union_views(con: duckdb.DuckDBPyConnection, required: set[str]) -> set[str]:
    """One TEMP view per required raw table over every account's dataset, with `account`
    (the account's name: 'default' for the dataset named after the source) and `_raw_row`
    (RAW_ROW). Fivetran's shape: one union model with an account column, never a copy of each
    model per account. Each view is made twice, as `raw_…` (what the models read; an incremental
    build narrows it) and `all_raw_…`. Returns the required tables that exist in at least one
    account's dataset."""
    found: set[str] = set()
    # every required table's datasets in one catalog query (one each cost ~8 ms a build)
    datasets: dict[str, list[tuple[str, bool, bool]]] = {}
    for table, schema, has_account, loaded_by_dlt in con.execute(
        "select table_name, schema_name, bool_or(column_name = 'account'), "
        "schema_name in (select schema_name from duckdb_tables() "
        "    where database_name = current_database() and table_name = '_dlt_loads') "
        "from duckdb_columns() where database_name = current_database() "
        "and list_contains(?, table_name) group by all order by schema_name",
        [sorted({name.rpartition(".")[2] for name in required})],
    ).fetchall():
        datasets.setdefault(table, []).append((schema, has_account, loaded_by_dlt))
    for qualified in sorted(required):
        source, _, table = qualified.rpartition(".")
        parts: list[str] = []
        for schema, has_account, loaded_by_dlt in datasets.get(table, []):
            account = accounts.account_of(source, schema, loaded_by_dlt)
            if account is None:
                continue
            literal = f"'{account}'"
            column = f"coalesce(account, {literal})" if has_account else literal
            star = "* exclude (account)" if has_account else "*"
            row = f"rowid + {len(parts)} * {_PART_ROWS}"
            parts.append(
                f'select {column} as account, {star}, {row} as {RAW_ROW} from "{schema}"."{table}"'
            )
        if parts:
            union = "\nunion all by name\n".join(parts)
            for view in (raw_view(qualified), "all_" + raw_view(qualified)):
                con.execute(f'create or replace temp view "{view}" as {union}')
            found.add(qualified)
    return found


@dataclass
class Build:
    """What one build did: row counts of the tables it wrote, and how (see incremental.py)."""

    counts: dict[str, int]
    decisions: list[incremental.Decision]

    @property
    def summary(self) -> str:
        """'incremental (bizstim.sessions: 16,000 records changed)' or, naming why,
        'full (bizstim.sessions: first build)'."""
        if not self.decisions:
            return "full"
        if all(d.incremental for d in self.decisions):
            changed = ", ".join(
                f"{d.family.raw}: {d.changed:,} records changed" for d in self.decisions
            )
            return f"incremental ({changed})"
        reasons = "; ".join(
            f"{d.family.raw}: {d.reason}" for d in self.decisions if not d.incremental
        )
        return f"full ({reasons})"


def _run_file(
    con: duckdb.DuckDBPyConnection,
    transform: Transform,
    built: list[str],
    decision: incremental.Decision | None,
    partial: bool,
) -> None:
    """Run one file statement by statement (rewritten where the build is incremental, see
    incremental.py), adding the analytics tables it writes to `built`."""
    cleared: set[str] = set()
    try:
        # DuckDB's own parser splits the file, so ';' inside strings or comments is safe.
        for statement in con.extract_statements(transform.sql):
            interrupt.check()
            query = _LEADING_COMMENTS.sub("", statement.query, count=1).rstrip().rstrip(";")
            if partial and transform.is_setup:
                incremental.check_setup_table(con, query)
            if decision is not None and decision.incremental and transform.incremental_key:
                incremental.check_insert(query, transform.name, cleared)
                incremental.make_keys(con, decision)
            parts = incremental.rewrite(
                query, decision, transform.name, partial, transform.is_setup
            )
            for part in parts:
                try:
                    con.execute(part)
                except duckdb.CatalogException as error:
                    if parts == [query]:
                        raise
                    # a table an update rewrites in place is gone (dropped by hand): built in
                    # full instead, where every night failed without saying how to recover
                    raise incremental.Restart(
                        f"{transform.label} found a table missing: "
                        f"{str(error).splitlines()[0][:200]}"
                    ) from error
            match = _BUILDS.match(query)
            if match and match.group(1) not in built:
                built.append(match.group(1))
                failpoint("mid-transform")
        if decision is not None and transform.name == decision.family.root:
            incremental.check_keys(con, decision.family)
    except duckdb.Error as error:
        error.add_note(f"while running transform {transform.label}")
        raise


def _run_all(
    con: duckdb.DuckDBPyConnection, plan: Sequence[Transform], full: str | None
) -> tuple[list[str], list[incremental.Decision], tuple[str, str], tuple[str, str, str] | None]:
    """Run the plan in order, skipping files whose raw tables or dependencies are missing;
    incrementally for each family whose records allow it (incremental.py)."""
    built: list[str] = []
    skipped: set[str] = set()
    present = _union_views(con, {table for transform in plan for table in transform.requires})
    folder = plan[0].path.parent if plan else TRANSFORMS_DIR
    current = (
        incremental.fingerprint(((t.label, t.sql) for t in plan), _marts_dir(plan, folder)),
        ",".join(sorted(present)),
    )
    found = incremental.families(plan, raw_view)
    previous = incremental.last_build(con)
    decisions = incremental.decide(con, found, present, previous, current, full)
    partial = any(d.incremental for d in decisions)  # data_issues is kept, not made anew
    by_model = {name: d for d in decisions for name in d.family.members}
    setup = [transform for transform in plan if transform.is_setup]
    for transform in setup:
        _run_file(con, transform, built, None, partial)
    for decision in decisions:
        if decision.incremental:
            incremental.check_added(con, decision)
            incremental.limit_raw(con, decision)
    for transform in plan:
        if transform.is_setup:
            continue
        if any(name in skipped for name in transform.depends_on) or not all(
            table in present for table in transform.requires
        ):
            skipped.add(transform.name)
            continue
        _run_file(con, transform, built, by_model.get(transform.name), partial)
    return built, decisions, current, previous


def _marts_dir(plan: Sequence[Transform], folder: Path) -> Path:
    marts = [t.path.parent for t in plan if t.label.startswith("marts/")]
    return marts[0] if marts else folder / "marts"


def run_transforms(
    con: duckdb.DuckDBPyConnection, transforms_dir: Path | None = None
) -> dict[str, int]:
    """Build the analytics schema on `con` (see `build_analytics`); return {table: rows}."""
    return build_analytics(con, transforms_dir).counts


def build_analytics(
    con: duckdb.DuckDBPyConnection, transforms_dir: Path | None = None, full: str | None = None
) -> Build:
    """Build the analytics schema on `con`: incrementally where the last build's state allows
    (incremental.py), else in full (`full` says why one is asked for, e.g. a full refresh).

    `transforms_dir` defaults to TRANSFORMS_DIR (tests point it at a copy). The files are ordered
    before the transaction starts, so a bad dependency changes nothing. Any error while running
    rolls the whole build back and is re-raised with the failing file named in a note. A table
    that breaks its contract (drift or a fatal data test) rolls it back with `TransformFailed`.
    """
    folder = transforms_dir or TRANSFORMS_DIR
    plan = order_transforms(load_transforms(folder))
    contract = load_contract(folder / "marts")
    try:
        return _build(con, plan, contract, full)
    except incremental.Restart as restart:
        return _build(con, plan, contract, str(restart))


def _build(
    con: duckdb.DuckDBPyConnection,
    plan: Sequence[Transform],
    contract: Mapping[str, Table],
    full: str | None,
) -> Build:
    """One build in one transaction (see build_analytics).

    Insertion order is not kept while it runs: every mart orders its rows itself (ORDER BY,
    which DuckDB still honours), and without the setting a staging model over many accounts'
    tables (a UNION ALL) is written by one thread: 3.7 s instead of 2.5 s at 50 accounts of
    20,000 sessions. Set for this connection only, and put back whatever happens.

    The marts keep their ORDER BY although no table promises a row order: unsorted, a million-
    session full build was ~1.4 s faster (the `sessions` sort spills under the 512 MB limit),
    but at 5,000,000 sessions the contract checks over unsorted tables raised the build's
    peak RSS from ~735 to ~830 MiB, past the 1.15x-of-a-million budget."""
    con.execute("set session preserve_insertion_order = false")
    try:
        return _build_in_transaction(con, plan, contract, full)
    finally:
        con.execute("reset session preserve_insertion_order")


def _build_in_transaction(
    con: duckdb.DuckDBPyConnection,
    plan: Sequence[Transform],
    contract: Mapping[str, Table],
    full: str | None,
) -> Build:
    con.execute("begin transaction")
    try:
        built, decisions, current, previous = _run_all(con, plan, full)
        interrupt.check()
        parts = [
            (table, d, d.family.keys[model])
            for d in decisions
            if d.incremental
            for model in d.family.keys
            for table in _tables_of(plan, model)
            if table in built
        ]
        rewritten = {
            t: Rewritten(d.restrict(cols), tuple(cols), d.family.temp("keys"))
            for t, d, cols in parts
        }
        check_build(con, contract, built, rewritten)
        saved = {t: d.restrict(cols, saved=True) for t, d, cols in parts}
        incremental.save(con, decisions, current, saved, previous)
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
    return Build(counts, decisions)


def _tables_of(plan: Sequence[Transform], model: str) -> list[str]:
    """The analytics tables a model's file replaces (`create or replace table analytics.x`)."""
    sql = next(t.sql for t in plan if t.name == model)
    return _REPLACES.findall(sql)
