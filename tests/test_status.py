"""`practice-sync status`, run as the real CLI against the simulator: what the person on call sees
after a few nights, and the exit codes a monitor alerts on (0 fresh, 2 nothing to read, 9 stale).

Runs record themselves in `ops.run_history`, copied into the serving file. Where a run does not
(yet) write it, `History` stands in: it builds the same rows from each run's printed summary and
rewrites them into the serving file after every run (a run replaces that file). As soon as a run
leaves the real table in the serving file, the tests read that instead.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
from conftest import Env, Result, summary_lines

from practice_sync.simulator import Fault, Simulator

STALE_EXIT = 9
COUNTS = ("rows_new", "rows_changed", "rows_retired", "rows_current")
HISTORY_DDL = """
create schema if not exists ops;
create or replace table ops.run_history (
    run_id VARCHAR, source VARCHAR, started_at TIMESTAMPTZ, finished_at TIMESTAMPTZ,
    duration_s DOUBLE, outcome VARCHAR, exit_code INTEGER, requests BIGINT, retries BIGINT,
    rows_new BIGINT, rows_changed BIGINT, rows_retired BIGINT, rows_current BIGINT,
    data_issues BIGINT, error VARCHAR)
"""
SOURCE_LINE = re.compile(
    r"^(bizstim|timetap): (ok|FAILED|skipped)(?: — ([\d,]+) requests, ([\d,]+) retries)?"
)
TABLE_LINE = re.compile(
    r"^  (bizstim|timetap)\.\w+: ([\d,]+) new, ([\d,]+) changed, ([\d,]+) retired, ([\d,]+) current"
)


def serving_file(env: Env) -> Path:
    return env.database.with_name(f"{env.database.stem}_analytics.duckdb")


def has_history(path: Path) -> bool:
    if not path.exists():
        return False
    with contextlib.closing(duckdb.connect(str(path), read_only=True)) as con:
        return bool(
            con.execute(
                "select count(*) from duckdb_tables() where schema_name = 'ops' "
                "and table_name = 'run_history'"
            ).fetchone()[0]
        )


def summary_counts(result: Result) -> dict[str, dict[str, int]]:
    """Per source, the new/changed/retired/current a run printed, summed over its tables."""
    out: dict[str, dict[str, int]] = {}
    for line in summary_lines(result.stdout):
        match = TABLE_LINE.match(line)
        if match:
            counts = out.setdefault(match.group(1), dict.fromkeys(COUNTS, 0))
            for name, value in zip(COUNTS, match.groups()[1:], strict=True):
                counts[name] += int(value.replace(",", ""))
    return out


def rows_from_summary(result: Result, run_id: str, started: datetime, finished: datetime) -> list:
    """The run-history rows of one run, read back from what it printed."""
    rows, current, counts = [], None, summary_counts(result)
    seconds = (finished - started).total_seconds()
    for line in summary_lines(result.stdout):
        match = SOURCE_LINE.match(line)
        if match:
            source, state, requests, retries = match.groups()
            outcome = {"ok": "ok", "FAILED": "failed", "skipped": "skipped"}[state]
            code = result.code if outcome == "failed" else 0
            current = [run_id, source, started, finished, seconds, outcome, code,
                       int((requests or "0").replace(",", "")), int((retries or "0").replace(",", "")),
                       *(counts.get(source, {}).get(n) for n in COUNTS), None, None]  # fmt: skip
            rows.append(current)
        elif current and line.startswith("  ! "):
            current[5], current[6], current[14] = "withheld", 3, line[4:]
        elif current and line.startswith("  error: "):
            current[14] = line[len("  error: ") :]
    issues = re.search(r"^data issues: ([\d,]+)", result.stdout, re.M)
    failed = re.search(r"^transforms: FAILED — (.*)$", result.stdout, re.M)
    rows.append([run_id, "analytics", started, finished, seconds,
                 "failed" if failed else "ok", result.code if failed else 0, None, None,
                 None, None, None, None, int(issues.group(1).replace(",", "")) if issues else None,
                 failed.group(1) if failed else None])  # fmt: skip
    return rows


@dataclass
class History:
    """`env.run("run")` that leaves ops.run_history in the serving file, real or stood in."""

    env: Env
    rows: list = field(default_factory=list)
    real: bool | None = None  # decided after the first run: does the run write it itself?

    def run(self, *args: str) -> Result:
        started = datetime.now(UTC)
        result = self.env.run("run", "--quiet", *args)
        finished = datetime.now(UTC)
        if self.real is None:
            self.real = has_history(serving_file(self.env))
        if not self.real:
            run_id = f"test-{len(self.rows)}"
            self.rows.extend(rows_from_summary(result, run_id, started, finished))
            self.write()
        return result

    def write(self) -> None:
        with contextlib.closing(duckdb.connect(str(serving_file(self.env)))) as con:
            con.execute(HISTORY_DDL)
            con.executemany(
                "insert into ops.run_history values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                self.rows,
            )


def status_json(env: Env, *args: str) -> tuple[int, dict]:
    result = env.run("status", "--json", *args)
    assert result.code in (0, STALE_EXIT), result.stderr
    return result.code, json.loads(result.stdout)


def by_source(document: dict) -> dict[str, dict]:
    return {item["source"]: item for item in document["sources"]}


def table_row(text: str, source: str) -> list[str]:
    """The cells of one source's line in the text table (cells are split on 2+ spaces)."""
    line = next(line for line in text.splitlines() if line.startswith(f"{source} "))
    return re.split(r"\s{2,}", line.strip())


def test_status_shows_each_sources_last_success_counts_and_issues(env: Env, sim: Simulator) -> None:
    missing = env.run("status")
    assert missing.code == 2 and "There is no serving file" in missing.stderr
    assert missing.stderr.count("\n") == 1  # one sentence
    history = History(env)
    assert history.run().code == 0
    sim.bizstim.night_of_changes(edit=0.05, delete=0.01, new=0.02, seed=1)
    last = history.run()
    assert last.code == 0, last.stderr
    printed = summary_counts(last)
    assert printed["bizstim"]["rows_changed"] > 0 and printed["bizstim"]["rows_new"] > 0

    code, document = status_json(env)
    assert code == 0 and document["stale"] is False and document["max_age_s"] is None
    assert document["serving_file"] == str(serving_file(env))
    sources = by_source(document)
    assert list(sources) == ["bizstim", "timetap", "analytics"]
    current = env.query("select count(*) from bizstim.sessions where _dlt_valid_to is null")
    assert sources["bizstim"]["rows_current"] == current[0][0]
    issues = dict(env.query("select source, count(*) from analytics.data_issues group by 1"))
    for source in ("bizstim", "timetap"):
        item = sources[source]
        assert {n: item[n] for n in COUNTS} == printed[source]
        assert item["open_issues"] == issues.get(source, 0)
        assert item["last_outcome"] == item["last_success_outcome"] == "ok"
        assert item["stale"] is False and item["configured"] is True
        assert 0 <= item["age_s"] < 3600 and item["last_error"] is None
    assert sources["analytics"]["last_outcome"] == "ok"

    text = env.run("status")
    assert text.code == 0, text.stderr
    cells = table_row(text.stdout, "bizstim")
    assert cells[1] == "ok" and cells[-1] == "ok"
    expected = [f"{printed['bizstim'][n]:,}" for n in COUNTS] + [f"{issues['bizstim']:,}"]
    assert cells[4:9] == expected
    assert "source" in text.stdout and "last success (UTC)" in text.stdout
    assert not any(line.startswith("!") for line in text.stdout.splitlines())

    assert env.run("status", "--max-age", "26h").code == 0
    time.sleep(2)  # the last success is now more than 1 s old
    stale = env.run("status", "--max-age", "1s")
    assert stale.code == STALE_EXIT, stale.stderr
    assert table_row(stale.stdout, "bizstim")[1] == "STALE"
    code, document = status_json(env, "--max-age", "1s")
    assert code == STALE_EXIT and document["stale"] is True and document["max_age_s"] == 1
    assert all(item["stale"] for item in document["sources"])
    assert env.run("status", "--max-age", "2 weeks").code == 2  # not an age: a usage error


def test_status_names_a_failed_last_run_and_a_source_that_never_succeeded(
    env: Env, sim: Simulator, tmp_path: Path
) -> None:
    history = History(env)
    sim.add_fault(Fault(path=r"/sessions/", kind="503", times=10**6))
    assert history.run().code == 4
    code, document = status_json(env)
    bizstim = by_source(document)["bizstim"]
    assert code == 0 and bizstim["stale"] is True and bizstim["last_success_at"] is None
    assert bizstim["last_outcome"] == "failed" and bizstim["last_exit_code"] == 4
    assert by_source(document)["timetap"]["stale"] is False
    never = env.run("status", "--max-age", "26h")
    assert never.code == STALE_EXIT
    assert table_row(never.stdout, "bizstim")[1:4] == ["NEVER", "-", "never"]

    sim.clear_faults()
    good = history.run()
    assert good.code == 0, good.stderr
    sim.add_fault(Fault(path=r"/sessions/", kind="503", times=10**6))
    assert history.run().code == 4
    text = env.run("status", "--max-age", "26h")
    assert text.code == 0, text.stderr  # the data is fresh; the failure is shown, not exited on
    assert table_row(text.stdout, "bizstim")[-1] == "failed (exit 4)"
    warning = next(line for line in text.stdout.splitlines() if line.startswith("! bizstim"))
    assert "failed (exit 4): " in warning and "Bizstim" in warning
    bizstim = by_source(status_json(env)[1])["bizstim"]
    assert {n: bizstim[n] for n in COUNTS} == summary_counts(good)["bizstim"]
    assert bizstim["last_error"] and bizstim["last_outcome"] == "failed"

    old = tmp_path / "before_history.duckdb"  # a serving file from before the run history
    with contextlib.closing(duckdb.connect(str(old))) as con:
        con.execute(f"attach '{serving_file(env)}' as s (read_only)")
        con.execute("create schema analytics")
        con.execute("create table analytics.sessions as select * from s.analytics.sessions")
    result = env.run("status", "--database", str(old))
    assert result.code == 2 and "has no run history yet" in result.stderr


def test_a_publish_destination_is_judged_by_its_own_last_success(env: Env, tmp_path: Path) -> None:
    """Dashboards on the server are as old as its last successful publish, whatever the sources
    did: a failed (exit 10) or skipped publish (the rebuild failed) does not make it fresh."""
    now = datetime.now(UTC).replace(microsecond=0)
    hours = {"A": 30, "B": 2, "C": 1}  # three runs, this many hours ago
    runs = {  # source -> outcome, exit code, error, in each run
        "A": [("bizstim", "ok", 0, None), ("analytics", "ok", 0, None),
              ("publish.postgres", "ok", 0, None)],
        "B": [("bizstim", "ok", 0, None), ("analytics", "ok", 0, None),
              ("publish.postgres", "failed", 10, "The analytics tables were rebuilt but could "
               "not be published to postgres (server down); …")],
        "C": [("bizstim", "ok", 0, None), ("analytics", "failed", 7, "The analytics tables "
               "could not be rebuilt (…)."),
              ("publish.postgres", "skipped", 0, "Not published to postgres: the analytics "
               "tables could not be rebuilt, so it keeps its last complete state.")],
    }  # fmt: skip
    history = tmp_path / "history.duckdb"
    with contextlib.closing(duckdb.connect(str(history))) as con:
        con.execute(HISTORY_DDL)
        for run, rows in runs.items():
            at = now - timedelta(hours=hours[run])
            for source, outcome, code, error in rows:
                sent = (
                    (5, None, 2, 40) if source.startswith("publish") and code == 0 else (None,) * 4
                )
                con.execute(
                    "insert into ops.run_history values (?, ?, ?, ?, 1.5, ?, ?, null, null, "
                    "?, ?, ?, ?, null, ?)",
                    [run, source, at - timedelta(minutes=5), at, outcome, code, *sent, error],
                )
    result = env.run("status", "--database", str(history), "--max-age", "26h")
    assert result.code == STALE_EXIT, result.stderr
    assert table_row(result.stdout, "publish.postgres")[1:4] == [
        "STALE", (now - timedelta(hours=30)).strftime("%Y-%m-%d %H:%M:%S"), "1d 6h"
    ]  # fmt: skip
    assert (
        table_row(result.stdout, "bizstim")[1] == table_row(result.stdout, "analytics")[1] == "ok"
    )
    assert table_row(result.stdout, "publish.postgres")[-1] == "skipped"
    warnings = [line for line in result.stdout.splitlines() if line.startswith("! ")]
    assert [line.split(":")[0] for line in warnings] == ["! analytics", "! publish.postgres"]
    assert warnings[1].endswith("skipped: " + runs["C"][2][3])

    code, document = status_json(env, "--database", str(history), "--max-age", "26h")
    assert code == STALE_EXIT and document["stale"] is True
    sources = by_source(document)
    assert list(sources) == ["bizstim", "analytics", "publish.postgres"]
    destination = sources["publish.postgres"]
    assert {k: destination[k] for k in ("kind", "configured", "stale", "last_outcome")} == {
        "kind": "destination", "configured": True, "stale": True, "last_outcome": "skipped"
    }  # fmt: skip
    assert {n: destination[n] for n in COUNTS} == {
        "rows_new": 5, "rows_changed": None, "rows_retired": 2, "rows_current": 40
    }  # fmt: skip
    assert destination["open_issues"] is None and 30 * 3600 <= destination["age_s"] < 31 * 3600
    assert [s["stale"] for s in document["sources"]] == [False, False, True]
    assert env.run("status", "--database", str(history), "--max-age", "31h").code == 0
