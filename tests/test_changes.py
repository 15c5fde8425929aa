"""Only new and changed rows reach dlt: each sweep is compared with the row hashes of the
warehouse's current versions (`guard.only_changes`), and the result must be exactly what dlt's
scd2 merge makes of the whole sweep.

The proof is in three parts: the filter itself; a differential test loading the same nights
through dlt with and without it, edge cases included (a record listed twice, rows without an
id, a record with two current versions); and real runs, where what dlt staged is read from
dlt's own trace of the run and from the warehouse's `_dlt_loads`.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dlt
import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from conftest import Env, make_env

from practice_sync import context, guard, warehouse
from practice_sync.failpoints import ENV
from practice_sync.report import SourceReport, TableChange
from practice_sync.rows import ROW_HASH, rows_to_table, text_columns
from practice_sync.simulator import Simulator

FIELDS = ["id", "v"]


def page(*rows: tuple[str | None, str]) -> pa.Table:
    return rows_to_table([{"id": i, "v": v} for i, v in rows], FIELDS, entity="thing")


def hash_of(row_id: str | None, value: str) -> str:
    return page((row_id, value))[ROW_HASH][0].as_py()


def held(*rows: tuple[str, str], keyless: int = 0) -> context.CurrentVersions:
    return context.CurrentVersions(
        keys=pa.array([i for i, _ in rows], pa.string()),
        hashes=pa.array([hash_of(i, v) for i, v in rows], pa.string()),
        keyless=keyless,
    )


def things_guard() -> guard.DeletionGuard:
    return guard.DeletionGuard("things", "Things", "things", "id", "things")


def filtered(items: list[Any], versions: context.CurrentVersions) -> tuple[list[Any], Any]:
    """What `only_changes` hands on from `items` against `versions`, and what it returned."""

    def source() -> Generator[Any, None, str]:
        yield from items
        return "done"

    run = context.RunContext(SourceReport("things"), read_versions=lambda *_: versions)
    out: list[Any] = []
    with context.running("things", run):
        wrapped = things_guard().only_changes(source())
        while True:
            try:
                out.append(next(wrapped))
            except StopIteration as stop:
                return out, stop.value


def rows_of(items: list[Any]) -> list[tuple[str | None, str | None]]:
    return [
        (r["id"], r.get("v"))
        for item in items
        if isinstance(item, pa.Table)
        for r in item.to_pylist()
    ]


def test_unchanged_rows_are_left_out_and_everything_else_passes() -> None:
    versions = held(("1", "a"), ("2", "b"), ("3", "c"))
    tombstone = next(things_guard().tombstones(pa.array(["3"])))
    other_table = dlt.mark.with_hints(page(("9", "z")), dlt.mark.make_hints(table_name="other"))
    items = [page(("1", "a"), ("2", "B"), ("4", "d")), page(("1", "a")), tombstone, other_table]
    out, returned = filtered(items, versions)
    assert returned == "done"
    assert rows_of(out[:1]) == [("2", "B"), ("4", "d")]  # changed and new; unchanged 1 left out
    assert out[1] is tombstone and out[2] is other_table  # a page left with nothing is not sent
    assert len(out) == 3


def test_the_first_sync_passes_every_item_as_it_is() -> None:
    items = [page(("1", "a")), page(("2", "b"))]
    out, returned = filtered(items, context.CurrentVersions())
    assert returned == "done"
    assert all(a is b for a, b in zip(out, items, strict=True))


def test_rows_without_an_id_always_pass() -> None:
    out, _ = filtered([page((None, "x"), ("1", "a"))], held(("1", "a"), keyless=1))
    assert rows_of(out) == [(None, "x")]


def test_a_record_listed_twice_keeps_its_current_version_when_one_copy_changed() -> None:
    out, _ = filtered(
        [page(("1", "a"), ("2", "b")), page(("1", "A"))], held(("1", "a"), ("2", "b"))
    )
    assert rows_of(out[:1]) == [("1", "A")]
    keeper = out[1].to_pylist()
    assert keeper == [{"id": "1", ROW_HASH: hash_of("1", "a")}]  # its hash is current: no insert


def test_keyless_current_rows_still_get_their_merge_when_nothing_changed() -> None:
    out, _ = filtered([page(("1", "a"))], held(("1", "a"), keyless=1))
    assert [t.to_pylist() for t in out] == [[{"id": "1", ROW_HASH: hash_of("1", "a")}]]
    out, _ = filtered([page(("1", "a"))], held(("1", "a")))
    assert out == []  # no keyless rows: nothing at all reaches dlt


def test_closing_the_filter_closes_the_sweep_it_wraps() -> None:
    closed: list[bool] = []

    def sweep() -> Generator[pa.Table, None, None]:
        try:
            yield page(("1", "b"))
            yield page(("2", "b"))
        finally:
            closed.append(True)

    run = context.RunContext(SourceReport("things"), read_versions=lambda *_: held(("1", "a")))
    with context.running("things", run):
        wrapped = things_guard().only_changes(sweep())
        next(wrapped)
        wrapped.close()
    assert closed == [True]


def test_current_versions_leave_out_keys_with_several_current_versions(tmp_path: Path) -> None:
    database = tmp_path / "w.duckdb"
    with duckdb.connect(str(database)) as con:
        con.execute("create schema s")
        con.execute(
            "create table s.t as select * from (values "
            "('1', 'h1', null), ('1', 'h0', '2026-01-01'::timestamptz), "  # one current version
            "('2', 'h2', null), ('2', 'h2b', null), "  # two current versions: left out
            "(null, 'hn', null), (null, 'ho', '2026-01-01'::timestamptz)"  # one current keyless
            ") as v(id, _dlt_id, _dlt_valid_to)"
        )
        con.execute("create table s.before_accounts as select * from s.t")
        con.execute("alter table s.t add column account varchar default 'default'")
    found = warehouse.current_versions(database, "s", "t", "id")
    assert found.keys.to_pylist() == ["1"] and found.hashes.to_pylist() == ["h1"]
    assert found.keyless == 1
    nothing = context.CurrentVersions()
    assert warehouse.current_versions(database, "s", "missing", "id") == nothing
    # loaded before accounts existed: the upgrade night hands dlt every row, as it always did
    assert warehouse.current_versions(database, "s", "before_accounts", "id") == nothing


# -- the same nights through dlt, with and without the filter ------------------------------------


@dlt.resource(
    name="things",
    write_disposition=guard.scd2("id"),
    columns=guard.columns("id", text_columns(FIELDS)),
)
def things(night: list[pa.Table], vanished: list[str], only_changes: bool) -> Iterator[pa.Table]:
    def sweep() -> Generator[pa.Table, None, None]:
        yield from night
        yield from things_guard().tombstones(pa.array(vanished, pa.string()))

    yield from things_guard().only_changes(sweep()) if only_changes else sweep()


def load(where: Path, night: list[pa.Table], vanished: list[str], only_changes: bool) -> int:
    """Load one night into the warehouse at `where`; returns the rows dlt staged."""
    database = where / "w.duckdb"
    pipeline = dlt.pipeline(
        pipeline_name="things",
        pipelines_dir=str(where / "state"),
        destination=dlt.destinations.duckdb(str(database)),
        dataset_name="things",
    )
    versions = lambda _, table, key: warehouse.current_versions(database, "things", table, key)  # noqa: E731
    run = context.RunContext(SourceReport("things"), read_versions=versions)
    with context.running("things", run):
        pipeline.extract(things(night, vanished, only_changes), loader_file_format="parquet")
    staged = pipeline.normalize().row_counts.get("things", 0)
    pipeline.load()
    return staged


def versions_in(where: Path) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(where / "w.duckdb"), read_only=True) as con:
        return con.execute(
            "select id, v, _dlt_id, _dlt_valid_to is null from things.things order by all"
        ).fetchall()


NIGHTS: list[tuple[list[pa.Table], list[str]]] = [
    # the first sync: one row without an id, two pages
    ([page(("1", "a"), ("2", "b"), ("3", "c")), page(("4", "d"), (None, "k"))], []),
    # a night: 2 edited, 3 deleted (tombstone), 5 new, 1 and 4 and the keyless row unchanged
    ([page(("1", "a"), ("2", "B"), ("4", "d")), page(("5", "e"), (None, "k"))], ["3"]),
    # nothing changed but the keyless row vanished: dlt's merge retires it
    ([page(("1", "a"), ("2", "B"), ("4", "d"), ("5", "e"))], []),
    # 1 listed twice, one copy changed: both versions current afterwards, as with every row
    ([page(("1", "a"), ("2", "B")), page(("1", "A"), ("4", "d"), ("5", "e"))], []),
    # 1 listed once again: its other current version is retired
    ([page(("1", "a"), ("2", "B"), ("4", "d"), ("5", "e"))], []),
    # nothing changed at all
    ([page(("1", "a"), ("2", "B"), ("4", "d"), ("5", "e"))], []),
]


def test_every_night_lands_exactly_as_it_does_when_dlt_sees_every_row(tmp_path: Path) -> None:
    whole, changes = tmp_path / "whole", tmp_path / "changes"
    staged: list[int] = []
    for night, vanished in NIGHTS:
        load(whole, night, vanished, only_changes=False)
        staged.append(load(changes, night, vanished, only_changes=True))
        assert versions_in(changes) == versions_in(whole)
    # the first sync; 2, 5, the keyless row and 3's tombstone; a keeper (the keyless row vanished);
    # 1A and the keeper of 1a; 1a (1 had two current versions); nothing
    assert staged == [5, 4, 1, 2, 1, 0]
    assert ("5", "e", hash_of("5", "e"), True) in versions_in(changes)


# -- real runs ------------------------------------------------------------------------------------


def staged_rows(env: Env, source: str) -> dict[str, int]:
    """Rows of each raw table dlt normalized in the last run's final load (dlt's own trace)."""
    pipeline = dlt.attach(
        f"practice_sync_{source}",
        pipelines_dir=str(env.database.parent / ".practice_sync" / env.database.stem),
    )
    info = pipeline.last_trace.last_normalize_info
    assert info is not None
    return {table: n for table, n in info.row_counts.items() if not table.startswith("_dlt")}


def loads(env: Env, dataset: str) -> int:
    return env.query(f"select count(*) from {dataset}._dlt_loads")[0][0]


def test_a_rerun_without_changes_hands_dlt_no_row(sim: Simulator, env: Env, first_run) -> None:
    assert first_run("run").code == 0
    before = loads(env, "bizstim")
    result = env.run("run")
    assert result.code == 0, result.stderr
    assert staged_rows(env, "bizstim") == {}
    assert loads(env, "bizstim") == before  # no load package at all
    assert staged_rows(env, "timetap") == {"fetch_problems": 0}  # replaced every run
    assert "bizstim.sessions: 0 new, 0 changed, 0 retired, 600 current" in result.stdout


def test_a_night_of_changes_hands_dlt_exactly_the_changes(
    sim: Simulator, env: Env, first_run
) -> None:
    assert first_run("run").code == 0
    night = sim.bizstim.night_of_changes(edit=0.05, delete=0.02, new=0.03, seed=5)
    edited, deleted, added = night["edited"], night["deleted"], night["added"]
    sale = next(s for s in sim.timetap.packages_sold() if s["usedQuantity"] < s["maxQuantity"])
    sim.timetap.use_package(sale["packageSoldId"])
    result = env.run("run")
    assert result.code == 0, result.stderr
    # the edited and new sessions, and one tombstone per deleted one
    assert staged_rows(env, "bizstim") == {"sessions": len(edited) + len(added) + len(deleted)}
    assert staged_rows(env, "timetap") == {"packages_sold": 1, "fetch_problems": 0}
    expect = f"bizstim.sessions: {len(added)} new, {len(edited)} changed, {len(deleted)} retired"
    assert expect in result.stdout
    assert "timetap.packages_sold: 0 new, 1 changed, 0 retired" in result.stdout
    current = env.query("select id from bizstim.sessions where _dlt_valid_to is null")
    assert sorted(r[0] for r in current) == sorted(r["id"] for r in sim.bizstim.rows())


def test_a_full_refresh_compares_with_nothing(sim: Simulator, env: Env, first_run) -> None:
    assert first_run("run", "--source", "bizstim").code == 0
    result = env.run("run", "--source", "bizstim", "--full-refresh")
    assert result.code == 0, result.stderr
    assert staged_rows(env, "bizstim") == {"sessions": 600}


def test_a_left_over_load_is_finished_before_the_comparison(
    sim: Simulator, env: Env, first_run
) -> None:
    assert first_run("run", "--source", "bizstim").code == 0
    night = sim.bizstim.night_of_changes(edit=0.05, delete=0.0, new=0.02, seed=6)
    env.vars[ENV] = "after-extract"
    assert env.run("run", "--source", "bizstim").code < 0  # killed with the night extracted
    del env.vars[ENV]
    result = env.run("run", "--source", "bizstim")
    assert result.code == 0, result.stderr
    assert "finished a load left over from an interrupted run" in result.stdout
    assert staged_rows(env, "bizstim") == {}  # tonight's sweep matches what that load wrote
    current = env.query("select id from bizstim.sessions where _dlt_valid_to is null")
    assert sorted(r[0] for r in current) == sorted(r["id"] for r in sim.bizstim.rows())
    edited = env.query(
        "select count(*) from bizstim.sessions where id in (select unnest(?))", [night["edited"]]
    )
    assert edited == [(2 * len(night["edited"]),)]  # each edited session: two versions, once


@pytest.mark.parametrize("policy", [{"drop": ["session_private_note"]}, {"hash": ["session_note"]}])
def test_a_changed_privacy_policy_compares_like_with_like(
    sim: Simulator, tmp_path: Path, policy: dict[str, list[str]]
) -> None:
    env = make_env(sim, tmp_path, timetap=False)
    assert env.run("run").code == 0
    env.vars["SOURCES__BIZSTIM__PRIVACY"] = json.dumps(policy)
    env.vars["PRACTICE_SYNC__PRIVACY_SALT"] = "test-salt-3b9d0c7e1a5f4d2b8c6e"
    result = env.run("run")
    assert result.code == 0, result.stderr
    assert "rows of bizstim.sessions rewritten" in result.stdout + result.stderr
    assert staged_rows(env, "bizstim") == {}  # the rewritten hashes are what the extractor makes


# -- the sorted index of held hashes -------------------------------------------------------------


def test_the_hash_index_finds_exactly_what_the_scan_finds() -> None:
    """Probed through the sorted prefixes or by the old scan, every batch keeps the same rows
    and marks the same held versions as repeated."""
    rows = [(str(i), f"v{i}") for i in range(3000)]
    versions = held(*rows[:2000])
    assert guard.HashIndex.build(versions.hashes) is not None
    batches = [
        page(*rows[0:500]),  # all held
        page(*rows[1500:2500]),  # half held, half new
        page(*[(str(i), f"changed{i}") for i in range(100, 300)]),  # held keys, new content
        page(*rows[2500:3000]),  # all new
    ]
    indexed, scanned = guard.Changes("id", versions), guard.Changes("id", versions)
    scanned.index = None
    for batch in batches:
        kept, old = indexed.keep(batch), scanned.keep(batch)
        assert (kept is None) == (old is None)
        if kept is not None:
            assert kept.to_pylist() == old.to_pylist()
    assert indexed.matched.tolist() == scanned.matched.tolist()
    assert int(indexed.matched.sum()) == 1000  # rows 0-499 and 1500-1999


def test_the_hash_index_steps_aside_for_hashes_that_are_not_ours() -> None:
    hashes = pa.array(["0" * 32, "f" * 32, "ab" * 16], pa.string())
    assert guard.hash_prefixes(hashes).tolist() == [0, 2**64 - 1, 0xABABABABABABABAB]
    assert guard.hash_prefixes(hashes.slice(1)).tolist() == [2**64 - 1, 0xABABABABABABABAB]
    assert guard.hash_prefixes(pa.array(["xyz"], pa.string())) is None  # not 32 digits
    assert guard.hash_prefixes(pa.array(["G" * 32], pa.string())) is None  # not hex
    assert guard.hash_prefixes(pa.array([None], pa.string())) is None
    # one prefix twice (same first 16 digits): the scan does the work
    assert guard.HashIndex.build(pa.array(["1" * 16 + "0" * 16, "1" * 32], pa.string())) is None
    versions = context.CurrentVersions(
        keys=pa.array(["a", "b"], pa.string()), hashes=pa.array(["h1", "h2"], pa.string())
    )
    changes = guard.Changes("id", versions)
    assert changes.index is None
    batch = pa.table({"id": ["a", "c"], ROW_HASH: ["h1", "h3"]})
    assert changes.keep(batch).to_pylist() == [{"id": "c", ROW_HASH: "h3"}]


def test_workers_leave_out_exactly_the_rows_keep_would_and_mark_the_same_versions() -> None:
    """A decode worker filtering a page against the held hashes (`guard.Prefilter`), then
    `keep` on what it sent, must come to what `keep` alone makes of the whole page: the same
    rows reach dlt, the same held versions count as repeated, the same keepers follow."""
    from concurrent.futures import Future

    rows = [(str(i), f"v{i}") for i in range(3000)]
    versions = held(*rows[:2000])
    batches = [
        page(*rows[0:500]),  # all held
        page(*rows[1500:2500]),  # half held, half new
        page(*[(str(i), f"changed{i}") for i in range(100, 300)]),  # held keys, new content
        page((None, "v7"), (None, "new"), ("7", "v7"), ("7", "again")),  # no id; listed twice
    ]
    alone, filtered_first = guard.Changes("id", versions), guard.Changes("id", versions)
    prefilter = guard.Prefilter("id")
    done: Future[guard.Changes] = Future()
    done.set_result(filtered_first)
    prefilter.offer(done)
    folder = prefilter.path()
    assert folder is not None and Path(folder, "hashes.npy").exists()
    sent_rows = []
    try:
        for batch in batches:
            left = guard.leave_out_current(batch, "id", folder)
            assert left is not None
            sent, repeated = left
            sent_rows.append(sent.num_rows)
            prefilter.mark(repeated)
            # as the sweep does: a page left empty is not yielded at all
            kept = filtered_first.keep(sent) if sent.num_rows else None
            expected = alone.keep(batch)
            assert (kept is None) == (expected is None)
            if kept is not None:
                assert kept.to_pylist() == expected.to_pylist()
        assert sent_rows == [0, 500, 200, 3]
        assert filtered_first.matched.tolist() == alone.matched.tolist()
        assert int(alone.matched.sum()) == 1000  # rows 0-499 (("7", "v7") again) and 1500-1999
        assert [t.to_pylist() for t in filtered_first.keepers()] == [
            t.to_pylist() for t in alone.keepers()
        ]
    finally:
        prefilter.close()
    assert not Path(folder).exists()
    assert prefilter.path() is None  # closed: a late page is sent whole


def test_a_worker_leaves_out_plain_rows_as_parsed_with_the_same_outcome_as_converting_all(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`page_worker.decode_page` leaves out a night's unchanged plain rows before converting
    anything (`rows.plain_row_hashes`): the page it sends back (rows, ids, the held versions
    repeated) must be the one converting every row and filtering it makes, whatever the rows."""
    from concurrent.futures import Future

    from practice_sync import page_worker

    shape = page_worker.PageShape(("id", "start", "name"), ("id", "start"), "timezone", "thing")
    held_rows = [
        {"id": "1", "start": "09:00", "name": "Ann"},
        {"name": "Bo", "id": "2", "start": "09:00"},
        {"id": "3", "start": "09:00"},
        {"id": "4", "start": "09:00", "name": None},
        {"id": "5", "start": "09:00", "name": "x" * 100_001},  # long: reported, then held
        {"id": "6", "start": None},  # a required value null: reported, then held
        {"id": "7", "start": "09:00", "room": "B"},  # an extra column
        {"start": "09:00", "name": "no id"},  # no id: held, never left out
        {"id": 9, "start": "09:00"},  # a number: reported, then held
    ]
    night = [
        {"id": "0", "start": "08:00"},  # the overlap row, converted on the page before
        *held_rows,
        {"id": "1", "start": "09:30", "name": "Ann"},  # changed
        {"id": "10", "start": "09:00"},  # new
        ["not an object"],
        {"id": "2", "start": "09:00", "name": "Bo"},  # held content, listed twice
        {"id": "3", "start": "09:00", "room": "C"},  # held content and a new field
    ]

    def body(rows: list[Any], zone: str | None = "Europe/Paris") -> bytes:
        return json.dumps({"total": 99, "timezone": zone, "response": rows}).encode()

    held_table = page_worker.decode_page(shape, 0, body([{}, *held_rows])).table.slice(1)
    versions = context.CurrentVersions(
        keys=held_table["id"].combine_chunks(), hashes=held_table[ROW_HASH].combine_chunks()
    )
    prefilter = guard.Prefilter("id")
    done: Future[guard.Changes] = Future()
    done.set_result(guard.Changes("id", versions))
    prefilter.offer(done)
    folder = prefilter.path()
    assert folder is not None
    try:
        changed_only = [night[0], held_rows[0], *night[-6:-4], held_rows[2]]  # plain rows
        cases = [(night, "Europe/Paris"), (night, None), (night[:1], "UTC"), (changed_only, "UTC")]
        cases += [(changed_only, "Europe/Paris"), ([night[0], held_rows[3]], "Europe/Paris")]
        for rows, zone in cases:
            quick = page_worker.decode_page(shape, 5, body(rows, zone), held=("id", folder))
            with monkeypatch.context() as m:
                m.setattr(page_worker, "_leave_out_plain", lambda *args: None)
                full = page_worker.decode_page(shape, 5, body(rows, zone), held=("id", folder))
            assert quick.table.to_pylist() == full.table.to_pylist()
            assert quick.table.schema == full.table.schema
            assert (quick.start, quick.total, quick.ids) == (full.start, full.total, full.ids)
            if full.row_ids is None:
                assert quick.row_ids is None
                continue
            assert quick.row_ids is not None and full.matched is not None
            assert quick.row_ids.to_pylist() == full.row_ids.to_pylist()
            assert sorted(quick.matched.tolist()) == sorted(full.matched.tolist())
            if rows is night and zone == "Europe/Paris":  # sent: 8 (no id), 1 changed, 10 new, the non-object
                assert quick.table["id"].to_pylist() == [None, "1", "10", None, "3"]
                assert len(full.matched) == 10  # every held row, "2" twice
    finally:
        prefilter.close()


def test_workers_send_every_row_where_keep_must_decide() -> None:
    """No index (not our hashes), a tombstone table or a table without the key: the worker
    sends the page as it is, and `keep` decides as before."""
    from concurrent.futures import Future

    prefilter = guard.Prefilter("id")
    assert prefilter.path() is None  # the held versions are not read yet
    done: Future[guard.Changes] = Future()
    done.set_result(guard.Changes("id", held(("1", "a"), ("2", "b"))))
    prefilter.offer(done)
    folder = prefilter.path()
    assert folder is not None
    try:
        assert guard.leave_out_current(page(("1", "a")).drop_columns(["id"]), "id", folder) is None
        tomb = pa.table({"id": ["1"], guard.VANISHED: [True], ROW_HASH: ["_vanished:1"]})
        assert guard.leave_out_current(tomb, "id", folder) is None
        odd = pa.table({"id": ["1"], ROW_HASH: ["not a hash"]})
        assert guard.leave_out_current(odd, "id", folder) is None
    finally:
        prefilter.close()
    unindexed = guard.Prefilter("id")
    done = Future()
    done.set_result(guard.Changes("id", context.CurrentVersions()))  # a first sync
    unindexed.offer(done)
    assert unindexed.path() is None


# -- sets of ids: numbers when they are canonical integers, strings otherwise --------------------


def test_ids_are_compared_as_numbers_only_when_every_one_is_written_canonically() -> None:
    ids = pa.chunked_array([["7", None, "-12"], ["900000000001"]], pa.string())
    assert guard.canonical_ints(ids).tolist() == [7, -12, 900000000001]
    assert guard.canonical_ints(pa.array([], pa.string())).tolist() == []
    for other in ("007", "+7", " 7", "7.0", "1e3", "-0", "abc", ""):
        assert guard.canonical_ints(pa.array(["1", other], pa.string())) is None, other


@pytest.mark.parametrize(
    ("ids", "distinct"),
    [
        (["3", "1", "2", None, None], True),  # NULLs are rows without an id, not repeats
        (["3", "1", "3"], False),
        (["7", "007"], True),  # two ids, as Bizstim sent them
        (["abc", "7", "abc"], False),
        ([], True),
    ],
)
def test_a_repeated_id_is_found_both_ways(ids: list[str | None], distinct: bool) -> None:
    assert guard.all_distinct(pa.chunked_array([ids], pa.string())) is distinct


def test_vanished_ids_are_the_same_compared_as_numbers_or_as_strings() -> None:
    held_ids = pa.array([str(i) for i in range(0, 5000, 3)], pa.string())
    seen = pa.array([str(i) for i in range(0, 5000, 2)], pa.string())
    numeric = guard.is_in(held_ids, seen)
    assert guard.canonical_ints(seen) is not None
    assert numeric.to_pylist() == pc.is_in(held_ids, value_set=seen).to_pylist()
    assert numeric.true_count == len(range(0, 5000, 6))
    # one id that is not a canonical integer: compared as strings, '7' is not '007'
    strings = pa.array(["7", "8", "x"], pa.string())
    assert guard.is_in(strings, pa.array(["007", "8", "x"], pa.string())).to_pylist() == [
        False,
        True,
        True,
    ]
    assert guard.is_in(pa.array([], pa.string()), seen).to_pylist() == []


def test_the_run_summary_counts_records_and_rows_without_a_key_each_count_once(
    tmp_path: Path,
) -> None:
    """`warehouse.table_changes` reads the run's new, changed and retired records back from the
    validity columns. A row without an id is a record of its own: one such row held from an
    earlier night once made every later night report no new and no retired records (SQL's
    NOT IN against a NULL)."""
    earlier, tonight = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)
    database = tmp_path / "w.duckdb"
    with duckdb.connect(str(database)) as con:
        con.execute("create schema bizstim")
        con.execute(
            'create table bizstim.sessions (id varchar, "_dlt_valid_from" timestamptz, '
            '"_dlt_valid_to" timestamptz)'
        )
        con.executemany(
            "insert into bizstim.sessions values (?, ?, ?)",
            [
                ("1", earlier, None),  # unchanged
                ("2", earlier, tonight),  # changed: its old version closed ...
                ("2", tonight, None),  # ... and its new one loaded
                ("3", tonight, None),  # new
                ("4", earlier, tonight),  # retired
                ("5", earlier, tonight),  # retired, with two older versions
                ("5", datetime(2025, 12, 1, tzinfo=UTC), earlier),
                (None, earlier, None),  # no id, held from an earlier night
                (None, tonight, None),  # no id, new tonight
                (None, earlier, tonight),  # no id, retired tonight
                ("6", earlier, None),  # two current versions until tonight: one closed, the
                ("6", earlier, tonight),  # record stays current, so nothing was retired
            ],
        )
    changes = warehouse.table_changes(database, "bizstim", {"sessions": "id"}, tonight)
    assert changes["sessions"] == TableChange(new=2, changed=1, retired=3, current=6)
