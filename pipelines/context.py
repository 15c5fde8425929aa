"""What a run hands its sources besides their settings: where to report, whether mass deletions
were confirmed, whether to draw progress, and how to read the warehouse's current records (and
the row hashes of their current versions, so that only what changed is handed to dlt).

A context rather than source arguments, so that each `@dlt.source` function takes only what dlt's
configuration fills (as dlt's verified sources do), and a source used on its own, e.g.
`pipeline.run(bizstim())`, still works with a quiet default.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from practice_sync.report import SourceReport

# (dataset, table, columns, condition) -> the current rows' columns; empty when there is no table
CurrentReader = Callable[[str, str, Sequence[str], str], pa.Table]


@dataclass(frozen=True)
class CurrentVersions:
    """The current version of each record of one raw table, as its key and row hash (`_dlt_id`).

    A key with more than one current version is left out (its rows must reach dlt's merge,
    which retires the versions a load does not repeat); `keyless` counts current rows without
    a key, which dlt's merge retires whenever a load of the table does not repeat them.
    """

    keys: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))
    hashes: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))
    keyless: int = 0


# (dataset, table, key column) -> its current versions; none when there is no table
VersionReader = Callable[[str, str, str], CurrentVersions]


def _nothing_loaded(dataset: str, table: str, columns: Sequence[str], condition: str) -> pa.Table:
    return pa.table({name: pa.array([], pa.string()) for name in columns})


def _no_versions(dataset: str, table: str, key: str) -> CurrentVersions:
    return CurrentVersions()


@dataclass
class RunContext:
    report: SourceReport
    allow_deletions: bool = False
    show_progress: bool = False
    read_current: CurrentReader = field(default=_nothing_loaded)
    read_versions: VersionReader = field(default=_no_versions)
    # session ids a sweep of this run found listed twice: the next sweep loads each once
    listed_twice: set[str] = field(default_factory=set)
    _versions: dict[tuple[str, str, str], CurrentVersions] = field(default_factory=dict, repr=False)

    def current(
        self, dataset: str, table: str, columns: Sequence[str], condition: str = "true"
    ) -> pa.Table:
        """Columns of the records the warehouse holds as current (scd2 rows not yet retired)."""
        return self.read_current(dataset, table, columns, condition)

    def versions(self, dataset: str, table: str, key: str) -> CurrentVersions:
        """The current versions of one raw table, read once per extract: a sweep read again
        (Bizstim's listing moved) compares with the same warehouse, and nothing writes it
        while the account extracts. `running` forgets them when the extract ends."""
        wanted = (dataset, table, key)
        if wanted not in self._versions:
            self._versions[wanted] = self.read_versions(*wanted)
        return self._versions[wanted]

    def forget_versions(self) -> None:
        """Let go of the versions read (tens of MB at a million records) once the extract ends,
        and hand Arrow's freed memory back to the system before the load and the transforms
        (its allocator keeps it otherwise, and the run's peak is theirs)."""
        if self._versions:
            self._versions.clear()
            pa.default_memory_pool().release_unused()


# per thread: accounts of one source extract concurrently, each in its own thread (dlt runs a
# resource's generator in the thread that called `extract`), and each must see its own context
_local = threading.local()


def _contexts() -> dict[str, RunContext]:
    found: dict[str, RunContext] | None = getattr(_local, "contexts", None)
    if found is None:
        found = _local.contexts = {}
    return found


def current(source: str) -> RunContext:
    """The context of the run loading `source` in this thread, or a fresh quiet one outside a
    run."""
    found = _contexts().get(source)
    return found if found is not None else RunContext(SourceReport(source))


@contextlib.contextmanager
def running(source: str, context: RunContext) -> Iterator[RunContext]:
    """Make `context` the one `source`'s resources see while this thread extracts it."""
    _contexts()[source] = context
    try:
        yield context
    finally:
        _contexts().pop(source, None)
        context.forget_versions()
