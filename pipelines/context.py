"""What a run hands its sources besides their settings: where to report, whether mass deletions
were confirmed, whether to draw progress, and how to read the warehouse's current records.

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


def _nothing_loaded(dataset: str, table: str, columns: Sequence[str], condition: str) -> pa.Table:
    return pa.table({name: pa.array([], pa.string()) for name in columns})


@dataclass
class RunContext:
    report: SourceReport
    allow_deletions: bool = False
    show_progress: bool = False
    read_current: CurrentReader = field(default=_nothing_loaded)

    def current(
        self, dataset: str, table: str, columns: Sequence[str], condition: str = "true"
    ) -> pa.Table:
        """Columns of the records the warehouse holds as current (scd2 rows not yet retired)."""
        return self.read_current(dataset, table, columns, condition)


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
