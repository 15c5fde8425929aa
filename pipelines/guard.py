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


def scd2(key: str) -> Any:  # dlt types the write disposition narrower than it accepts
    """The write disposition of every raw table: scd2, retiring only ids the load mentions.

    Rows without an id cannot be confirmed or tombstoned; they keep plain scd2 behaviour.
    """
    return {
        "disposition": "merge",
        "strategy": "scd2",
        "destination_scope": f'("{key}" IN (SELECT "{key}" FROM {{staging_table}}) OR "{key}" IS NULL)',
        "source_filter": f'"{VANISHED}" IS NULL',
    }


def columns(key: str, others: dict[str, dict[str, Any]]) -> Any:
    """`others` plus the column hints the guard needs; `merge_key` is switched off explicitly
    because dlt keeps hints in the stored schema and earlier versions set it."""
    return {
        **others,
        key: {"data_type": "text", "nullable": True, "merge_key": False},
        VANISHED: {"data_type": "bool", "nullable": True},
        "account": {"data_type": "text", "nullable": True},  # the account's name, every row
    }


@dataclass(frozen=True)
class Review:
    """What a complete sweep says about one table's current records."""

    held: int  # current records in the warehouse
    seen: int  # records in this sweep
    vanished: pa.Array  # ids held as current that the sweep did not see


@dataclass
class DeletionGuard:
    """Decides, after a complete sweep, whether the vanished records of one table may retire."""

    source: str  # dlt source name, which is also the dataset ("bizstim")
    title: str  # how the user knows the vendor ("Bizstim")
    table: str  # raw table ("sessions")
    key: str  # its id column ("id")
    noun: str  # what its records are called ("sessions", "packages sold")
    retired_as: str = "retired"  # what retiring means to the user ("marked inactive")
    gone_as: str = "deleted"  # what happened upstream ("retired", "removed")
    max_share: float = 0.2
    current_condition: str = "true"  # which current rows count (retired packages stay current)

    def review(self, seen: pa.Array | pa.ChunkedArray, spare: str = "false") -> Review:
        """Compare the ids of a complete sweep with the warehouse's current ones; rows matching
        the SQL condition `spare` (a client whose list could not be read, say) never vanish."""
        run = context.current(self.source)
        condition = f"({self.current_condition}) and not ({spare})"
        held = run.current(self.source, self.table, [self.key], self.current_condition)[self.key]
        kept = (
            held
            if spare == "false"
            else run.current(self.source, self.table, [self.key], condition)[self.key]
        )
        seen_ids = _as_array(seen)
        candidates = pc.drop_null(_as_array(kept))
        gone = candidates.filter(pc.invert(pc.is_in(candidates, value_set=seen_ids)))
        return Review(held=len(pc.drop_null(_as_array(held))), seen=len(seen_ids), vanished=gone)

    def permit(self, review: Review, confirmed_gone: int | None = None) -> bool:
        """Whether the vanished records may be retired: always when few vanished or a person
        confirmed (`--allow-deletions`); otherwise none are, and the run says so (exit 3)."""
        run = context.current(self.source)
        count = len(review.vanished)
        if not count or run.allow_deletions or count <= self.max_share * review.held:
            return True
        confirmed = (
            f" (the API confirmed {confirmed_gone:,} of them gone)"
            if confirmed_gone is not None
            else ""
        )
        run.report.withheld.append(
            f"{self.title} lists {review.seen:,} {self.noun} but the warehouse holds "
            f"{review.held:,}; {count:,} vanished{confirmed}, more than {self.max_share:.0%}, so "
            f"none were {self.retired_as} (re-run with --allow-deletions if they really were "
            f"{self.gone_as})."
        )
        return False

    def tombstones(self, ids: pa.Array | list[str]) -> Iterator[pa.Table]:
        """Rows that retire the current version of each id (never stored themselves)."""
        if len(ids):
            keys = pa.array(ids, pa.string()) if isinstance(ids, list) else ids.cast(pa.string())
            schema = pa.schema(
                [
                    pa.field(self.key, pa.string()),
                    pa.field(VANISHED, pa.bool_()),
                    pa.field(ROW_HASH, pa.string(), nullable=False),  # as rows_to_table has it
                ]
            )
            hashes = pc.binary_join_element_wise(VANISHED, keys, ":")
            flags = pa.array([True] * len(keys), pa.bool_())
            yield pa.Table.from_arrays([keys, flags, hashes], schema=schema)

    @staticmethod
    def placeholder(review: Review, empty: pa.Table) -> Iterator[pa.Table]:
        """An empty table when there is nothing at all, so that dlt still creates the raw table
        and every contract table of a configured source exists (empty) after the run."""
        if review.held == 0 and review.seen == 0:
            yield empty


def _as_array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks() if values.num_chunks else pa.array([], values.type)
    return values
