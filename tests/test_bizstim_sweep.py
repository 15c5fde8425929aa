"""Unit tests of the sweep's drift checks: consecutive pages share one row, no id twice."""

from __future__ import annotations

import orjson
import pyarrow as pa
import pytest

from practice_sync.bizstim.helpers import Page, Sweep
from practice_sync.errors import SweepInconsistent


def page(start: int, ids: list[str]) -> Page:
    return Page(start, total=10, ids=ids, table=pa.table({"id": pa.array(ids, pa.string())}))


@pytest.fixture
def sweep() -> Sweep:
    return Sweep(client=None, page_size=3)  # type: ignore[arg-type]  # the checks make no calls


def test_pages_that_share_their_boundary_row_pass(sweep: Sweep) -> None:
    sweep._check_boundary(page(0, ["1", "2", "3"]), page(2, ["3", "4", "5"]))
    assert sweep.problems == []
    sweep.raise_if_inconsistent()


def test_a_shifted_boundary_row_is_a_problem(sweep: Sweep) -> None:
    sweep._check_boundary(page(0, ["1", "2", "3"]), page(2, ["4", "5", "6"]))
    assert sweep.problems == ["rows shifted between the pages at 0 and 2"]
    with pytest.raises(SweepInconsistent, match=r"changed while they were being read \(rows"):
        sweep.raise_if_inconsistent()


def test_an_empty_next_page_is_a_problem(sweep: Sweep) -> None:
    sweep._check_boundary(page(0, ["1", "2", "3"]), page(2, []))
    assert sweep.problems == ["rows shifted between the pages at 0 and 2"]


def test_a_short_page_before_the_end_is_a_problem(sweep: Sweep) -> None:
    sweep._check_boundary(page(2, ["3", "4"]), page(4, ["5", "6", "7"]))
    assert sweep.problems == ["page at 2 held 2 rows, not 3"]


def test_an_id_read_twice_is_a_problem(sweep: Sweep) -> None:
    list(sweep._emit(page(0, ["1", "2", "3"]), None))
    list(sweep._emit(page(2, ["3", "4", "2"]), None, skip_first=True))
    assert sweep.ids().to_pylist() == ["1", "2", "3", "4", "2"]
    sweep._check_unique_ids()
    assert sweep.problems == ["a session id appeared twice in one sweep"]


def test_rows_without_an_id_are_not_repeats(sweep: Sweep) -> None:
    nulls = pa.table({"id": pa.array([None, None], pa.string())})
    list(sweep._emit(Page(0, 3, ["?0+0", "?0+1"], nulls), None))
    sweep._check_unique_ids()
    assert sweep.problems == []


def test_a_decoded_page_crosses_from_a_worker_process_unchanged() -> None:
    """Pages come back from the decode workers pickled (as an Arrow IPC stream): every value,
    NULL and column type must survive, and so must the row ids of the overlap check."""
    import pickle

    from practice_sync.bizstim.helpers import decode_page

    body = (
        b'{"status":"success","total":2,"timezone":"Europe/Paris","response":['
        b'{"id":"7","confirmed":"1","session_note":"caf\\u00e9 \\u2603"},'
        b'{"confirmed":null,"surprise":"extra field"}]}'
    )
    decoded = decode_page(999, body)
    copied = pickle.loads(pickle.dumps(decoded))
    assert copied.table.equals(decoded.table, check_metadata=True)
    assert copied.table.column("session_note").to_pylist() == ["café ☃", None]
    assert copied.table.column("surprise").to_pylist() == [None, "extra field"]
    assert (copied.start, copied.total, copied.ids) == (999, 2, decoded.ids)
    assert decoded.ids[0] == "7" and decoded.ids[1].startswith("?")  # no id: a stand-in


# -- a listing read through the real decoder: rows without an id on a page boundary --------------


class Listing:
    """Serves `pages` (start -> rows) as Bizstim would, one page per call, in order."""

    concurrency = 2

    def __init__(self, pages: dict[int, list[object]], total: int) -> None:
        self.pages, self.total = pages, total

    def get(self, path: str, decode, **_: object):  # noqa: ANN001, ANN201 - the client's shape
        start = int(path.split("/")[2])
        body = {"status": "success", "total": self.total, "timezone": "UTC"}
        return decode(orjson.dumps({**body, "response": self.pages[start]}))

    def map_ordered(self, fn, items, threads=None):  # noqa: ANN001, ANN201
        return map(fn, items)


def listed(session_id: str | None, note: str = "") -> dict[str, object]:
    return {"id": session_id, "session_date": "2024-01-01", "session_note": note}


@pytest.mark.parametrize(
    "odd", [listed(None, "no id"), "not a session"], ids=["without an id", "not an object"]
)
def test_a_row_without_an_id_on_a_page_boundary_reads_like_any_other(odd: object) -> None:
    """The boundary row is both the last of one page and the first of the next. Named by its
    position, it looked moved on every sweep, and the account never loaded again."""
    rows = [listed("1"), listed("2"), odd, listed("4"), listed("5")]
    pages = {0: rows[0:3], 2: rows[2:5], 4: rows[4:5]}
    sweep = Sweep(Listing(pages, 5), page_size=3, parse_processes=0)  # type: ignore[arg-type]
    read = sum(table.num_rows for table in sweep.pages())
    assert sweep.problems == []
    assert read == 5


def test_a_row_without_an_id_that_moved_is_still_noticed() -> None:
    first = [listed("1"), listed("2"), listed(None, "a")]
    second = [listed(None, "b"), listed("4"), listed("5")]
    sweep = Sweep(Listing({0: first, 2: second}, 5), page_size=3, parse_processes=0)  # type: ignore[arg-type]
    list(sweep.pages())
    assert sweep.problems == ["rows shifted between the pages at 0 and 2"]


def test_a_vanished_id_is_looked_up_by_its_own_path() -> None:
    """An id is one path segment, whatever it holds: `a/b` unquoted asked for another path,
    and its 404 would have retired a session that exists."""
    from practice_sync.bizstim import helpers

    asked: list[str] = []

    class Client:
        def get_json(self, path: str, check: object = None) -> object:
            asked.append(path)
            return type("Answer", (), {"data": {"response": {"id": "a/b"}}})()

    answer = helpers._look_up(Client(), "a/b")  # type: ignore[arg-type]
    assert asked == ["/session/a%2Fb"]
    assert answer == {"response": {"id": "a/b"}}


def test_a_listing_cut_short_before_its_total_is_a_problem() -> None:
    """The last page came back with one row where its `total` promised three: two sessions
    were silently never loaded (exit 0) until the end of the listing was checked."""
    rows = [listed(str(n)) for n in range(1, 8)]
    pages = {0: rows[0:3], 2: rows[2:5], 4: rows[4:5]}
    sweep = Sweep(Listing(pages, 7), page_size=3, parse_processes=0)  # type: ignore[arg-type]
    list(sweep.pages())
    assert sweep.problems == ["the listing ended at row 5, short of its total 7"]


def test_a_total_that_undercounts_reads_on_while_pages_come_back_full() -> None:
    """A first page whose `total` was its own size ended the sweep there: 2 of 5 sessions."""
    rows = [listed(str(n)) for n in range(1, 6)]
    pages = {0: rows[0:3], 2: rows[2:5], 4: rows[4:5]}
    sweep = Sweep(Listing(pages, 3), page_size=3, parse_processes=0)  # type: ignore[arg-type]
    read = sum(table.num_rows for table in sweep.pages())
    assert sweep.problems == []
    assert (read, sweep.ids().to_pylist()) == (5, ["1", "2", "3", "4", "5"])


def test_a_decode_worker_that_dies_leaves_the_sweep_complete(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker killed mid-sweep (the kernel's OOM killer, say) broke the pool, and the run
    ended in exit 1; the pages are now decoded in the fetching process instead."""
    from practice_sync.bizstim import helpers

    monkeypatch.setattr(helpers, "DECODE_WHILE_WORKERS_START", False)
    rows = [listed(str(n)) for n in range(1, 2 * 45 + 2)]  # 45 pages after the first
    pages = {start: rows[start : start + 3] for start in range(0, len(rows), 2)}
    calls = 0

    class Killing(Listing):
        def get(self, path: str, decode, **kw: object):  # noqa: ANN001, ANN201
            nonlocal calls
            calls += 1
            if calls == 10:
                for process in list(sweep._pool._processes.values()):  # type: ignore[union-attr]
                    process.kill()
                    process.join()
            return super().get(path, decode, **kw)

    sweep = Sweep(Killing(pages, len(rows)), page_size=3, parse_processes=1)  # type: ignore[arg-type]
    ids = [row_id for table in sweep.pages() for row_id in table["id"].to_pylist()]
    assert sweep.problems == []
    assert sweep._pool_broken
    assert ids == [str(n) for n in range(1, len(rows) + 1)]


def test_vanished_sessions_are_looked_up_in_a_new_order_every_run() -> None:
    """In the warehouse's order the same ids came first every night: with more vanished than
    `max_confirmations` that kept answering, a deleted session behind them stayed current."""
    from practice_sync.bizstim import helpers

    asked: list[str] = []

    class Client:
        def map_ordered(self, fn, items, threads=None):  # noqa: ANN001, ANN201
            return map(fn, items)

        def get_json(self, path: str, check: object = None) -> object:
            asked.append(path)
            session = listed(path.rsplit("/", 1)[1])
            return type("Answer", (), {"data": {"response": session}})()

    first = set()
    for _ in range(40):
        asked.clear()
        list(helpers.confirm_vanished(Client(), pa.array(["1", "2", "3"]), 1))  # type: ignore[arg-type]
        assert len(asked) == 1
        first.add(asked[0])
    assert first == {"/session/1", "/session/2", "/session/3"}


def test_an_id_listed_twice_again_in_a_second_read_loads_once() -> None:
    """A listing with one session twice (a vendor's join) and nothing moving: every read saw
    the repeat, and the account failed every night (exit 4), blaming rows that moved."""
    rows = [listed(str(n)) for n in (1, 2, 3, 4, 5, 3, 6)]
    pages = {0: rows[0:3], 2: rows[2:5], 4: rows[4:7], 6: rows[6:7]}
    first = Sweep(Listing(pages, 7), page_size=3, parse_processes=0)  # type: ignore[arg-type]
    list(first.pages())
    assert first.problems == ["a session id appeared twice in one sweep"]
    assert first.twice == ["3"]
    again = Sweep(Listing(pages, 7), page_size=3, parse_processes=0, known_twice=frozenset({"3"}))  # type: ignore[arg-type]
    read = [row_id for table in again.pages() for row_id in table["id"].to_pylist()]
    assert again.problems == []
    assert read == ["1", "2", "3", "4", "5", "6"] == again.ids().to_pylist()
    assert again.left_out_twice == {"3"}
