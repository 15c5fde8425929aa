"""The one mass-deletion guard, and the one way a record is retired, for every resource.

Every raw table is loaded with dlt's `scd2` merge limited to the ids present in the load
(`destination_scope`), so a record missing from a sweep is never retired by its absence alone.
After a complete sweep the resource asks the guard which current records vanished; when more
than `max_deletion_share` of them did and nobody confirmed with `--allow-deletions`, none are
retired (an API glitch answering `total: 0` must never wipe the warehouse) and the run says so.
Otherwise each vanished id is sent as a *tombstone*: a row with only its id and `_vanished`
set, which retires the current version (`source_filter` keeps tombstones themselves out of the
table).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from practice_sync import context
from practice_sync.rows import ROW_HASH

VANISHED = "_vanished"


def scd2(key: str) -> dict[str, Any]:
    """The write disposition of every raw table: scd2, retiring only ids the load mentions.

    Rows without an id cannot be confirmed or tombstoned; they keep plain scd2 behaviour.
    """
    return {
        "disposition": "merge",
        "strategy": "scd2",
        "destination_scope": f'("{key}" IN (SELECT "{key}" FROM {{staging_table}}) OR "{key}" IS NULL)',
        "source_filter": f'"{VANISHED}" IS NULL',
    }


def columns(key: str) -> dict[str, dict[str, Any]]:
    """Column hints the guard needs; `merge_key` is switched off explicitly because dlt keeps
    hints in the stored schema and earlier versions set it."""
    return {
        key: {"data_type": "text", "nullable": True, "merge_key": False},
        VANISHED: {"data_type": "bool", "nullable": True},
    }


@dataclass
class DeletionGuard:
    """Decides, after a complete sweep, which vanished records of one table may be retired."""

    source: str  # dlt source name, which is also the dataset ("bizstim")
    title: str  # how the user knows the vendor ("Bizstim")
    table: str  # raw table ("sessions")
    key: str  # its id column ("id")
    noun: str  # what its records are called ("sessions", "packages sold")
    retired_as: str = "retired"  # what retiring means to the user ("marked inactive")
    gone_as: str = "deleted"  # what happened upstream ("retired", "removed")
    max_share: float = 0.2
    current_condition: str = "true"  # which current rows count (retired packages stay current)

    def vanished(self, seen: pa.Array | pa.ChunkedArray) -> pa.Array:
        """Ids the warehouse holds as current that this sweep did not see, or none at all when
        too many vanished without confirmation (the run then reports a withheld deletion)."""
        run = context.current(self.source)
        held = run.current(self.source, self.table, [self.key], self.current_condition)[self.key]
        held = pc.drop_null(held.combine_chunks() if held.num_chunks else pa.array([], pa.string()))
        gone = held.filter(pc.invert(pc.is_in(held, value_set=_as_array(seen))))
        if not len(gone) or run.allow_deletions or len(gone) <= self.max_share * len(held):
            return gone
        run.report.withheld.append(
            f"{self.title} lists {len(seen):,} {self.noun} but the warehouse holds "
            f"{len(held):,}; {len(gone):,} vanished, more than {self.max_share:.0%}, so none "
            f"were {self.retired_as} (re-run with --allow-deletions if they really were "
            f"{self.gone_as})."
        )
        return gone.slice(0, 0)

    def tombstones(self, ids: pa.Array) -> Iterator[pa.Table]:
        """Rows that retire the current version of each id (never stored themselves)."""
        if len(ids):
            ids = ids.cast(pa.string())
            schema = pa.schema(
                [
                    pa.field(self.key, pa.string()),
                    pa.field(VANISHED, pa.bool_()),
                    pa.field(ROW_HASH, pa.string(), nullable=False),  # as rows_to_table has it
                ]
            )
            hashes = pc.binary_join_element_wise(VANISHED, ids, ":")
            flags = pa.array([True] * len(ids), pa.bool_())
            yield pa.Table.from_arrays([ids, flags, hashes], schema=schema)


def _as_array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks() if values.num_chunks else pa.array([], values.type)
    return values
