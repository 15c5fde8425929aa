"""Killed anywhere (SIGKILL), the next run recovers by itself and the warehouse ends exactly
equal to upstream: no lost record, no duplicate, no half-built analytics schema."""

from __future__ import annotations

import random
import signal
import time

import pytest
from conftest import Env

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
    duration = time.monotonic() - started  # kill moments spread over a whole run, whatever its speed
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
