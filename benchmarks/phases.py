"""Where a pipeline run spends its time: extract / normalize / load / transforms, in-process.

`bench.py` times the CLI as a whole, which says *whether* the pipeline is slow; this says *where*.
It runs `practice_sync.pipeline.run` in this process against the simulator (in its own process,
warm), for a first sync, a no-change re-run and (`--night`) a re-run after a night of changes, and
prints the time of each step as the run itself records it (`SourceReport.phases`), with the peak RSS seen during each step (through the
supported hook `practice_sync.report.phase_observers`: nothing private is patched).
`--profile` adds a cProfile of the first sync (top functions by own time) for detail below the
steps.

    .venv/bin/python benchmarks/phases.py --sessions 100000 [--latency 0.15] [--profile] [--night]
    .venv/bin/python benchmarks/phases.py --clients 20000   # TimeTap instead of Bizstim
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from sim_process import SimulatorProcess

PEAK_RSS: dict[str, int] = defaultdict(int)  # step -> peak RSS bytes seen during it
NIGHT = {"edit": 0.01, "delete": 0.001, "new": 0.005, "seed": 1}  # as bench.py's scenario 3
_phase = ["(between steps)"]
PHASE_CPU: dict[str, float] = defaultdict(float)  # step -> CPU seconds of this process
_cpu_started: dict[str, float] = {}


def charge_rss(name: str) -> None:
    """Charge this process's RSS now to step `name`, if it is the step's highest yet."""
    with open("/proc/self/statm") as statm:
        rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    if rss > PEAK_RSS[name]:
        PEAK_RSS[name] = rss


def sample_rss(stop: threading.Event, every: float = 0.02) -> None:
    """Poll this process's RSS and charge it to the step running: which step holds the peak."""
    while not stop.wait(every):
        charge_rss(_phase[0])


def on_phase(event: str, name: str) -> None:
    """The product's supported profiling hook (`practice_sync.report.phase_observers`)."""
    charge_rss(name)  # at both ends too: a step shorter than the sampling still has a peak
    _phase[0] = name if event == "start" else "(between steps)"
    # CPU seconds of this process (every thread; not the parse workers or the simulator): on a
    # shared machine they say more than wall time about what a step costs
    if event == "start":
        _cpu_started[name] = time.process_time()
    else:
        PHASE_CPU[name] += time.process_time() - _cpu_started.pop(name, time.process_time())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=0, help="run TimeTap with this many")
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--profile", action="store_true", help="cProfile the first sync")
    parser.add_argument(
        "--night",
        action="store_true",
        help="then a night of changes (1%% edited, 0.1%% deleted, 0.5%% new sessions, as "
        "bench.py's scenario 3) and one more run",
    )
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--sort", default="tottime", help="pstats key: tottime, cumulative")
    parser.add_argument(
        "--keep", action="store_true", help="keep the warehouse (its path is printed) to study"
    )
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="practice-sync-phases-"))
    try:
        measure(args, work)
    finally:
        if args.keep:
            print(f"\nwarehouse kept: {work / 'bench.duckdb'}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def measure(args: argparse.Namespace, work: Path) -> None:
    """First sync, no-change re-run (and a night of changes) of one source, printing each
    phase's time and peak RSS."""
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
        from practice_sync.pipeline import Job, run
        from practice_sync.report import phase_observers

        phase_observers.append(on_phase)

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
        labels = ["first full sync", "no-change re-run"]
        if args.night and not args.clients:
            labels.append("night of changes")
        for label in labels:
            if label == "night of changes":
                sim.set_latency(0)
                night = sim.night_of_changes(**NIGHT)
                sim.warm()  # the new pages are rendered before anything is timed
                sim.set_latency(args.latency)
                print(
                    f"\n(night of changes: {len(night['edited']):,} edited, "
                    f"{len(night['deleted']):,} deleted, {len(night['added']):,} new)"
                )
            print(f"\n== {source} {label}: {size}, latency {args.latency:g} s ==")
            timed_run(run, job, args.profile and label == "first full sync", args)
        stop.set()


def timed_run(run: Any, job: Any, profile: bool, args: argparse.Namespace) -> None:
    """One `run(job)`, printing its wall time, each step's time and peak RSS, what it changed."""
    PEAK_RSS.clear()
    PHASE_CPU.clear()
    profiler = cProfile.Profile() if profile else None
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    report, code = run(job)
    if profiler:
        profiler.disable()
    wall = time.perf_counter() - started
    print(f"run() wall {wall:.2f} s, exit {int(code)}")
    steps = {**report.sources[0].phases, **report.phases}
    for name, seconds in steps.items():
        peak = f"  peak RSS {PEAK_RSS[name] / 2**20:6.0f} MiB" if name in PEAK_RSS else ""
        print(f"  {name:<12} {seconds:8.3f} s{peak}")  # a step with nothing to do: ~0.01 s
    cpu = ", ".join(f"{name} {seconds:.2f}" for name, seconds in PHASE_CPU.items())
    print(f"  CPU s of this process: {cpu}")
    print(f"  peak RSS over the whole run: {max(PEAK_RSS.values()) / 2**20:.0f} MiB")
    for table, change in sorted(report.sources[0].tables.items()):
        print(
            f"  {table}: {change.new:,} new, {change.changed:,} changed, "
            f"{change.retired:,} retired, {change.current:,} current"
        )
    if profiler:
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats(args.sort).print_stats(args.top)
        print(out.getvalue())


if __name__ == "__main__":
    sys.exit(main())
