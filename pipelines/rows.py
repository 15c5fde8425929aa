"""Turn vendor rows into the raw layer's shape: every value text, one Arrow table per page.

The raw layer keeps values as delivered (all text) so that a field changing type upstream, or a
garbage value, can never stop a load: typing happens in SQL, where a value that does not parse
becomes NULL plus a row in `analytics.data_issues`. What the extractor itself had to coerce is
recorded per row in `_ingest_issues` for the transforms to report.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson
import pyarrow as pa

ROW_HASH = "_dlt_id"
INGEST_ISSUES = "_ingest_issues"
REPLACEMENT_CHAR = "\ufffd"


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


def row_hash(row: Mapping[str, str | None]) -> str:
    """Content hash over the non-null values, so a column that appears empty changes nothing."""
    payload = orjson.dumps(
        {k: v for k, v in row.items() if v is not None}, option=orjson.OPT_SORT_KEYS
    )
    return hashlib.blake2b(payload, digest_size=16).hexdigest()


def rows_to_table(
    rows: Sequence[Any],
    documented: Sequence[str],
    *,
    entity: str,
    required: Iterable[str] = (),
    constants: Mapping[str, str | None] | None = None,
    check_replacement: bool = False,
    expect_text: bool = True,
) -> pa.Table:
    """One page of vendor rows as an all-text Arrow table with row hashes and ingest issues.

    Unknown fields become extra columns (dlt adds them to the table); a row that is not an
    object is kept as an issue-only row rather than dropped. `expect_text` is for vendors that
    promise strings (Bizstim): anything else is worth reporting there, not for TimeTap.
    """
    constants = dict(constants or {})
    required = tuple(required)
    names: dict[str, None] = dict.fromkeys(documented)
    clean: list[dict[str, str | None]] = []
    issues: list[str | None] = []
    for row in rows:
        found: list[dict[str, str]] = []
        if not isinstance(row, dict):
            found.append(
                {
                    "field": "",
                    "value": to_text(row) or "",
                    "problem": f"{entity} is not a JSON object",
                }
            )
            row = {}
        out: dict[str, str | None] = {}
        for key, value in row.items():
            if key not in names:
                names[key] = None
            if value is None or type(value) is str:
                out[key] = value
            else:
                text = to_text(value)
                out[key] = text
                if expect_text:
                    found.append(
                        {
                            "field": key,
                            "value": text or "",
                            "problem": f"arrived as {_json_type(value)}, not as text",
                        }
                    )
        for key in required:
            if key not in row:
                found.append({"field": key, "value": "", "problem": "missing from the record"})
        if check_replacement:
            for key, value in out.items():
                if value is not None and REPLACEMENT_CHAR in value:
                    found.append(
                        {
                            "field": key,
                            "value": value[:200],
                            "problem": "invalid UTF-8 bytes were replaced",
                        }
                    )
        out.update(constants)
        clean.append(out)
        issues.append(orjson.dumps(found).decode() if found else None)
    for key in constants:
        names.setdefault(key, None)
    arrays: dict[str, pa.Array] = {}
    for name in names:
        arrays[name] = pa.array([r.get(name) for r in clean], type=pa.string())
    arrays[INGEST_ISSUES] = pa.array(issues, type=pa.string())
    hashes = [row_hash({**r, INGEST_ISSUES: i}) for r, i in zip(clean, issues, strict=True)]
    fields = [pa.field(n, pa.string()) for n in arrays]
    fields.append(pa.field(ROW_HASH, pa.string(), nullable=False))
    return pa.Table.from_arrays(
        [*arrays.values(), pa.array(hashes, type=pa.string())], schema=pa.schema(fields)
    )


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
