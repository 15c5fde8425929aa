"""Bizstim's path-offset sweep: first page for `total`, the rest concurrently, checked for drift.

`/sessions/{start}/{limit}` is offset paging over a live table with no snapshot, so a booking made
or deleted mid-sweep shifts every later row by one. Consecutive pages therefore overlap by one
row: when the shared row differs, something moved before it and the sweep is read again rather
than silently skipping or duplicating a session.
"""

from __future__ import annotations

import logging
import multiprocessing
import random
import signal
import threading
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import CancelledError, Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc

from practice_sync import context, guard, page_worker
from practice_sync.errors import NotFound, SourceUnavailable, SweepInconsistent, find_cause
from practice_sync.failpoints import failpoint
from practice_sync.http import BadBody, HttpClient, SourceNames
from practice_sync.page_worker import Page, PageShape
from practice_sync.privacy import Policy
from practice_sync.report import Progress
from practice_sync.rows import rows_to_table

from .settings import REQUIRED_FIELDS, SESSION_FIELDS, TIMEZONE_COLUMN

log = logging.getLogger("practice_sync.bizstim")

NAMES = SourceNames("Bizstim", "bizstim")
MAX_SWEEPS = 3  # reads of a listing that keeps moving before the run gives up
SESSIONS_PAGE = PageShape(SESSION_FIELDS, REQUIRED_FIELDS, TIMEZONE_COLUMN, "session")


def until_settled(extract: Callable[[], object]) -> None:
    """Run `extract` (one whole sweep into dlt) again while the listing moved under it, at most
    MAX_SWEEPS times; dlt never loads a failed extract, so a discarded sweep costs only time."""
    for attempt in range(1, MAX_SWEEPS + 1):
        try:
            extract()
            return
        except Exception as exc:
            moved = find_cause(exc, SweepInconsistent)
            if moved is None or attempt == MAX_SWEEPS:
                raise
            log.warning("%s; reading it again (%d of %d)", moved, attempt + 1, MAX_SWEEPS)


def read_sweep(
    client: HttpClient,
    page_size: int,
    parse_processes: int,
    policy: Policy | None = None,
    prefilter: guard.Prefilter | None = None,
) -> Generator[pa.Table, None, pa.ChunkedArray]:
    """Yield every session of one sweep as Arrow tables (without current rows the decode
    workers already left out, see `guard.Prefilter`); return the ids seen, once the sweep is
    known to be consistent (otherwise `SweepInconsistent` asks for another sweep)."""
    run = context.current("bizstim")
    run.report.sweeps += 1
    sweep = Sweep(
        client, page_size, parse_processes=parse_processes, policy=policy, prefilter=prefilter,
        known_twice=frozenset(run.listed_twice),
    )  # fmt: skip
    total = sweep.first_page().total
    progress = Progress("Bizstim sessions", total) if run.show_progress else None
    try:
        yield from sweep.pages(progress.advance if progress else None)
    finally:
        if progress:
            progress.close()
    run.report.count("sessions", sweep.rows)
    if sweep.prefiltered:
        log.debug(
            "%d pages came back from the workers without their current rows", sweep.prefiltered
        )
    run.listed_twice.update(sweep.twice)
    sweep.raise_if_inconsistent()
    if sweep.left_out_twice:
        shown = ", ".join(sorted(sweep.left_out_twice)[:5])
        run.report.notes.append(
            f"{len(sweep.left_out_twice):,} session ids were listed twice by Bizstim in two "
            f"reads of the listing ({shown}); each was loaded once, from its first place"
        )
    return sweep.ids()


# below this many pages, starting worker processes costs more than it saves
PROCESS_POOL_MIN_PAGES = 40
# pages that arrive while the workers start (about a second) are decoded in the fetch threads;
# False makes them wait for the workers instead (tests use it to send every page through them)
DECODE_WHILE_WORKERS_START = True


def decode_page(start: int, body: bytes, policy: Policy | None = None) -> Page:
    """A sessions page's bytes to a checked, converted page (`page_worker.decode_page`)."""
    return page_worker.decode_page(SESSIONS_PAGE, start, body, policy)


@dataclass
class Sweep:
    """Reads every session once; `problems` non-empty means the listing moved under us."""

    client: HttpClient
    page_size: int
    batch_rows: int = 20_000
    parse_processes: int = 2  # 0: decode pages in the fetch threads
    first: Page | None = None
    problems: list[str] = field(default_factory=list)
    id_chunks: list[pa.Array] = field(default_factory=list)
    rows: int = 0
    policy: Policy | None = None  # privacy: applied to each page before anything keeps it
    prefilter: guard.Prefilter | None = None  # lets workers leave out the rows already current
    prefiltered: int = 0  # pages whose current rows a worker left out
    _pool: Executor | None = None
    _pool_ready: threading.Event = field(default_factory=threading.Event)
    _pool_lock: threading.Lock = field(default_factory=threading.Lock)
    _pool_broken: bool = False
    # ids an earlier sweep of the run found listed twice (`run.listed_twice`): a second read
    # finding them again is the vendor's listing, not rows moving, and keeps their first copy
    known_twice: frozenset[str] = frozenset()
    twice: list[str] = field(default_factory=list)  # ids this sweep found listed twice
    left_out_twice: set[str] = field(default_factory=set)  # known ids of which a copy was left out
    _first_copies: dict[str, set[str]] = field(default_factory=dict)

    def fetch(self, start: int) -> Page:
        path = f"/sessions/{start}/{self.page_size}"
        pool, policy = self._pool, self.policy
        if pool is not None and not DECODE_WHILE_WORKERS_START:
            self._pool_ready.wait()
        if pool is None or not self._pool_ready.is_set():
            # the workers take about a second to start; pages fetched meanwhile are decoded
            # here rather than left waiting with every fetch thread blocked behind them
            return self.client.get(path, lambda body: decode_page(start, body, policy))
        # every page the workers get has the overlap row first (the first page never goes
        # there), so a worker may cut it off and leave out what is current (guard.Prefilter)
        # not while ids are known to be listed twice: a worker would leave out an unchanged
        # first copy, and the second would be kept in its place
        prefilter = self.prefilter if not self.known_twice else None
        folder = prefilter.path() if prefilter and start > 0 else None
        held = (prefilter.key, folder) if prefilter and folder else None

        def decode(body: bytes) -> Page:
            try:
                return pool.submit(
                    page_worker.decode_page, SESSIONS_PAGE, start, body, policy, held
                ).result()
            except (BrokenProcessPool, CancelledError, RuntimeError) as exc:
                # a worker died (killed for memory, say): this and every later page of the sweep
                # is decoded here instead, slower but complete. Cancelled, or refused after
                # shutdown: another thread saw the pool break first
                if isinstance(exc, BrokenProcessPool):
                    self._lose_pool()
                elif not self._pool_broken:
                    raise
                return decode_page(start, body, policy)

        return self.client.get(path, decode)

    def _lose_pool(self) -> None:
        with self._pool_lock:
            self._pool_broken = True
            if self._pool is not None:
                log.warning("a page decoding process ended abruptly; decoding in this process")
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None

    def first_page(self) -> Page:
        if self.first is None:
            self.first = self.fetch(0)
        return self.first

    def pages(self, on_rows: Callable[[int], None] | None = None) -> Iterator[pa.Table]:
        """Yield the sweep as Arrow tables of about `batch_rows` rows, de-duplicated on the
        overlap row; dlt's per-item overhead is paid per batch rather than per page."""
        pending: list[pa.Table] = []
        rows = 0
        for table in self._page_tables(on_rows):
            pending.append(table)
            rows += table.num_rows
            if rows >= self.batch_rows:
                yield pa.concat_tables(pending, promote_options="default")
                pending, rows = [], 0
        if pending:
            yield pa.concat_tables(pending, promote_options="default")

    def _page_tables(self, on_rows: Callable[[int], None] | None) -> Iterator[pa.Table]:
        first = self.first_page()
        step = self.page_size - 1
        expected_total = first.total
        previous = first
        yield from self._emit(first, on_rows)
        starts = range(step, max(expected_total - 1, 1), step)
        if self.parse_processes > 0 and len(starts) >= PROCESS_POOL_MIN_PAGES:
            # spawn: forking a process that runs threads is unsafe
            # workers ignore Ctrl-C (the terminal sends it to them too): the parent decides
            self._pool = ProcessPoolExecutor(
                self.parse_processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=signal.signal,
                initargs=(signal.SIGINT, signal.SIG_IGN),
            )
            self._pool_ready.clear()
            # ready once a worker has imported this module and decoded an (empty) page
            warm = self._pool.submit(
                page_worker.decode_page, SESSIONS_PAGE, 0, b'{"total": 0, "response": []}'
            )
            warm.add_done_callback(lambda _: self._pool_ready.set())
        try:
            # with parse workers, twice the threads of the request slots: half of them wait for
            # a worker while the others keep the slots busy; without, decoding is Python in these
            # threads, and more of them would only contend for the GIL and hold more pages
            threads = self.client.concurrency * (2 if self._pool is not None else 1)
            pages = self.client.map_ordered(self.fetch, starts, threads)
            for number, page in enumerate(pages, 1):
                if number == 2:
                    failpoint("mid-extract")
                self._check_boundary(previous, page)
                yield from self._emit(page, on_rows, skip_first=True)
                previous = page
            # read on while the last page came back full, whatever `total` said: rows appended
            # during the sweep, or a `total` that undercounts, would otherwise end it early
            while len(previous.ids) == self.page_size and not self.problems:
                page = self.fetch(previous.start + step)
                self._check_boundary(previous, page)
                yield from self._emit(page, on_rows, skip_first=True)
                previous = page
        finally:
            if self._pool is not None:
                # the workers exit on their own (~0.3 s at a million rows); nothing waits for it
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
        self._check_end(previous)
        self._check_unique_ids()

    def _check_boundary(self, previous: Page, page: Page) -> None:
        if len(previous.ids) != self.page_size:
            self.problems.append(
                f"page at {previous.start} held {len(previous.ids)} rows, not {self.page_size}"
            )
        elif not page.ids or page.ids[0] != previous.ids[-1]:
            self.problems.append(
                f"rows shifted between the pages at {previous.start} and {page.start}"
            )

    def _check_end(self, last: Page) -> None:
        """The last page must reach its own `total`: a listing cut short (a page that came back
        short, rows deleted mid-sweep) would otherwise lose its missing sessions silently."""
        end = last.start + len(last.ids)
        if end < last.total:
            self.problems.append(
                f"the listing ended at row {end:,}, short of its total {last.total:,}"
            )

    def _emit(
        self, page: Page, on_rows: Callable[[int], None] | None, skip_first: bool = False
    ) -> Iterator[pa.Table]:
        if page.row_ids is not None:  # a worker cut the overlap row and left out current rows
            table, ids = page.table, page.row_ids
            if self.prefilter is not None and page.matched is not None:
                self.prefilter.mark(page.matched)
            self.prefiltered += 1
        else:
            table = page.table.slice(1) if skip_first and page.table.num_rows else page.table
            ids = table["id"].combine_chunks()
        if self.known_twice:
            table, ids = self._once(table, "rows"), self._once_ids(ids)
        # ids are kept as Arrow (a few MB per million rows), checked for repeats at the end
        self.id_chunks.append(ids)
        self.rows += len(ids)
        if on_rows is not None:
            on_rows(len(ids))
        if table.num_rows:
            yield table

    def _once(self, table: pa.Table, kind: str) -> pa.Table:
        """`table` without the later copies of an id known to be listed twice."""
        keep = self._first_copy_mask(table["id"].combine_chunks(), kind)
        return table if keep is None else table.filter(keep)

    def _once_ids(self, ids: pa.Array) -> pa.Array:
        keep = self._first_copy_mask(ids, "ids")
        return ids if keep is None else ids.filter(keep)

    def _first_copy_mask(self, ids: pa.Array, kind: str) -> pa.Array | None:
        twice = pa.array(sorted(self.known_twice), pa.string())
        hits = pc.is_in(ids.cast(pa.string()), value_set=twice)
        if not pc.any(hits).as_py():
            return None
        seen = self._first_copies.setdefault(kind, set())
        keep = [True] * len(ids)
        for index in pc.indices_nonzero(hits).to_pylist():
            value = ids[index].as_py()
            if value in seen:
                keep[index] = False
                self.left_out_twice.add(value)
            seen.add(value)
        return pa.array(keep)

    def ids(self) -> pa.ChunkedArray:
        """The id of every row read (NULL where a row had none)."""
        return pa.chunked_array(self.id_chunks, type=pa.string())

    def _check_unique_ids(self) -> None:
        if not guard.all_distinct(self.ids()):
            self.twice = guard.repeated(self.ids())
            self.problems.append("a session id appeared twice in one sweep")

    def raise_if_inconsistent(self) -> None:
        if self.problems:
            raise SweepInconsistent(
                f"Bizstim sessions changed while they were being read ({self.problems[0]})."
            )


def empty_page() -> pa.Table:
    """A sweep's shape with no rows: lets dlt create the table for an account with none."""
    return rows_to_table([], SESSION_FIELDS, entity="session", constants={TIMEZONE_COLUMN: None})


def confirm_vanished(
    client: HttpClient, vanished: pa.Array, limit: int, policy: Policy | None = None
) -> Generator[pa.Table, None, list[str]]:
    """Look up each vanished session (at most `limit`), `concurrency` at a time; yield those that
    still answer (a listing glitch dropped them) and return the ids Bizstim confirmed gone."""
    ids = vanished.to_pylist()
    # in a new order every run: in the warehouse's order the same ids came first every night,
    # and while those kept answering, a deleted session behind them stayed current for ever
    random.shuffle(ids)
    todo, later = ids[:limit], len(ids) - min(len(ids), limit)
    run = context.current("bizstim")
    if later:
        run.report.notes.append(
            f"{later:,} vanished sessions beyond sources.bizstim.max_confirmations ({limit:,}) "
            "stay current until a later run confirms them"
        )
    gone: list[str] = []
    found: list[Any] = []
    zones: set[str | None] = set()
    for session_id, answer in client.map_ordered(lambda sid: (sid, _look_up(client, sid)), todo):
        if answer is None:
            gone.append(session_id)
        elif answer is not _UNKNOWN:
            found.append(answer["response"])
            zones.add(answer.get(TIMEZONE_COLUMN))
    unknown = len(todo) - len(gone) - len(found)
    if unknown:
        run.report.notes.append(
            f"{unknown:,} vanished sessions could not be looked up and stay current"
        )
    if found:
        zone = next(iter(zones)) if len(zones) == 1 else None
        yield rows_to_table(
            found, SESSION_FIELDS, entity="session", required=REQUIRED_FIELDS,
            constants={TIMEZONE_COLUMN: zone if isinstance(zone, str) else None},
            policy=policy,
        )  # fmt: skip
    return gone


_UNKNOWN: Any = object()


def _look_up(client: HttpClient, session_id: str) -> Any:
    """`GET /session/{id}`: its envelope if the session exists, None if Bizstim says it does not
    (HTTP 404 or an empty answer), `_UNKNOWN` if Bizstim kept failing."""
    try:
        # quoted whole: an id with a `/` would otherwise ask for another path, whose 404 would
        # retire a session that exists
        path = f"/session/{quote(session_id, safe='')}"
        data = client.get_json(path, check=_check_session).data
    except NotFound:
        return None
    except SourceUnavailable:
        return _UNKNOWN
    row = data.get("response")
    return data if isinstance(row, dict) and row.get("id") is not None else None


def _check_session(data: Any) -> None:
    if not isinstance(data, dict):
        raise BadBody("a body that is not a JSON object")
    if data.get("status") == "failure" and data.get("response") not in (None, "", [], {}):
        raise BadBody(f"status failure: {str(data.get('response'))[:120]}")
