"""Incremental analytics: a night's rebuild works on the records that changed, not the warehouse.

A staging model that declares `-- incremental_by: <raw column>` is the root of a *family*: itself
and every model that depends on it, directly or not. Its rows for one record (the raw rows with
the same account and record column, i.e. every scd2 version of one session) depend on those raw
rows alone, and every mart of the family declares `-- incremental_key: <columns>` (with
`account` implied): its rows for one key value come from the root's rows with the same value.
`-- incremental_if: <condition on the raw column>` says when a record maps onto its keys one to
one (sessions: the id is a canonical integer, so `session_id` and `record_id` name exactly one
record); one record that fails it anywhere in the raw table makes the family rebuild in full.

Each build keeps, per family, one row per raw row: a hash of the whole row, its account and
record (`analytics_state`, never published). The next build hashes the raw rows again (one
narrow scan, ~0.1 s per million rows) and compares: the records whose rows were added, changed
(a retirement sets `_dlt_valid_to`) or removed are the night's change. The family's raw view is
then limited to those records' rows, its staging runs on them alone, and each mart statement is
rewritten to delete the changed keys and insert what the models make of them:

    create or replace table analytics.t as <query>  ->  delete ... where (account, key) in
                                                        changed; insert into analytics.t <query>
    delete from analytics.t where <condition>       ->  ... and (account, key) in changed
    insert into analytics.t <query>                 ->  as it is (the changed keys' rows)
    create or replace table analytics.t (<columns>) ->  create table if not exists (setup files)

Any other statement of a keyed mart makes the night's build full (`Restart`): run as written on
the changed records alone, it would leave their rows only. A family whose member also reads a
model outside it builds in full every night: that model's changes show in no record of its own.
A model outside a family may not read the family's raw table (it is refused): on a night that
view holds the changed records alone.

Everything else rebuilds as before, and the whole build is still one transaction with its state,
so a crash leaves both as they were. A build is full (every family) when the transform files, the
contract, DuckDB's version or the set of raw tables changed since the last one, on
`--full-refresh`/`--full-rebuild`, and per family when more than `FULL_SHARE` of its rows
changed, a record vanished from the raw table altogether, or a record fails `incremental_if`.
`tests/test_incremental.py` checks that incremental nights and full rebuilds give equal tables.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import duckdb

from practice_sync.warehouse import table_exists

# the raw union views' row identity (transform._union_views): a number unique across every
# account's table of one view, so a model can join what it computed over a few narrow columns
# back to the wide rows (the scd2 window, 02_scd2_history.sql) instead of sorting the wide rows
RAW_ROW = "_raw_row"

STATE = "analytics_state"  # the warehouse schema of this module's tables (not published)
FORMAT = "2"  # bump when the state's shape or meaning changes: the next build is full
_STATE_COLUMNS = ("h", "account", "record", "clean")  # the saved rows' columns
FULL_SHARE = 0.25  # more of a family's raw rows changed than this: rebuild it in full
_ROW_GROUP = 122_880  # rows of a DuckDB row group (its default): one scan task each
# models of a family must give the same rows for the same input on any day
_CLOCK = re.compile(r"\b(current_timestamp|current_date|now\s*\(|today\s*\(|get_current_)", re.I)
# an analytics table's qualified name up to its own name, quoted or not: analytics.t,
# "analytics"."t", … (transform.py finds the tables a file builds with it too)
ANALYTICS = r"\"?analytics\"?\.\"?"
_TABLE = rf"({ANALYTICS}\w+\"?)"
_REPLACE_AS = re.compile(rf"^create\s+or\s+replace\s+table\s+{_TABLE}\s+as\s+(.*)$", re.I | re.S)
_DELETE = re.compile(rf"^delete\s+from\s+{_TABLE}\s+where\s+(.*)$", re.I | re.S)
_REPLACE_EMPTY = re.compile(rf"^create\s+or\s+replace\s+table\s+({_TABLE}\s*\()", re.I)
_INSERT = re.compile(rf"^insert\s+into\s+{_TABLE}\s", re.I)


class Model(Protocol):
    """What this module reads of a transform file (`transform.Transform`)."""

    @property
    def name(self) -> str: ...
    @property
    def label(self) -> str: ...
    @property
    def sql(self) -> str: ...
    @property
    def requires(self) -> tuple[str, ...]: ...
    @property
    def depends_on(self) -> tuple[str, ...]: ...
    @property
    def incremental_by(self) -> str | None: ...
    @property
    def incremental_if(self) -> str | None: ...
    @property
    def incremental_key(self) -> tuple[str, ...]: ...


class IncrementalError(ValueError):
    """A transform file's incremental header cannot work: the message names the file."""


@dataclass(frozen=True)
class Family:
    """A root staging model with `incremental_by` and the models that depend on it."""

    root: str  # model name
    raw: str  # the raw table it requires, e.g. bizstim.sessions
    view: str  # the view the models read, e.g. raw_bizstim__sessions
    record: str  # raw column naming a record
    clean: str  # SQL condition on `record`: the record maps onto its keys one to one
    members: frozenset[str]
    keys: Mapping[str, tuple[str, ...]]  # mart -> its key columns besides account
    # why the family always builds in full: a member also reads a model outside it, whose
    # changes the family's own records would not show ("" when none does)
    outside: str = ""

    @property
    def snapshot(self) -> str:
        return f'{STATE}."rows__{self.view}"'

    @property
    def key_columns(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c for cols in self.keys.values() for c in cols))

    def temp(self, what: str) -> str:
        return f'"_incremental_{what}__{self.root}"'


@dataclass
class Decision:
    """What one build does with one family: `changed` records (incremental) or a full rebuild."""

    family: Family
    incremental: bool
    reason: str = ""  # why full
    changed: int = 0  # records changed (incremental)
    keys_made: bool = field(default=False, repr=False)

    def restrict(self, columns: Sequence[str], saved: bool = False) -> str:
        """SQL condition: the row's (account, columns) is one of the changed keys (in the table
        `save` keeps for the serving file with `saved`)."""
        keys = f'{STATE}."keys__{self.family.root}"' if saved else self.family.temp("keys")
        return _among(["account", *columns], keys)


def _among(row: Sequence[str], keys: str, named: Sequence[str] | None = None) -> str:
    """SQL: the row's `row` columns are a row of `keys` (whose columns are `named`, by default
    the same). The column after `account` is tested alone first: a real column of the table,
    so the filter reaches its scan and the wide rows of other keys are never read; the whole
    key only after, since an id may repeat across accounts (~20% off the staging of a 1%
    night; the serving-file patch 0.573 -> 0.529 s at a million sessions)."""
    named = named or row
    whole = f"({', '.join(row)}) in (select {', '.join(named)} from {keys})"
    if len(row) < 2:
        return whole
    return f"({row[1]} in (select {named[1]} from {keys}) and {whole})"


def families(plan: Sequence[Model], view_of: Callable[[str], str]) -> list[Family]:
    """The incremental families of an ordered plan of `transform.Transform`s, checked;
    `view_of` names the view a model reads for a raw table (`transform.raw_view`)."""
    found: list[Family] = []
    member_of: dict[str, str] = {}
    for model in plan:
        name, deps = model.name, model.depends_on
        roots = {member_of[d] for d in deps if d in member_of}
        if model.incremental_by:
            roots.add(name)
        if len(roots) > 1:
            raise IncrementalError(
                f"transform {model.label} depends on two incremental models "
                f"({', '.join(sorted(roots))}): it could not be updated by either's changes"
            )
        if roots:
            member_of[name] = roots.pop()
            _check_member(model, name == member_of[name])
    for model in plan:
        if model.name in member_of and model.name == member_of[model.name]:
            found.append(_family(model, plan, member_of, view_of))
    for family in found:
        for model in plan:
            if family.raw in model.requires and model.name not in family.members:
                raise IncrementalError(
                    f"transform {model.label} reads {family.raw} beside the incremental model "
                    f"{family.root}: on a night its raw rows are the changed records' alone; "
                    f"read {family.root} instead (-- depends_on: {family.root})"
                )
    return found


def _check_member(model: Model, is_root: bool) -> None:
    label: str = model.label
    if is_root and len(model.requires) != 1:
        raise IncrementalError(f"transform {label}: incremental_by needs exactly one raw table")
    if is_root and (model.incremental_by or "").lower() in _STATE_COLUMNS:
        raise IncrementalError(
            f"transform {label}: incremental_by cannot name a column called "
            f"{model.incremental_by!r} (the saved state uses that name)"
        )
    if _CLOCK.search(re.sub(r"--[^\n]*", "", model.sql)):
        raise IncrementalError(
            f"transform {label} reads the clock, so it cannot be updated incrementally: its "
            "result would change without its records changing"
        )
    if label.startswith("marts/") and not model.incremental_key:
        raise IncrementalError(
            f"transform {label} depends on an incremental model but declares no "
            "`-- incremental_key:` (the columns its rows are keyed by besides account)"
        )


def _family(
    root: Model,
    plan: Sequence[Model],
    member_of: Mapping[str, str],
    view_of: Callable[[str], str],
) -> Family:
    name: str = root.name
    members = [m for m in plan if member_of.get(m.name) == name]
    raw: str = root.requires[0]
    inside = {m.name for m in members}
    outside = [(m.label, d) for m in members for d in m.depends_on if d not in inside]
    return Family(
        root=name,
        raw=raw,
        view=view_of(raw),
        record=root.incremental_by or "",
        clean=root.incremental_if or "true",
        members=frozenset(m.name for m in members),
        keys={m.name: m.incremental_key for m in members if m.incremental_key},
        outside=f"{outside[0][0]} also reads {outside[0][1]}" if outside else "",
    )


def fingerprint(sql_texts: Iterable[tuple[str, str]], contract_dir: Path) -> str:
    """What the analytics tables are a function of besides the raw rows: a change means full."""
    digest = hashlib.sha256(f"{FORMAT}\0{duckdb.__version__}".encode())
    for path in _code_files():
        digest.update(f"\0{path.name}\0".encode() + path.read_bytes())
    for label, sql in sorted(sql_texts):
        digest.update(f"\0{label}\0{sql}".encode())
    for path in sorted(contract_dir.glob("*.yml")):
        digest.update(f"\0{path.name}\0".encode() + path.read_bytes())
    return digest.hexdigest()


def _code_files() -> list[Path]:
    """The code that writes analytics beside the SQL (the checks' findings, the comments, these
    rewrites): an upgrade changing it builds in full once, rather than keeping the rows and
    comments the old code wrote for every record that did not change."""
    here = Path(__file__).parent
    return [
        here / name
        for name in ("incremental.py", "transform.py", "contract.py", "contract_checks.py")
    ]


def _last(con: duckdb.DuckDBPyConnection, columns: str) -> tuple[object, ...] | None:
    """`columns` of the last successful build; None before the first (or in another FORMAT)."""
    if not table_exists(con, STATE, "builds"):
        return None
    try:
        return con.execute(f"select {columns} from {STATE}.builds").fetchone()
    except duckdb.BinderException:
        return None


def last_build(con: duckdb.DuckDBPyConnection) -> tuple[str, str, str] | None:
    """(fingerprint, raw tables, build id) of the last successful build."""
    row = _last(con, "fingerprint, raw_tables, build_id")
    return (str(row[0]), str(row[1]), str(row[2])) if row else None


def builds(con: duckdb.DuckDBPyConnection) -> tuple[str, str | None] | None:
    """(build id, the build id it updated or None when full) of the last successful build."""
    row = _last(con, "build_id, based_on")
    return (str(row[0]), None if row[1] is None else str(row[1])) if row else None


def updated_tables(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """Analytics tables the last build updated in part, with the condition selecting the rows
    it rewrote (over `analytics_state`'s saved keys): what the serving file must copy."""
    if not table_exists(con, STATE, "updated"):
        return {}
    return dict(con.execute(f"select table_name, condition from {STATE}.updated").fetchall())


def decide(
    con: duckdb.DuckDBPyConnection,
    found: Sequence[Family],
    present: set[str],
    previous: tuple[str, str, str] | None,
    current: tuple[str, str],
    full: str | None,
) -> list[Decision]:
    """One decision per family whose raw table is present; hashes its rows either way (the
    state a full build saves), and finds the changed records where the build may be partial."""
    reason = full or _full_reason(previous, current)
    decisions = []
    for family in found:
        if family.raw not in present:
            continue
        _hash_rows(con, family)
        why = reason or family.outside or _compare(con, family)
        decisions.append(Decision(family, incremental=not why, reason=why or ""))
        if not why:
            decisions[-1].changed = con.execute(
                f"select count(*) from {family.temp('changed')}"
            ).fetchall()[0][0]
    return decisions


def _full_reason(previous: tuple[str, str, str] | None, current: tuple[str, str]) -> str | None:
    if previous is None:
        return "first build"
    if previous[0] != current[0]:
        return "the transforms, the contract or DuckDB changed"
    if previous[1] != current[1]:
        return "the set of raw tables changed"
    return None


def _hash_rows(con: duckdb.DuckDBPyConnection, family: Family) -> None:
    """Hash every raw row of the family (the whole row: any change of any column shows; not
    its position, which a copy changes and a checkpoint may renumber)."""
    # the row is named by an alias no raw column can have (dlt's names are snake_case, never
    # with a space): a vendor field `r` made `hash(r)` hash that one column, hiding every change
    con.execute(
        f"create or replace temp table {family.temp('rows')} as "
        f'select hash("raw row") as h, "raw row".account, "raw row"."{family.record}" as record '
        f'from (select * exclude ({RAW_ROW}) from "all_{family.view}") "raw row"'
    )


def _compare(con: duckdb.DuckDBPyConnection, family: Family) -> str | None:
    """Find the records changed since the state was saved; a reason for a full rebuild when an
    incremental one could be wrong or slower."""
    if not table_exists(con, STATE, f"rows__{family.view}"):
        return "no saved state"
    rows, snapshot, diff = family.temp("rows"), family.snapshot, family.temp("diff")
    # one full join finds both sides: one hash table over the million rows instead of two,
    # on the hashes alone (carrying the rows' text through the join cost a third more); the
    # few unmatched rows are fetched after
    con.execute(
        f"create or replace temp table {diff} as select c.h as new_h, s.h as old_h "
        f"from (select h from {rows}) c full join (select h from {snapshot}) s on s.h = c.h "
        "where c.h is null or s.h is null"
    )
    con.execute(
        f"create or replace temp table {family.temp('added')} as select h, account, record "
        f"from {rows} where h in (select new_h from {diff} where old_h is null)"
    )
    con.execute(
        f"create or replace temp table {family.temp('removed')} as "
        f"select {', '.join(_STATE_COLUMNS)} from {snapshot} "
        f"where h in (select old_h from {diff} where new_h is null)"
    )
    con.execute(
        f"create or replace temp table {family.temp('changed')} as "
        f"select account, record from {family.temp('added')} union "
        f"select account, record from {family.temp('removed')}"
    )
    total, saved, added, removed, unclean, left = con.execute(
        f"select (select count(*) from {rows}), (select count(*) from {snapshot}), "
        f"(select count(*) from {family.temp('added')}), "
        f"(select count(*) from {family.temp('removed')}), "
        f"(select count(*) from {snapshot} where not clean), "
        f"(select count(*) from (select account, record from {family.temp('removed')} "
        f"except select account, record from {family.temp('added')}))"
    ).fetchall()[0]
    # only a record whose rows were all removed can have vanished: one with a row added has
    # one. Looked for among every raw row only then (a night's retirements add a row each).
    vanished = 0
    if left:  # a new record without an id (NULL) is no vanished one: `incremental_if` names it
        vanished = con.execute(
            f"select count(*) from {family.temp('changed')} g anti join {rows} c "
            "on c.account = g.account and c.record is not distinct from g.record"
        ).fetchall()[0][0]
    if saved - removed + added != total:  # a row listed twice came or went (hashes are equal)
        return "raw rows were copied or removed"
    if unclean:
        return f"{unclean:,} raw rows fail incremental_if"
    if vanished:
        return f"{vanished:,} records vanished from the raw table"
    if max(added, removed) > FULL_SHARE * max(total, 1):  # a full build is cheaper then
        return f"{max(added, removed):,} of {total:,} raw rows changed"
    return None


class Restart(Exception):
    """An incremental build found a record it cannot update: build again in full, for `reason`."""


def check_added(con: duckdb.DuckDBPyConnection, decision: Decision) -> None:
    """Apply `incremental_if` to the added rows (it may use the setup files' macros, so it runs
    after them); a record failing it makes the whole build start again in full."""
    family = decision.family
    checked = family.temp("checked")
    con.execute(
        f"create or replace temp table {checked} as {_with_clean(family, family.temp('added'))}"
    )
    unclean = con.execute(f"select count(*) from {checked} where not clean").fetchall()[0][0]
    if unclean:
        raise Restart(f"{unclean:,} new raw rows of {family.raw} fail incremental_if")


def _with_clean(family: Family, rows: str) -> str:
    """SQL: `rows` (h, account, record, …) with `clean`, the family's `incremental_if`, which is
    written on the raw column: `record` is named that way for it."""
    return (
        f"select h, account, record, coalesce(({family.clean}), false) as clean "
        f'from (select h, account, record, record as "{family.record}" from {rows})'
    )


def limit_raw(con: duckdb.DuckDBPyConnection, decision: Decision) -> None:
    """The family's raw view becomes the changed records' rows (every version of each),
    copied once into a temp table: the staging model reads its source three times (the zones'
    days and scd2_history's two reads), and through a filtered view each read scanned the whole
    raw table again (~0.2 s of a 1% night at a million sessions)."""
    family, changed = decision.family, decision.family.temp("changed")
    rows = family.temp("raw")
    among = _among(["account", f'"{family.record}"'], changed, ["account", "record"])
    con.execute(
        f'create or replace temp table {rows} as select * from "all_{family.view}" where {among}'
    )
    parts = _parts(con, rows)
    union = " union all ".join(
        f"select * from {rows}" + (f" where {RAW_ROW} % {parts} = {part}" if parts > 1 else "")
        for part in range(parts)
    )
    con.execute(f'create or replace temp view "{family.view}" as {union}')


def _parts(con: duckdb.DuckDBPyConnection, rows: str) -> int:
    """Into how many parts the view splits a night's changed raw rows (`rows`): one per thread
    while they fill less than a row group each. DuckDB scans a table one row group per thread,
    so a night's ~26,000 rows (every version of 16,000 sessions) were typed by one thread of
    two; read as a union of two halves (each its own scan), the staging model takes ~0.16 s
    instead of ~0.21 (eight alternating rounds, fastest four)."""
    threads = int(con.execute("select current_setting('threads')").fetchall()[0][0])
    (count,) = con.execute(f"select count(*) from {rows}").fetchall()[0]
    parts = min(threads, 8, count // 2048)  # 2,048 rows: a vector, DuckDB's unit of work
    return 1 if parts < 2 or count >= threads * _ROW_GROUP else parts


def check_keys(con: duckdb.DuckDBPyConnection, family: Family) -> None:
    """`IncrementalError` for a mart whose `-- incremental_key:` names a column the family's
    root does not have: found once the root is built, on a full build too. A typo passed the
    first (full) night and then failed every night after, naming another file."""
    have = {
        str(row[0]).lower()
        for row in con.execute(f'select column_name from (describe "{family.root}")').fetchall()
    }
    for mart, columns in family.keys.items():
        missing = [column for column in columns if column.lower() not in have]
        if missing:
            raise IncrementalError(
                f"transform {mart}: its `-- incremental_key:` names {', '.join(missing)}, "
                f"which {family.root} does not have"
            )


def make_keys(con: duckdb.DuckDBPyConnection, decision: Decision) -> None:
    """The changed keys of every mart of the family, from the root's rows of the changed
    records (all their versions: a key whose rows go away is deleted too)."""
    if decision.keys_made:
        return
    family = decision.family
    columns = ", ".join(["account", *family.key_columns])
    con.execute(
        f"create or replace temp table {family.temp('keys')} as "
        f'select distinct {columns} from "{family.root}"'
    )
    decision.keys_made = True


def check_setup_table(con: duckdb.DuckDBPyConnection, query: str) -> None:
    """`Restart` (a full build) when a table a setup file makes is gone (dropped by hand): on a
    partial build it was made anew, empty, and the night lost every untouched record's rows."""
    if match := _REPLACE_EMPTY.match(query):
        schema, _, table = match.group(2).replace('"', "").partition(".")
        if not table_exists(con, schema, table):
            raise Restart(f"analytics table {table} is missing")


def check_insert(query: str, model: str, cleared: set[str]) -> None:
    """`Restart` (a full build) for a family mart inserting into a table before it deleted its
    keys there: on a night its insert adds the changed keys' rows again beside their old ones.
    `cleared`: the tables this model deleted from or replaced so far (added to here)."""
    if match := _REPLACE_AS.match(query) or _DELETE.match(query):
        cleared.add(match.group(1).replace('"', "").lower())
    elif (match := _INSERT.match(query)) and match.group(1).replace('"', "").lower() not in cleared:
        raise Restart(
            f"{model} inserts into {match.group(1)} without deleting its keys there first"
        )


def rewrite(
    query: str, decision: Decision | None, model: str, partial: bool, setup: bool = False
) -> list[str]:
    """The statements to run for one statement of a model (see the module docstring).

    `partial`: some family of this build is incremental, so tables are kept, not made anew;
    `decision`: the model's family (None for setup files and models of no family); `setup`:
    a setup file, whose empty tables the families' marts fill."""
    if not partial:
        return [query]
    if decision is None:
        empty = _REPLACE_EMPTY.match(query) if setup else None
        if empty:
            return [f"create table if not exists {empty.group(1)}{query[empty.end() :]}"]
        return [query]
    if not decision.incremental or model not in decision.family.keys:
        return [query]
    restrict = decision.restrict(decision.family.keys[model])
    if match := _REPLACE_AS.match(query):
        return [
            f"delete from {match.group(1)} where {restrict}",
            f"insert into {match.group(1)} {match.group(2)}",
        ]
    if match := _DELETE.match(query):
        return [f"delete from {match.group(1)} where ({match.group(2)}) and {restrict}"]
    if _INSERT.match(query):  # the changed keys' rows, after a delete of them (as above)
        return [query]
    # run as written on the changed records alone, it would leave their rows only
    raise Restart(f"{model} has a statement an incremental build cannot rewrite")


def save(
    con: duckdb.DuckDBPyConnection,
    decisions: Sequence[Decision],
    current: tuple[str, str],
    updated: Mapping[str, str],
    previous: tuple[str, str, str] | None,
) -> None:
    """Record this build's state, inside its transaction: rows of each family; the keys it
    rewrote and where (`updated`: table -> condition over the saved keys), for the serving file;
    its id, and the build it updated when it was incremental."""
    con.execute(f"create schema if not exists {STATE}")
    kept = set()
    for decision in decisions:
        family = decision.family
        kept.add(f"rows__{family.view}")
        if decision.incremental:
            con.execute(
                f"delete from {family.snapshot} where h in (select h from {family.temp('removed')})"
            )
            con.execute(f"insert into {family.snapshot} select * from {family.temp('checked')}")
            if decision.keys_made:
                kept.add(f"keys__{family.root}")
                con.execute(
                    f'create or replace table {STATE}."keys__{family.root}" as '
                    f"select * from {family.temp('keys')}"
                )
        else:
            con.execute(
                f"create or replace table {family.snapshot} as "
                f"{_with_clean(family, family.temp('rows'))}"
            )
    _drop_stale(con, kept)
    con.execute(f"create or replace table {STATE}.updated (table_name varchar, condition varchar)")
    for table, condition in updated.items():
        con.execute(f"insert into {STATE}.updated values (?, ?)", [table, condition])
    partial = any(d.incremental for d in decisions) and previous is not None
    con.execute(
        f"create or replace table {STATE}.builds as select ? as fingerprint, ? as raw_tables, "
        "cast(uuid() as varchar) as build_id, ? as based_on, current_timestamp as built_at",
        [*current, previous[2] if partial and previous else None],
    )


def _drop_stale(con: duckdb.DuckDBPyConnection, kept: set[str]) -> None:
    """Drop the rows and keys of families this build did not keep (not built, or full)."""
    for (table,) in con.execute(
        "select table_name from duckdb_tables() where database_name = current_database() "
        "and schema_name = ? and (table_name like 'rows\\_\\_%' escape '\\' "
        "or table_name like 'keys\\_\\_%' escape '\\')",
        [STATE],
    ).fetchall():
        if table not in kept:
            con.execute(f'drop table {STATE}."{table}"')
