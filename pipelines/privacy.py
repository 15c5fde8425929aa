"""The privacy policy: raw columns dropped or hashed in the extractor, before anything is stored.

Each source has one setting, `sources.<source>.privacy = {drop = [...], hash = [...]}`, naming raw
columns as the warehouse names them (`session_private_note`; TimeTap's camelCase names are
accepted too, `createdUser` = `created_user`) and, for TimeTap's embedded client object, keys
inside it as `client.<key>` (`client.emailAddress`). The policy is applied to each page's Arrow
table before its row hashes are computed, so a dropped value never reaches dlt's files, the
warehouse, the logs or `_ingest_issues`:

- drop: the column stays, every value NULL (a key inside `client` is removed from the object);
- hash: `sha256(salt || value)` as 64 hex digits, salt = `practice_sync.privacy_salt` (a secret
  shared by both sources, so one email hashes alike in every table, run and source). NULL and ''
  stay as they are. An analyst holding the salt finds a person with DuckDB's
  `sha256('<salt>' || 'ada@example.com')`.

A policy changed after data was loaded is applied to the stored history once (`apply_to_history`),
recorded in `ops.privacy_policy`; each stored row's `_dlt_id` (its content hash) is recomputed,
so the next load does not see every record as changed.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from practice_sync.errors import ConfigError

DROP = "drop"
HASH = "hash"
SALT_SETTING = "practice_sync.privacy_salt (PRACTICE_SYNC__PRIVACY_SALT)"
MIN_SALT = 16  # characters: a short salt lets anyone with the hashes guess common emails back
# columns holding a JSON object whose keys may be named: the client, and the package a sale
# embeds (its createdUser and modifiedUser are the package's, which `created_user` does not reach)
OBJECT_COLUMNS = {"timetap": ("client", "pkg")}
KEYS = {"bizstim": ("id",), "timetap": ("package_id", "package_sold_id")}  # never dropped or hashed
INGEST_ISSUES = "_ingest_issues"
TITLES = {"bizstim": "Bizstim", "timetap": "TimeTap"}


@lru_cache(maxsize=1024)
def snake(name: str) -> str:
    """dlt's column naming: how a vendor's camelCase field is named in the warehouse."""
    from dlt.common.normalizers.naming.snake_case import NamingConvention

    return NamingConvention().normalize_identifier(name)


def raw_tables(source: str) -> dict[str, list[str]]:
    """Each raw table of a source and its documented columns, in row-hash order."""
    if source == "bizstim":
        from practice_sync.bizstim.settings import SESSION_FIELDS, TIMEZONE_COLUMN

        return {"sessions": [*SESSION_FIELDS, TIMEZONE_COLUMN, INGEST_ISSUES]}
    from practice_sync.timetap.settings import (
        CLIENT_ID_COLUMN,
        PACKAGE_FIELDS,
        PACKAGE_SOLD_FIELDS,
    )

    return {
        "packages": [*map(snake, PACKAGE_FIELDS), INGEST_ISSUES],
        "packages_sold": [*map(snake, PACKAGE_SOLD_FIELDS), CLIENT_ID_COLUMN, INGEST_ISSUES],
    }


def policy_columns(source: str) -> list[str]:
    """The raw columns a policy may name (every documented one but the record keys)."""
    names = {c for cols in raw_tables(source).values() for c in cols} - {INGEST_ISSUES}
    return sorted(names - set(KEYS.get(source, ())))


@dataclass(frozen=True)
class Policy:
    """What happens to each named column: `columns` {column: action}, and `nested`
    {object column: {snake-cased key: action}}. Empty: everything kept (the default)."""

    columns: Mapping[str, str] = field(default_factory=dict)
    nested: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    salt: str = field(default="", repr=False)

    def __bool__(self) -> bool:
        return bool(self.columns or self.nested)

    def entries(self) -> dict[str, list[str]]:
        """The policy as the setting spells it, canonical: {"drop": [...], "hash": [...]}."""
        out: dict[str, list[str]] = {DROP: [], HASH: []}
        for name, action in self.columns.items():
            out[action].append(name)
        for column, keys in self.nested.items():
            for key, action in keys.items():
                out[action].append(f"{column}.{key}")
        return {action: sorted(names) for action, names in out.items()}

    def hash_text(self, value: str) -> str:
        """Salted SHA-256 of one value, as 64 lowercase hex digits."""
        return hashlib.sha256((self.salt + value).encode()).hexdigest()

    def apply(self, table: pa.Table) -> pa.Table:
        """The table with every named column dropped (NULL) or hashed, and `_ingest_issues`
        no longer quoting what was dropped or hashed. Vectorised: each distinct value is
        hashed once, so a page's cost follows its distinct values, not its rows."""
        if not self:
            return table
        for index, name in enumerate(table.column_names):
            action = self.columns.get(name)
            keys = self.nested.get(name)
            column = table.column(index)
            if (action is None and keys is None) or column.null_count == len(column):
                continue
            if action == DROP:
                new = pa.nulls(len(column), pa.string())
            elif action == HASH:
                new = _per_distinct(column, self._hasher())
            else:
                assert keys is not None
                new = _per_distinct(column, functools.partial(self._redact_object, keys=keys))
            table = table.set_column(index, name, new)
        if INGEST_ISSUES in table.column_names:
            table = self._redact_issues(table)
        return table

    def _hasher(self) -> Callable[[str | None], str | None]:
        """`hash_text` for many values, the salt's part of SHA-256 computed once; NULL and ''
        kept as they are."""
        salted = hashlib.sha256(self.salt.encode())

        def digest(value: str | None) -> str | None:
            if not value:
                return value
            one = salted.copy()
            one.update(value.encode())
            return one.hexdigest()

        return digest

    def _redact_object(self, text: str | None, keys: Mapping[str, str]) -> str | None:
        """One JSON object with the named keys removed or hashed; a value that is not an object
        cannot be searched for keys, so it is dropped (any key dropped) or hashed whole."""
        if not text:
            return text
        try:
            found = orjson.loads(text)
        except orjson.JSONDecodeError:
            found = None
        if not isinstance(found, dict):
            return None if DROP in keys.values() else self.hash_text(text)
        out: dict[str, Any] = {}
        for key, value in found.items():
            action = keys.get(snake(key))
            if action == DROP:
                continue
            if action == HASH and value is not None and value != "":
                value = self.hash_text(_as_text(value))
            out[key] = value
        return orjson.dumps(out, option=orjson.OPT_SORT_KEYS).decode()

    def _redact_issues(self, table: pa.Table) -> pa.Table:
        """An issue about a named column quotes the value the column now holds; an issue about
        a row that was not an object (its whole text) quotes nothing."""
        issues = table[INGEST_ISSUES]
        if issues.null_count == len(issues):
            return table
        named = {*self.columns, *self.nested}
        values = issues.to_pylist()
        for row in pc.indices_nonzero(pc.is_valid(issues)).to_pylist():
            found = orjson.loads(values[row])
            for issue in found:
                if issue.get("field") in named:
                    held = table[issue["field"]][row].as_py()
                    issue["value"] = (held or "")[:200]
                elif issue.get("field") == "":
                    issue["value"] = ""
            values[row] = orjson.dumps(found).decode()
        index = table.column_names.index(INGEST_ISSUES)
        return table.set_column(index, INGEST_ISSUES, pa.array(values, pa.string()))


def _per_distinct(
    column: pa.ChunkedArray | pa.Array, change: Callable[[str | None], str | None]
) -> pa.Array:
    """`change` applied to each distinct value once, then spread back over the rows."""
    distinct = pc.unique(column)
    changed = pa.array([change(v) for v in distinct.to_pylist()], pa.string())
    return pc.take(changed, pc.index_in(column, value_set=distinct))


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


# -- the setting ------------------------------------------------------------------------------


def parse(source: str, value: Any, setting: str, salt: str | None) -> Policy:
    """The policy a setting describes; `ConfigError` (one sentence naming `setting`) when it
    names an unknown column, a record key, a column twice, or hashes without a salt."""
    if value is None or value == "":
        return Policy()
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = None
    if not isinstance(value, Mapping) or set(value) - {DROP, HASH}:
        raise ConfigError(
            f"{setting} must be a table of column lists such as "
            '{"drop": ["session_private_note"], "hash": ["client.emailAddress"]}.'
        )
    columns: dict[str, str] = {}
    nested: dict[str, dict[str, str]] = {}
    for action in (DROP, HASH):
        names = value.get(action) or []
        if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
            raise ConfigError(f"{setting}: {action} must be a list of column names.")
        for entry in names:
            column, key = _resolve(source, entry, setting)
            slot = nested.setdefault(column, {}) if key else columns
            name = key or column
            if name in slot and slot[name] != action:
                raise ConfigError(f"{setting} names {entry} both to drop and to hash: choose one.")
            slot[name] = action
    nested = {column: keys for column, keys in nested.items() if keys}
    if HASH in {*columns.values(), *(a for k in nested.values() for a in k.values())}:
        if not salt:
            raise ConfigError(
                f"{setting} hashes columns but no salt is set: set {SALT_SETTING} "
                "in secrets.toml or the environment (a random string, e.g. openssl rand -hex 32)."
            )
        if len(salt) < MIN_SALT:
            raise ConfigError(
                f"{SALT_SETTING} is shorter than {MIN_SALT} characters: use a long random string "
                "(e.g. openssl rand -hex 32)."
            )
    return Policy(columns, nested, salt or "")


def _resolve(source: str, entry: str, setting: str) -> tuple[str, str | None]:
    """(raw column, snake-cased key inside it or None) for one entry of the setting."""
    head, dot, key = entry.strip().partition(".")
    column = snake(head) if head else ""
    known = policy_columns(source)
    objects = OBJECT_COLUMNS.get(source, ())
    if column in KEYS.get(source, ()):
        raise ConfigError(
            f"{setting} names {entry}, the record's id, which cannot be dropped or hashed."
        )
    if column not in known or (dot and (column not in objects or not key.strip())):
        inside = f"; keys inside {', '.join(objects)} as {objects[0]}.<key>" if objects else ""
        nearest = difflib.get_close_matches(column, known, n=1, cutoff=0.6)
        hint = f"did you mean {nearest[0]}? " if nearest and not dot else ""
        raise ConfigError(
            f"{setting} names {entry!r}, which is not a {TITLES[source]} column: {hint}"
            f"use one of {', '.join(known)}{inside}."
        )
    return column, snake(key.strip()) if dot else None


def salt_setting() -> str | None:
    """The salt, from secrets.toml or the environment (never from config.toml)."""
    import dlt

    value: Any = dlt.secrets.get("practice_sync.privacy_salt")
    return None if value is None else str(value)


def policy_for(source: str, value: Any) -> Policy:
    """The policy of a source from its resolved `privacy` argument and the salt."""
    setting = f"sources.{source}.privacy (SOURCES__{source.upper()}__PRIVACY)"
    return parse(source, value, setting, salt_setting())


def configured(source: str, override: Any = None) -> Policy:
    """The policy of a source as dlt's configuration gives it (or `override`)."""
    import dlt

    value = override if override is not None else dlt.config.get(f"sources.{source}.privacy")
    return policy_for(source, value)


def describe(policy: Policy) -> str:
    """The policy for messages and `ops.privacy_policy` (column names only, never the salt)."""
    return json.dumps(policy.entries(), sort_keys=True)


def documented_for(source: str, table: str) -> Sequence[str]:
    return raw_tables(source)[table]


# -- history: a policy changed after data was loaded ------------------------------------------

RECORD = "ops.privacy_policy"
_BATCH = 200_000  # stored rows rewritten per step, to bound memory on a big history


def salt_check(policy: Policy) -> str | None:
    """A fingerprint of the salt (a hash of a fixed text, like any hashed value): tells a salt
    change apart without storing the salt. None when nothing is hashed."""
    hashes = HASH in policy.entries() and policy.entries()[HASH]
    return policy.hash_text("practice-sync salt check") if hashes else None


def recorded(con: Any, source: str, dataset: str) -> tuple[Policy, str | None] | None:
    """The policy the stored history in `dataset` was written under, and its salt check."""
    from practice_sync.warehouse import table_exists

    if not table_exists(con, "ops", "privacy_policy"):
        return None
    row = con.execute(
        f"select policy, salt_check from {RECORD} where dataset = ?", [dataset]
    ).fetchone()
    if row is None:
        return None
    return parse(source, json.loads(row[0]), RECORD, "x" * MIN_SALT), row[1]


def history_delta(old: Policy, new: Policy) -> Policy:
    """What must still happen to history written under `old`: newly dropped columns, and newly
    hashed ones that were kept (a dropped value cannot be hashed, a hash cannot be undone)."""
    columns = {
        name: action
        for name, action in new.columns.items()
        if old.columns.get(name) != action and not (action == HASH and old.columns.get(name))
    }
    nested: dict[str, dict[str, str]] = {}
    for column, keys in new.nested.items():
        was = old.nested.get(column, {})
        if old.columns.get(column) == DROP:
            continue
        changed = {
            key: action
            for key, action in keys.items()
            if was.get(key) != action and not (action == HASH and was.get(key))
        }
        if changed and old.columns.get(column) != HASH:
            nested[column] = changed
    return Policy(columns, nested, new.salt)


def apply_to_history(
    database: Path,
    source: str,
    policy: Policy,
    *,
    dataset: str | None = None,
    full_refresh: bool = False,
) -> list[str]:
    """Bring the stored raw history of `source` in line with `policy` once per change: newly
    dropped columns become NULL, newly hashed ones hold their hash, `_dlt_id` is recomputed
    (so the next load sees no change), all in one transaction with the record in
    `ops.privacy_policy`. Returns notes for the run's summary. Called before the extract;
    `dataset` is where the source's raw tables are (the source's name by default).

    A full refresh changes nothing here: its load replaces the history, and the policy is
    recorded when that load lands (`record`). Recorded before, a refresh that failed would leave
    the old salt's hashes under the new salt's record, and the next run would mix the two."""

    from practice_sync.warehouse import table_exists, writer

    if full_refresh or (not policy and not database.exists()):
        return []
    with writer(database) as con:
        dataset = dataset or source
        previous = recorded(con, source, dataset)
        if previous is None and not policy:
            return []
        old, old_check = previous or (Policy(), None)
        check = salt_check(policy)
        if describe(old) == describe(policy) and old_check == check:
            return []
        still_hashed = set(old.entries()[HASH]) & set(policy.entries()[HASH])
        if still_hashed and old_check != check:
            raise ConfigError(
                f"{SALT_SETTING} is not the salt that hashed {dataset}'s stored "
                f"{', '.join(sorted(still_hashed))}: restore it, or start that history over with "
                f"`practice-sync run --full-refresh --source {source}`."
            )
        delta = history_delta(old, policy)
        rewritten: dict[str, int] = {}
        con.execute("begin")
        try:
            for table, documented in raw_tables(source).items():
                if delta and table_exists(con, dataset, table):
                    rewritten[table] = _rewrite(con, dataset, table, documented, delta)
            _record(con, dataset, policy, check)
            con.execute("commit")
        except BaseException:
            con.execute("rollback")
            raise
    return _notes(dataset, old, policy, delta, rewritten)


def _rewrite(con: Any, dataset: str, table: str, documented: Sequence[str], delta: Policy) -> int:
    """Apply `delta` to every stored version of one raw table; returns the rows changed."""
    from practice_sync.rows import row_hashes

    names = [
        name
        for (name,) in con.execute(
            "select column_name from duckdb_columns() where database_name = current_database() "
            "and schema_name = ? and table_name = ? order by column_index",
            [dataset, table],
        ).fetchall()
    ]
    # `account` is stamped after the extractor's row hash, so it is no part of it here either
    content = [n for n in names if not n.startswith("_dlt_") and n not in ("_vanished", "account")]
    targets = [n for n in content if n in delta.columns or n in delta.nested]
    if not targets:
        return 0
    changed_columns = [*targets, INGEST_ISSUES]
    where = " or ".join(f'"{n}" is not null' for n in changed_columns)
    selected = ", ".join(f'"{n}"' for n in content)
    top = con.execute(f'select coalesce(max(rowid) + 1, 0) from "{dataset}"."{table}"').fetchone()
    con.execute(
        "create or replace temp table _privacy_rewrite as select 0::bigint as _rid, "
        f"''::varchar as _dlt_id, {', '.join(f'null::varchar as {q}' for q in _quoted(changed_columns))} "
        "limit 0"
    )
    for start in range(0, int(top[0]), _BATCH):
        stored = con.sql(
            f'select rowid as _rid, _dlt_id as _old_id, {selected} from "{dataset}"."{table}" '
            f"where rowid >= ? and rowid < ? and ({where})",
            params=[start, start + _BATCH],
        ).to_arrow_table()
        if not stored.num_rows:
            continue
        after = delta.apply(stored.drop_columns(["_rid", "_old_id"]))
        ids = row_hashes(after, documented)
        columns = {"_rid": stored["_rid"], "_dlt_id": ids}
        columns.update({n: after[n] for n in changed_columns})
        batch = pa.table(columns).filter(pc.not_equal(ids, stored["_old_id"]))
        con.register("_privacy_batch", batch)
        con.execute("insert into _privacy_rewrite select * from _privacy_batch")
        con.unregister("_privacy_batch")
    assignments = ", ".join(f"{q} = r.{q}" for q in _quoted([*changed_columns, "_dlt_id"]))
    con.execute(
        f'update "{dataset}"."{table}" as t set {assignments} '
        "from _privacy_rewrite as r where t.rowid = r._rid"
    )
    count = con.execute("select count(*) from _privacy_rewrite").fetchone()
    con.execute("drop table _privacy_rewrite")
    return int(count[0])


def _quoted(names: Sequence[str]) -> list[str]:
    return [f'"{n}"' for n in names]


def record(database: Path, dataset: str, policy: Policy) -> None:
    """Record `policy` as the one `dataset`'s whole history was written under: after a full
    refresh's load landed (`apply_to_history`)."""
    from practice_sync.warehouse import writer

    with writer(database) as con:
        _record(con, dataset, policy, salt_check(policy))


def _record(con: Any, dataset: str, policy: Policy, check: str | None) -> None:
    con.execute("create schema if not exists ops")
    con.execute(
        f"create table if not exists {RECORD} (dataset varchar primary key, policy varchar, "
        "salt_check varchar, applied_at timestamptz)"
    )
    con.execute(f"delete from {RECORD} where dataset = ?", [dataset])
    con.execute(
        f"insert into {RECORD} values (?, ?, ?, current_timestamp)",
        [dataset, describe(policy), check],
    )


def _notes(
    dataset: str, old: Policy, new: Policy, delta: Policy, rewritten: Mapping[str, int]
) -> list[str]:
    done = "; ".join(
        f"{action} {', '.join(names)}" for action, names in delta.entries().items() if names
    )
    notes = [
        f"privacy policy applied to stored history: {count:,} rows of {dataset}.{table} "
        f"rewritten ({done})"
        for table, count in rewritten.items()
        if count
    ]
    relaxed = sorted(
        set(old.entries()[DROP] + old.entries()[HASH])
        - set(new.entries()[DROP] + new.entries()[HASH])
        | {n for n in old.entries()[DROP] if n in new.entries()[HASH]}
    )
    if relaxed:
        notes.append(
            f"{', '.join(relaxed)} of {dataset}: stored history keeps what the previous privacy "
            "policy left (NULL or hashed); values arrive as the policy now says from this run on"
        )
    return notes
