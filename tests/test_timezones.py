"""Local wall-clock session times -> UTC, checked against pendulum around every DST transition.

The rule (transforms/01_macros.sql): a wall time in a DST gap or overlap resolves to the LATER of its
two readings, which is what DuckDB's `AT TIME ZONE` does and what pendulum 3 does by default
(`fold=1`; a nonexistent time is pushed forward). Gap/overlap flags must match pendulum's
NonExistingTime / AmbiguousTime exactly. Rows go through the real transforms in big batches, so a
few SQL builds cover thousands of wall times.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from functools import cache

import duckdb
import pendulum
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pendulum.tz.exceptions import AmbiguousTime, NonExistingTime
from transform_fixtures import fetch_dicts, sessions

from practice_sync.transform import run_transforms

ZONES = [
    "America/Los_Angeles",
    "America/New_York",
    "America/St_Johns",  # -03:30 / -02:30
    "Europe/London",
    "Europe/Berlin",
    "Australia/Sydney",  # southern hemisphere
    "Australia/Lord_Howe",  # 30-minute DST
    "Asia/Kolkata",  # +05:30, no DST
    "Pacific/Chatham",  # +12:45 / +13:45
    "America/Sao_Paulo",  # DST abolished in 2019
    "Africa/Casablanca",  # DST suspended every Ramadan
    "UTC",
]
YEARS = range(2019, 2027)
# pendulum reads the machine's tz database, DuckDB its bundled ICU copy. Morocco's rules from
# September 2026 on differ between tz database releases (ICU agrees with tzdata 2026f, a 2025b
# system copy does not), so Casablanca is compared only where every release agrees.
ZONE_YEARS = {"Africa/Casablanca": range(2019, 2026)}


@cache
def transitions(zone: str) -> tuple[tuple[dt.datetime, dt.datetime], ...]:
    """(earliest, latest) local wall time touched by each offset change of `zone` in YEARS.

    Found with zoneinfo by stepping through UTC a day at a time, then a quarter hour at a time
    within a day whose offset changed (every real transition is on a quarter hour).
    """
    tz = zoneinfo.ZoneInfo(zone)

    def offset(instant: dt.datetime) -> dt.timedelta:
        return instant.astimezone(tz).utcoffset()

    day, quarter = dt.timedelta(days=1), dt.timedelta(minutes=15)
    years = ZONE_YEARS.get(zone, YEARS)
    instant = dt.datetime(years[0], 1, 1, tzinfo=dt.UTC)
    end = dt.datetime(years[-1] + 1, 1, 1, tzinfo=dt.UTC)
    found = []
    while instant < end:
        if offset(instant + day) != offset(instant):
            for step in range(1, 97):
                before, after = (
                    offset(instant + (step - 1) * quarter),
                    offset(instant + step * quarter),
                )
                if after != before:
                    moment = instant + step * quarter
                    walls = (
                        (moment + before).replace(tzinfo=None),
                        (moment + after).replace(tzinfo=None),
                    )
                    found.append((min(walls), max(walls)))
        instant += day
    return tuple(found)


def expected(zone: str, wall: dt.datetime) -> dict:
    """What pendulum says about `wall` in `zone`: its UTC instant and whether it is a gap/overlap."""
    parts = (wall.year, wall.month, wall.day, wall.hour, wall.minute, wall.second)
    utc = pendulum.datetime(*parts, tz=zone).in_timezone("UTC")
    try:
        pendulum.datetime(*parts, tz=zone, raise_on_unknown_times=True)
        kind = "normal"
    except NonExistingTime:
        kind = "gap"
    except AmbiguousTime:
        kind = "overlap"
    return {
        "start_utc": dt.datetime(*utc.timetuple()[:6], tzinfo=dt.UTC),
        "is_start_in_dst_gap": kind == "gap",
        "is_start_in_dst_overlap": kind == "overlap",
    }


def convert(walls: list[tuple[str, dt.datetime]], session_time_zone: str = "UTC") -> list[dict]:
    """Run wall times through the transforms as one-instant sessions; rows in input order."""
    con = duckdb.connect()
    con.execute(f"set TimeZone = '{session_time_zone}'")
    sessions(
        con,
        *(
            {
                "id": str(number),
                "timezone": zone,
                "session_date": wall.strftime("%Y-%m-%d"),
                "session_start_time": wall.strftime("%H:%M:%S"),
                "session_end_time": wall.strftime("%H:%M:%S"),
            }
            for number, (zone, wall) in enumerate(walls)
        ),
    )
    run_transforms(con)
    rows = fetch_dicts(
        con,
        """
        select session_id, start_utc, end_utc, duration_minutes,
            is_start_in_dst_gap, is_start_in_dst_overlap, is_end_in_dst_gap, is_end_in_dst_overlap
        from analytics.sessions order by session_id
        """,
    )
    con.close()
    assert len(rows) == len(walls)
    return rows


def assert_matches_pendulum(walls: list[tuple[str, dt.datetime]], rows: list[dict]) -> None:
    mismatches = []
    for (zone, wall), row in zip(walls, rows, strict=True):
        want = expected(zone, wall)
        got = {key: row[key] for key in want}
        # The end is the same wall time, so it must resolve identically.
        assert row["end_utc"] == row["start_utc"]
        assert row["is_end_in_dst_gap"] == row["is_start_in_dst_gap"]
        assert row["is_end_in_dst_overlap"] == row["is_start_in_dst_overlap"]
        assert row["duration_minutes"] == 0
        if got != want:
            mismatches.append((zone, wall.isoformat(), got, want))
    assert not mismatches, mismatches[:10]


def test_pendulum_defaults_to_the_later_reading() -> None:
    """The reference itself: pendulum 3 picks the later instant in gaps and overlaps."""
    gap = pendulum.datetime(2021, 3, 14, 2, 30, tz="America/Los_Angeles")
    assert gap.in_timezone("UTC") == pendulum.datetime(2021, 3, 14, 10, 30)  # as PST, not PDT
    overlap = pendulum.datetime(2021, 11, 7, 1, 30, tz="America/Los_Angeles")
    assert overlap.in_timezone("UTC") == pendulum.datetime(2021, 11, 7, 9, 30)  # the second 01:30


@pytest.mark.parametrize("session_time_zone", ["UTC", "Asia/Tokyo", "America/St_Johns"])
def test_known_gap_and_overlap_examples(session_time_zone: str) -> None:
    walls = [
        ("America/Los_Angeles", dt.datetime(2021, 3, 14, 2, 30)),  # gap
        ("America/Los_Angeles", dt.datetime(2021, 11, 7, 1, 30)),  # overlap
        ("Europe/Berlin", dt.datetime(2021, 3, 28, 2, 30)),  # gap
        ("Europe/Berlin", dt.datetime(2021, 10, 31, 2, 30)),  # overlap
        ("Australia/Lord_Howe", dt.datetime(2021, 4, 4, 1, 45)),  # 30-minute overlap
        ("Australia/Lord_Howe", dt.datetime(2021, 10, 3, 2, 15)),  # 30-minute gap
        ("Asia/Kolkata", dt.datetime(2021, 3, 14, 2, 30)),  # no DST
    ]
    rows = convert(walls, session_time_zone)
    got = [
        (row["start_utc"], row["is_start_in_dst_gap"], row["is_start_in_dst_overlap"])
        for row in rows
    ]
    utc = dt.UTC
    assert got == [
        (dt.datetime(2021, 3, 14, 10, 30, tzinfo=utc), True, False),
        (dt.datetime(2021, 11, 7, 9, 30, tzinfo=utc), False, True),
        (dt.datetime(2021, 3, 28, 1, 30, tzinfo=utc), True, False),
        (dt.datetime(2021, 10, 31, 1, 30, tzinfo=utc), False, True),
        (dt.datetime(2021, 4, 3, 15, 15, tzinfo=utc), False, True),
        (dt.datetime(2021, 10, 2, 15, 45, tzinfo=utc), True, False),
        (dt.datetime(2021, 3, 13, 21, 0, tzinfo=utc), False, False),
    ]


def test_every_transition_on_a_quarter_hour_grid() -> None:
    """±3 h around every transition of every zone, every 15 minutes, plus each zone's new year."""
    walls = []
    for zone in ZONES:
        walls += [(zone, dt.datetime(year, 1, 1, 0, 0)) for year in ZONE_YEARS.get(zone, YEARS)]
        for earliest, latest in transitions(zone):
            wall = earliest - dt.timedelta(hours=3)
            while wall <= latest + dt.timedelta(hours=3):
                walls.append((zone, wall))
                wall += dt.timedelta(minutes=15)
    zones_with_dst = {zone for zone in ZONES if transitions(zone)}
    assert zones_with_dst == set(ZONES) - {"UTC", "Asia/Kolkata"}
    assert len(transitions("America/Sao_Paulo")) == 1  # its last DST ended in February 2019
    assert len(transitions("Europe/Berlin")) == 2 * len(YEARS)
    assert len(walls) > 4000
    assert_matches_pendulum(walls, convert(walls, session_time_zone="Pacific/Chatham"))


# zones whose clocks change late in the local evening or at midnight: an overnight session's end,
# on the next local day, falls after the second UTC midnight past its date
EVENING_ZONES = ["America/Santiago", "Pacific/Easter", "America/Nuuk", "America/Asuncion"]


def test_overnight_ends_near_a_transition_match_pendulum() -> None:
    """The fast path skips ICU where the offsets around a session's *date* agree; an overnight
    session ends on the next day, and the window once ended before some of those ends (Santiago,
    2024-04-05 23:50 to 23:30: an hour early, and no overlap flag)."""
    walls: list[tuple[str, dt.datetime, dt.datetime]] = []
    for zone in [*EVENING_ZONES, *ZONES]:
        for earliest, latest in transitions(zone):
            end = earliest - dt.timedelta(hours=3)
            while end <= latest + dt.timedelta(hours=3):
                date = end.date() - dt.timedelta(days=1)
                walls.append((zone, dt.datetime.combine(date, dt.time(23, 59)), end))
                end += dt.timedelta(minutes=15)
    con = duckdb.connect()
    sessions(
        con,
        *(
            {
                "id": str(number),
                "timezone": zone,
                "session_date": start.strftime("%Y-%m-%d"),
                "session_start_time": "23:59",
                "session_end_time": end.strftime("%H:%M:%S"),
            }
            for number, (zone, start, end) in enumerate(walls)
        ),
    )
    run_transforms(con)
    rows = fetch_dicts(
        con,
        "select end_utc, is_end_in_dst_gap, is_end_in_dst_overlap, is_overnight "
        "from analytics.sessions order by session_id",
    )
    assert len(rows) == len(walls) > 2000
    assert sum(zone == "America/Santiago" for zone, _, _ in walls) > 100
    mismatches = []
    for (zone, _, end), row in zip(walls, rows, strict=True):
        want = expected(zone, end)
        got = (row["end_utc"], row["is_end_in_dst_gap"], row["is_end_in_dst_overlap"])
        if row["is_overnight"] and got != tuple(want.values()):
            mismatches.append((zone, end.isoformat(), got, want))
    assert sum(row["is_overnight"] for row in rows) > 2000
    assert not mismatches, mismatches[:5]


@st.composite
def walls_near_transitions(draw: st.DrawFn) -> tuple[str, dt.datetime]:
    zone = draw(st.sampled_from(ZONES))
    if transitions(zone) and draw(st.booleans()):
        earliest, _ = draw(st.sampled_from(transitions(zone)))
        seconds = draw(st.integers(min_value=-3 * 3600, max_value=4 * 3600))
        return zone, earliest + dt.timedelta(seconds=seconds)
    years = ZONE_YEARS.get(zone, YEARS)
    wall = draw(st.datetimes(dt.datetime(years[0], 1, 1), dt.datetime(years[-1], 12, 31, 23, 59)))
    return zone, wall.replace(microsecond=0)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(walls=st.lists(walls_near_transitions(), min_size=1, max_size=300))
def test_random_wall_times_match_pendulum(walls: list[tuple[str, dt.datetime]]) -> None:
    assert_matches_pendulum(walls, convert(walls, session_time_zone="America/Sao_Paulo"))
