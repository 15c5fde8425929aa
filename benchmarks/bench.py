"""practice-sync benchmark: the real CLI against the simulator, next to the floor of the same work.

`python3 dev.py bench` (or `.venv/bin/python benchmarks/bench.py`) runs every scenario and prints
one table: wall time, peak RSS, rows per second and the ratio to the floor, which is what the
same pages cost to download with the same concurrency by bare HTTP code plus one DuckDB
`read_json` (see floor.py). Absolute seconds depend on the machine; the ratio is the figure that
counts, so both are measured in the same run against the same simulator.

Scenarios, each at every `--latencies` value (the simulator sleeps that long before answering):
  1. first full sync of each `--sizes` Bizstim warehouse, and of TimeTap with `--clients` clients
  2. a re-run with no upstream change
  3. a re-run after a night of changes (1% edited, 0.1% deleted, 0.5% new sessions)
  4. `practice-sync transform --full-rebuild` alone on the largest warehouse, next to a bare
     CREATE TABLE AS; and the incremental analytics update of scenario 3's night (no latency)
     as a share of that full rebuild, both as the run history records them (no CLI start-up)
  5. publishing `analytics` to PostgreSQL (`practice_sync.publish`) from the largest warehouse:
     the first publish into an empty database, then a night of changes (`--no-publish` skips it)
  6. many Bizstim accounts in one run (`--accounts`)
  7. peak RSS at `--rss-size` sessions (5,000,000): the first full sync alone, no latency, next
     to the same run at the largest `--sizes` (`--only-rss` runs just these first syncs)

`--quick` is the CI smoke test (small sizes, no timing assertion). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import floor
from floor import FloorResult, bizstim_accounts_floor, bizstim_floor, timetap_floor
from sim_process import SimulatorProcess, page_starts

ROOT = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).with_name("practice-sync")
GIB = 1024 * 1024  # KiB per GiB (ru_maxrss is in KiB on Linux)
NIGHT = {"edit": 0.01, "delete": 0.001, "new": 0.005, "seed": 1}
STARTED = time.monotonic()
RUN_TIMEOUT = 1800.0  # seconds; a pipeline run still going after this is killed and reported


def log(message: str) -> None:
    """Progress on stderr with elapsed time, so a 20-minute run shows where it is."""
    elapsed = int(time.monotonic() - STARTED)
    print(f"[{elapsed // 60:02d}:{elapsed % 60:02d}] {message}", file=sys.stderr, flush=True)


# -- measuring one pipeline process ------------------------------------------------------------


@dataclass
class Run:
    """One `practice-sync` child process: its wall time, peak RSS and the simulator's CPU."""

    wall_s: float
    cpu_s: float  # the child's user + system CPU: near wall_s means one core was saturated
    peak_rss_kib: int
    exit_code: int
    sim_cpu_s: float
    output: str


def run_cli(args: list[str], env: dict[str, str], sim: SimulatorProcess, logs: Path) -> Run:
    """Start the console script as cron would, and reap it with wait4 for its own ru_maxrss."""
    logs.parent.mkdir(parents=True, exist_ok=True)
    cpu_before = sim.cpu_seconds()
    with open(logs, "w") as out:
        started = time.perf_counter()
        proc = subprocess.Popen([str(CLI), *args], env=env, cwd=ROOT, stdout=out, stderr=out)
        watchdog = threading.Timer(RUN_TIMEOUT, proc.kill)  # a hung run must not hang CI
        watchdog.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            watchdog.cancel()
        wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    cpu = usage.ru_utime + usage.ru_stime
    sim_cpu = sim.cpu_seconds() - cpu_before
    return Run(wall, cpu, usage.ru_maxrss, proc.returncode, sim_cpu, logs.read_text())


def pipeline_env(work: Path, sim: SimulatorProcess, concurrency: int) -> dict[str, str]:
    """Everything through environment variables, as a scheduler would configure a run."""
    info = sim.info
    assert info is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOURCES__", "DESTINATION__"))}
    work.mkdir(parents=True, exist_ok=True)
    env.update(
        DESTINATION__DUCKDB__CREDENTIALS=str(work / "bench.duckdb"),
        DLT_DATA_DIR=str(work),
        RUNTIME__DLTHUB_TELEMETRY="false",
        SOURCES__BIZSTIM__BASE_URL=info.bizstim_url,
        SOURCES__BIZSTIM__API_KEY=info.bizstim_api_key,
        SOURCES__BIZSTIM__CONCURRENCY=str(concurrency),
        SOURCES__TIMETAP__BASE_URL=info.timetap_url,
        SOURCES__TIMETAP__API_KEY=info.timetap_api_key,
        SOURCES__TIMETAP__PRIVATE_KEY=info.timetap_private_key,
        SOURCES__TIMETAP__CONCURRENCY=str(concurrency),
    )
    return env


# -- results -----------------------------------------------------------------------------------


@dataclass
class Floor:
    result: FloorResult
    sim_cpu_s: float

    @property
    def seconds(self) -> float:
        return self.result.seconds


@dataclass
class Row:
    scenario: str
    source: str
    size: int  # sessions, or TimeTap clients
    latency: float | None
    rows: int
    run: Run
    floor: Floor | None = None
    floor_reused: bool = False  # same pages as an earlier row: its floor, not measured again
    baseline_s: float | None = None  # transforms: the bare CREATE TABLE AS
    publish_s: float | None = None  # scenario 5: the publish step's own seconds

    @property
    def reference_s(self) -> float | None:
        if self.floor is not None:
            return self.floor.seconds
        return self.baseline_s

    @property
    def ratio(self) -> float | None:
        ref = self.reference_s
        return self.run.wall_s / ref if ref and self.run.exit_code == 0 else None


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # the analytics build's own seconds (ops.run_history): "night" (scenario 3, incremental) and
    # "full" (scenario 4, --full-rebuild), on the largest warehouse
    analytics_s: dict[str, float] = field(default_factory=dict)

    def find(self, scenario: str, source: str, size: int, latency: float | None) -> Row | None:
        key = (scenario, source, size, latency)
        return next(
            (r for r in self.rows if (r.scenario, r.source, r.size, r.latency) == key), None
        )


S1 = "1 first full sync"
S2 = "2 re-run, no change"
S3 = "3 re-run, night of changes"
S4 = "4 transforms alone"
S5 = "5 publish to PostgreSQL"
S6 = "6 many accounts, first sync"
S7 = "7 peak RSS, first full sync"
PG_SERVER = "postgresql://postgres:bench@127.0.0.1:5432/postgres"  # or PRACTICE_SYNC_BENCH_POSTGRES


# -- the scenarios -----------------------------------------------------------------------------


def measure_floor(
    sim: SimulatorProcess,
    source: str,
    concurrency: int,
    work: Path,
    vanished: Sequence[str] = (),
) -> Floor:
    """Bare download + read_json of the same pages, on a warm simulator (plus one lookup per
    `vanished` session, as the pipeline confirms each before retiring it)."""
    info = sim.info
    assert info is not None
    folder = Path(tempfile.mkdtemp(prefix=f"floor-{source}-", dir=work))
    before = sim.cpu_seconds()
    try:
        if source == "bizstim":
            result = bizstim_floor(
                info.bizstim_url,
                info.bizstim_api_key,
                concurrency,
                str(folder),
                sim.total_sessions(),
                vanished,
            )
        else:
            result = timetap_floor(
                info.timetap_url,
                info.timetap_api_key,
                info.timetap_private_key,
                concurrency,
                str(folder),
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return Floor(result, sim.cpu_seconds() - before)


def describe(row: Row) -> str:
    ok = "ok" if row.run.exit_code == 0 else f"FAILED (exit {row.run.exit_code})"
    ref = f", floor {row.floor.seconds:.1f} s" if row.floor else ""
    if row.baseline_s is not None:
        ref = f", CREATE TABLE AS {row.baseline_s:.1f} s"
    ratio = f" -> {row.ratio:.2f}x" if row.ratio is not None else ""
    return (
        f"  {ok}: {row.run.wall_s:.1f} s (CPU {row.run.cpu_s:.1f} s), "
        f"peak RSS {row.run.peak_rss_kib / 1024:.0f} MiB, "
        f"simulator CPU {row.run.sim_cpu_s:.1f} s{ref}{ratio}"
    )


def bizstim_size(size: int, args: argparse.Namespace, work: Path, results: Results) -> None:
    """Scenarios 1-3 (and 4 on the largest size) for one Bizstim warehouse size per latency."""
    log(f"Bizstim {size:,} sessions: starting the simulator (own process, edge_cases=False)")
    with SimulatorProcess(sessions=size, clients=1, seed=args.seed) as sim:
        assert sim.info is not None
        pages = len(page_starts(sim.total_sessions()))
        log(f"  generated in {sim.info.generate_s:.1f} s; {pages:,} pages of 1000 per sweep")
        warm = sim.warm()
        results.notes.append(simulator_note(size, sim, pages, warm))
        houses = {lat: work / f"bizstim-{size}-lat{lat:g}" for lat in args.latencies}
        floors: dict[float, Floor] = {}
        for scenario in (S1, S2, S3):
            if scenario == S3:
                sim.set_latency(0)
                night = sim.night_of_changes(**NIGHT)
                warm = sim.warm()
                floors.clear()  # new pages: measure the floor again
                log(
                    f"  night of changes: {len(night['edited']):,} edited, "
                    f"{len(night['deleted']):,} deleted, {len(night['added']):,} new; "
                    f"cache re-warmed in {warm:.1f} s"
                )
            rows = sim.total_sessions()
            for lat in args.latencies:
                sim.set_latency(lat)
                if lat not in floors:
                    log(f"  floor at latency {lat:g} s ...")
                    gone = night["deleted"] if scenario == S3 else ()
                    floors[lat] = measure_floor(sim, "bizstim", args.concurrency, work, gone)
                    f = floors[lat].result
                    log(
                        f"    download {f.download_s:.2f} s ({f.requests / f.download_s:,.0f} "
                        f"pages/s, {f.bytes / 1e6 / f.download_s:,.0f} MB/s) + read_json "
                        f"{f.read_json_s:.2f} s"
                        + (
                            f", {f.confirmations:,} lookups {f.confirm_s:.2f} s"
                            if f.confirmations
                            else ""
                        )
                    )
                    reused = False
                else:
                    reused = True
                log(f"  {scenario}, latency {lat:g} s: practice-sync run --source bizstim ...")
                env = pipeline_env(houses[lat], sim, args.concurrency)
                run = run_cli(
                    ["run", "--quiet", "--source", "bizstim"],
                    env,
                    sim,
                    houses[lat] / f"log-{scenario[0]}.txt",
                )
                row = Row(scenario, "bizstim", size, lat, rows, run, floors[lat], reused)
                results.rows.append(row)
                log(describe(row))
                if run.exit_code:
                    log("  output:\n" + run.output[-2000:])
                elif scenario == S3 and lat == args.latencies[0] and size == max(args.sizes):
                    results.analytics_s["night"] = analytics_seconds(houses[lat] / "bench.duckdb")
        if size == max(args.sizes):
            sim.set_latency(0)
            transforms_alone(size, houses[args.latencies[0]], sim, args, results)
            if args.publish:
                publish_scenario(size, houses[args.latencies[0]], sim, args, results)


def simulator_note(size: int, sim: SimulatorProcess, pages: int, warm_s: float) -> str:
    assert sim.info is not None
    rss, peak = sim.memory_mib()
    return (
        f"Bizstim {size:,}: simulator generated the data in {sim.info.generate_s:.1f} s and "
        f"pre-rendered all {pages:,} sweep pages in {warm_s:.1f} s (into a page file) before any "
        f"measurement; simulator RSS {rss:,.0f} MiB (peak {peak:,.0f})."
    )


def first_sync_only(
    size: int, scenario: str, args: argparse.Namespace, work: Path, results: Results
) -> None:
    """One first full sync at no latency with its floor: scenario 7 at `--rss-size`, and with
    `--only-rss` the same run at each `--sizes` (as scenario 1) for the peak RSS next to it."""
    log(f"{scenario}: Bizstim {size:,} sessions, no latency (simulator in its own process)")
    with SimulatorProcess(sessions=size, clients=1, seed=args.seed) as sim:
        assert sim.info is not None
        rows = sim.total_sessions()
        pages = len(page_starts(rows))
        log(f"  generated in {sim.info.generate_s:.1f} s; {pages:,} pages of 1000 per sweep")
        warm = sim.warm()
        results.notes.append(simulator_note(size, sim, pages, warm))
        log(f"  {results.notes[-1]}")
        sim.set_latency(0)
        floor = measure_floor(sim, "bizstim", args.concurrency, work)
        log(
            f"  floor: download {floor.result.download_s:.2f} s + read_json {floor.result.read_json_s:.2f} s"
        )
        house = work / f"bizstim-{size}-first"
        env = pipeline_env(house, sim, args.concurrency)
        log(f"  {scenario}: practice-sync run --source bizstim ...")
        run = run_cli(["run", "--quiet", "--source", "bizstim"], env, sim, house / "log-7.txt")
        row = Row(scenario, "bizstim", size, 0.0, rows, run, floor)
        results.rows.append(row)
        log(describe(row))
        if run.exit_code:
            log("  output:\n" + run.output[-2000:])
    if not args.keep:
        shutil.rmtree(house, ignore_errors=True)  # 5,000,000 sessions leave gigabytes behind


def ctas_seconds(database: Path) -> tuple[float, int]:
    """The baseline: DuckDB copying the raw rows into a new table in the same file, committed;
    in a process of its own, like the floor's read_json (`floor._read_json`)."""
    seconds, rows = floor.isolated(_ctas_here, database)
    return float(seconds), int(rows)


def _ctas_here(database: Path) -> tuple[float, int]:
    with contextlib.closing(duckdb.connect(str(database))) as con:
        started = time.perf_counter()
        con.execute("create table main.bench_ctas as select * from bizstim.sessions")
        seconds = time.perf_counter() - started
        (rows,) = con.execute("select count(*) from main.bench_ctas").fetchone() or (0,)
        con.execute("drop table main.bench_ctas")
        con.execute("checkpoint")
    return seconds, int(rows)


def analytics_seconds(database: Path) -> float:
    """The last analytics build's own seconds, as the run history records them."""
    with contextlib.closing(duckdb.connect(str(database), read_only=True)) as con:
        (seconds,) = con.execute(
            "select duration_s from ops.run_history where source = 'analytics' "
            "order by finished_at desc limit 1"
        ).fetchone() or (0.0,)
    return float(seconds)


def transforms_alone(
    size: int, house: Path, sim: SimulatorProcess, args: argparse.Namespace, results: Results
) -> None:
    """Scenario 4: `practice-sync transform --full-rebuild`, then the bare CTAS over the same
    raw table."""
    log(f"  {S4} on the {size:,}-session warehouse: practice-sync transform --full-rebuild ...")
    env = pipeline_env(house, sim, args.concurrency)
    run = run_cli(["transform", "--full-rebuild"], env, sim, house / "log-4.txt")
    if not run.exit_code:
        results.analytics_s["full"] = analytics_seconds(house / "bench.duckdb")
    baseline, rows = ctas_seconds(house / "bench.duckdb")
    row = Row(S4, "transforms", size, None, rows, run, baseline_s=baseline)
    results.rows.append(row)
    log(describe(row))
    results.notes.append(
        f"Scenario 4 baseline: `create table t as select * from bizstim.sessions` ({rows:,} raw "
        f"rows, every scd2 version, all text) in the same warehouse file, committed: "
        f"{baseline:.2f} s. The transform's wall time includes starting the CLI (~1 s)."
    )
    night, full = results.analytics_s.get("night"), results.analytics_s.get("full")
    if night is not None and full:
        results.notes.append(
            f"Analytics build alone (ops.run_history): the incremental update after scenario 3's "
            f"night (no latency) took {night:.2f} s, the full rebuild {full:.2f} s: "
            f"{night / full:.0%} of it."
        )
    if run.exit_code:
        log("  output:\n" + run.output[-2000:])


def many_accounts(args: argparse.Namespace, work: Path, results: Results) -> None:
    """Scenario 6: `--accounts` Bizstim accounts of `--account-sessions` each on one server,
    loaded by one run (`account_concurrency` accounts at once), against the floor fetching
    every account's pages with the same total concurrency."""
    count, size, lat = args.accounts, args.account_sessions, max(args.latencies)
    log(f"{S6}: {count} accounts x {size:,} sessions at latency {lat:g} s")
    with SimulatorProcess(
        sessions=1, clients=1, seed=args.seed, accounts=count, account_sessions=size
    ) as sim:
        info = sim.info
        assert info is not None
        warm = sim.warm()
        totals = sim.account_totals()
        results.notes.append(
            f"Scenario 6: {count} accounts ({sum(totals.values()):,} sessions) generated in "
            f"{info.generate_s:.1f} s, pages pre-rendered in {warm:.1f} s; accounts load "
            f"{args.account_concurrency} at a time, each with concurrency {args.concurrency}; "
            f"the floor fetches every account's pages with {args.account_concurrency * args.concurrency} "
            "connections."
        )
        sim.set_latency(lat)
        folder = Path(tempfile.mkdtemp(prefix="floor-accounts-", dir=work))
        before = sim.cpu_seconds()
        keyed = [(key, totals[name]) for name, key in info.accounts]
        try:
            result = bizstim_accounts_floor(
                info.bizstim_url, keyed, args.account_concurrency * args.concurrency, str(folder)
            )
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        floor = Floor(result, sim.cpu_seconds() - before)
        log(f"  floor: download {result.download_s:.2f} s + read_json {result.read_json_s:.2f} s")
        house = work / "accounts"
        env = pipeline_env(house, sim, args.concurrency)
        del env["SOURCES__BIZSTIM__API_KEY"]
        names = [name for name, _ in info.accounts]
        env["SOURCES__BIZSTIM__ACCOUNTS"] = "[" + ", ".join(f'"{n}"' for n in names) + "]"
        env["PRACTICE_SYNC__ACCOUNT_CONCURRENCY"] = str(args.account_concurrency)
        for name, key in info.accounts:
            env[f"SOURCES__BIZSTIM__{name.upper()}__API_KEY"] = key
        run = run_cli(["run", "--quiet", "--source", "bizstim"], env, sim, house / "log-6.txt")
        row = Row(
            S6, f"bizstim, {count} accounts", count * size, lat, sum(totals.values()), run, floor
        )
        results.rows.append(row)
        log(describe(row))
        if run.exit_code:
            log("  output:\n" + run.output[-2000:])


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A new, empty database on the benchmark's PostgreSQL server, dropped afterwards."""
    import psycopg2

    server = os.environ.get("PRACTICE_SYNC_BENCH_POSTGRES") or PG_SERVER
    name = f"practice_sync_bench_{os.getpid()}"
    admin = psycopg2.connect(server, connect_timeout=10)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f"drop database if exists {name} with (force)")
            cur.execute(f"create database {name}")
        yield server.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f"drop database if exists {name} with (force)")
        admin.close()


def published(output: str) -> tuple[int, int, float]:
    """Rows added, rows removed and seconds from the summary's `published to postgres:` line."""
    for line in output.splitlines():
        found = re.search(
            r"published to postgres: \S+ ([\d,]+) rows added, ([\d,]+) removed "
            r"in ([\d.,]+) s",
            line,
        )
        if found:
            added, removed, seconds = (g.replace(",", "") for g in found.groups())
            return int(added), int(removed), float(seconds)
    return 0, 0, 0.0


def publish_scenario(
    size: int, house: Path, sim: SimulatorProcess, args: argparse.Namespace, results: Results
) -> None:
    """Scenario 5: `practice-sync transform` publishing the whole warehouse to an empty
    database, then a run after a night of changes publishing only what changed."""
    with postgres_database() as url:
        env = pipeline_env(house, sim, args.concurrency)
        env.update(PRACTICE_SYNC__PUBLISH='["postgres"]', DESTINATION__POSTGRES__CREDENTIALS=url)
        log(f"  {S5}: first publish (practice-sync transform) ...")
        first = run_cli(["transform"], env, sim, house / "log-5a.txt")
        added, _, first_s = published(first.output)
        results.rows.append(Row(S5, "postgres", size, None, added, first, publish_s=first_s))
        log(describe(results.rows[-1]) + f", publish step {first_s:.1f} s")
        night = sim.night_of_changes(**{**NIGHT, "seed": 2})
        sim.warm()
        log(f"  {S5}: night of changes, practice-sync run --source bizstim ...")
        again = run_cli(["run", "--quiet", "--source", "bizstim"], env, sim, house / "log-5b.txt")
        sent, removed, night_s = published(again.output)
        results.rows.append(Row(S5, "postgres", size, None, sent, again, publish_s=night_s))
        log(describe(results.rows[-1]) + f", publish step {night_s:.1f} s")
    results.notes.append(
        f"Scenario 5 (publish to PostgreSQL, {size:,} sessions): the first publish sent "
        f"{added:,} rows in {first_s:.1f} s (the publish step; the whole `transform` took "
        f"{first.wall_s:.1f} s); after a night of changes ({len(night['edited']):,} edited, "
        f"{len(night['deleted']):,} deleted, {len(night['added']):,} new sessions) it sent "
        f"{sent:,} rows and {removed:,} deletions in {night_s:.1f} s "
        f"({night_s / first_s if first_s else 0:.2f}× the first publish; the `run` took "
        f"{again.wall_s:.1f} s in all)."
    )
    for run in (first, again):
        if run.exit_code:
            log("  output:\n" + run.output[-2000:])


def timetap(args: argparse.Namespace, work: Path, results: Results) -> None:
    """Scenario 1 (and 2 with --timetap-reruns) for TimeTap, per latency."""
    clients = args.clients
    log(f"TimeTap {clients:,} clients: starting the simulator (own process, edge_cases=False)")
    with SimulatorProcess(sessions=1, clients=clients, seed=args.seed) as sim:
        assert sim.info is not None
        log(f"  generated in {sim.info.generate_s:.1f} s")
        scenarios = (S1, S2) if args.timetap_reruns else (S1,)
        floors: dict[float, Floor] = {}
        houses = {lat: work / f"timetap-{clients}-lat{lat:g}" for lat in args.latencies}
        for scenario in scenarios:
            for lat in args.latencies:
                sim.set_latency(lat)
                if lat not in floors:
                    expect = (clients / args.concurrency) * lat
                    log(
                        f"  floor at latency {lat:g} s ("
                        + (f"~{expect:.0f} s of latency alone" if lat else "no latency")
                        + ") ..."
                    )
                    floors[lat] = measure_floor(sim, "timetap", args.concurrency, work)
                    f = floors[lat].result
                    log(
                        f"    download {f.download_s:.2f} s ({f.requests / f.download_s:,.0f} "
                        f"requests/s) + read_json {f.read_json_s:.2f} s"
                    )
                    reused = False
                else:
                    reused = True
                log(f"  {scenario}, latency {lat:g} s: practice-sync run --source timetap ...")
                env = pipeline_env(houses[lat], sim, args.concurrency)
                run = run_cli(
                    ["run", "--quiet", "--source", "timetap"],
                    env,
                    sim,
                    houses[lat] / f"log-{scenario[0]}.txt",
                )
                rows = floors[lat].result.rows
                row = Row(scenario, "timetap", clients, lat, rows, run, floors[lat], reused)
                results.rows.append(row)
                log(describe(row))
                if run.exit_code:
                    log("  output:\n" + run.output[-2000:])


# -- report ------------------------------------------------------------------------------------


def machine() -> list[str]:
    """What the numbers were measured on: they mean little without it."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = "unknown"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / GIB:.1f} GiB"
    import dlt

    commit = _git("rev-parse", "--short", "HEAD")
    dirty = _git("status", "--porcelain", "--", "pipelines", "transforms")
    changed = len(dirty.splitlines()) if dirty else 0
    return [
        f"- date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: {cpu}, {os.cpu_count()} cores, {ram} RAM, {platform.platform()}",
        f"- Python {platform.python_version()}, dlt {dlt.__version__}, duckdb {duckdb.__version__}",
        f"- code: commit {commit or '?'}"
        + (f" with {changed} uncommitted file(s) in pipelines/ and transforms/" if changed else ""),
    ]


def code_fingerprint() -> str:
    """Hash of the code under test: other people may change it while a 20-minute run goes on."""
    digest = hashlib.sha1(usedforsecurity=False)
    for folder in ("pipelines", "transforms"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix in (".py", ".sql") and path.is_file():
                digest.update(path.relative_to(ROOT).as_posix().encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def table(results: Results) -> list[str]:
    lines = [
        "| scenario | source | size | latency | wall s | CPU s | peak RSS MiB | rows/s | floor s "
        "(download + read_json) | ratio | simulator CPU s (pipeline / floor) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for row in results.rows:
        run = row.run
        wall = f"{run.wall_s:.1f}" + ("" if run.exit_code == 0 else f" (exit {run.exit_code})")
        size = f"{row.size:,} " + ("clients" if row.source == "timetap" else "sessions")
        latency = "—" if row.latency is None else f"{row.latency * 1000:g} ms"
        rate = f"{row.rows / run.wall_s:,.0f}" if run.wall_s else "—"
        if row.floor is not None:
            f = row.floor.result
            ref = f"{f.seconds:.1f} ({f.download_s:.1f} + {f.read_json_s:.1f})"
            if f.confirmations:
                ref = (
                    f"{f.seconds:.1f} ({f.download_s:.1f} + {f.confirm_s:.1f} for "
                    f"{f.confirmations:,} lookups + {f.read_json_s:.1f})"
                )
            ref += " as in 1" if row.floor_reused else ""
            sim_cpu = f"{run.sim_cpu_s:.1f} / {row.floor.sim_cpu_s:.1f}"
        elif row.publish_s is not None:
            ref = f"publish step {row.publish_s:.1f}"
            sim_cpu = f"{run.sim_cpu_s:.1f} / —"
        else:
            ref = f"CTAS {row.baseline_s:.1f}" if row.baseline_s is not None else "—"
            sim_cpu = f"{run.sim_cpu_s:.1f} / —"
        ratio = f"{row.ratio:.2f}×" if row.ratio is not None else "—"
        lines.append(
            f"| {row.scenario} | {row.source} | {size} | {latency} | {wall} | {run.cpu_s:.1f} | "
            f"{run.peak_rss_kib / 1024:,.0f} | {rate} | {ref} | {ratio} | {sim_cpu} |"
        )
    return lines


@dataclass
class Target:
    name: str
    value: str
    limit: str
    ok: bool | None  # None: not measured in this run

    @property
    def verdict(self) -> str:
        return "n/a" if self.ok is None else ("PASS" if self.ok else "MISS")


def targets(results: Results, args: argparse.Namespace) -> list[Target]:
    """The issue's targets, judged at the largest size and the largest latency that ran."""
    big, small = max(args.sizes), min(args.sizes)
    slow = max(args.latencies)
    note = "" if big == 1_000_000 else f" (at {big:,}; stated for 1,000,000)"
    out: list[Target] = []

    def ratio_target(name: str, row: Row | None, limit: float) -> None:
        if row is None or row.ratio is None:
            out.append(Target(name + note, "not measured" if row is None else "failed", "", None))
            return
        out.append(Target(name + note, f"{row.ratio:.2f}×", f"≤ {limit:g}×", row.ratio <= limit))

    # issue 14's targets (a night: 1% edited, 0.1% deleted, 0.5% new)
    fast = 0.0 in args.latencies
    ratio_target(
        "night of changes, Bizstim, no latency",
        results.find(S3, "bizstim", big, 0.0) if fast else None,
        2.0,
    )
    ratio_target(
        "first full sync, Bizstim, no latency",
        results.find(S1, "bizstim", big, 0.0) if fast else None,
        2.5,
    )
    if slow > 0:
        for scenario, name, limit in (
            (S3, "night of changes", 1.15),
            (S2, "no-change re-run", 1.10),
            (S1, "first full sync", 1.25),
        ):
            ratio_target(
                f"{name}, Bizstim, {slow * 1000:g} ms latency",
                results.find(scenario, "bizstim", big, slow),
                limit,
            )
    for lat, limit in ((0.0, 2.0), (slow, 1.25)) if slow > 0 else ((0.0, 2.0),):
        tt = results.find(S1, "timetap", args.clients, lat) if lat in args.latencies else None
        name = f"TimeTap {args.clients:,} clients, {lat * 1000:g} ms latency"
        if tt is None or tt.ratio is None:
            out.append(Target(name, "not measured", f"≤ {limit:g}×", None))
        else:
            out.append(Target(name, f"{tt.ratio:.2f}×", f"≤ {limit:g}×", tt.ratio <= limit))
    night, full = results.analytics_s.get("night"), results.analytics_s.get("full")
    if night is not None and full:
        out.append(Target("analytics update after a night vs a full rebuild" + note,
                          f"{night / full:.0%} ({night:.2f} vs {full:.2f} s)", "≤ 15%",
                          night / full <= 0.15))  # fmt: skip
    peaks = {
        size: max(
            (r.run.peak_rss_kib for r in results.rows if r.source == "bizstim" and r.size == size),
            default=0,
        )
        for size in args.sizes
    }
    if peaks.get(big):
        mib = peaks[big] / 1024
        out.append(Target("peak RSS" + note, f"{mib:,.0f} MiB", "≤ 1 GiB", peaks[big] <= GIB))
        if big != small and peaks.get(small):
            growth = peaks[big] / peaks[small]
            out.append(
                Target(
                    f"peak RSS at {big:,} vs {small:,} sessions",
                    f"{growth:.2f}× ({mib:,.0f} vs {peaks[small] / 1024:,.0f} MiB)",
                    "≤ 1.3×",
                    growth <= 1.3,
                )
            )
        else:
            out.append(Target("peak RSS growth between sizes", "one size only", "≤ 1.3×", None))
    out.extend(rss_targets(results, args))
    transform = results.find(S4, "transforms", big, None)
    if transform is not None:
        ratio_target("transforms vs bare CREATE TABLE AS", transform, 3.0)
    many = next((r for r in results.rows if r.scenario == S6), None)
    if many is not None:
        name = f"{args.accounts} accounts x {args.account_sessions:,} sessions, {slow * 1000:g} ms"
        if many.ratio is None:
            out.append(Target(name, "failed", "≤ 1.25×", None))
        else:
            out.append(Target(name, f"{many.ratio:.2f}×", "≤ 1.25×", many.ratio <= 1.25))
        mib = many.run.peak_rss_kib / 1024
        out.append(Target(f"peak RSS, {name}", f"{mib:,.0f} MiB", "≤ 1 GiB", mib <= 1024))
    return out


def _short(sessions: int) -> str:
    for unit, name in ((1_000_000, "M"), (1_000, "k")):
        if sessions % unit == 0:
            return f"{sessions // unit}{name}"
    return f"{sessions:,}"


def rss_targets(results: Results, args: argparse.Namespace) -> list[Target]:
    """Scenario 7: peak RSS at `--rss-size` ≤ 1 GiB and ≤ 1.15× the same run (first full sync,
    no latency) at the largest `--sizes`: the pipeline's memory must not follow the data."""
    size, big = args.rss_size, max(args.sizes)
    if not size:
        return []
    at = results.find(S7, "bizstim", size, 0.0) or results.find(S1, "bizstim", size, 0.0)
    base = results.find(S1, "bizstim", big, 0.0)
    if at is None or at.run.exit_code:
        name = f"peak RSS at {size:,} sessions"
        return [Target(name, "not measured" if at is None else "failed", "≤ 1 GiB", None)]
    mib = at.run.peak_rss_kib / 1024
    out = [Target(f"peak RSS at {size:,} sessions", f"{mib:,.0f} MiB", "≤ 1 GiB", mib <= 1024)]
    name = f"peak RSS {_short(size)} vs {_short(big)} (first full sync, no latency)"
    if base is None or base.run.exit_code:
        out.append(Target(name, "not measured" if base is None else "failed", "≤ 1.15×", None))
    else:
        growth = at.run.peak_rss_kib / base.run.peak_rss_kib
        value = f"{growth:.2f}× ({mib:,.0f} vs {base.run.peak_rss_kib / 1024:,.0f} MiB)"
        out.append(Target(name, value, "≤ 1.15×", growth <= 1.15))
    return out


def render(results: Results, args: argparse.Namespace, command: str, header: list[str]) -> str:
    checks = targets(results, args)
    lines = [
        "# practice-sync benchmark",
        "",
        f"`{command}`",
        "",
        *header,
        f"- settings: sizes {', '.join(f'{s:,}' for s in args.sizes)} sessions; TimeTap "
        f"{args.clients:,} clients; latencies {', '.join(f'{x * 1000:g} ms' for x in args.latencies)};"
        f" concurrency {args.concurrency}",
        "",
        *table(results),
        "",
        "| target | measured | limit | verdict |",
        "|---|---|---|---|",
        *(f"| {t.name} | {t.value} | {t.limit} | {t.verdict} |" for t in checks),
        "",
        "How to read it:",
        "",
        "- wall s, CPU s (user + system) and peak RSS are the `practice-sync` child process's "
        "(started as cron would, reaped with wait4: ru_maxrss), including interpreter start-up "
        "and, for `run`, the analytics rebuild that ends every run. CPU s close to wall s means "
        "the run was bound by one core (the GIL), not by the network.",
        "- floor: the pipeline's own page URLs (`/sessions/{start}/1000`, starts 0, 999, 1998, … "
        "overlapping by one row; for TimeTap token + /clientIdList + /package + one call per "
        "client) fetched with the same concurrency by plain `http.client` threads that only "
        "write the bytes to files, then one DuckDB `read_json` into a table in a DuckDB file. "
        "ratio = pipeline wall / floor. A re-run with no change fetches the same pages, so its "
        "floor is the one measured for scenario 1 at that latency. After the night of changes the "
        "floor also looks up each deleted session once (`GET /session/{id}`, same concurrency, "
        "after the sweep), as the pipeline must before it retires one.",
        "- the simulator runs in its own process and pre-renders every page before anything is "
        "timed (again after the night of changes) into a temporary page file, so both the floor "
        "and the pipeline read pre-rendered bytes (one pread a page) while the simulator holds "
        "only its compact rows. Its CPU seconds during each measurement are in the last column: "
        "far below the wall time means it was idle most of the time, not the bottleneck.",
        "",
        *(f"- {note}" for note in results.notes),
    ]
    return "\n".join(lines) + "\n"


# -- entry point -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.py", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke size: 5,000 / 300")
    parser.add_argument("--sizes", help="Bizstim sessions, comma-separated (100000,1000000)")
    parser.add_argument("--clients", type=int, help="TimeTap clients (20000); 0 skips TimeTap")
    parser.add_argument("--latencies", default="0,0.15", help="seconds added per response")
    parser.add_argument("--concurrency", type=int, default=8, help="both sources' concurrency")
    parser.add_argument("--out", default="benchmarks/results/latest.md", help="Markdown copy")
    parser.add_argument("--seed", type=int, default=7, help="simulator seed")
    parser.add_argument(
        "--timetap-reruns", action="store_true", help="also time TimeTap no-change re-runs"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp warehouses")
    parser.add_argument("--accounts", type=int, help="scenario 6: Bizstim accounts (50; 0 skips)")
    parser.add_argument("--account-sessions", type=int, help="scenario 6: sessions per account")
    parser.add_argument(
        "--account-concurrency", type=int, default=4, help="scenario 6: accounts at once"
    )
    parser.add_argument("--only-accounts", action="store_true", help="run scenario 6 alone")
    parser.add_argument(
        "--rss-size", type=int, help="scenario 7: sessions (5000000; --quick 10000; 0 skips)"
    )
    parser.add_argument(
        "--only-rss",
        action="store_true",
        help="only the first full syncs at no latency at --sizes and --rss-size (peak RSS)",
    )
    parser.add_argument(
        "--no-publish",
        dest="publish",
        action="store_false",
        help="skip scenario 5 (needs PostgreSQL: 127.0.0.1:5432 or PRACTICE_SYNC_BENCH_POSTGRES)",
    )
    args = parser.parse_args(argv)
    if args.accounts is None:
        args.accounts = 3 if args.quick else 50
    if args.account_sessions is None:
        args.account_sessions = 500 if args.quick else 20_000
    sizes = args.sizes or ("5000" if args.quick else "100000,1000000")
    args.sizes = [int(s) for s in sizes.split(",") if s.strip()]
    if args.clients is None:
        args.clients = 300 if args.quick else 20_000
    if args.rss_size is None:
        args.rss_size = 10_000 if args.quick else 5_000_000
    args.latencies = [float(x) for x in args.latencies.split(",") if x.strip()]
    if not args.sizes or not args.latencies or args.concurrency < 1:
        parser.error("--sizes and --latencies need at least one value; concurrency >= 1")
    return args


@contextlib.contextmanager
def workdir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="practice-sync-bench-"))
    try:
        yield path
    finally:
        if keep:
            log(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python3 dev.py bench " + " ".join(sys.argv[1:] if argv is None else argv)
    if not CLI.exists():
        print(f"{CLI} not found: run `python3 dev.py lint` once to install", file=sys.stderr)
        return 2
    results = Results()
    header = machine()
    fingerprint = code_fingerprint()
    header.append(f"- code under test: pipelines/ + transforms/ content hash {fingerprint}")
    with workdir(args.keep) as work:
        log(f"work dir {work}")
        if args.only_rss:
            for size in sorted({*args.sizes, args.rss_size} - {0}):
                first_sync_only(size, S1 if size in args.sizes else S7, args, work, results)
        elif not args.only_accounts:
            for size in sorted(args.sizes):
                bizstim_size(size, args, work, results)
            if args.rss_size and args.rss_size not in args.sizes:
                first_sync_only(args.rss_size, S7, args, work, results)
            if args.clients > 0:
                timetap(args, work, results)
        if args.accounts > 0 and not args.only_rss:
            many_accounts(args, work, results)
    if code_fingerprint() != fingerprint:
        results.notes.insert(
            0,
            "WARNING: pipelines/ or transforms/ changed while this benchmark ran; rows measured "
            "before and after the change are not comparable.",
        )
    text = render(results, args, command.strip(), header)
    print(text)
    out = Path(args.out)
    if not out.is_absolute():
        out = ROOT / out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    log(f"written to {out}")
    failed = [r for r in results.rows if r.run.exit_code != 0]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
