"""Decoding a sweep's pages, in the worker processes of a big sweep (`bizstim.helpers.Sweep`).

Kept outside the source packages on purpose: a worker process imports the module of the function
it runs, with its package, and importing `practice_sync.bizstim` pulls in dlt. That cost ~0.5 s
of CPU per worker on every sweep, while the pages it should decode queued up; this module needs
only orjson, pyarrow and the raw layer's helpers (`python -X importtime` shows the difference).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from practice_sync.http import BadBody, JsonResponse, parse_json
from practice_sync.rows import plain_row_hashes, plain_table, rows_to_table

if TYPE_CHECKING:
    from practice_sync.privacy import Policy


@dataclass(frozen=True)
class PageShape:
    """What a page's rows look like: passed to the worker, so it never imports the source."""

    fields: tuple[str, ...]  # every documented field, in order
    required: tuple[str, ...]  # a row without one still loads, and is reported
    timezone_column: str  # the envelope's account zone, stored on every row
    entity: str  # "session": names the record in data issues


@dataclass
class Page:
    start: int
    total: int
    ids: list[str]  # every row's id (a stand-in for a row without one), for the overlap check
    table: pa.Table
    # set when the worker cut off the overlap row and left out the rows already current in the
    # warehouse (`guard.Prefilter`): the id of every row after the cut, kept or not, and the
    # held positions the left-out rows repeated
    row_ids: pa.Array | None = None
    matched: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Sent back from a worker as one Arrow IPC stream: a third of the cost of pickling
        the table column by column, paid on both sides for every page of a sweep."""
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, self.table.schema) as writer:
            writer.write_table(self.table)
        return {**self.__dict__, "table": sink.getvalue()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, table=pa.ipc.open_stream(state["table"]).read_all())


def check_page(data: Any) -> None:
    """A 200 must hold the documented envelope; anything else is a glitch worth retrying."""
    if not isinstance(data, dict):
        raise BadBody("a body that is not a JSON object")
    if data.get("status") == "failure":
        raise BadBody(f"status failure: {str(data.get('response'))[:120]}")
    if not isinstance(data.get("response"), list):
        raise BadBody("a body without a `response` list")
    try:
        int(data["total"])
    except (KeyError, TypeError, ValueError):
        raise BadBody("a body without a numeric `total`") from None


def decode_page(
    shape: PageShape,
    start: int,
    body: bytes,
    policy: Policy | None = None,
    held: tuple[str, str] | None = None,
) -> Page:
    """Bytes to a checked, converted page (privacy policy applied); runs in a worker process on
    big sweeps, because JSON parsing and Arrow conversion hold the GIL and would starve the
    fetch threads and dlt. With `held` (key column, `guard.Prefilter` folder), the page's first
    row (the overlap with the page before) is cut off and the rows current in the warehouse are
    left out here, where they cost least."""
    response = parse_json(body)
    check_page(response.data)
    if held is not None and not policy and not response.replaced_utf8:
        quick = _leave_out_plain(shape, start, response.data, held)
        if quick is not None:
            return quick
    page = _to_page(shape, start, response, policy)
    if held is not None:
        from practice_sync import guard  # only a worker that filters needs it

        key, folder = held
        table = page.table.slice(1)
        left = guard.leave_out_current(table, key, folder)
        if left is not None:
            page.table, page.matched = left
            page.row_ids = table[key].combine_chunks()
    return page


def _leave_out_plain(
    shape: PageShape, start: int, data: dict[str, Any], held: tuple[str, str]
) -> Page | None:
    """`decode_page` with `held`, converting only what may reach dlt: the plain rows
    (`rows.plain_row_hashes`) whose hash is current are left out as parsed, the rest converted
    and filtered as before. The same page as the full way, at ~70% of its cost on a night;
    None where the full way must run (a page of the overlap row alone, hashes not ours)."""
    from practice_sync import guard  # only a worker that filters needs it

    key, folder = held
    rows = data["response"]
    after = rows[1:]  # the overlap row, converted on the page before
    if not after or key not in shape.required:  # a plain row then always has its key
        return None
    constants = _constants(shape, data)
    quick = plain_row_hashes(after, shape.fields, shape.required, constants)
    plain = np.fromiter((digest is not None for digest in quick), dtype=bool, count=len(quick))
    plain_at = np.flatnonzero(plain)
    left_out, matched = plain_at[:0], np.zeros(0, dtype=np.int64)
    if len(plain_at):
        found = guard.current_positions(pc.drop_null(pa.array(quick, pa.string())), folder)
        if found is None:
            return None
        hit, position = found
        left_out, matched = plain_at[hit], np.asarray(position[hit])
    kept = np.ones(len(after), dtype=bool)
    kept[left_out] = False
    rest = np.flatnonzero(kept).tolist()
    rest_rows = [after[i] for i in rest]
    all_plain = bool(plain[rest].all())
    if all_plain:  # changed and new plain rows: their hashes are known, none is current
        table = plain_table(rest_rows, shape.fields, constants, [quick[i] for i in rest])
    else:
        table = rows_to_table(
            rest_rows, shape.fields, entity=shape.entity, required=shape.required,
            constants=constants,
        )  # fmt: skip
    row_ids: list[Any] = [None] * len(after)
    for i in left_out.tolist():
        row_ids[i] = after[i][key]
    for i, value in zip(rest, table[key].to_pylist(), strict=True):
        row_ids[i] = value
    if table.num_rows and not all_plain:  # a row of the rest may be current: filter as before
        left = guard.leave_out_current(table, key, folder)
        if left is None:
            return None
        table, more = left
        matched = np.concatenate([matched, more])
    ids = _ids(rows)
    return Page(start, int(data["total"]), ids, table, pa.array(row_ids, pa.string()), matched)


def _to_page(shape: PageShape, start: int, response: JsonResponse, policy: Policy | None) -> Page:
    data = response.data
    rows = data["response"]
    table = rows_to_table(
        rows,
        shape.fields,
        entity=shape.entity,
        required=shape.required,
        constants=_constants(shape, data),
        check_replacement=response.replaced_utf8,
        policy=policy,
    )
    return Page(start, int(data["total"]), _ids(rows), table)


def _constants(shape: PageShape, data: dict[str, Any]) -> dict[str, str | None]:
    """The envelope's values stored on every row: the account's zone."""
    timezone = data.get(shape.timezone_column)
    return {shape.timezone_column: timezone if isinstance(timezone, str) else None}


def _ids(rows: list[Any]) -> list[str]:
    """Every row's id for the overlap check. A row without an id still loads (and is
    reported); it stands for itself by its content, the same on both pages it ends and starts."""
    return [
        str(row["id"]) if isinstance(row, dict) and row.get("id") is not None else _stand_in(row)
        for row in rows
    ]


def _stand_in(row: Any) -> str:
    """The overlap check's name for a row without an id: its content, hashed. Its position
    would differ between the two pages a boundary row belongs to, and every sweep over it
    would look moved (the account then never loaded again)."""
    text = json.dumps(row, sort_keys=True, default=str)  # any JSON, big integers included
    return "?" + hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
