"""The one mass-deletion guard, the one way a record is retired, and the one place that decides
which rows of a sweep reach dlt at all, for every resource.

Every raw table is loaded with dlt's `scd2` merge limited to the ids present in the load
(`destination_scope`), so a record missing from a sweep is never retired by its absence alone.
After a complete sweep the resource asks the guard which current records vanished; when more
than `max_deletion_share` of them did and nobody confirmed with `--allow-deletions`, none are
retired (an API glitch answering `total: 0` must never wipe the warehouse) and the run says so.
Otherwise each vanished id is sent as a *tombstone*: a row with only its id and `_vanished`
set, which retires the current version (`source_filter` keeps tombstones themselves out of the
table).

A sweep reads every record again, but dlt only has work where one changed: `only_changes`
compares each page with the row hashes of the warehouse's current versions (`_dlt_id`, read
once per extract) and hands dlt only new and changed rows, plus the tombstones. Leaving out a
row whose hash is current changes nothing dlt's merge would do: it inserts only hashes that are
not current, and retires only versions of keys in the load whose hash the load does not repeat.
Where pages are decoded in worker processes, the workers already leave out those rows
(`Prefilter`), so they are never sent between processes at all.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from practice_sync import context
from practice_sync.rows import ROW_HASH

VANISHED = "_vanished"
Returned = TypeVar("Returned")


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
    # set by `only_changes` for the sweep it wraps: lets decode workers leave out current rows
    prefilter: Prefilter | None = field(default=None, repr=False)

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
        return Review(
            held=len(held) - held.null_count,
            seen=len(seen_ids),
            vanished=candidates.filter(pc.invert(is_in(candidates, seen_ids))),
        )

    def permit(
        self, review: Review, confirmed_gone: int | None = None, vanished: int | None = None
    ) -> bool:
        """Whether the vanished records may be retired: always when few vanished or a person
        confirmed (`--allow-deletions`); otherwise none are, and the run says so (exit 3).
        `vanished`: how many to count, where the source looked each up first (TimeTap)."""
        run = context.current(self.source)
        count = len(review.vanished) if vanished is None else vanished
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

    def only_changes(self, items: Generator[Any, None, Returned]) -> Generator[Any, None, Returned]:
        """`items` (a resource's whole output) without the rows whose version is current in the
        warehouse; returns what `items` returns. The current versions are read and indexed on a
        thread of their own from the start (about a second at a million records), while the
        sweep's first pages download and decode. The first sync and a full refresh have nothing
        to compare with and pass everything as it is."""
        run = context.current(self.source)
        reader = ThreadPoolExecutor(1, thread_name_prefix=f"{self.source}-versions")
        held = reader.submit(
            lambda: Changes(self.key, run.versions(self.source, self.table, self.key))
        )
        reader.shutdown(wait=False)
        self.prefilter = prefilter = Prefilter(self.key)
        held.add_done_callback(prefilter.offer)
        changes: Changes | None = None
        try:
            while True:
                try:
                    item = next(items)
                except StopIteration as done:
                    if changes is not None:
                        yield from changes.keepers()
                    return done.value
                if changes is None:
                    changes = held.result()
                kept = changes.keep(item)
                if kept is not None:
                    yield kept
        finally:
            items.close()
            wait([held])  # the read ends within this extract, whatever ended it
            prefilter.close()
            self.prefilter = None

    @staticmethod
    def placeholder(review: Review, empty: pa.Table) -> Iterator[pa.Table]:
        """An empty table when there is nothing at all, so that dlt still creates the raw table
        and every contract table of a configured source exists (empty) after the run."""
        if review.held == 0 and review.seen == 0:
            yield empty


_HEX = np.full(256, 255, dtype=np.uint8)  # ASCII byte -> hex digit value, 255 for any other
for _digit, _char in enumerate(b"0123456789abcdef"):
    _HEX[_char] = _digit
HASH_DIGITS = 32  # a row hash is 16 bytes of blake2b in hex (rows.row_hashes)


def hash_prefixes(hashes: pa.Array) -> np.ndarray | None:
    """The first 16 hex digits of each row hash as an unsigned 64-bit number, computed on the
    Arrow buffers; None unless every value is a 32-digit lowercase hex hash."""
    if hashes.null_count or not pa.types.is_string(hashes.type):
        return None
    if not len(hashes):
        return np.zeros(0, dtype=np.uint64)
    offsets, data = _string_buffers(hashes)
    if not (np.diff(offsets) == HASH_DIGITS).all():
        return None
    digits = _HEX[data.reshape(-1, HASH_DIGITS)[:, :16]]
    if (digits == 255).any():
        return None
    # two digits a byte, eight bytes read as one big-endian number: a few array passes
    packed = np.ascontiguousarray((digits[:, 0::2] << 4) | digits[:, 1::2])
    return packed.view(">u8").ravel().astype(np.uint64)


def _string_buffers(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A string array's offsets (this slice's) and the bytes they point into, without copies."""
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int32)
    offsets = offsets[values.offset : values.offset + len(values) + 1]
    data = np.frombuffer(values.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    return offsets, data


def _probe(
    sorted_prefixes: np.ndarray, order: np.ndarray, prefixes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(held position of each prefix's nearest match, whether the prefixes are equal): the
    lookup `HashIndex.find` and the decode workers (`leave_out_current`) share."""
    # sorted queries walk the sorted prefixes in one direction: far fewer cache misses
    query = np.argsort(prefixes)
    slot = np.empty(len(prefixes), dtype=np.intp)
    slot[query] = np.searchsorted(sorted_prefixes, prefixes[query])
    slot = np.minimum(slot, len(order) - 1)
    return order[slot], sorted_prefixes[slot] == prefixes


@dataclass
class HashIndex:
    """The held row hashes sorted by their first 64 bits: a batch of n rows is probed in
    O(n log held) instead of a scan of every held hash (which made a sweep cost the square of
    the table: 6.5 CPU s at 3,000,000 sessions). Exact: a prefix match is checked against the
    whole hash. None when a prefix repeats (two current rows with one content, or a 64-bit
    collision) or a hash is not ours: the scan then does the work, as before."""

    sorted_prefixes: np.ndarray
    order: np.ndarray  # held position of each sorted prefix

    @classmethod
    def build(cls, hashes: pa.Array) -> HashIndex | None:
        prefixes = hash_prefixes(hashes)
        if prefixes is None or not len(prefixes):
            return None
        order = np.argsort(prefixes, kind="stable")
        ordered = prefixes[order]
        if (ordered[1:] == ordered[:-1]).any():
            return None
        return cls(ordered, order)

    def find(self, held: pa.Array, hashes: pa.Array) -> tuple[np.ndarray, np.ndarray] | None:
        """(held position of each row's hash, whether that row's hash is held); None when the
        batch's hashes are not ours."""
        prefixes = hash_prefixes(hashes)
        if prefixes is None:
            return None
        position, same = _probe(self.sorted_prefixes, self.order, prefixes)
        whole = pc.equal(held.take(pa.array(position)), hashes).to_numpy(zero_copy_only=False)
        return position, same & whole


@dataclass
class Changes:
    """Which rows of one table's sweep dlt needs: those whose row hash is not a current one."""

    key: str
    held: context.CurrentVersions
    matched: np.ndarray = field(init=False)  # per held version: a left-out row repeated it
    passed_keys: list[pa.Array] = field(default_factory=list)
    passed_rows: int = 0
    index: HashIndex | None = field(init=False)

    def __post_init__(self) -> None:
        self.matched = np.zeros(len(self.held.hashes), dtype=bool)
        self.index = HashIndex.build(_as_array(self.held.hashes))

    def keep(self, item: Any) -> Any | None:
        """`item` without its unchanged rows (None when none is left). Tombstones, items for
        other tables (marked with hints) and rows without a key always pass: dlt's merge
        retires a keyless current row whenever a load of its table does not repeat it."""
        if not isinstance(item, pa.Table) or not len(self.held.hashes):
            return item
        names = item.column_names
        if not item.num_rows or VANISHED in names or ROW_HASH not in names or self.key not in names:
            return self._passed(item)
        hashes = item[ROW_HASH].combine_chunks()
        current = self._current(hashes)
        unchanged = pc.and_(current, pc.is_valid(item[self.key]))
        fresh = item.filter(pc.invert(unchanged))
        return self._passed(fresh) if fresh.num_rows else None

    def _current(self, hashes: pa.Array) -> pa.Array:
        """Per row, whether its hash is a held current one; marks the held versions repeated."""
        found = self.index.find(_as_array(self.held.hashes), hashes) if self.index else None
        if found is not None:
            position, hit = found
            self.matched[position[hit]] = True
            return pa.array(hit, pa.bool_())
        # the scan: the held hashes (up to millions) are probed against the batch's (thousands):
        # Arrow builds its hash table from the value set, so this way round a batch costs one scan
        repeated = pc.is_in(self.held.hashes, value_set=hashes)
        self.matched |= repeated.to_numpy(zero_copy_only=False)
        return pc.is_in(hashes, value_set=self.held.hashes.filter(repeated))

    def _passed(self, table: pa.Table) -> pa.Table:
        self.passed_rows += table.num_rows
        if table.num_rows and self.key in table.column_names:
            keys = table[self.key].combine_chunks().cast(pa.string())
            self.passed_keys.append(pc.drop_null(keys))
        return table

    def keepers(self) -> Iterator[pa.Table]:
        """After the sweep, a row of key and current hash for each current version that a
        left-out row repeated while another row of its key reached dlt (a record listed twice,
        one copy changed): the merge then keeps that version, as it would have with every row.
        dlt never inserts such a row, its hash being current. Likewise one such row when
        nothing else reached dlt but keyless current rows exist, so that their table's merge
        runs as it would have. Neither happens on a normal night."""
        if self.passed_keys:
            passed = pa.chunked_array(self.passed_keys, pa.string()).combine_chunks()
            matched = pa.array(self.matched, pa.bool_())
            both = pc.and_(matched, pc.is_in(self.held.keys, value_set=passed))
            rows = pc.indices_nonzero(both)
        elif self.held.keyless and not self.passed_rows and self.matched.any():
            rows = pa.array([int(np.argmax(self.matched))], pa.int64())
        else:
            return
        if len(rows):
            schema = pa.schema(
                [
                    pa.field(self.key, pa.string()),
                    pa.field(ROW_HASH, pa.string(), nullable=False),  # as rows_to_table has it
                ]
            )
            columns = [self.held.keys.take(rows), self.held.hashes.take(rows)]
            yield pa.Table.from_arrays(columns, schema=schema)


class Prefilter:
    """The held row hashes, shared through files with a sweep's decode workers, so that a worker
    leaves out the rows `Changes.keep` would leave out before it sends a page back.

    On a night when 1% changed, nearly every row used to be serialized, sent to this process
    and dropped here (~300 MB of Arrow at a million sessions); the extract of a no-change
    re-run is ~0.25 s shorter without it (A/B in one hour, in-process). A worker
    now sends the rows that may reach dlt, the id of every row (for the sweep's own checks) and
    the held positions its current rows repeated, which `mark` records as `keep` would have;
    `keep` then sees only the rest, with the same outcome. Nothing changes where there is no
    index (a first sync, an unusual hash: `HashIndex`): workers then send every row.
    """

    def __init__(self, key: str) -> None:
        self.key = key
        self._changes: Changes | None = None
        self._folder: Path | None = None
        self._lock = threading.Lock()
        self._closed = False

    def offer(self, held: Future[Changes]) -> None:
        """The held versions, once read (a failed read leaves workers sending every row)."""
        if not held.cancelled() and held.exception() is None:
            self._changes = held.result()

    def path(self) -> str | None:
        """The folder of the index files (written on the first call once the held versions are
        read: a source without decode workers never pays for them); None until then."""
        with self._lock:
            changes = self._changes
            if self._folder is None and not self._closed and changes and changes.index:
                folder = Path(tempfile.mkdtemp(prefix="practice-sync-held-"))
                self._folder = folder  # removed by close, whatever happens next
                index = changes.index
                try:
                    np.save(folder / "prefixes.npy", index.sorted_prefixes)
                    np.save(folder / "order.npy", index.order)
                    np.save(folder / "hashes.npy", _fixed_hashes(_as_array(changes.held.hashes)))
                except OSError:  # a full temp disk, say: the workers send every row, as before
                    self._closed = True
            return str(self._folder) if self._folder and not self._closed else None

    def mark(self, positions: np.ndarray) -> None:
        """Record the held versions that rows a worker left out repeated (`Changes.matched`)."""
        if self._changes is not None:
            self._changes.matched[positions] = True

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._folder is not None:
                shutil.rmtree(self._folder, ignore_errors=True)


def _fixed_hashes(hashes: pa.Array) -> np.ndarray:
    """32-digit hex hashes as one numpy array of 32-byte strings (a `HashIndex` exists only
    when every held hash is one), for comparing whole hashes without Arrow in a worker."""
    return _string_buffers(hashes)[1].view(f"S{HASH_DIGITS}")


_loaded: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # a worker's one index


def leave_out_current(table: pa.Table, key: str, folder: str) -> tuple[pa.Table, np.ndarray] | None:
    """Worker side of `Prefilter`: `table` without the rows `Changes.keep` leaves out (current
    hash and a key), and the held positions of every row whose hash is current; None where
    `keep` must see the whole table (its own conditions, or hashes that are not ours)."""
    names = table.column_names
    if not table.num_rows or VANISHED in names or ROW_HASH not in names or key not in names:
        return None
    found = current_positions(table[ROW_HASH].combine_chunks(), folder)
    if found is None:
        return None
    hit, position = found
    unchanged = hit & table[key].combine_chunks().is_valid().to_numpy(zero_copy_only=False)
    # the kept rows by position: on a night, a handful of a page's rows (a mask filter walks
    # every column's every value)
    return table.take(np.flatnonzero(~unchanged)), np.asarray(position[hit])


def current_positions(hashes: pa.Array, folder: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Per row hash, whether it is a held current one, and the held position it matched (read
    only where it did); None for hashes that are not ours. Worker side of `Prefilter`."""
    prefixes = hash_prefixes(hashes)
    if prefixes is None:
        return None
    if folder not in _loaded:  # mapped, not read: the page cache holds one copy for all workers
        _loaded.clear()
        files = [Path(folder) / f"{name}.npy" for name in ("prefixes", "order", "hashes")]
        _loaded[folder] = (
            np.load(files[0], mmap_mode="r"),
            np.load(files[1], mmap_mode="r"),
            np.load(files[2], mmap_mode="r"),
        )
    sorted_prefixes, order, held = _loaded[folder]
    position, same = _probe(sorted_prefixes, order, prefixes)
    return same & (held[position] == _fixed_hashes(hashes)), position


def canonical_ints(ids: pa.Array | pa.ChunkedArray) -> np.ndarray | None:
    """The non-null ids as int64, when every one is an integer written the one canonical way
    ('42', '-7'; not '007', '+7', ' 7' or '4.0', which are other ids than '7'); None otherwise.

    Sets of a sweep's ids are then compared as numbers sorted by numpy instead of strings hashed
    by Arrow, whose hash tables held ~630 MB at the end of a 5,000,000-session sweep.
    """
    values = pc.drop_null(_as_array(ids))
    if not pa.types.is_string(values.type):
        return None
    try:
        numbers = pc.cast(values, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if len(values) and not pc.all(pc.equal(pc.cast(numbers, pa.string()), values)).as_py():
        return None
    return numbers.to_numpy()


def all_distinct(ids: pa.Array | pa.ChunkedArray) -> bool:
    """Whether no non-null id appears twice."""
    numbers = canonical_ints(ids)
    if numbers is None:
        return bool(pc.count_distinct(ids).as_py() == len(ids) - ids.null_count)
    numbers = np.sort(numbers)  # a copy: Arrow's buffer is read-only
    return not bool((numbers[1:] == numbers[:-1]).any())


def repeated(ids: pa.Array | pa.ChunkedArray) -> list[str]:
    """The non-null ids that appear more than once, as text (`all_distinct` was False)."""
    flat = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    counts = pc.value_counts(flat.cast(pa.string()))
    many = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
    return sorted(value for value in many.to_pylist() if value is not None)


def is_in(values: pa.Array, value_set: pa.Array) -> pa.Array:
    """`pc.is_in` for two arrays of ids without nulls in `values`; numeric when both are
    canonical integers (see `canonical_ints`), nothing at all to compare when `values` is empty
    (a first sync)."""
    if not len(values):
        return pa.array([], pa.bool_())
    numbers, numeric_set = canonical_ints(values), canonical_ints(value_set)
    if numbers is None or numeric_set is None:
        return pc.is_in(values, value_set=value_set)
    return pa.array(np.isin(numbers, numeric_set))


def _as_array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks() if values.num_chunks else pa.array([], values.type)
    return values
