"""The project's simulator in a process of its own, driven over a multiprocessing Pipe.

A simulator in the benchmark's own process would share a GIL with whatever measures it, and on a
small machine the pipeline and the server would then slow each other down in ways that have
nothing to do with the pipeline. A spawned process has its own interpreter; the parent only
sends commands: set latency, warm the page cache, a night of changes, report CPU time and
memory, stop.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import orjson

PAGE_SIZE = 1000  # the pipeline's (and the API's maximum) page size


def page_starts(total: int, page_size: int = PAGE_SIZE) -> list[int]:
    """The pipeline's sweep: pages overlapping by one row (0, 999, 1998, ...)."""
    step = page_size - 1
    return [0, *range(step, max(total - 1, 1), step)]


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def _memory_kib() -> dict[str, int]:
    """This process's resident set now and at its peak (VmRSS, VmHWM), in KiB."""
    found = {}
    with open("/proc/self/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                found[name] = int(value.split()[0])
    return found


ACCOUNT_ZONES = ("America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles",
                 "Europe/London", "Europe/Berlin", "Australia/Sydney")  # fmt: skip


def _get_page(sim: Any, start: int, limit: int, account: Any = None) -> bytes:
    api = account.bizstim if account is not None else sim.bizstim
    key = account.bizstim_api_key if account is not None else sim.bizstim_api_key
    return api.handle("GET", ["sessions", str(start), str(limit)], {}, {"x-api-key": key}).body


def _total(sim: Any, account: Any = None) -> int:
    return int(orjson.loads(_get_page(sim, 0, 1, account))["total"])


def _add_accounts(sim: Any, count: int, sessions: int, seed: int) -> None:
    """`count` more Bizstim accounts (a00, a01, ...) with overlapping ids and several zones."""
    for n in range(count):
        sim.add_account(
            f"a{n:02d}",
            seed=seed + 1 + n,
            sessions=sessions,
            clients=1,
            packages=1,
            timezone=ACCOUNT_ZONES[n % len(ACCOUNT_ZONES)],
        )


def _serve(conn: Connection, options: dict[str, Any]) -> None:
    """Child process body: build the data, start the server, then answer commands until stop."""
    from practice_sync.simulator import Simulator

    started = time.perf_counter()
    accounts, account_sessions = options.pop("accounts", 0), options.pop("account_sessions", 0)
    sim = Simulator(**options)
    _add_accounts(sim, accounts, account_sessions, int(options.get("seed", 7)))
    sim.start()
    conn.send(
        {
            "accounts": [(a.name, a.bizstim_api_key) for a in sim.accounts.values()],
            "bizstim_url": sim.bizstim_url,
            "timetap_url": sim.timetap_url,
            "bizstim_api_key": sim.bizstim_api_key,
            "timetap_api_key": sim.timetap_api_key,
            "timetap_private_key": sim.timetap_private_key,
            "generate_s": time.perf_counter() - started,
        }
    )
    try:
        while True:
            command, *args = conn.recv()
            if command == "stop":
                conn.send(None)
                return
            if command == "latency":
                sim.latency = float(args[0])
                conn.send(sim.latency)
            elif command == "warm":
                # render and cache every page the sweep will ask for, through the public handler
                t0 = time.perf_counter()
                for account in [None, *sim.accounts.values()]:
                    for start in page_starts(_total(sim, account)):
                        _get_page(sim, start, PAGE_SIZE, account)
                    (account or sim).bizstim.flush_pages()
                conn.send(time.perf_counter() - t0)
            elif command == "night":
                conn.send(sim.bizstim.night_of_changes(**args[0]))
            elif command == "cpu":
                conn.send(_cpu_seconds())
            elif command == "memory":
                conn.send(_memory_kib())
            elif command == "total":
                conn.send(_total(sim))
            elif command == "account_totals":
                conn.send({a.name: _total(sim, a) for a in sim.accounts.values()})
            else:
                conn.send(ValueError(f"unknown command {command!r}"))
    finally:
        sim.stop()


@dataclass
class SimInfo:
    bizstim_url: str
    timetap_url: str
    bizstim_api_key: str
    timetap_api_key: str
    timetap_private_key: str
    generate_s: float
    accounts: list[tuple[str, str]]  # (name, Bizstim key) of each account beyond the default


class SimulatorProcess:
    """Handle on a simulator running in a spawned child; use as a context manager."""

    def __init__(self, **options: Any) -> None:
        # every rendered page in a temporary file, not the child's memory: a warm 5,000,000-
        # session sweep is 3.3 GB of pages, served by one pread each
        self.options = {"edge_cases": False, "page_file": tempfile.gettempdir(), **options}
        self._ctx = mp.get_context("spawn")
        self._conn: Connection | None = None
        self._proc: Any = None
        self.info: SimInfo | None = None

    def __enter__(self) -> SimulatorProcess:
        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(
            target=_serve, args=(child, self.options), name="bench-simulator", daemon=True
        )
        self._proc.start()
        child.close()
        self._conn = parent
        self.info = SimInfo(**parent.recv())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._conn is not None:
            try:
                self.call("stop")
            except (EOFError, OSError):
                pass
            self._conn.close()
        if self._proc is not None:
            self._proc.join(10)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join()

    @property
    def pid(self) -> int:
        return int(self._proc.pid)

    def call(self, *command: Any) -> Any:
        assert self._conn is not None, "the simulator process is not running"
        self._conn.send(command)
        answer = self._conn.recv()
        if isinstance(answer, Exception):
            raise answer
        return answer

    def set_latency(self, seconds: float) -> None:
        self.call("latency", seconds)

    def warm(self) -> float:
        """Render every sweep page now (returns seconds), so no measurement pays for it."""
        return float(self.call("warm"))

    def night_of_changes(self, **kwargs: Any) -> dict:
        return dict(self.call("night", kwargs))

    def cpu_seconds(self) -> float:
        return float(self.call("cpu"))

    def memory_mib(self) -> tuple[float, float]:
        """The simulator's own resident set (now, peak) in MiB: its rows and page cache."""
        kib = self.call("memory")
        return kib["VmRSS"] / 1024, kib["VmHWM"] / 1024

    def total_sessions(self) -> int:
        return int(self.call("total"))

    def account_totals(self) -> dict[str, int]:
        return dict(self.call("account_totals"))
