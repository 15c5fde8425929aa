"""Where a pipeline run spends its time: extract / normalize / load / transforms, in-process.

`bench.py` times the CLI as a whole, which says *whether* the pipeline is slow; this says *where*.
It runs `practice_sync.pipeline.run` in this process against the simulator (in its own process, warm),
with timers wrapped around dlt's steps and the project's own helpers, for a first sync and a
no-change re-run. `--profile` adds a cProfile of the first sync (top functions by own time).

    .venv/bin/python benchmarks/phases.py --sessions 100000 [--latency 0.15] [--profile]
    .venv/bin/python benchmarks/phases.py --clients 20000   # TimeTap instead of Bizstim
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import io
import os
import pstats
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sim_process import SimulatorProcess

TIMES: dict[str, float] = defaultdict(float)
CALLS: dict[str, int] = defaultdict(int)
_lock = threading.Lock()
WAITING = "  extract: waiting on the sweep"
CONSUMING = "  extract: dlt consuming pages"
PEAK_RSS: dict[str, int] = defaultdict(int)  # top-level phase -> peak RSS bytes seen during it
_phase = ["(between phases)"]


def sample_rss(stop: threading.Event, every: float = 0.02) -> None:
    """Poll this process's RSS and charge it to the phase running: which step holds the peak."""
    page = os.sysconf("SC_PAGE_SIZE")
    with open("/proc/self/statm") as statm:
        while not stop.wait(every):
            statm.seek(0)
            rss = int(statm.read().split()[1]) * page
            name = _phase[0]
            if rss > PEAK_RSS[name]:
                PEAK_RSS[name] = rss


def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap `fn` so its wall time is summed under `name` (over all threads that call it)."""

    top_level = not name.startswith(" ")

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        outer = _phase[0]
        if top_level:
            _phase[0] = name
        try:
            return fn(*args, **kwargs)
        finally:
            if top_level:
                _phase[0] = outer
            with _lock:
                TIMES[name] += time.perf_counter() - started
                CALLS[name] += 1

    return wrapper


def instrument() -> None:
    """Timers on dlt's three steps, the transforms, the summary queries and per-page work."""
    import dlt

    import practice_sync.bizstim.helpers as helpers
    import practice_sync.http as http
    import practice_sync.pipeline as pipeline
    import practice_sync.rows as rows

    for step in ("extract", "normalize", "load"):
        setattr(dlt.Pipeline, step, timed(f"dlt {step}", getattr(dlt.Pipeline, step)))
    for name in ("_transform_into", "_current_counts", "_changes", "make_pipeline"):
        setattr(pipeline, name, timed(f"pipeline.{name}", getattr(pipeline, name)))
    # on big sweeps pages are decoded in a worker process, where these timers do not reach
    http.HttpClient.get = timed("  http get + decode (thread-s)", http.HttpClient.get)
    http.parse_json = timed("  orjson parse (thread-s)", http.parse_json)
    helpers.rows_to_table = timed("  rows_to_table (thread-s)", rows.rows_to_table)
    helpers._to_page = timed("  page -> Arrow, all (thread-s)", helpers._to_page)
    helpers.Sweep.pages = split_generator(helpers.Sweep.pages)

    import practice_sync.timetap as tt
    import practice_sync.timetap.helpers as tt_helpers

    tt_helpers.TimeTapApi.get = timed("  TimeTapApi.get (thread-s)", tt_helpers.TimeTapApi.get)
    tt._sold_table = timed("  timetap _sold_table", tt._sold_table)
    tt._snake_row = timed("  timetap _snake_row", tt._snake_row)


def split_generator(fn: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    """Time a generator's own next() (the sweep: waiting on fetches) apart from its consumer's
    time between items (dlt: buffering, writing extract files), both in dlt's extract thread."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
        inner = fn(*args, **kwargs)
        while True:
            started = time.perf_counter()
            try:
                item = next(inner)
            except StopIteration:
                TIMES[WAITING] += time.perf_counter() - started
                return
            TIMES[WAITING] += time.perf_counter() - started
            CALLS[WAITING] += 1
            handed = time.perf_counter()
            yield item
            TIMES[CONSUMING] += time.perf_counter() - handed
            CALLS[CONSUMING] += 1

    return wrapper


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=0, help="run TimeTap with this many")
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--profile", action="store_true", help="cProfile the first sync")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--sort", default="tottime", help="pstats key: tottime, cumulative")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="practice-sync-phases-"))
    try:
        measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def measure(args: argparse.Namespace, work: Path) -> None:
    """First sync and no-change re-run of one source, printing each phase's time and peak RSS."""
    source = "timetap" if args.clients else "bizstim"
    size = f"{args.clients:,} clients" if args.clients else f"{args.sessions:,} sessions"
    sessions = 1 if args.clients else args.sessions
    with SimulatorProcess(sessions=sessions, clients=max(args.clients, 1)) as sim:
        info = sim.info
        assert info is not None
        sim.warm()
        sim.set_latency(args.latency)
        os.environ.update(
            DLT_DATA_DIR=str(work),
            RUNTIME__DLTHUB_TELEMETRY="false",
            SOURCES__BIZSTIM__CONCURRENCY=str(args.concurrency),
            SOURCES__TIMETAP__CONCURRENCY=str(args.concurrency),
        )
        instrument()
        from practice_sync.pipeline import Job, run

        job = Job(
            database=work / "bench.duckdb",
            sources=[source],
            show_progress=False,
            overrides={
                "bizstim": {"base_url": info.bizstim_url, "api_key": info.bizstim_api_key},
                "timetap": {
                    "base_url": info.timetap_url,
                    "api_key": info.timetap_api_key,
                    "private_key": info.timetap_private_key,
                },
            },
        )
        stop = threading.Event()
        threading.Thread(target=sample_rss, args=(stop,), daemon=True).start()
        for label in ("first full sync", "no-change re-run"):
            TIMES.clear()
            CALLS.clear()
            PEAK_RSS.clear()
            profiler = cProfile.Profile() if args.profile and label == "first full sync" else None
            started = time.perf_counter()
            if profiler:
                profiler.enable()
            report, code = run(job)
            if profiler:
                profiler.disable()
            wall = time.perf_counter() - started
            print(f"\n== {source} {label}: {size}, latency {args.latency:g} s ==")
            print(f"run() wall {wall:.2f} s, exit {int(code)}")
            for name, seconds in TIMES.items():
                peak = f"  peak RSS {PEAK_RSS[name] / 2**20:6.0f} MiB" if name in PEAK_RSS else ""
                print(f"  {name:<40} {seconds:8.2f} s  ({CALLS[name]:,} calls){peak}")
            print(f"  peak RSS over the whole run: {max(PEAK_RSS.values()) / 2**20:.0f} MiB")
            if profiler:
                out = io.StringIO()
                stats = pstats.Stats(profiler, stream=out)
                stats.sort_stats(args.sort).print_stats(args.top)
                print(out.getvalue())
        stop.set()


if __name__ == "__main__":
    sys.exit(main())
