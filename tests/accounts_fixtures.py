"""Two Bizstim accounts and two TimeTap businesses on one simulator, told apart by their keys,
with overlapping ids and different time zones: shared by the tests of accounts
(tests/test_accounts.py) and of publishing them (tests/test_publish.py).

Expected values are computed here from the simulator's own rows (zoneinfo for the instants),
never read back from the pipeline's code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from conftest import Env, make_env

from practice_sync.simulator import Simulator

ZONES = {"downtown": "America/New_York", "uptown": "Europe/Berlin"}


@contextlib.contextmanager
def two_accounts() -> Iterator[Simulator]:
    """The simulator of the `multi` fixtures: accounts downtown (240 sessions) and uptown (180)."""
    with Simulator(seed=7, sessions=60, clients=20, packages=6, edge_cases=False) as sim:
        sim.add_account("downtown", seed=21, sessions=240, clients=30, packages=8,
                        timezone=ZONES["downtown"])  # fmt: skip
        sim.add_account("uptown", seed=22, sessions=180, clients=25, packages=7,
                        timezone=ZONES["uptown"])  # fmt: skip
        yield sim


def accounts_env(sim: Simulator, tmp_path: Path, **keys: str) -> Env:
    """Both accounts of both vendors; `keys` replaces an account's Bizstim key."""
    env = make_env(sim, tmp_path, bizstim=False, timetap=False)
    env.vars.update(
        {
            "SOURCES__BIZSTIM__ACCOUNTS": '["downtown", "uptown"]',
            "SOURCES__BIZSTIM__BASE_URL": sim.bizstim_url,
            "SOURCES__TIMETAP__ACCOUNTS": '["downtown", "uptown"]',
            "SOURCES__TIMETAP__BASE_URL": sim.timetap_url,
            "PRACTICE_SYNC__ACCOUNT_CONCURRENCY": "2",
        }
    )
    for name, account in sim.accounts.items():
        prefix = name.upper()
        env.vars[f"SOURCES__BIZSTIM__{prefix}__API_KEY"] = keys.get(name, account.bizstim_api_key)
        env.vars[f"SOURCES__TIMETAP__{prefix}__API_KEY"] = account.timetap_api_key
        env.vars[f"SOURCES__TIMETAP__{prefix}__PRIVATE_KEY"] = account.timetap_private_key
    return env


def expected_sessions(sim: Simulator) -> set[tuple]:
    """(account, session_id, status, client_id, start_utc, end_utc) from the simulator's rows."""
    statuses = {"0": "open", "1": "canceled", "2": "missed", "3": "saved"}
    out = set()
    for name, account in sim.accounts.items():
        zone = ZoneInfo(ZONES[name])
        for row in account.bizstim.rows():
            day = date.fromisoformat(row["session_date"])
            start = time.fromisoformat(row["session_start_time"])
            end = time.fromisoformat(row["session_end_time"])
            local_start = datetime.combine(day, start)
            local_end = datetime.combine(day + timedelta(days=end < start), end)
            out.add(
                (
                    name, int(row["id"]), statuses[row["session_status"]], int(row["client_id"]),
                    local_start.replace(tzinfo=zone).astimezone(UTC),
                    local_end.replace(tzinfo=zone).astimezone(UTC),
                )
            )  # fmt: skip
    return out
