"""Publishing `analytics` to a real PostgreSQL server (see tests/pg.py for which server and how
to point at another one): equal to DuckDB row by row and type by type after a first load and a
night of changes, a night sends only its changes, and a failed publish changes nothing on the
server, exits 10 with one sentence, and is caught up by the next run. Every run records each
destination's outcome in `ops.run_history` (`publish.postgres`), which `status` shows."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path

import duckdb
import pytest
from accounts_fixtures import ZONES, accounts_env, expected_sessions, two_accounts
from conftest import Env, make_env, summary_lines, wait_until_paused
from pg import (
    assert_same,
    duckdb_analytics,
    fresh_database,
    pg_analytics,
    pg_query,
    with_port,
    with_user,
)

from practice_sync import publish
from practice_sync.report import RunReport
from practice_sync.simulator import Simulator

SETTING = "DESTINATION__POSTGRES__CREDENTIALS"


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url


def publishing(env: Env, url: str) -> Env:
    env.vars["PRACTICE_SYNC__PUBLISH"] = '["postgres"]'
    env.vars[SETTING] = url
    return env


DESTINATION_ROW = (
    "run_id, outcome, exit_code, error, rows_new, rows_retired, rows_current, duration_s"
)


def serving_file(env: Env) -> Path:
    return env.database.with_name(f"{env.database.stem}_analytics.duckdb")


def publish_rows(path: Path) -> list[tuple]:
    """The `publish.postgres` rows of a DuckDB file's run history, oldest first."""
    with contextlib.closing(duckdb.connect(str(path), read_only=True)) as con:
        return con.execute(
            f"select {DESTINATION_ROW} from ops.run_history where source = 'publish.postgres' "
            "order by finished_at"
        ).fetchall()


def run_rows(env: Env, run_id: str) -> list[tuple]:
    """(source, outcome, exit_code, finished_at) of every row one run wrote, by source."""
    return env.query(
        "select source, outcome, exit_code, finished_at from ops.run_history where run_id = ? "
        "order by source",
        [run_id],
    )


def destination_status(env: Env) -> tuple[dict, list[str], str]:
    """`status --json`'s publish.postgres entry, its line of `status` and the `!` lines."""
    document = env.run("status", "--json")
    assert document.code == 0, document.stderr
    (item,) = [s for s in json.loads(document.stdout)["sources"] if s["source"].startswith("pub")]
    text = env.run("status")
    assert text.code == 0, text.stderr
    lines = text.stdout.splitlines()
    line = next(line for line in lines if line.startswith("publish.postgres "))
    warnings = "\n".join(line for line in lines if line.startswith("! "))
    return item, re.split(r"\s{2,}", line.strip()), warnings


def total_rows(analytics: dict) -> int:
    return sum(sum(rows.values()) for _, rows in analytics.values())


def published(stdout: str) -> str:
    """The summary's publishing line without its seconds: `analytics: 5 rows added, 1 removed`."""
    line = next(m for m in summary_lines(stdout) if m.startswith("published to postgres: "))
    assert re.fullmatch(r".* in [0-9,]+\.\d s", line), line
    return line.removeprefix("published to postgres: ").rsplit(" in ", 1)[0]


def test_published_schema_equals_duckdb_after_a_first_load_and_a_night(
    sim: Simulator, tmp_path: Path, pg_url: str
) -> None:
    env = publishing(make_env(sim, tmp_path), pg_url)
    first = env.run("run")
    assert first.code == 0, first.stderr
    duck = duckdb_analytics(str(env.database))
    assert_same(duck, pg_analytics(pg_url))
    total = total_rows(duck)
    assert published(first.stdout) == f"analytics: {total:,} rows added, 0 removed"
    # the cases that break a naive copy arrived as they are in DuckDB
    flagged = pg_query(
        pg_url,
        "select count(*) from analytics.sessions where is_start_in_dst_gap "
        "or is_start_in_dst_overlap or is_end_in_dst_gap or is_end_in_dst_overlap",
    )[0][0]
    assert flagged > 0
    assert (
        pg_query(pg_url, "select count(*) from analytics.packages where price is not null")[0][0]
        > 0
    )

    night = sim.bizstim.night_of_changes(edit=0.05, delete=0.02, new=0.03, seed=3)
    second = env.run("run")
    assert second.code == 0, second.stderr
    after = duckdb_analytics(str(env.database))
    assert_same(after, pg_analytics(pg_url))
    ids = {row[0] for row in pg_query(pg_url, "select session_id from analytics.sessions")}
    assert ids.isdisjoint(int(i) for i in night["deleted"])
    assert {int(i) for i in night["added"]} <= ids
    # only the night's changes travelled: exactly the rows that differ, far fewer than all
    added = sum(sum((after[t][1] - duck[t][1]).values()) for t in after)
    removed = sum(sum((duck[t][1] - after[t][1]).values()) for t in duck)
    assert published(second.stdout) == f"analytics: {added:,} rows added, {removed:,} removed"
    assert 0 < added < total / 4 and removed > 0

    # `transform` publishes too; with nothing changed it sends nothing
    again = env.run("transform")
    assert again.code == 0, again.stderr
    assert published(again.stdout) == "analytics: 0 rows added, 0 removed"
    assert_same(after, pg_analytics(pg_url))

    # each publish left its row in the run history: what it sent, what the server holds
    rows = publish_rows(env.database)
    assert [row[1:7] for row in rows] == [
        ("ok", 0, None, total, 0, total),
        ("ok", 0, None, added, removed, total_rows(after)),
        ("ok", 0, None, 0, 0, total_rows(after)),
    ]
    assert all(row[7] > 0 for row in rows)  # seconds spent publishing
    assert publish_rows(serving_file(env)) == rows  # where `status` reads it
    # the destination's row sits with its run's sources and rebuild, at the run's one instant
    night = run_rows(env, rows[1][0])
    assert [r[:3] for r in night] == [
        ("analytics", "ok", 0), ("bizstim", "ok", 0), ("publish.postgres", "ok", 0),
        ("timetap", "ok", 0),
    ]  # fmt: skip
    assert len({r[3] for r in night}) == 1
    assert [r[:3] for r in run_rows(env, rows[2][0])] == [  # `transform`: no source ran
        ("analytics", "ok", 0), ("publish.postgres", "ok", 0),
    ]  # fmt: skip


@pytest.mark.parametrize("problem", ["server down", "refused login"])
def test_a_failed_publish_keeps_the_server_and_the_next_run_catches_up(
    sim: Simulator, tmp_path: Path, pg_url: str, problem: str
) -> None:
    env = publishing(make_env(sim, tmp_path, timetap=False), pg_url)
    assert env.run("run").code == 0
    before = pg_analytics(pg_url)
    sim.bizstim.night_of_changes(edit=0.05, delete=0.02, new=0.03, seed=5)
    if problem == "server down":  # nothing listens on port 9 (discard) of the loopback
        env.vars[SETTING] = with_port(pg_url, 9)
        cause = 'connection to server at "127.0.0.1", port 9 failed: Connection refused'
    else:  # trust auth takes any password, but not a role that does not exist
        env.vars[SETTING] = with_user(pg_url, "no_such_role", "s3cret-password")
        cause = 'FATAL:  role "no_such_role" does not exist'
    failed = env.run("run")
    assert failed.code == 10, failed.stderr
    errors = [m for m in summary_lines(failed.stderr) if "could not be published to postgres" in m]
    assert errors, failed.stderr
    sentence = errors[-1]
    assert sentence.endswith(
        "the server keeps its last complete state and the next run catches it up: check "
        "destination.postgres.credentials (DESTINATION__POSTGRES__CREDENTIALS)."
    )
    assert cause in sentence
    assert "s3cret-password" not in failed.stderr + failed.stdout
    # the warehouse moved on, the server did not
    tonight = duckdb_analytics(str(env.database))
    assert tonight["sessions"] != before["sessions"]
    assert pg_analytics(pg_url) == before

    # the run history has the failure, in the warehouse and in the serving file `status` reads
    first, night = publish_rows(env.database)
    assert first[1:3] == ("ok", 0) and first[6] == total_rows(before)
    assert night[1:7] == ("failed", 10, sentence, None, None, None) and night[7] > 0
    assert publish_rows(serving_file(env)) == [first, night]
    assert [r[:3] for r in run_rows(env, night[0])] == [
        ("analytics", "ok", 0), ("bizstim", "ok", 0), ("publish.postgres", "failed", 10),
        ("timetap", "skipped", 0),
    ]  # fmt: skip
    for path in (env.database, serving_file(env)):
        everything = Env({}, path).query("select * from ops.run_history")
        assert "s3cret-password" not in repr(everything)
    item, cells, warnings = destination_status(env)
    assert (item["kind"], item["last_outcome"], item["last_exit_code"]) == (
        "destination", "failed", 10
    )  # fmt: skip
    assert item["last_error"] == sentence and item["stale"] is False  # last success: run one
    assert item["rows_current"] == total_rows(before) and item["open_issues"] is None
    assert cells[1] == "ok" and cells[-1] == "failed (exit 10)"
    warned = r"^! publish\.postgres: last run [\d-]+ [\d:]+ failed \(exit 10\): "
    assert re.search(warned, warnings, re.M)
    assert warnings.endswith(sentence)
    assert "s3cret-password" not in json.dumps(item) + warnings

    env.vars[SETTING] = pg_url
    caught_up = env.run("run")
    assert caught_up.code == 0, caught_up.stderr
    after = duckdb_analytics(str(env.database))
    assert_same(after, pg_analytics(pg_url))
    *_, good = publish_rows(env.database)
    assert good[1:4] == ("ok", 0, None) and good[6] == total_rows(after)
    assert good[4] == sum(sum((after[t][1] - before[t][1]).values()) for t in after)
    item, cells, warnings = destination_status(env)
    assert (item["last_outcome"], item["last_exit_code"], item["last_error"]) == ("ok", 0, None)
    assert (item["rows_new"], item["rows_current"]) == (good[4], good[6])  # tonight's success
    assert cells[1] == cells[-1] == "ok" and warnings == ""


def test_readers_see_last_night_until_the_publish_commits_and_a_kill_commits_nothing(
    sim: Simulator, tmp_path: Path, pg_url: str
) -> None:
    env = publishing(make_env(sim, tmp_path, timetap=False), pg_url)
    assert env.run("run").code == 0
    before = pg_analytics(pg_url)
    sim.bizstim.night_of_changes(edit=0.05, delete=0.02, new=0.03, seed=9)
    paused = tmp_path / "paused"
    env.vars.update(PRACTICE_SYNC_PAUSEPOINT="mid-publish", PRACTICE_SYNC_PAUSEFILE=str(paused))
    process = env.start("run")
    wait_until_paused(process, paused)
    # every change of the night is applied but not committed: a reader sees all of last night
    assert pg_analytics(pg_url) == before
    process.kill()
    process.wait(timeout=30)
    assert pg_analytics(pg_url) == before
    del env.vars["PRACTICE_SYNC_PAUSEPOINT"]
    result = env.run("run")
    assert result.code == 0, result.stderr
    assert_same(duckdb_analytics(str(env.database)), pg_analytics(pg_url))


def test_an_interrupted_run_records_its_destination_as_interrupted(
    sim: Simulator, tmp_path: Path, pg_url: str
) -> None:
    """SIGTERM inside the server's transaction (rolled back) and before publishing at all: each
    leaves an `interrupted` row with the signal's exit code; the next run catches up."""
    env = publishing(make_env(sim, tmp_path, timetap=False), pg_url)
    assert env.run("run").code == 0
    before = pg_analytics(pg_url)
    sim.bizstim.night_of_changes(edit=0.05, delete=0.02, new=0.03, seed=11)
    paused = tmp_path / "paused"
    cut = ("publish.postgres", "interrupted", 143)
    expected = {
        # the sources and the rebuild were done; only the publish was cut short
        "mid-publish": [
            ("analytics", "ok", 0),
            ("bizstim", "ok", 0),
            cut,
            ("timetap", "skipped", 0),
        ],
        # stopped in Bizstim's load: TimeTap's turn never came (it is skipped, as a run
        # without its credentials would have skipped it)
        "after-normalize": [
            ("analytics", "interrupted", 143),
            ("bizstim", "interrupted", 143),
            cut,
            ("timetap", "skipped", 0),
        ],
    }
    for point, run in expected.items():
        paused.unlink(missing_ok=True)
        env.vars.update(PRACTICE_SYNC_PAUSEPOINT=point, PRACTICE_SYNC_PAUSEFILE=str(paused))
        process = env.start("run")
        wait_until_paused(process, paused)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 143, point
        assert pg_analytics(pg_url) == before, point
        *_, last = publish_rows(env.database)
        assert last[1:7] == ("interrupted", 143, None, None, None, None), point
        assert [r[:3] for r in run_rows(env, last[0])] == run, point
    del env.vars["PRACTICE_SYNC_PAUSEPOINT"]
    good = env.run("run")
    assert good.code == 0, good.stderr
    assert_same(duckdb_analytics(str(env.database)), pg_analytics(pg_url))
    history = publish_rows(env.database)
    assert [row[1:3] for row in history] == [
        ("ok", 0), ("interrupted", 143), ("interrupted", 143), ("ok", 0)
    ]  # fmt: skip
    assert publish_rows(serving_file(env)) == history  # interrupted rows arrive with the next run


def test_a_destination_never_published_to_is_stale_until_a_publish_succeeds(
    sim: Simulator, tmp_path: Path, pg_url: str
) -> None:
    env = publishing(make_env(sim, tmp_path, timetap=False), with_port(pg_url, 9))
    assert env.run("run").code == 10
    stale = env.run("status", "--max-age", "26h")
    assert stale.code == 9, stale.stderr  # every source is fresh: the server is what is stale
    line = next(x for x in stale.stdout.splitlines() if x.startswith("publish.postgres "))
    assert re.split(r"\s{2,}", line)[1:4] == ["NEVER", "-", "never"]
    document = json.loads(env.run("status", "--json", "--max-age", "26h").stdout)
    states = {s["source"]: (s["kind"], s["configured"], s["stale"]) for s in document["sources"]}
    assert states == {
        "bizstim": ("source", True, False),
        "timetap": ("source", False, False),
        "analytics": ("analytics", True, False),
        "publish.postgres": ("destination", True, True),
    }
    assert [s["source"] for s in document["sources"]][-1] == "publish.postgres"
    env.vars[SETTING] = pg_url
    assert env.run("run").code == 0
    fresh = env.run("status", "--max-age", "26h")
    assert fresh.code == 0, fresh.stdout


# --- several accounts (tests/accounts_fixtures.py: overlapping ids, different time zones) -------


@pytest.fixture
def multi() -> Iterator[Simulator]:
    with two_accounts() as sim:
        yield sim


def server_sessions(url: str) -> set[tuple]:
    """The server's sessions as `expected_sessions` spells them: instants in UTC."""
    rows = pg_query(
        url,
        "select account, session_id, status, client_id, start_utc, end_utc from analytics.sessions",
    )
    return {(a, s, st, c, su.astimezone(UTC), eu.astimezone(UTC)) for a, s, st, c, su, eu in rows}


def changed_accounts(before: dict, after: dict) -> Counter:
    """How many rows each account has added or removed between two `duckdb_analytics`."""
    out: Counter = Counter()
    for table in after:
        columns, rows = after[table]
        account = [name for name, _ in columns].index("account")
        old = before[table][1]
        for row in ((rows - old) + (old - rows)).elements():
            out[row[account]] += 1
    return out


def test_several_accounts_publish_row_by_row_and_one_accounts_night_sends_only_its_rows(
    multi: Simulator, tmp_path: Path, pg_url: str
) -> None:
    down, up = multi.accounts["downtown"], multi.accounts["uptown"]
    env = publishing(accounts_env(multi, tmp_path), pg_url)
    first = env.run("run")
    assert first.code == 0, first.stderr
    duck = duckdb_analytics(str(env.database))
    assert_same(duck, pg_analytics(pg_url))
    expected = expected_sessions(multi)
    assert len(expected) == 420 and server_sessions(pg_url) == expected
    shared = pg_query(
        pg_url,
        "select count(*) from (select session_id from analytics.sessions group by 1 "
        "having count(distinct account) = 2) as shared",
    )[0][0]
    assert shared > 100  # the same ids in both accounts, apart on the server too
    assert pg_query(
        pg_url, "select distinct account, timezone from analytics.sessions order by 1"
    ) == sorted(ZONES.items())
    sold = {
        (name, s["packageSoldId"], s["usedQuantity"])
        for name, account in multi.accounts.items()
        for s in account.timetap.packages_sold()
        if s["active"]
    }
    on_server = "select account, package_sold_id, used_quantity from analytics.packages_sold"
    assert set(pg_query(pg_url, on_server)) == sold

    # a night in uptown only: two edits, a deletion and a booking in Bizstim, a visit used in
    # TimeTap; the ids edited and deleted exist in downtown too, and stay as they were there
    both = sorted({r["id"] for r in down.bizstim.rows()} & {r["id"] for r in up.bizstim.rows()})
    edited, deleted = both[:2], both[2]
    status = {row["id"]: row["session_status"] for row in up.bizstim.rows()}
    for session_id in edited:
        up.bizstim.edit(session_id, session_status="2" if status[session_id] != "2" else "3")
    up.bizstim.delete(deleted)
    booked = up.bizstim.add()
    used = next(s for s in up.timetap.packages_sold() if s["active"] and s["status"] != "CLOSED")
    up.timetap.use_package(used["packageSoldId"])
    downtown = "select * from analytics.sessions where account = 'downtown' order by session_id"
    downtown_before = pg_query(pg_url, downtown)

    night = env.run("run")
    assert night.code == 0, night.stderr
    after = duckdb_analytics(str(env.database))
    assert_same(after, pg_analytics(pg_url))
    assert server_sessions(pg_url) == expected_sessions(multi)
    assert pg_query(pg_url, downtown) == downtown_before
    ids = "select account, session_id from analytics.sessions where session_id = {}"
    assert pg_query(pg_url, ids.format(deleted)) == [("downtown", int(deleted))]
    assert pg_query(pg_url, ids.format(booked)) == [("uptown", int(booked))]
    used_now = pg_query(
        pg_url,
        "select account, used_quantity from analytics.packages_sold "
        f"where package_sold_id = {used['packageSoldId']} order by 1",
    )
    assert ("uptown", used["usedQuantity"] + 1) in used_now
    # only uptown's changed rows travelled, and exactly those
    assert set(changed_accounts(duck, after)) == {"uptown"}
    added = sum(sum((after[t][1] - duck[t][1]).values()) for t in after)
    removed = sum(sum((duck[t][1] - after[t][1]).values()) for t in duck)
    assert published(night.stdout) == f"analytics: {added:,} rows added, {removed:,} removed"
    assert 0 < added < 60 and 0 < removed < 60
    *_, row = publish_rows(env.database)
    assert row[1:7] == ("ok", 0, None, added, removed, total_rows(after))


def test_one_accounts_bad_key_still_publishes_the_other_accounts(
    multi: Simulator, tmp_path: Path, pg_url: str
) -> None:
    env = publishing(accounts_env(multi, tmp_path, uptown="not-the-key"), pg_url)
    result = env.run("run")
    assert result.code == 5, result.stderr
    assert "bizstim.uptown: FAILED" in result.stdout
    duck = duckdb_analytics(str(env.database))
    assert_same(duck, pg_analytics(pg_url))
    assert published(result.stdout) == f"analytics: {total_rows(duck):,} rows added, 0 removed"
    assert pg_query(pg_url, "select account, count(*) from analytics.sessions group by 1") == [
        ("downtown", 240)
    ]
    assert pg_query(pg_url, "select distinct account from analytics.packages_sold order by 1") == [
        ("downtown",),
        ("uptown",),
    ]
    *_, row = publish_rows(env.database)
    assert [r[:3] for r in run_rows(env, row[0])] == [
        ("analytics", "ok", 0), ("bizstim.downtown", "ok", 0), ("bizstim.uptown", "failed", 5),
        ("publish.postgres", "ok", 0), ("timetap.downtown", "ok", 0), ("timetap.uptown", "ok", 0),
    ]  # fmt: skip

    # with the key fixed, uptown's sessions reach the server beside downtown's
    env.vars["SOURCES__BIZSTIM__UPTOWN__API_KEY"] = multi.accounts["uptown"].bizstim_api_key
    fixed = env.run("run")
    assert fixed.code == 0, fixed.stderr
    assert_same(duckdb_analytics(str(env.database)), pg_analytics(pg_url))
    assert server_sessions(pg_url) == expected_sessions(multi)


def test_a_serving_file_that_cannot_be_written_does_not_hold_the_destination_back(
    sim: Simulator, tmp_path: Path, pg_url: str
) -> None:
    env = publishing(make_env(sim, tmp_path, timetap=False), pg_url)
    blocked = tmp_path / "serving.duckdb"
    blocked.mkdir()  # a folder where the file should be: renaming the new file over it fails
    env.vars["PRACTICE_SYNC__SERVE_PATH"] = str(blocked)
    result = env.run("run")
    assert result.code == 8, result.stderr
    assert f"could not be published to {blocked}" in result.stderr
    assert_same(duckdb_analytics(str(env.database)), pg_analytics(pg_url))
    (row,) = publish_rows(env.database)
    assert row[1:4] == ("ok", 0, None)
    assert list(blocked.iterdir()) == []


def test_a_failed_rebuild_publishes_nothing_and_says_so_in_the_history(
    sim: Simulator, tmp_path: Path, pg_url: str
) -> None:
    env = publishing(make_env(sim, tmp_path, timetap=False), pg_url)
    assert env.run("run").code == 0
    before = pg_analytics(pg_url)
    # a current raw version with no valid_from: the rebuild's fatal not_null test fails
    # (tests/test_contract_e2e.py), yesterday's analytics is kept
    with contextlib.closing(duckdb.connect(str(env.database))) as con:
        con.execute(
            "insert into bizstim.sessions by name select * replace (id || '9' as id, "
            "md5(_dlt_id) as _dlt_id, null as _dlt_valid_from) from bizstim.sessions "
            "where _dlt_valid_to is null limit 1"
        )
    result = env.run("transform")
    assert result.code == 7, result.stderr
    assert "published to postgres" not in result.stdout
    assert pg_analytics(pg_url) == before
    *_, row = publish_rows(env.database)
    assert row[1:4] == (
        "skipped", 0, "Not published to postgres: the analytics tables could not be rebuilt, so "
        "it keeps its last complete state.",
    )  # fmt: skip
    assert [r[:3] for r in run_rows(env, row[0])] == [
        ("analytics", "failed", 7), ("publish.postgres", "skipped", 0),
    ]  # fmt: skip
    item, cells, warnings = destination_status(env)  # the serving file has it too
    assert (item["last_outcome"], item["configured"], cells[-1]) == ("skipped", True, "skipped")
    assert warnings.endswith("skipped: " + row[3])


def test_publish_schema_setting_renames_the_target_schema(
    sim: Simulator, tmp_path: Path, pg_url: str
) -> None:
    env = publishing(make_env(sim, tmp_path, timetap=False), pg_url)
    env.vars["PRACTICE_SYNC__PUBLISH_SCHEMA"] = "reporting"
    assert env.run("run").code == 0
    assert_same(duckdb_analytics(str(env.database)), pg_analytics(pg_url, "reporting"))
    assert pg_query(
        pg_url, "select count(*) from information_schema.schemata where schema_name = 'analytics'"
    ) == [(0,)]


def test_unknown_destination_is_a_configuration_error(sim: Simulator, tmp_path: Path) -> None:
    env = make_env(sim, tmp_path, timetap=False)
    env.vars["PRACTICE_SYNC__PUBLISH"] = '["postgress"]'
    result = env.run("run")
    assert result.code == 2
    assert "'postgress' is not a dlt destination" in result.stderr


# --- the publishing step on its own, on a small hand-made warehouse ---------------------------


@contextlib.contextmanager
def warehouse(path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    with contextlib.closing(duckdb.connect(str(path))) as con:
        yield con


def _publish(con: duckdb.DuckDBPyConnection, path: Path, url: str, monkeypatch) -> RunReport:
    monkeypatch.setenv("PRACTICE_SYNC__PUBLISH", '["postgres"]')
    monkeypatch.setenv(SETTING, url)
    report = RunReport(database=path)
    code = publish.publish_all(con, path, report)
    assert code == 0, report.publish_errors
    return report


def _seed(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("set TimeZone = 'America/New_York'")
    con.execute("create schema analytics")
    con.execute(
        "create table analytics.visits as select range as visit_id, "
        "(range % 3)::varchar as kind, (12.5 * range)::decimal(18,2) as price, "
        "timestamptz '2024-03-10 06:30:00+00' + to_hours(range) as at_utc, "
        "timestamp '2024-03-10 02:30:00' as local_at, date '2024-03-10' as day "
        "from range(50)"
    )
    con.execute("insert into analytics.visits select * from analytics.visits limit 2")  # twins
    con.execute("create table analytics.notes (note varchar)")
    con.execute("comment on table analytics.visits is 'One row per visit.'")
    con.execute("comment on column analytics.visits.price is 'What the client paid, it''s USD.'")


def test_row_keys_are_the_content_hash_numbered_among_identical_rows_only() -> None:
    with contextlib.closing(duckdb.connect()) as con:
        con.execute("create schema analytics")
        con.execute(
            "create table analytics.t as select * from "
            "(values (1, 'a'), (1, 'a'), (1, 'a'), (2, 'b'), (3, NULL)) v(id, x)"
        )
        digest = dict(
            con.execute("select distinct id, hash(t)::varchar from analytics.t t").fetchall()
        )
        keys = con.execute(publish._row_keys_sql(publish.Table("t", None))).fetchall()
    assert sorted(key for key, _ in keys) == sorted(
        [f"{digest[1]}:1", f"{digest[1]}:2", f"{digest[1]}:3", f"{digest[2]}:1", f"{digest[3]}:1"]
    )
    assert sorted(rid for _, rid in keys) == [0, 1, 2, 3, 4]  # every row once


def test_a_column_named_t_is_part_of_the_row_key() -> None:
    """The row key hashes the row under an alias; named `t`, a column `t` was hashed instead,
    and a change in any other column was never sent."""
    with contextlib.closing(duckdb.connect()) as con:
        con.execute("create schema analytics")
        con.execute("create table analytics.metrics as select * from (values (1, 10)) v(t, value)")
        before = con.execute(publish._row_keys_sql(publish.Table("metrics", None))).fetchall()
        con.execute("update analytics.metrics set value = 11")
        after = con.execute(publish._row_keys_sql(publish.Table("metrics", None))).fetchall()
    assert before != after


def test_an_instant_before_standard_time_arrives_to_the_second(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In New York's zone before 1883 the offset was -04:56:02; written in the session's zone
    it lost its seconds, and the server stored the instant two seconds off."""
    path = tmp_path / "w.duckdb"
    with warehouse(path) as con:
        con.execute("set TimeZone = 'America/New_York'")
        con.execute("create schema analytics")
        con.execute(
            "create table analytics.past as select timestamptz '1850-01-01 00:00:00+00' as at"
        )
        _publish(con, path, pg_url, monkeypatch)
        assert con.execute("select current_setting('TimeZone')").fetchone() == ("America/New_York",)
    assert pg_query(pg_url, "select extract(epoch from at)::bigint from analytics.past") == [
        (-3786825600,)
    ]


def test_comments_twins_and_schema_changes_between_nights(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "w.duckdb"
    with warehouse(path) as con:
        _seed(con)
        _publish(con, path, pg_url, monkeypatch)
    assert_same(duckdb_analytics(str(path)), pg_analytics(pg_url))
    assert pg_query(
        pg_url,
        "select obj_description('analytics.visits'::regclass), "
        "col_description('analytics.visits'::regclass, 3)",
    ) == [("One row per visit.", "What the client paid, it's USD.")]
    with warehouse(path) as con:  # the next night: a column added, one removed, a table gone
        con.execute("delete from analytics.visits where visit_id in (0, 7)")  # a twin, a single
        con.execute("alter table analytics.visits add column account varchar default 'default'")
        con.execute("alter table analytics.visits drop column day")
        con.execute("drop table analytics.notes")
        con.execute("create table analytics.clients as select 1::bigint as client_id")
        report = _publish(con, path, pg_url, monkeypatch)
    assert report.published["postgres"] == "analytics: 50 rows added, 0 removed"
    assert_same(duckdb_analytics(str(path)), pg_analytics(pg_url))
    with warehouse(path) as con:  # and one with rows changed in place only
        con.execute("update analytics.visits set kind = 'x' where visit_id < 5")
        report = _publish(con, path, pg_url, monkeypatch)
    assert report.published["postgres"] == "analytics: 5 rows added, 5 removed"
    assert_same(duckdb_analytics(str(path)), pg_analytics(pg_url))


def test_a_failure_inside_the_server_transaction_changes_nothing(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "w.duckdb"
    with warehouse(path) as con:
        _seed(con)
        _publish(con, path, pg_url, monkeypatch)
        before = pg_analytics(pg_url)
        con.execute("delete from analytics.visits where visit_id < 10")
        con.execute("drop table analytics.notes")

        def broken(*args: object) -> None:
            raise RuntimeError("the server went away mid-transaction")

        monkeypatch.setattr(publish, "_stamp", broken)
        report = RunReport(database=path)
        assert publish.publish_all(con, path, report) == 10
        assert "the server went away mid-transaction" in report.publish_errors[0]
        assert pg_analytics(pg_url) == before  # the deletes and the drop were rolled back
        monkeypatch.undo()
        report = _publish(con, path, pg_url, monkeypatch)
        assert report.published["postgres"] == "analytics: 0 rows added, 12 removed"
    assert_same(duckdb_analytics(str(path)), pg_analytics(pg_url))


def test_a_server_that_lost_track_is_sent_everything(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash between the server's commit and the warehouse's bookkeeping, a dropped schema or
    a new server: the version stamps differ, so every table is sent whole."""
    path = tmp_path / "w.duckdb"
    with warehouse(path) as con:
        _seed(con)
        _publish(con, path, pg_url, monkeypatch)
        pg_query_exec(pg_url, "drop schema analytics cascade")
        report = _publish(con, path, pg_url, monkeypatch)
        assert report.published["postgres"] == "analytics: 52 rows added, 0 removed"
    assert_same(duckdb_analytics(str(path)), pg_analytics(pg_url))


def pg_query_exec(url: str, sql: str) -> None:
    import psycopg2

    with contextlib.closing(psycopg2.connect(url)) as con, con.cursor() as cur:
        cur.execute(sql)
        con.commit()


def test_destinations_without_transactions_get_dlts_replace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MotherDuck, Snowflake or BigQuery take the same settings path but get dlt's `replace`;
    here dlt's own duckdb destination (a second file) stands in for them."""
    path = tmp_path / "w.duckdb"
    other = tmp_path / "elsewhere.duckdb"
    with warehouse(path) as con:
        _seed(con)
        monkeypatch.setenv("DESTINATION__DUCKDB__CREDENTIALS", str(other))
        sent = publish.publish_to(con, "duckdb", path)
        assert sent.text == "analytics: 52 rows replaced"
        assert (sent.added, sent.removed, sent.rows) == (52, None, 52)
        con.execute("delete from analytics.visits where visit_id < 10")
        assert publish.publish_to(con, "duckdb", path).text == "analytics: 40 rows replaced"
    duck = duckdb_analytics(str(path))
    with contextlib.closing(duckdb.connect(str(other), read_only=True)) as con:
        for table, (columns, rows) in duck.items():
            names = ", ".join(f'"{name}"' for name, _ in columns)
            there = con.execute(f"select {names} from analytics.{table}").fetchall()
            assert sorted(there, key=repr) == sorted(rows.elements(), key=repr), table
            types = con.execute(
                "select column_name, data_type from duckdb_columns() where schema_name = "
                "'analytics' and table_name = ? and column_name not like '\\_dlt%' escape '\\' "
                "order by column_index",
                [table],
            ).fetchall()
            assert types == columns, table


def test_a_failure_sentence_never_shows_a_password() -> None:
    """Whatever the driver quotes: a URL (its password may hold `@` or `/`, and the sentence is
    cut at 200 characters: masked before the cut) or a libpq connection string."""
    secret = "pa@ss/w0rd-s3cret"
    long = "x" * 170
    for text in (
        f"could not connect to postgresql://loader:{secret}@db.example.com:5432/reporting",
        f"{long} postgresql://loader:{secret}@db.example.com:5432/reporting",
        f"invalid dsn: host=db user=loader password={secret} dbname=reporting",
        f"invalid dsn: host=db user=loader PASSWORD = '{secret} with spaces' dbname=reporting",
    ):
        try:
            try:
                raise ValueError(text)
            except ValueError as inner:
                raise RuntimeError("dlt's own wrapper") from inner
        except RuntimeError as exc:
            sentence = publish.failure_sentence("postgres", exc)
        assert "s3cret" not in sentence and "pa@ss" not in sentence, sentence
        assert "***" in sentence and "check destination.postgres.credentials" in sentence
    assert "postgresql://***@db.example.com:5432/reporting" in publish.failure_sentence(
        "postgres", ValueError(f"at postgresql://loader:{secret}@db.example.com:5432/reporting")
    )


def test_a_destination_without_credentials_says_which_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "w.duckdb"
    monkeypatch.setenv("PRACTICE_SYNC__PUBLISH", '["postgres"]')
    with warehouse(path) as con:
        _seed(con)
        report = RunReport(database=path)
        assert publish.publish_all(con, path, report) == 10
    assert report.publish_errors == [
        "The analytics tables were rebuilt but could not be published to postgres (it has no "
        "credentials); the server keeps its last complete state and the next run catches it up: "
        "check destination.postgres.credentials (DESTINATION__POSTGRES__CREDENTIALS)."
    ]


# --- what the server and the disk are left with ------------------------------------------------


def test_a_text_value_holding_nul_publishes_with_a_replacement_character(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL's text cannot hold U+0000: one note holding it stopped every night's publish
    (whole and row by row); it arrives as U+FFFD, and the rest as it is."""
    path = tmp_path / "w.duckdb"
    with warehouse(path) as con:
        _seed(con)
        con.execute("insert into analytics.notes values ('said:' || chr(0) || ' bye'), ('')")
        _publish(con, path, pg_url, monkeypatch)
        con.execute("insert into analytics.notes values (chr(0)), (null)")  # a night's change
        report = _publish(con, path, pg_url, monkeypatch)
        assert report.published["postgres"] == "analytics: 2 rows added, 0 removed"
    notes = pg_query(pg_url, "select note from analytics.notes")
    assert Counter(notes) == Counter([("said:\ufffd bye",), ("",), ("\ufffd",), (None,)])


def _files_holding(folder: Path, value: str) -> list[Path]:
    return [
        path for path in folder.rglob("*") if path.is_file() and value.encode() in path.read_bytes()
    ]


def test_no_analytics_row_stays_on_disk_after_a_failed_or_a_good_publish(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dlt's load packages hold a csv copy of the rows sent; a failed one was kept for ever in
    `failed_jobs/`, a good one in `completed_jobs/` (a value a privacy policy drops later would
    have stayed there). The server refusing the apply, then refusing the load, then accepting."""
    path = tmp_path / "w.duckdb"
    folder = tmp_path / ".practice_sync"
    with warehouse(path) as con:
        _seed(con)
        con.execute("insert into analytics.notes values ('ZZSECRET-0')")
        _publish(con, path, pg_url, monkeypatch)
        assert _files_holding(folder, "ZZSECRET") == []
        # the apply refused: a view on a column tonight's transform removes
        pg_query_exec(pg_url, "create view public.days as select day from analytics.visits")
        con.execute("alter table analytics.visits drop column day")
        con.execute("insert into analytics.notes values ('ZZSECRET-1')")
        report = RunReport(database=path)
        assert publish.publish_all(con, path, report) == 10
        assert report.publish_errors == [
            "The analytics tables were rebuilt but could not be published to postgres (cannot "
            "drop column day of table analytics.visits because other objects depend on it); the "
            "server keeps its last complete state, and the next run tries again."
        ]  # the server's own reason, not the credentials
        assert _files_holding(folder, "ZZSECRET") == []
        pg_query_exec(pg_url, "drop view public.days")
        # the load refused: the staged table's column is not text on the server
        (notes,) = [t for t in publish.read_tables(con) if t.name == "notes"]
        pg_query_exec(
            pg_url,
            f'alter table analytics_publish."{notes.staged}" alter c1 type integer using null',
        )
        report = RunReport(database=path)
        assert publish.publish_all(con, path, report) == 10
        assert _files_holding(folder, "ZZSECRET") == []
        pg_query_exec(pg_url, f'alter table analytics_publish."{notes.staged}" alter c1 type text')
        _publish(con, path, pg_url, monkeypatch)
    assert _files_holding(folder, "ZZSECRET") == []
    assert_same(duckdb_analytics(str(path)), pg_analytics(pg_url))


def test_a_table_sent_whole_is_kept_so_views_and_grants_on_it_survive(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reshaped table used to be dropped and created again: a view on it made every night
    fail, and a BI role's grant on it was lost without a word. Now it is emptied and its
    columns brought in line in place (one added, one removed, one whose type changed)."""
    path = tmp_path / "w.duckdb"
    role = f"ps_bi_{uuid.uuid4().hex[:8]}"
    pg_query_exec(pg_url, f"create role {role}")
    try:
        with warehouse(path) as con:
            _seed(con)
            _publish(con, path, pg_url, monkeypatch)
            pg_query_exec(
                pg_url,
                "create view public.kinds as select kind, count(*) from analytics.visits group by 1;"
                f"grant usage on schema analytics to {role};"
                f"grant select on analytics.visits to {role}",
            )
            con.execute("alter table analytics.visits add column room varchar default 'A'")
            con.execute("alter table analytics.visits drop column day")
            con.execute("alter table analytics.visits alter column visit_id type integer")
            report = _publish(con, path, pg_url, monkeypatch)
            assert report.published["postgres"] == "analytics: 52 rows added, 0 removed"
            may_read = f"select has_table_privilege('{role}', 'analytics.visits', 'select')"
            assert pg_query(pg_url, may_read) == [(True,)]
            assert pg_query(pg_url, "select sum(count) from public.kinds") == [(52,)]
            keys = pg_query(
                pg_url,
                "select a.attname from pg_index i join pg_attribute a on a.attrelid = i.indrelid "
                "and a.attnum = any(i.indkey) where i.indrelid = 'analytics.visits'::regclass "
                "and i.indisprimary",
            )
            assert keys == [("_dlt_id",)]
            con.execute("update analytics.visits set room = 'B' where visit_id < 3")
            report = _publish(con, path, pg_url, monkeypatch)
            assert report.published["postgres"] == "analytics: 5 rows added, 5 removed"  # twins
        assert_same(duckdb_analytics(str(path)), pg_analytics(pg_url))
    finally:
        pg_query_exec(pg_url, f"drop owned by {role}; drop role {role}")


@pytest.mark.parametrize("name", ["Amount", "totalUSD", "a b", "row_key", "x__y", "Ünïcode"])
def test_a_column_name_dlt_would_rename_publishes_as_it_is(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    path = tmp_path / "w.duckdb"
    with warehouse(path) as con:
        con.execute("create schema analytics")
        con.execute(
            f'create table analytics.visits as select range as "{name}", '
            "range::varchar as label from range(3)"
        )
        _publish(con, path, pg_url, monkeypatch)
        con.execute(f'delete from analytics.visits where "{name}" = 0')
        report = _publish(con, path, pg_url, monkeypatch)
        assert report.published["postgres"] == "analytics: 0 rows added, 1 removed"
    assert pg_query(pg_url, f'select "{name}", label from analytics.visits order by 1') == [
        (1, "1"),
        (2, "2"),
    ]


def test_a_name_too_long_for_postgresql_is_one_sentence_naming_it(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL cuts a name at 63 bytes (the staging table's at 63 with its suffix): the
    publish would fail with a message about a file or a missing relation."""
    path = tmp_path / "w.duckdb"
    long = "n" * 64
    table = "t" * 49
    monkeypatch.setenv("PRACTICE_SYNC__PUBLISH", '["postgres"]')
    monkeypatch.setenv(SETTING, pg_url)
    start = "The analytics tables were rebuilt but could not be published to postgres: "
    with warehouse(path) as con:
        con.execute("create schema analytics")
        con.execute(f'create table analytics.visits as select 1 as "{long}"')
        report = RunReport(database=path)
        assert publish.publish_all(con, path, report) == 10
        assert report.publish_errors == [
            f'{start}analytics.visits column "{long}" has a name longer than PostgreSQL\'s 63 '
            "characters, so rename it in the transform."
        ]
        con.execute("drop table analytics.visits")
        con.execute(f"create table analytics.{table} as select 1 as n")
        report = RunReport(database=path)
        assert publish.publish_all(con, path, report) == 10
        assert report.publish_errors == [
            f"{start}table analytics.{table} has a name longer than 48 characters (PostgreSQL's "
            "limit, less the staging table's suffix), so rename it in the transform."
        ]
        con.execute(f"alter table analytics.{table} rename to {table[:48]}")
        _publish(con, path, pg_url, monkeypatch)
    assert pg_query(pg_url, f"select n from analytics.{table[:48]}") == [(1,)]
