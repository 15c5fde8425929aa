"""Killed anywhere (SIGKILL), the next run recovers by itself and the warehouse ends exactly
equal to upstream: no lost record, no duplicate, no half-built analytics schema."""

from __future__ import annotations

import random
import shutil
import signal
import time
from pathlib import Path

import dlt
import duckdb
import pytest
from conftest import Env

from practice_sync import dlt_glue, warehouse
from practice_sync.bizstim.settings import SESSION_FIELDS
from practice_sync.failpoints import ENV, POINTS
from practice_sync.simulator import Simulator


def assert_warehouse_equals_upstream(env: Env, sim: Simulator) -> None:
    cols = ", ".join(f'"{c}"' for c in SESSION_FIELDS)
    raw = env.query(f"select {cols} from bizstim.sessions where _dlt_valid_to is null order by id")
    expected = sorted(tuple(r.get(c) for c in SESSION_FIELDS) for r in sim.bizstim.rows())
    assert sorted(raw) == expected  # row by row, every field; no duplicate current version
    sessions = env.query("select session_id from analytics.sessions order by 1")
    assert [s[0] for s in sessions] == sorted(int(r["id"]) for r in sim.bizstim.rows())
    sold = env.query(
        "select package_sold_id, used_quantity, status from analytics.packages_sold order by 1"
    )
    assert sold == sorted(
        (
            s["packageSoldId"],
            s["usedQuantity"],
            s["status"] if s["status"] in ("OPEN", "CLOSED") else None,
        )
        for s in sim.timetap.packages_sold()
    )
    packages = env.query("select package_id, price from analytics.packages order by 1")
    assert packages == sorted((p["packageId"], p["price"]) for p in sim.timetap.active_packages())


def a_night(sim: Simulator, seed: int) -> dict:
    night = sim.bizstim.night_of_changes(edit=0.05, delete=0.01, new=0.03, seed=seed)
    rnd = random.Random(seed)
    package = rnd.choice(sim.timetap.active_packages())
    sim.timetap.edit_package(package["packageId"], price=package["price"] + 5)
    sale = rnd.choice(
        [s for s in sim.timetap.packages_sold() if s["usedQuantity"] < s["maxQuantity"]]
    )
    sim.timetap.use_package(sale["packageSoldId"])
    return night


@pytest.mark.parametrize("point", POINTS)
def test_a_crash_at_each_step_is_recovered(sim: Simulator, env: Env, point: str, first_run) -> None:
    env.vars["SOURCES__BIZSTIM__PAGE_SIZE"] = "100"
    assert first_run("run").code == 0
    night = a_night(sim, seed=1)
    env.vars[ENV] = point
    crashed = env.run("run")
    assert crashed.code == -signal.SIGKILL, crashed.stderr
    del env.vars[ENV]
    result = env.run("run")
    assert result.code == 0, result.stderr
    assert_warehouse_equals_upstream(env, sim)
    if point != "mid-transform":  # loaded by the killed run, which recorded nothing
        # a resumed package's changes are this run's: its rows carry the package's own time
        new, changed, retired = (len(night[k]) for k in ("added", "edited", "deleted"))
        assert (
            f"bizstim.sessions: {new:,} new, {changed:,} changed, {retired:,} retired"
            in result.stdout
        )
    # nothing of the killed run is left behind in dlt's working folders
    state = env.database.parent / ".practice_sync" / env.database.stem
    leftovers = [p for p in state.glob("*/normalize/*") if p.is_dir() and p.name != "extracted"]
    assert leftovers == []


@pytest.mark.serial
def test_chaos_random_kills_then_exact_warehouse(sim: Simulator, env: Env) -> None:
    """Bounded: 8 runs killed at random moments across all steps, data changing in between."""
    env.vars["SOURCES__BIZSTIM__PAGE_SIZE"] = "50"
    sim.latency = 0.005
    started = time.monotonic()
    assert env.run("run").code == 0
    duration = (
        time.monotonic() - started
    )  # kill moments spread over a whole run, whatever its speed
    rnd = random.Random(20261123)
    killed = night = 0
    while killed < 8 and night < 16:  # a run that beat its kill moment does not count
        a_night(sim, seed=100 + night)
        night += 1
        started = time.monotonic()
        proc = env.start("run")
        time.sleep(rnd.uniform(0.05, 0.95) * duration)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        else:  # the machine got faster: aim within the run's real length from now on
            duration = time.monotonic() - started
        proc.wait(timeout=120)
    assert killed >= 5  # most runs really died mid-way
    result = env.run("run")
    assert result.code == 0, result.stderr
    assert_warehouse_equals_upstream(env, sim)
    second = env.run("run")
    assert "0 new, 0 changed, 0 retired" in second.stdout


def test_rows_a_resumed_load_wrote_twice_are_removed_exactly(tmp_path: Path) -> None:
    """dlt prepares a package's scd2 staging once: a kill between a staging copy's commit and
    dlt marking it done makes the resumed load insert those rows twice (seen in the chaos
    test). The repair keeps one of each identical version and nothing else changes."""
    database = tmp_path / "w.duckdb"
    with duckdb.connect(str(database)) as con:
        con.execute("create schema bizstim")
        con.execute(
            "create table bizstim.sessions (id varchar, _dlt_id varchar, "
            "_dlt_valid_from timestamptz, _dlt_valid_to timestamptz)"
        )
        rows = [
            ("1", "h1", "2026-11-01 00:00:00+00", "2026-11-02 00:00:00+00"),
            ("1", "h1b", "2026-11-02 00:00:00+00", None),
            ("1", "h1b", "2026-11-02 00:00:00+00", None),  # replayed
            ("2", "h2", "2026-11-01 00:00:00+00", None),
            ("2", "h2", "2026-11-02 00:00:00+00", None),  # same content, another version: kept
            ("3", "h3", "2026-11-02 00:00:00+00", None),
            ("3", "h3", "2026-11-02 00:00:00+00", None),  # replayed
            ("3", "h3", "2026-11-02 00:00:00+00", None),  # replayed
        ]
        con.executemany("insert into bizstim.sessions values (?, ?, ?, ?)", rows)
        con.execute("create table bizstim._dlt_loads (load_id varchar)")
        con.executemany("insert into bizstim._dlt_loads values (?)", [("a",), ("a",)])
    assert warehouse.remove_replayed_rows(database, "bizstim") == 3
    assert warehouse.remove_replayed_rows(database, "bizstim") == 0
    with duckdb.connect(str(database), read_only=True) as con:
        left = con.execute(
            "select id, _dlt_id, _dlt_valid_from::varchar from bizstim.sessions order by all"
        ).fetchall()
        assert [(i, h) for i, h, _ in left] == [
            ("1", "h1"),
            ("1", "h1b"),
            ("2", "h2"),
            ("2", "h2"),
            ("3", "h3"),
        ]
        assert con.execute("select count(*) from bizstim._dlt_loads").fetchone() == (2,)


def test_a_kill_inside_normalizes_commit_is_finished_by_the_next_run(tmp_path: Path) -> None:
    """dlt commits a normalized package by renaming it into `load/normalized`, then deletes its
    extracted files: a kill between the two leaves both, and dlt alone then fails every later
    normalize ("Directory not empty"). Found by killing one of two concurrent accounts."""
    pipeline = dlt.pipeline(
        "commit_window",
        pipelines_dir=str(tmp_path / "pipelines"),
        destination=dlt.destinations.duckdb(str(tmp_path / "w.duckdb")),
        dataset_name="things",
    )
    pipeline.extract([{"id": 1}, {"id": 2}], table_name="things")
    extracted = Path(pipeline.working_dir) / "normalize" / "extracted"
    [package] = list(extracted.iterdir())
    shutil.copytree(package, tmp_path / "copy")
    pipeline.normalize()
    shutil.copytree(tmp_path / "copy", package)  # the kill: both stores hold the package
    with pytest.raises(Exception, match="Directory not empty"):
        pipeline.normalize()
    assert dlt_glue.finish_interrupted_commits(pipeline) == 1
    assert not (Path(pipeline.working_dir) / "load" / "new" / package.name).exists()
    pipeline.normalize()
    pipeline.load()
    with duckdb.connect(str(tmp_path / "w.duckdb")) as con:
        assert con.execute("select id from things.things order by id").fetchall() == [(1,), (2,)]
    assert not pipeline.has_pending_data
