"""The contract files (transforms/marts/<table>.yml): the loader's checks, the drift check and
every data-test kind made to fail, on a rebuild from hand-made raw tables."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from transform_fixtures import packages, packages_sold, sessions

from practice_sync import docs
from practice_sync.contract import ContractError, load_contract, load_table
from practice_sync.errors import ExitCode, TransformFailed
from practice_sync.transform import TRANSFORMS_DIR, run_transforms

ROOT = Path(__file__).resolve().parent.parent
CONTRACT = load_contract(TRANSFORMS_DIR / "marts")


@pytest.fixture
def con() -> duckdb.DuckDBPyConnection:
    connection = duckdb.connect()
    yield connection
    connection.close()


def copy_transforms(tmp_path: Path) -> Path:
    folder = tmp_path / "transforms"
    shutil.copytree(TRANSFORMS_DIR, folder, ignore=shutil.ignore_patterns("__pycache__"))
    return folder


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def snapshot(con: duckdb.DuckDBPyConnection) -> dict[str, list[tuple]]:
    names = con.execute(
        "select table_name from duckdb_tables() where schema_name = 'analytics' order by 1"
    ).fetchall()
    return {
        name: con.execute(f"select * from analytics.{name} order by all").fetchall()
        for (name,) in names
    }


def issues(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    return con.execute("select * from analytics.data_issues order by all").fetchall()


def all_sources(con: duckdb.DuckDBPyConnection) -> None:
    sessions(con, {"id": "1", "cancel_clients": "76|2328|0"}, {"id": "2"})
    packages(con, {})
    packages_sold(con, {})


# -- the files ----------------------------------------------------------------------------


def test_every_analytics_table_has_a_contract_file_with_described_columns() -> None:
    assert sorted(CONTRACT) == sorted(p.stem for p in (TRANSFORMS_DIR / "marts").glob("*.yml"))
    marts = {p.stem for p in (TRANSFORMS_DIR / "marts").glob("*.sql")}
    assert {m for m in marts if not m.startswith("data_issues__")} | {"data_issues"} == set(
        CONTRACT
    )
    for table in CONTRACT.values():
        assert table.description and table.grain and table.columns
        assert all(c.description and c.type for c in table.columns)


def write(tmp_path: Path, text: str, name: str = "things") -> Path:
    path = tmp_path / f"{name}.yml"
    path.write_text(text)
    return path


GOOD = """
name: things
description: Things.
grain: thing
key: [thing_id]
columns:
  - {name: thing_id, type: bigint, description: The id.}
  - name: kind
    type: VARCHAR
    description: The kind.
    tests: [not_null, {accepted_values: {values: [a, b], severity: warn}}]
source: bizstim
entity: session
"""


def test_a_good_file_loads_with_its_tests(tmp_path: Path) -> None:
    table = load_table(write(tmp_path, GOOD))
    assert table.key == ("thing_id",)
    assert [(c.name, c.type) for c in table.columns] == [
        ("thing_id", "BIGINT"),
        ("kind", "VARCHAR"),
    ]
    assert [(t.kind, t.column, t.severity, t.values) for t in table.tests] == [
        ("not_null", "kind", "error", ()),
        ("accepted_values", "kind", "warn", ("a", "b")),
    ]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ((GOOD, "key: [thing_id]\n", "key: [thing_id\n"), "line"),
        ((GOOD, "name: things", "name: stuff"), "`name` is 'stuff' but the file describes 'things'"),
        ((GOOD, "grain: thing\n", ""), "`grain` must be a non-empty text"),
        ((GOOD, "key: [thing_id]", "key: [nope]"), "'nope' is used by `key` or a test but is not a column"),
        ((GOOD, "not_null,", "unique,"), "unknown test 'unique'"),
        ((GOOD, "severity: warn", "severity: loud"), "severity 'loud' of accepted_values"),
        ((GOOD, "grain: thing", "grain: thing\ngrian: typo"), "unknown entries grian"),
        ((GOOD, "source: bizstim\n", ""), "a reported (warn) test needs `source` and `entity`"),
        ((GOOD, "{values: [a, b], severity: warn}", "{severity: warn}"), "accepted_values needs a list of `values`"),
        # YAML's true is 'True' as text, DuckDB's 'true': valid rows failed the test
        ((GOOD, "values: [a, b]", "values: [true, 10.5]"), "accepted_values must be quoted text"),
        ((GOOD, "description: The id.", "descr: The id."), "unknown column entries descr"),
    ],
)  # fmt: skip
def test_a_malformed_file_is_an_error_naming_it(
    tmp_path: Path, change: tuple[str, str, str], message: str
) -> None:
    text, old, new = change
    assert old in text
    path = write(tmp_path, text.replace(old, new, 1))
    with pytest.raises(ContractError) as error:
        load_table(path)
    assert str(error.value).startswith(str(path))
    assert message in str(error.value)


def test_a_relationship_to_an_undescribed_table_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, GOOD + "tests:\n  - relationships: {column: kind, to: others, field: kind}\n")
    with pytest.raises(ContractError, match="points to others.kind, which no contract file"):
        load_contract(tmp_path)


def test_a_malformed_file_stops_the_rebuild_before_anything_changes(con, tmp_path: Path) -> None:
    all_sources(con)
    run_transforms(con)
    before = snapshot(con)
    folder = copy_transforms(tmp_path)
    edit(folder / "marts" / "sessions.yml", "key: [account, session_id]", "key: account: x")
    with pytest.raises(ContractError, match=r"sessions.yml line \d+: not valid YAML"):
        run_transforms(con, folder)
    assert snapshot(con) == before


# -- drift --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("        account\n    from packages_sold", "        account,\n        1 as extra\n    from packages_sold",
         "the build has a column extra (INTEGER) that the contract does not list"),
        ("        modified_by,\n        valid_from,\n        account\n    from packages_sold", "        modified_by,\n        account\n    from packages_sold",
         "the contract lists a column valid_from that the build does not have"),
        ("        price,\n        max_quantity", "        price::double as price,\n        max_quantity",
         "column price is DOUBLE in the build but DECIMAL(18,2) in the contract"),
    ],
)  # fmt: skip
def test_a_mart_that_gains_loses_or_retypes_a_column_fails_the_rebuild(
    con, tmp_path: Path, old: str, new: str, message: str
) -> None:
    all_sources(con)
    run_transforms(con)
    before = snapshot(con)
    folder = copy_transforms(tmp_path)
    edit(folder / "marts" / "packages_sold.sql", old, new)
    with pytest.raises(TransformFailed) as failure:
        run_transforms(con, folder)
    assert str(failure.value) == (
        f"analytics.packages_sold does not match its contract packages_sold.yml: {message}, so "
        "the previous analytics tables were kept."
    )
    assert failure.value.exit_code == ExitCode.TRANSFORM_FAILED
    assert snapshot(con) == before


def test_a_new_mart_without_a_contract_file_fails_the_rebuild(con, tmp_path: Path) -> None:
    all_sources(con)
    folder = copy_transforms(tmp_path)
    (folder / "marts" / "extra.sql").write_text("create table analytics.extra as select 1 as x;")
    with pytest.raises(TransformFailed, match=r"analytics.extra has no contract file"):
        run_transforms(con, folder)


def test_a_real_build_matches_the_contract_exactly_with_comments(con) -> None:
    all_sources(con)
    built = run_transforms(con)
    assert sorted(built) == sorted(CONTRACT)
    columns = con.execute(
        "select table_name, column_name, data_type, comment from duckdb_columns() "
        "where schema_name = 'analytics' order by table_name, column_index"
    ).fetchall()
    assert columns == [
        (t.name, c.name, c.type, c.description)
        for t in sorted(CONTRACT.values(), key=lambda t: t.name)
        for c in t.columns
    ]
    assert len(columns) > 150


# -- data tests: each kind can fail ---------------------------------------------------------


def test_a_duplicated_key_is_fatal_and_keeps_yesterday(con, tmp_path: Path) -> None:
    all_sources(con)
    run_transforms(con)
    before = snapshot(con)
    # a transform that groups versions by the id's text: '07001' reads as 7001, a second
    # current sale of one key (the shipped staging model groups them as one sale)
    folder = copy_transforms(tmp_path)
    edit(
        folder / "staging" / "stg_timetap__packages_sold.sql",
        "coalesce(cast(parse_int(package_sold_id) as varchar), trim(package_sold_id), _dlt_id)",
        "coalesce(trim(package_sold_id), _dlt_id)",
    )
    packages_sold(con, {"package_sold_id": "07001"})
    with pytest.raises(TransformFailed) as failure:
        run_transforms(con, folder)
    assert str(failure.value) == (
        "analytics.package_sold_history failed its key test on account, package_sold_id, "
        "version_number in 2 rows (duplicate keys), so the previous analytics tables were kept."
    )
    assert snapshot(con) == before


def test_a_null_key_is_fatal_unless_the_contract_says_it_is_reported(con, tmp_path: Path) -> None:
    sessions(con, {"id": "11a5"})  # unreadable id: NULL session_id, a data issue, allowed
    run_transforms(con)
    assert issues(con) == [
        ("bizstim", "session", "11a5", "id", "11a5", "not an integer", "default")
    ]
    folder = copy_transforms(tmp_path)
    for name in ("sessions", "session_history", "session_cancellations"):
        path = folder / "marts" / f"{name}.yml"
        path.write_text(re.sub(r"key_nulls: >-\n(  .*\n)+", "", path.read_text()))
    with pytest.raises(TransformFailed, match=r"in 1 row \(duplicate or NULL keys\)"):
        run_transforms(con, folder)


def test_a_not_null_test_of_severity_error_is_fatal(con) -> None:
    sessions(con, {"id": "1"}, {"id": "2", "_dlt_valid_from": None})
    with pytest.raises(TransformFailed) as failure:
        run_transforms(con)
    assert str(failure.value) == (
        "analytics.session_history.valid_from failed its not_null test in 1 row, so the "
        "previous analytics tables were kept."
    )
    assert snapshot(con) == {}  # no earlier build: nothing at all


def test_an_accepted_values_test_is_fatal_and_names_the_values(con, tmp_path: Path) -> None:
    all_sources(con)
    folder = copy_transforms(tmp_path)
    edit(
        folder / "marts" / "packages_sold.sql",
        "        status,\n",
        "        lower(status) as status,\n",
    )
    with pytest.raises(TransformFailed) as failure:
        run_transforms(con, folder)
    assert str(failure.value) == (
        "analytics.packages_sold.status failed its accepted_values (OPEN, CLOSED) test in 1 row, "
        "so the previous analytics tables were kept."
    )


def test_fatal_tests_fail_in_the_contracts_order_each_with_its_own_count(
    con, tmp_path: Path
) -> None:
    """A table's key and value tests are counted in one scan: the first failing test in the
    contract's order is named, with its own count, not a neighbour's."""
    folder = copy_transforms(tmp_path)
    edit(  # status (listed before valid_from) gets a value its accepted_values test refuses
        folder / "staging" / "stg_bizstim__sessions.sql",
        "when '3' then 'saved'",
        "when '3' then 'SAVED'",
    )
    sessions(
        con,
        {"id": "1", "session_status": "3"},
        {"id": "2", "session_status": "3"},
        {"id": "3", "session_status": "0", "_dlt_valid_from": None},
    )
    with pytest.raises(TransformFailed) as failure:
        run_transforms(con, folder)
    assert str(failure.value).startswith(
        "analytics.session_history.status failed its accepted_values (open, canceled, missed, saved) "
        "test in 2 rows, "
    ), failure.value
    edit(folder / "staging" / "stg_bizstim__sessions.sql", "'SAVED'", "'saved'")
    with pytest.raises(TransformFailed) as failure:
        run_transforms(con, folder)
    assert str(failure.value).startswith(
        "analytics.session_history.valid_from failed its not_null test in 1 row, "
    ), failure.value


def test_a_relationships_test_of_severity_error_is_fatal(con, tmp_path: Path) -> None:
    """Counted on its own (it looks rows up in another table), after the tests before it."""
    sessions(con, {"id": "1", "cancel_clients": "76|2328|0,77|2329|0"})
    folder = copy_transforms(tmp_path)
    edit(
        folder / "marts" / "session_cancellations.sql",
        "        session_id,\n",
        "        session_id + 1000 as session_id,\n",
    )
    edit(
        folder / "marts" / "session_cancellations.yml",
        "field: session_id}",
        "field: session_id, severity: error}",
    )
    with pytest.raises(TransformFailed) as failure:
        run_transforms(con, folder)
    assert str(failure.value) == (
        "analytics.session_cancellations.session_id failed its relationships (in sessions."
        "session_id) test in 2 rows, so the previous analytics tables were kept."
    )


def test_a_warn_test_is_reported_not_fatal(con, tmp_path: Path) -> None:
    all_sources(con)
    folder = copy_transforms(tmp_path)
    edit(
        folder / "marts" / "packages_sold.sql",
        "        status,\n",
        "        lower(status) as status,\n",
    )
    edit(
        folder / "marts" / "packages_sold.yml",
        "{values: [OPEN, CLOSED]}",
        "{values: [OPEN, CLOSED], severity: warn}",
    )
    counts = run_transforms(con, folder)
    assert issues(con) == [
        ("timetap", "package_sold", "7001", "status", "open",
         "accepted_values test: not one of OPEN, CLOSED", "default"),
    ]  # fmt: skip
    assert counts["data_issues"] == 1


def test_a_package_sold_of_an_unknown_package_is_reported(con) -> None:
    packages(con, {})
    packages_sold(con, {"pkg": '{"packageId":999}'})
    counts = run_transforms(con)
    assert issues(con) == [
        ("timetap", "package_sold", "7001", "package_id", "999",
         "relationships test: not found in analytics.package_history.package_id", "default"),
    ]  # fmt: skip
    assert counts["packages_sold"] == 1 and counts["data_issues"] == 1


def test_a_cancellation_of_an_unknown_session_is_reported(con, tmp_path: Path) -> None:
    sessions(con, {"id": "1", "cancel_clients": "76|2328|0"})
    folder = copy_transforms(tmp_path)
    edit(
        folder / "marts" / "session_cancellations.sql",
        "        session_id,\n",
        "        session_id + 1000 as session_id,\n",
    )
    run_transforms(con, folder)
    assert issues(con) == [
        ("bizstim", "session", "1001:1", "session_id", "1001",
         "relationships test: not found in analytics.sessions.session_id", "default"),
    ]  # fmt: skip


def another_account(con: duckdb.DuckDBPyConnection, source_table: str, account: str) -> None:
    """Move the raw rows of `source_table` (e.g. bizstim.sessions) into account `account`'s
    dataset, as dlt would have loaded them there (the dataset has `_dlt_loads`)."""
    source, table = source_table.split(".")
    dataset = f"{source}_{account}"
    con.execute(f"create schema {dataset}")
    con.execute(f"create table {dataset}._dlt_loads (load_id varchar)")
    con.execute(f"create table {dataset}.{table} as select * from {source_table}")
    con.execute(f"delete from {source_table}")


def test_a_relationship_is_looked_up_within_the_rows_own_account(con, tmp_path: Path) -> None:
    sessions(con, {"id": "1001"})
    another_account(con, "bizstim.sessions", "uptown")  # session 1001 is uptown's
    sessions(con, {"id": "1", "cancel_clients": "76|2328|0"})  # default's, pointing to 1001
    folder = copy_transforms(tmp_path)
    edit(
        folder / "marts" / "session_cancellations.sql",
        "        session_id,\n",
        "        session_id + 1000 as session_id,\n",
    )
    run_transforms(con, folder)
    assert con.execute(
        "select account, session_id from analytics.sessions order by all"
    ).fetchall() == [("default", 1), ("uptown", 1001)]
    assert issues(con) == [
        ("bizstim", "session", "1001:1", "session_id", "1001",
         "relationships test: not found in analytics.sessions.session_id", "default"),
    ]  # fmt: skip


def test_a_relationship_to_a_table_not_built_is_skipped(con) -> None:
    packages_sold(con, {"pkg": '{"packageId":999}'})  # no packages loaded: nothing to check
    run_transforms(con)
    assert issues(con) == []


def test_a_contract_test_that_passes_writes_nothing(con) -> None:
    all_sources(con)
    run_transforms(con)
    assert issues(con) == []


# -- documentation --------------------------------------------------------------------------


def test_the_committed_data_dictionary_is_the_generated_one() -> None:
    committed = (ROOT / "docs" / "data-dictionary.md").read_text(encoding="utf-8")
    assert committed == docs.dictionary(CONTRACT), (
        "docs/data-dictionary.md is stale: run `practice-sync docs --out docs/data-dictionary.md`"
    )


def test_the_readme_contract_table_is_the_generated_one() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start, end = readme.index(docs.README_BEGIN), readme.index(docs.README_END)
    block = readme[start : end + len(docs.README_END)]
    assert block == docs.readme_table(CONTRACT, "docs/data-dictionary.md"), (
        "README's contract table is stale: paste `practice-sync docs --readme-table` over it"
    )
    assert "(docs/data-dictionary.md)" in readme


def test_the_dictionary_lists_every_column_with_its_type() -> None:
    text = docs.dictionary(CONTRACT)
    for table in CONTRACT.values():
        assert f"## `analytics.{table.name}`" in text
        assert f"- **One row per:** {table.grain}" in text
        for column in table.columns:
            assert f"| `{column.name}` | {column.type} |" in text


def bi_examples() -> dict[str, tuple[str, str]]:
    """{table: (grain, query)} from the README's BI guide: one `-- table (one row per grain)`."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Connecting a BI tool") : readme.index("## How it works")]
    block = section.split("```sql\n", 1)[1].split("```", 1)[0]
    examples: dict[str, tuple[str, str]] = {}
    for chunk in block.strip().split("\n\n"):
        header, _, query = chunk.partition("\n")
        match = re.match(r"-- (\w+) \(one row per (.+?)\): ", header)
        assert match, header
        examples[match.group(1)] = (match.group(2), query)
    return examples


def test_the_bi_guide_has_one_working_query_per_table_with_its_grain(con) -> None:
    all_sources(con)
    run_transforms(con)
    examples = bi_examples()
    assert sorted(examples) == sorted(CONTRACT)
    for name, (grain, query) in examples.items():
        assert grain == CONTRACT[name].grain, name
        assert f"analytics.{name}" in query
        con.execute(query).fetchall()  # runs as printed
    assert con.execute(examples["timetap_clients"][1]).fetchall() == [
        ("Ada", "L", "ada@example.com", 7001, "OPEN", 7)
    ]


def test_the_docs_command_prints_or_writes_the_dictionary(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "practice_sync.cli", "docs"]
    printed = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == docs.dictionary(CONTRACT)
    out = tmp_path / "dictionary.md"
    written = subprocess.run([*command, "--out", str(out)], capture_output=True, timeout=120)
    assert written.returncode == 0 and written.stdout == b""
    assert out.read_text(encoding="utf-8") == docs.dictionary(CONTRACT)
    # a folder that does not exist is one sentence and exit 2, not a FileNotFoundError (exit 1)
    missing = tmp_path / "no-such-folder" / "dictionary.md"
    refused = subprocess.run([*command, "--out", str(missing)], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2
    assert f"The data dictionary cannot be written to {missing} (No such file or directory)" in (
        refused.stderr
    )
    assert "Traceback" not in refused.stderr


def test_two_reported_tests_alike_in_data_issues_keep_each_others_findings() -> None:
    """package_reasons and package_services both check package_id against packages: their
    findings share source, entity, field and problem, and the second test's clearing of earlier
    findings deleted the first's fresh ones."""
    from practice_sync.contract_checks import run_data_tests

    contract = load_contract(TRANSFORMS_DIR / "marts")
    built = ["packages", "package_reasons", "package_services", "data_issues"]
    with duckdb.connect() as con:
        con.execute("create schema analytics")
        for name in built:
            columns = ", ".join(f'"{c.name}" {c.type}' for c in contract[name].columns)
            con.execute(f"create table analytics.{name} ({columns})")
        con.execute(
            "insert into analytics.packages (account, package_id, valid_from) "
            "values ('default', 1, '2024-01-01')"
        )
        con.execute(  # a reason of a package that is not there; a service of one that is
            "insert into analytics.package_reasons (account, package_id, position) "
            "values ('default', 99, 1)"
        )
        con.execute(
            "insert into analytics.package_services (account, package_id, service_id) "
            "values ('default', 1, 7), ('default', 98, 7)"
        )
        run_data_tests(con, contract, built)
        found = con.execute(
            "select record_id, value, problem from analytics.data_issues order by 1"
        ).fetchall()
    problem = "relationships test: not found in analytics.packages.package_id"
    assert found == [("98:7", "98", problem), ("99:1", "99", problem)]
