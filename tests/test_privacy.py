"""The privacy policy: dropped values are stored nowhere, hashed ones hash alike everywhere.

The end-to-end tests plant a distinctive private note and a client email in the simulator, run
the real CLI, and search every file the runs wrote (DuckDB files and Parquet load files decoded,
everything else byte for byte) and their output for them, as tests/test_secrets.py does for keys.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import socket
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import Env, make_env, messages

from practice_sync import privacy
from practice_sync.errors import ConfigError
from practice_sync.rows import rows_to_table
from practice_sync.simulator import Simulator
from practice_sync.timetap.helpers import SOLD_FIELDS

NOTE = "PRIVATE-NOTE-client-fears-needles-5c1f"
EMAIL = "planted.person.8e2a@example.org"
SALT = "test-salt-3b9d0c7e1a5f4d2b8c6e"
POLICY_BIZSTIM = {"drop": ["session_private_note"], "hash": ["session_note"]}
POLICY_TIMETAP = {"hash": ["client.emailAddress", "client.firstName", "client.lastName"]}


def expected_hash(value: str, salt: str = SALT) -> str:
    return hashlib.sha256((salt + value).encode()).hexdigest()


# -- the hashing helper and the policy ---------------------------------------------------------


def test_hash_is_salted_sha256_and_matches_duckdb() -> None:
    policy = privacy.Policy({"x": "hash"}, salt=SALT)
    assert policy.hash_text(EMAIL) == expected_hash(EMAIL)
    assert policy.hash_text(EMAIL) != privacy.Policy({"x": "hash"}, salt=SALT + "2").hash_text(
        EMAIL
    )
    # an analyst holding the salt finds a person in SQL
    with contextlib.closing(duckdb.connect()) as con:
        found = con.execute("select sha256(? || ?)", [SALT, EMAIL]).fetchall()
    assert found == [(expected_hash(EMAIL),)]
    assert SALT not in repr(policy)


def test_apply_drops_and_hashes_each_distinct_value() -> None:
    policy = privacy.Policy({"note": "drop", "email": "hash"}, salt=SALT)
    table = pa.table(
        {
            "id": ["1", "2", "3", "4"],
            "note": [NOTE, None, "x", NOTE],
            "email": [EMAIL, EMAIL, None, ""],
            "other": ["a", "b", "c", "d"],
        }
    )
    out = policy.apply(table)
    assert out.column_names == table.column_names
    assert out["note"].to_pylist() == [None] * 4
    assert out["email"].to_pylist() == [expected_hash(EMAIL), expected_hash(EMAIL), None, ""]
    assert out["other"].to_pylist() == ["a", "b", "c", "d"]
    assert privacy.Policy().apply(table) is table


def test_keys_inside_the_client_object() -> None:
    policy = privacy.parse(
        "timetap",
        {"drop": ["client.emailAddress"], "hash": ["client.first_name", "createdUser"]},
        "SOURCES__TIMETAP__PRIVACY",
        SALT,
    )
    assert policy.entries() == {
        "drop": ["client.email_address"],
        "hash": ["client.first_name", "created_user"],
    }
    client = {"clientId": 7, "emailAddress": EMAIL, "firstName": "Ada", "lastName": "L"}
    rows = [
        {"package_sold_id": "1", "client": client, "created_user": "bob"},
        {"package_sold_id": "2", "client": f"not an object {EMAIL}", "created_user": None},
    ]
    table = rows_to_table(
        rows, SOLD_FIELDS, entity="package_sold", expect_text=False, policy=policy
    )
    first = json.loads(table["client"][0].as_py())
    assert first == {"clientId": 7, "firstName": expected_hash("Ada"), "lastName": "L"}
    assert table["created_user"].to_pylist() == [expected_hash("bob"), None]
    # a client value that is not an object cannot be searched for keys: a drop drops it whole
    assert table["client"][1].as_py() is None


def test_ingest_issues_never_quote_a_dropped_or_hashed_value() -> None:
    policy = privacy.Policy({"session_private_note": "drop", "session_note": "hash"}, salt=SALT)
    long_note = NOTE + "x" * 100_001
    rows = [
        {"id": "1", "session_private_note": long_note, "session_note": 12345},
        [NOTE],  # not an object: its whole text would be quoted
    ]
    from practice_sync.bizstim.settings import SESSION_FIELDS

    table = rows_to_table(rows, SESSION_FIELDS, entity="session", policy=policy)
    issues = [json.loads(v) for v in table["_ingest_issues"].to_pylist()]
    assert NOTE not in json.dumps(issues)
    by_field = {i["field"]: i for i in issues[0]}
    assert by_field["session_private_note"]["value"] == ""
    assert by_field["session_private_note"]["problem"].startswith("unusually long value")
    assert by_field["session_note"] == {
        "field": "session_note",
        "value": expected_hash("12345"),
        "problem": "arrived as a number, not as text",
    }
    assert issues[1] == [{"field": "", "value": "", "problem": "session is not a JSON object"}]


def test_history_rewrite_hashes_rows_as_the_extractor_would() -> None:
    """A row stored before a policy, rewritten, hashes (`_dlt_id`) as a fresh extract does: the
    next load sees no change, so no spurious version."""
    from practice_sync.bizstim.settings import SESSION_FIELDS, TIMEZONE_COLUMN
    from practice_sync.rows import INGEST_ISSUES, row_hashes

    rows = [
        {"id": "1", "session_private_note": NOTE, "session_note": EMAIL, "extra_field": "e"},
        {"id": "2", "session_private_note": None, "session_note": 5},
    ]
    new = privacy.Policy({"session_private_note": "drop", "session_note": "hash"}, salt=SALT)
    old = privacy.Policy({"session_private_note": "drop"}, salt=SALT)
    stored = rows_to_table(
        rows, SESSION_FIELDS, entity="session", constants={TIMEZONE_COLUMN: "UTC"}, policy=old
    )
    fresh = rows_to_table(
        rows, SESSION_FIELDS, entity="session", constants={TIMEZONE_COLUMN: "UTC"}, policy=new
    )
    delta = privacy.history_delta(old, new)
    assert delta.columns == {"session_note": "hash"}
    rewritten = delta.apply(stored.drop_columns(["_dlt_id"]))
    documented = [*SESSION_FIELDS, TIMEZONE_COLUMN, INGEST_ISSUES]
    assert row_hashes(rewritten, documented).to_pylist() == fresh["_dlt_id"].to_pylist()
    assert stored["_dlt_id"] != fresh["_dlt_id"]


@pytest.mark.parametrize(
    ("source", "value", "salt", "fragments"),
    [
        ("bizstim", {"drop": ["session_privat_note"]}, None,
         ["'session_privat_note'", "did you mean session_private_note?", "session_other_note"]),
        ("bizstim", {"hash": ["id"]}, SALT, ["the record's id"]),
        ("bizstim", {"drop": ["session_note"], "hash": ["session_note"]}, SALT, ["both"]),
        ("bizstim", {"hash": ["session_note"]}, None, ["PRACTICE_SYNC__PRIVACY_SALT"]),
        ("bizstim", {"hash": ["session_note"]}, "s3cr3t-9x", ["shorter than 16"]),
        ("bizstim", ["session_note"], None, ['{"drop": ["session_private_note"]']),
        ("bizstim", {"drop": 5}, None, ["drop must be a list of column names"]),  # was exit 1
        ("bizstim", {"hash": True}, SALT, ["hash must be a list of column names"]),
        ("timetap", {"drop": ["client.emailAddress", "price.amount"]}, None, ["'price.amount'"]),
        ("timetap", {"drop": ["package_sold_id"]}, None, ["the record's id"]),
    ],
)  # fmt: skip
def test_bad_policies_name_the_setting(
    source: str, value: object, salt: str | None, fragments: list[str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        privacy.parse(source, value, "SOURCES__X__PRIVACY", salt)
    message = str(caught.value)
    assert message.count(". ") == 0 or "e.g." in message  # one sentence
    for fragment in fragments:
        assert fragment in message
    if salt:
        assert salt not in message


# -- end to end ---------------------------------------------------------------------------------


def plant(sim: Simulator) -> tuple[str, int]:
    """A session holding the private note (and the client's email in its note), and a client
    with that email who bought two packages; returns the session id and the client id."""
    session_id = sim.bizstim.rows()[7]["id"]
    sim.bizstim.edit(session_id, session_private_note=NOTE, session_note=EMAIL)
    client_id = sim.timetap.add_client()
    sim.timetap._clients[client_id]["emailAddress"] = EMAIL  # noqa: SLF001 - no setter for it
    for package in sim.timetap.active_packages()[:2]:
        sim.timetap.sell_package(client_id, package["packageId"])
    return session_id, client_id


def with_policy(env: Env) -> Env:
    env.vars["SOURCES__BIZSTIM__PRIVACY"] = json.dumps(POLICY_BIZSTIM)
    env.vars["SOURCES__TIMETAP__PRIVACY"] = json.dumps(POLICY_TIMETAP)
    env.vars["PRACTICE_SYNC__PRIVACY_SALT"] = SALT
    return env


def holds(path: Path, needle: str) -> bool:
    """Whether a file holds `needle`: DuckDB and Parquet files decoded (they compress strings),
    gzip unpacked, anything else byte for byte."""
    data = path.read_bytes()
    if needle.encode() in data:
        return True
    if data[8:12] == b"DUCK":
        with contextlib.closing(duckdb.connect(str(path), read_only=True)) as con:
            columns = con.execute(
                "select schema_name, table_name, column_name from duckdb_columns() "
                "where database_name = current_database()"
            ).fetchall()
            return any(
                con.execute(
                    f'select count(*) from "{s}"."{t}" where contains("{c}"::varchar, ?)', [needle]
                ).fetchone()[0]
                for s, t, c in columns
            )
    if data[:4] == b"PAR1":
        return needle in json.dumps(pq.read_table(path).to_pylist(), default=str)
    if data[:2] == b"\x1f\x8b":
        return needle.encode() in gzip.decompress(data)
    return False


def files_holding(root: Path, needle: str) -> list[Path]:
    return [p for p in sorted(root.rglob("*")) if p.is_file() and holds(p, needle)]


def run_ok(env: Env, *args: str) -> str:
    result = env.run("run", *args)
    assert result.code == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_planted_values_reach_no_file_when_the_policy_drops_or_hashes_them(
    tmp_path: Path,
) -> None:
    with Simulator(seed=11, sessions=300, clients=40, packages=6) as sim:
        session_id, client_id = plant(sim)
        env = with_policy(make_env(sim, tmp_path))
        env.vars["LOAD__DELETE_COMPLETED_JOBS"] = "false"  # keep dlt's load files to search them
        env.vars["SOURCES__BIZSTIM__PAGE_SIZE"] = "5"  # 75 pages: decoded in worker processes
        outputs = [run_ok(env, "--debug"), run_ok(env)]
    streams = "".join(outputs)
    state = env.database.parent / ".practice_sync"
    assert any(p.suffix == ".parquet" for p in state.rglob("*"))  # load files were kept
    for needle in (NOTE, EMAIL, SALT):
        assert needle not in streams
        assert files_holding(tmp_path, needle) == []
    hashed = expected_hash(EMAIL)
    # the hash is where the value was, in raw and analytics, equal across both sources
    assert env.query(
        "select distinct session_private_note, session_note from bizstim.sessions where id = ?",
        [session_id],
    ) == [(None, hashed)]
    assert env.query(
        "select private_note, note from analytics.sessions where session_id = ?", [int(session_id)]
    ) == [(None, hashed)]
    clients = env.query(
        "select distinct client ->> 'emailAddress' from timetap.packages_sold where client_id = ?",
        [str(client_id)],
    )
    assert clients == [(hashed,)]
    # the second run found nothing changed: one version per record, the same hashes
    assert (
        env.query("select count(*), count(distinct id) from bizstim.sessions")[0]
        == env.query("select count(*), count(*) from analytics.sessions")[0]
    )
    assert env.query(
        "select count(*) from timetap.packages_sold where client_id = ?", [str(client_id)]
    ) == [(2,)]
    assert env.query("select policy from ops.privacy_policy order by dataset") == [
        ('{"drop": ["session_private_note"], "hash": ["session_note"]}',),
        (
            '{"drop": [], "hash": ["client.email_address", "client.first_name", "client.last_name"]}',
        ),
    ]


def test_default_policy_keeps_values_and_the_search_finds_them(tmp_path: Path) -> None:
    """Today's behaviour, and proof the file search of the test above can find a value."""
    with Simulator(seed=11, sessions=300, clients=40, packages=6) as sim:
        session_id, _ = plant(sim)
        env = make_env(sim, tmp_path)
        run_ok(env)
    assert env.query(
        "select private_note, note from analytics.sessions where session_id = ?", [int(session_id)]
    ) == [(NOTE, EMAIL)]
    serving = env.database.with_name("practice_sync_analytics.duckdb")
    assert files_holding(tmp_path, NOTE) == [env.database, serving]
    assert env.database in files_holding(tmp_path, EMAIL)
    assert not env.query(
        "select count(*) from duckdb_tables() where table_name = 'privacy_policy'"
    )[0][0]


def test_a_policy_added_later_rewrites_the_stored_history(tmp_path: Path) -> None:
    with Simulator(seed=11, sessions=300, clients=40, packages=6) as sim:
        session_id, client_id = plant(sim)
        env = make_env(sim, tmp_path)
        run_ok(env)
        sim.bizstim.edit(session_id, session_private_note=NOTE + "-v2")  # a second version
        run_ok(env)
        before = env.query("select count(*) from bizstim.sessions")[0][0]
        sold_before = env.query("select count(*) from timetap.packages_sold")[0][0]
        with_policy(env)
        first = run_ok(env)
        again = run_ok(env)
        env.vars["PRACTICE_SYNC__PRIVACY_SALT"] = SALT + "-changed"
        changed_salt = env.run("run")
    assert "rows of bizstim.sessions rewritten" in first
    assert "rows of timetap.packages_sold rewritten" in first
    assert "rewritten" not in again  # once per change
    # no spurious versions: the rewritten history matches what the extractor now writes
    assert env.query("select count(*) from bizstim.sessions")[0][0] == before
    assert env.query("select count(*) from timetap.packages_sold")[0][0] == sold_before
    assert env.query(
        "select count(*), count(session_private_note) from bizstim.sessions where id = ?",
        [session_id],
    ) == [(2, 0)]
    assert env.query(
        "select distinct session_note from bizstim.sessions where id = ?", [session_id]
    ) == [(expected_hash(EMAIL),)]
    assert env.query(
        "select distinct client ->> 'emailAddress' from timetap.packages_sold where client_id = ?",
        [str(client_id)],
    ) == [(expected_hash(EMAIL),)]
    assert env.query("select count(private_note) from analytics.sessions") == [(0,)]
    serving = env.database.with_name("practice_sync_analytics.duckdb")
    for needle in (NOTE, EMAIL):
        assert not holds(serving, needle)
        with contextlib.closing(duckdb.connect(str(env.database), read_only=True)) as con:
            assert not any(
                con.execute(
                    f'select count(*) from "{s}"."{t}" where contains("{c}"::varchar, ?)', [needle]
                ).fetchone()[0]
                for s, t, c in con.execute(
                    "select schema_name, table_name, column_name from duckdb_columns() "
                    "where database_name = current_database()"
                ).fetchall()
            )
    # hashes cannot be redone with another salt: the run refuses, naming the setting
    assert changed_salt.code == 2
    failure = [m for m in messages(changed_salt.stderr) if m.startswith("practice-sync:")]
    assert len(failure) == 2  # one sentence per source
    assert all("PRACTICE_SYNC__PRIVACY_SALT" in line for line in failure)
    assert SALT not in changed_salt.stdout + changed_salt.stderr


def test_a_policy_naming_an_unknown_column_stops_the_run(sim: Simulator, tmp_path: Path) -> None:
    env = make_env(sim, tmp_path)
    env.vars["SOURCES__BIZSTIM__PRIVACY"] = '{"drop": ["private_note"]}'
    result = env.run("run")
    assert result.code == 2
    lines = [m for m in messages(result.stderr) if m.startswith("practice-sync:")]
    assert len(lines) == 1
    assert "SOURCES__BIZSTIM__PRIVACY" in lines[0] and "session_private_note" in lines[0]
    assert not env.database.exists()
    env.vars["SOURCES__BIZSTIM__PRIVACY"] = '{"hash": ["session_note"]}'
    result = env.run("run")
    assert result.code == 2 and "PRACTICE_SYNC__PRIVACY_SALT" in result.stderr


def test_analytics_build_with_every_droppable_column_dropped(
    sim: Simulator, tmp_path: Path
) -> None:
    """Every staging model and mart tolerates a dropped column: NULL in analytics, no crash."""
    env = make_env(sim, tmp_path)
    for source in ("bizstim", "timetap"):
        dropped = privacy.policy_columns(source)
        env.vars[f"SOURCES__{source.upper()}__PRIVACY"] = json.dumps({"drop": dropped})
    run_ok(env)
    assert env.query(
        "select count(*), count(private_note), count(note) from analytics.sessions"
    ) == [(len(sim.bizstim.rows()), 0, 0)]
    assert env.query("select count(*), count(created_by) from analytics.packages_sold")[0][1] == 0
    assert env.query("select count(*) from timetap.packages_sold where client is not null") == [
        (0,)
    ]


def test_a_full_refresh_that_failed_keeps_refusing_the_changed_salt(tmp_path: Path) -> None:
    """The new salt was recorded before the refresh had loaded anything: when Bizstim was down,
    the next ordinary run took the old hashes for the new salt's and stored both."""
    with Simulator(seed=11, sessions=300, clients=40, packages=6) as sim:
        plant(sim)
        env = with_policy(make_env(sim, tmp_path, timetap=False))
        run_ok(env)
        hashed = env.query("select distinct session_note from bizstim.sessions where id = ?", [
            sim.bizstim.rows()[7]["id"]
        ])
        assert hashed == [(expected_hash(EMAIL),)]
        env.vars["PRACTICE_SYNC__PRIVACY_SALT"] = SALT + "-changed"
        url = env.vars["SOURCES__BIZSTIM__BASE_URL"]
        with socket.socket() as free:  # a port nothing listens on: Bizstim is down
            free.bind(("127.0.0.1", 0))
            port = free.getsockname()[1]
        env.vars["SOURCES__BIZSTIM__BASE_URL"] = f"http://127.0.0.1:{port}/api"
        env.vars["SOURCES__BIZSTIM__MAX_ATTEMPTS"] = "1"
        down = env.run("run", "--full-refresh")
        assert down.code == 4, down.stderr
        env.vars["SOURCES__BIZSTIM__BASE_URL"] = url
        refused = env.run("run")
        assert refused.code == 2, refused.stderr
        assert "(PRACTICE_SYNC__PRIVACY_SALT) is not the salt that hashed bizstim" in refused.stderr
        refreshed = env.run("run", "--full-refresh")  # landed: the new salt is the record's
        assert refreshed.code == 0, refreshed.stderr
        assert env.run("run").code == 0
    assert env.query("select distinct session_note from bizstim.sessions where id = ?", [
        sim.bizstim.rows()[7]["id"]
    ]) == [(expected_hash(EMAIL, SALT + "-changed"),)]


@pytest.mark.parametrize("action", ["hash", "drop"])
def test_a_client_whose_sales_cannot_be_read_is_named_as_the_policy_stores_client_ids(
    tmp_path: Path, action: str
) -> None:
    """The client a 404 (or a failing list) was about went to `timetap.fetch_problems`,
    `analytics.data_issues`, the serving file and the summary as its plain id, under a policy
    that hashes or drops `client_id` everywhere else."""
    from practice_sync.simulator import Fault

    with Simulator(clients=30, packages=5, edge_cases=False) as sim:
        env = make_env(sim, tmp_path, bizstim=False)
        env.vars["SOURCES__TIMETAP__PRIVACY"] = json.dumps({action: ["client_id"]})
        env.vars["PRACTICE_SYNC__PRIVACY_SALT"] = SALT
        assert env.run("run").code == 0
        client_id = sim.timetap.packages_sold()[0]["client"]["clientId"]
        sim.add_fault(Fault(rf"/packageSold/client/{client_id}$", "500", status=404))
        result = env.run("run")
        assert result.code == 0, result.stderr
        assert "1 TimeTap clients answered 404 for their packages sold; their" in result.stdout
        stored = expected_hash(str(client_id)) if action == "hash" else None
        assert env.query(
            "select record_id, problem from analytics.data_issues where entity = 'client'"
        ) == [(stored, "its packages sold answered HTTP 404 (not found)")]
        shown = result.stdout + result.stderr
        serving = env.database.with_name("practice_sync_analytics.duckdb").read_bytes()
        for place in (shown.encode(), serving, env.database.read_bytes()):
            assert f"client:{client_id}".encode() not in place
        assert env.query(
            "select count(*) from timetap.fetch_problems where client_id = ?", [str(client_id)]
        ) == [(0,)]


def test_keys_inside_the_package_a_sale_embeds() -> None:
    """`packageSold.pkg` is the package object, with its createdUser and modifiedUser: no
    policy could reach them (`pkg.createdUser` was "not a TimeTap column")."""
    policy = privacy.parse(
        "timetap", {"drop": ["pkg.createdUser"], "hash": ["pkg.modified_user"]},
        "SOURCES__TIMETAP__PRIVACY", SALT,
    )  # fmt: skip
    assert policy.entries() == {"drop": ["pkg.created_user"], "hash": ["pkg.modified_user"]}
    pkg = {"packageId": 501, "createdUser": "bob", "modifiedUser": "eve", "active": True}
    table = rows_to_table(
        [{"package_sold_id": "1", "pkg": pkg}], SOLD_FIELDS, entity="package_sold",
        expect_text=False, policy=policy,
    )  # fmt: skip
    assert json.loads(table["pkg"][0].as_py()) == {
        "active": True, "modifiedUser": expected_hash("eve"), "packageId": 501,
    }  # fmt: skip
