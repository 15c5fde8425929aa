"""Turn vendor rows into the raw layer's shape: every value text, one Arrow table per page.

The raw layer keeps values as delivered (all text) so that a field changing type upstream, or a
garbage value, can never stop a load: typing happens in SQL, where a value that does not parse
becomes NULL plus a row in `analytics.data_issues`. What the extractor itself had to coerce is
recorded per row in `_ingest_issues` for the transforms to report.
"""

from __future__ import annotations

import functools
import hashlib
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import chain
from typing import TYPE_CHECKING, Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from practice_sync.privacy import Policy

ROW_HASH = "_dlt_id"
INGEST_ISSUES = "_ingest_issues"
REPLACEMENT_CHAR = "\ufffd"
# the text a row hash is taken of: values joined by SEP, NULL for a null or absent one
# (`row_hashes` column-wise, `plain_row_hashes` from the parsed row: the two must agree)
SEP, NULL = "\x1f", "\x00"


def to_text(value: Any) -> str | None:
    """JSON scalar or structure as the text the raw layer stores ('true', '12', '[1,2]')."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return orjson.dumps(value).decode()
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def text_columns(names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """dlt column hints that create every documented column as text, even before it has data."""
    columns: dict[str, dict[str, Any]] = {
        name: {"data_type": "text", "nullable": True} for name in names
    }
    columns[INGEST_ISSUES] = {"data_type": "text", "nullable": True}
    columns[ROW_HASH] = {"data_type": "text", "nullable": False}
    return columns


def with_column(name: str, value: str, item: Any) -> Any:
    """`item` with a constant text column added (an account's name on every row of a page);
    anything that is not an Arrow table passes unchanged."""
    if isinstance(item, pa.Table) and name not in item.column_names:
        return item.append_column(name, pa.array([value] * item.num_rows, pa.string()))
    return item


LONG_VALUE = 100_000  # characters; longer values load in full but are reported
# columns the pipeline stamps on every row (accounts.ACCOUNT_COLUMN): a vendor field of that name
# is kept under another, or it would take the place of the stamp and file its record under an
# account that does not exist
RESERVED = {"account": "account_from_vendor"}
# the pipeline's own columns (guard.VANISHED, the ingest issues, dlt's `_dlt_*`): a vendor field of
# one of these names is kept as `<name>_from_vendor` too; `_vanished` in a record dropped it
OURS = frozenset({INGEST_ISSUES, "_vanished"})


def _vendor_name(name: str, documented: Sequence[str], constants: Mapping[str, Any]) -> str:
    """The column an undocumented vendor field is kept in: its own name unless that is one of
    the pipeline's (the account stamp, a page constant such as the zone, `_dlt_*`, ...)."""
    if name in documented:
        return name
    if name in RESERVED:
        return RESERVED[name]
    if name in OURS or name in constants or name.startswith("_dlt"):
        return f"{name}_from_vendor"
    return name


def apart_after_naming(normalize: Callable[[str], str], item: Any) -> Any:
    """`item` with each vendor field that dlt's naming would turn into another column's name
    (`sessionDate` beside `session_date`, `a b` beside `a_b`) renamed `<name>_from_vendor`:
    dlt refused the whole load (a name collision), every night. Our own columns and the
    documented ones are spelled as dlt spells them, and keep their names."""
    if not isinstance(item, pa.Table):
        return item
    names = item.column_names
    spelled = [normalize(name) for name in names]
    if len(set(spelled)) == len(names):
        return item
    kept = {n for n, s in zip(names, spelled, strict=True) if n == s}
    taken = set(kept)
    renamed = list(names)
    for index, (name, spelling) in enumerate(zip(names, spelled, strict=True)):
        if name in kept:
            continue
        if spelling not in taken:
            taken.add(spelling)  # the first of a kind with no column of its spelling keeps it
            continue
        candidate, number = f"{spelling}_from_vendor", 2
        while candidate in taken:
            candidate, number = f"{spelling}_from_vendor_{number}", number + 1
        taken.add(candidate)
        renamed[index] = candidate
    return item.rename_columns(renamed)


def row_hashes(table: pa.Table, documented: Sequence[str]) -> pa.Array:
    """Content hash per row: documented columns by position, any others as `name=value`.

    Computed column-wise from the finished table, so a row hashes the same whichever way it was
    read; an undocumented column that appears empty changes nothing.
    """
    extras = sorted(set(table.column_names) - set(documented))
    parts = [table[name] if name in table.column_names else None for name in documented]
    parts = [p if p is not None else pa.nulls(table.num_rows, pa.string()) for p in parts]
    joined = pc.binary_join_element_wise(
        *parts, SEP, null_handling="replace", null_replacement=NULL
    )
    # an undocumented field adds `\x1fname\x1evalue` only where the row has it, so a row hashes
    # the same whether or not another row of its page carried that field
    for name in extras:
        tagged = pc.binary_join_element_wise(f"{SEP}{name}\x1e", table[name], "")
        joined = pc.binary_join_element_wise(joined, pc.fill_null(tagged, ""), "")
    blake = hashlib.blake2b
    return pa.array(
        [
            blake(value, digest_size=16).hexdigest()
            for value in joined.cast(pa.binary()).to_pylist()
        ],
        type=pa.string(),
    )


def plain_row_hashes(
    rows: Sequence[Any],
    documented: Sequence[str],
    required: Iterable[str],
    constants: Mapping[str, str | None],
) -> list[str | None]:
    """Per row, the hash `rows_to_table` gives it, computed from the parsed row without Arrow,
    where the row is plain: an object of documented fields only, with every required one, each
    value text (or null outside `required`), none long. None for any other row, which must take
    the full way (its issues, renamed or extra columns enter its hash).

    A night's unchanged rows are left out by this hash before anything is converted
    (`page_worker.decode_page`): the Arrow conversion, the issue checks and the column-wise hash
    were over half of a page's decoding. `test_rows` checks it against `row_hashes`.
    """
    tail = "".join(SEP + _or_null(v) for v in constants.values()) + SEP + NULL  # no issues
    needed = tuple(required)
    by_keys: dict[tuple[str, ...], _Plan | None] = {}
    by_size: dict[int, _Plan] = {}  # a page's rows mostly share one set of keys
    blake = hashlib.blake2b
    out: list[str | None] = []
    for row in rows:
        text = None
        if type(row) is dict:
            plan = by_size.get(len(row))
            try:
                text = plan.text(row) if plan else None
            except KeyError:  # as many keys as the plan's, other ones
                plan = None
            if plan is None:
                keys = tuple(row)
                if keys not in by_keys:
                    by_keys[keys] = _Plan.of(keys, documented, needed)
                plan = by_keys[keys]
                if plan:
                    by_size.setdefault(len(row), plan)
                    text = plan.text(row)
        if text is None or len(text) > LONG_VALUE:
            out.append(None)
            continue
        try:
            out.append(blake((text + tail).encode(), digest_size=16).hexdigest())
        except UnicodeEncodeError:  # a lone surrogate: the full way replaces and reports it
            out.append(None)
    return out


def plain_table(
    rows: Sequence[dict[str, Any]],
    documented: Sequence[str],
    constants: Mapping[str, str | None],
    hashes: Sequence[str | None],
) -> pa.Table:
    """`rows_to_table` of plain rows whose `plain_row_hashes` are known: the same table, without
    the issue checks and the column-wise hash that have nothing to add for such rows."""
    count = len(rows)
    columns = pa.array(rows, type=_text_struct(tuple(documented))).flatten()
    return pa.Table.from_arrays(
        [
            *columns,
            *(pa.array([value] * count, pa.string()) for value in constants.values()),
            pa.nulls(count, pa.string()),
            pa.array(hashes, pa.string()),
        ],
        schema=_plain_schema(tuple(documented), tuple(constants)),
    )


@functools.cache
def _plain_schema(documented: tuple[str, ...], constants: tuple[str, ...]) -> pa.Schema:
    fields = [pa.field(name, pa.string()) for name in (*documented, *constants, INGEST_ISSUES)]
    return pa.schema([*fields, pa.field(ROW_HASH, pa.string(), nullable=False)])


def _or_null(value: str | None) -> str:
    return NULL if value is None else value


class _Plan:
    """How to join the values of rows with one set of keys in documented order, `\x00` for a
    field absent or null, as `row_hashes` does (`plain_row_hashes`)."""

    def __init__(self, documented: Sequence[str], have: set[str], required: Sequence[str]):
        self._documented = documented
        self._required = required
        # runs of present fields, each read by one C-level itemgetter, and the absent fields
        # before, between and after them (`\x00` each, as a null)
        runs: list[list[str]] = []
        gaps = [0]
        present = False
        for name in documented:
            if name in have:
                if not present:
                    runs.append([])
                runs[-1].append(name)
            else:
                if present:
                    gaps.append(0)
                gaps[-1] += 1
            present = name in have
        if present:
            gaps.append(0)
        middles = [SEP + (NULL + SEP) * gap for gap in gaps[1:-1]]
        glues = [(NULL + SEP) * gaps[0], *middles, (SEP + NULL) * gaps[-1]]
        self._getters = [_getter(run) for run in runs]
        self.join = _joiner(self._getters, glues)

    @classmethod
    def of(
        cls, keys: tuple[str, ...], documented: Sequence[str], required: Sequence[str]
    ) -> _Plan | None:
        """None when a key is undocumented or a required one missing (such rows carry extra
        columns or issues)."""
        have = set(keys)
        if not have or not have <= set(documented) or not set(required) <= have:
            return None
        return cls(documented, have, required)

    def text(self, row: dict[str, Any]) -> str | None:
        """The row's values joined; None for a required value null or a value not text.
        Raises KeyError for a row without one of the plan's keys."""
        try:
            return self.join(row)
        except TypeError:  # a null, or a value that is not text
            for get in self._getters:
                get(row)  # the KeyError of a row of other keys comes first
            if any(row[name] is None for name in self._required):
                return None
            values = [row.get(name) for name in self._documented]
            if not all(v is None or type(v) is str for v in values):
                return None
            return SEP.join([_or_null(v) for v in values])


Getter = Callable[[dict[str, Any]], tuple[Any, ...]]


def _getter(names: list[str]) -> Getter:
    """An itemgetter that returns a tuple for one name too."""
    if len(names) > 1:
        return operator.itemgetter(*names)
    name = names[0]
    return lambda row: (row[name],)


def _joiner(getters: list[Getter], glues: list[str]) -> Callable[[dict[str, Any]], str]:
    """`glues[0] + run 1 + glues[1] + run 2 ... + glues[-1]`, each run's values joined by the
    separator; the usual one or two runs (one field absent) without a loop in Python."""
    join = SEP.join
    if len(getters) == 1 and glues == ["", ""]:
        (one,) = getters
        return lambda row: join(one(row))
    if len(getters) == 2 and glues[0] == glues[2] == "":
        first, second = getters
        middle = glues[1]
        return lambda row: join(first(row)) + middle + join(second(row))
    pairs = list(zip(glues, getters, strict=False))
    last = glues[-1]
    return lambda row: "".join([glue + join(get(row)) for glue, get in pairs]) + last


def rows_to_table(
    rows: Sequence[Any],
    documented: Sequence[str],
    *,
    entity: str,
    required: Iterable[str] = (),
    constants: Mapping[str, str | None] | None = None,
    check_replacement: bool = False,
    expect_text: bool = True,
    policy: Policy | None = None,
) -> pa.Table:
    """One page of vendor rows as an all-text Arrow table with row hashes and ingest issues.

    Unknown fields become extra columns (dlt adds them to the table); a row that is not an
    object is kept as an issue-only row rather than dropped. `expect_text` is for vendors that
    promise strings (Bizstim): anything else is worth reporting there, not for TimeTap. A page
    of plain string rows (the nightly case) never loops over values in Python. The privacy
    `policy` is applied before the row hashes, so they hash what is stored.
    """
    issues: dict[int, list[dict[str, str]]] = {}
    if not all(type(row) is dict for row in rows):
        rows = _coerce(rows, entity, expect_text, issues)
    names = dict.fromkeys(documented)
    columns: dict[str, pa.Array] = {}
    try:
        # the rows as one struct array, converted in C++: a quarter faster than a list per column
        struct = pa.array(rows, type=_text_struct(tuple(names)))
        columns = dict(zip(names, struct.flatten(), strict=True))
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        rows = _coerce(rows, entity, expect_text, issues)
        columns = {}
    # every key documented and non-null: the key count adds up without looking at each key
    if not columns or sum(map(len, rows)) != sum(len(c) - c.null_count for c in columns.values()):
        names.update(dict.fromkeys(chain.from_iterable(rows)))
        columns = {n: pa.array([row.get(n) for row in rows], type=pa.string()) for n in names}
    constants = constants or {}
    if any(_vendor_name(n, documented, constants) != n for n in columns):
        columns = {_vendor_name(n, documented, constants): c for n, c in columns.items()}
    table = _finish(rows, columns, required, constants, check_replacement, issues)
    if policy:
        table = policy.apply(table)
    hashes = row_hashes(table, [*documented, *(constants or {}), INGEST_ISSUES])
    schema = table.schema.append(pa.field(ROW_HASH, pa.string(), nullable=False))
    return pa.Table.from_arrays([*table.columns, hashes], schema=schema)


@functools.cache
def _text_struct(names: tuple[str, ...]) -> pa.DataType:
    """A struct of text fields: the shape of a page whose values all arrived as strings."""
    return pa.struct([pa.field(name, pa.string()) for name in names])


def _coerce(
    rows: Sequence[Any], entity: str, expect_text: bool, issues: dict[int, list[dict[str, str]]]
) -> list[dict[str, str | None]]:
    """The slow path: every value to text, noting what was not delivered as promised."""
    out: list[dict[str, str | None]] = []
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            issues.setdefault(index, []).append(
                {
                    "field": "",
                    "value": to_text(row) or "",
                    "problem": f"{entity} is not a JSON object",
                }
            )
            out.append({})
            continue
        clean: dict[str, str | None] = {}
        for key, value in row.items():
            if value is None or type(value) is str:
                clean[key] = value
                continue
            text = to_text(value)
            clean[key] = text
            if expect_text:
                issues.setdefault(index, []).append(
                    {
                        "field": key,
                        "value": text or "",
                        "problem": f"arrived as {_json_type(value)}, not as text",
                    }
                )
        out.append(clean)
    return out


def _finish(
    rows: Sequence[dict[str, Any]],
    columns: dict[str, pa.Array],
    required: Iterable[str],
    constants: Mapping[str, str | None] | None,
    check_replacement: bool,
    issues: dict[int, list[dict[str, str]]],
) -> pa.Table:
    """Add what the extractor noticed (missing, mangled, oversized values) as `_ingest_issues`."""
    for name in required:
        column = columns[name]
        if column.null_count:
            # absent or JSON null alike: a required value the record does not give is NULL
            # wherever it goes, and said so (the session's date, times, status, id)
            for index in pc.indices_nonzero(column.is_null()).to_pylist():
                problem = "null in the record" if name in rows[index] else "missing from the record"
                issues.setdefault(index, []).append(
                    {"field": name, "value": "", "problem": problem}
                )
    # one look at every value of the page first: a long one is rare, 2 x 40 calls a page are not
    long_somewhere = bool(columns) and (
        pc.max(pc.utf8_length(pa.concat_arrays(list(columns.values())))).as_py() or 0
    ) > LONG_VALUE
    for name, column in columns.items():
        flagged: list[tuple[int, str]] = []
        if long_somewhere:
            too_long = pc.greater(pc.utf8_length(column), LONG_VALUE)
            for index in pc.indices_nonzero(too_long).to_pylist():
                size = len(column[index].as_py())
                flagged.append(
                    (index, f"unusually long value ({size:,} characters), loaded in full")
                )
        if check_replacement:
            hits = pc.fill_null(pc.match_substring(column, REPLACEMENT_CHAR), False)
            for index in pc.indices_nonzero(hits).to_pylist():
                flagged.append((index, "invalid UTF-8 bytes were replaced"))
        for index, problem in flagged:
            value = column[index].as_py() or ""
            issues.setdefault(index, []).append(
                {"field": name, "value": value[:200], "problem": problem}
            )
    count = len(rows)
    for name, value in (constants or {}).items():
        columns[name] = pa.array([value] * count, type=pa.string())
    encoded: list[str | None] = [None] * count
    for index, found in issues.items():
        encoded[index] = orjson.dumps(found).decode()
    columns[INGEST_ISSUES] = pa.array(encoded, type=pa.string())
    return pa.table(columns)


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
