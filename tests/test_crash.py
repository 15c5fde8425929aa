"""Killed anywhere (SIGKILL), the next run recovers by itself and the warehouse ends exactly
equal to upstream: no lost record, no duplicate, no half-built analytics schema."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import duckdb
import pytest
from conftest import Env

from practice_sync import warehouse
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


def a_night(sim: Simulator, seed: int) -> None:
    sim.bizstim.night_of_changes(edit=0.05, delete=0.01, new=0.03, seed=seed)
    rnd = random.Random(seed)
    package = rnd.choice(sim.timetap.active_packages())
    sim.timetap.edit_package(package["packageId"], price=package["price"] + 5)
    sale = rnd.choice(
        [s for s in sim.timetap.packages_sold() if s["usedQuantity"] < s["maxQuantity"]]
    )
    sim.timetap.use_package(sale["packageSoldId"])


@pytest.mark.parametrize("point", POINTS)
def test_a_crash_at_each_step_is_recovered(sim: Simulator, env: Env, point: str, first_run) -> None:
    env.vars["SOURCES__BIZSTIM__PAGE_SIZE"] = "100"
    assert first_run("run").code == 0
    a_night(sim, seed=1)
    env.vars[ENV] = point
    crashed = env.run("run")
    assert crashed.code == -signal.SIGKILL, crashed.stderr
    del env.vars[ENV]
    result = env.run("run")
    assert result.code == 0, result.stderr
    assert_warehouse_equals_upstream(env, sim)
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
