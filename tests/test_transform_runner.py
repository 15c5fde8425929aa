"""The transform runner: run order from `-- depends_on:`, its errors, and skipping.

Most tests build a small transforms folder of their own; the last ones check the shipped files.
"""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pytest

from practice_sync.transform import (
    TRANSFORMS_DIR,
    TransformOrderError,
    load_transforms,
    model_dependencies,
    run_transforms,
    sql_files,
)

SETUP = "create schema if not exists analytics;\n"


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, sql in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(sql)
    return root


def order(root: Path) -> list[str]:
    return [path.relative_to(root).as_posix() for path in sql_files(root)]


def analytics_table(name: str, depends_on: str = "", requires: str = "") -> str:
    header = (f"-- requires: {requires}\n" if requires else "") + (
        f"-- depends_on: {depends_on}\n" if depends_on else ""
    )
    return f"{header}--\ncreate or replace table analytics.{name} as select 1 as x;\n"


# --- order ---------------------------------------------------------------------------------


def test_dependencies_decide_the_order_and_ties_keep_setup_staging_marts_by_name(
    tmp_path: Path,
) -> None:
    root = tree(
        tmp_path,
        {
            "00_schema.sql": SETUP,
            "01_macros.sql": "select 1;\n",
            "staging/a_late.sql": "-- depends_on: b_early\ncreate temp table a_late as select 1;\n",
            "staging/b_early.sql": "create temp table b_early as select 1;\n",
            "staging/c_free.sql": "create temp table c_free as select 1;\n",
            # a dependency wins over the folder: this staging model needs a mart first
            "staging/d_uses_mart.sql": "-- depends_on: early_mart\nselect 1;\n",
            "marts/early_mart.sql": analytics_table("early_mart"),
            "marts/m.sql": analytics_table("m", depends_on="a_late"),
        },
    )
    expected = [
        "00_schema.sql",
        "01_macros.sql",
        "staging/b_early.sql",
        "staging/a_late.sql",
        "staging/c_free.sql",
        "marts/early_mart.sql",
        "staging/d_uses_mart.sql",
        "marts/m.sql",
    ]
    assert order(root) == expected
    assert order(root) == expected  # deterministic
    assert run_transforms(duckdb.connect(), root) == {"early_mart": 1, "m": 1}


def test_dependency_headers_take_several_names_and_lines() -> None:
    sql = (
        "-- depends_on: a, b\n-- requires: raw.x\n-- Depends_On:  c ,\n"
        "select 1;\n-- depends_on: not_in_header\n"
    )
    assert model_dependencies(sql) == ["a", "b", "c"]
    assert model_dependencies("select 1") == []


# --- errors --------------------------------------------------------------------------------


def test_unknown_dependency_is_an_error_naming_the_file(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {"00_schema.sql": SETUP, "marts/m.sql": analytics_table("m", depends_on="stg_nope")},
    )
    with pytest.raises(TransformOrderError, match=r"marts/m\.sql depends on 'stg_nope'"):
        sql_files(root)


@pytest.mark.parametrize(
    ("files", "cycle"),
    [
        (
            {
                "staging/a.sql": "-- depends_on: b\nselect 1;\n",
                "staging/b.sql": "-- depends_on: a\nselect 1;\n",
                "marts/waits.sql": analytics_table("waits", depends_on="a"),
            },
            "staging/a.sql -> staging/b.sql -> staging/a.sql",
        ),
        (
            {"marts/self.sql": analytics_table("self", depends_on="self")},
            "marts/self.sql -> marts/self.sql",
        ),
        (
            # a setup file may not depend on a model: every model already depends on it
            {"01_macros.sql": "-- depends_on: m\nselect 1;\n", "marts/m.sql": analytics_table("m")},
            "01_macros.sql -> marts/m.sql -> 01_macros.sql",
        ),
    ],
)
def test_a_cycle_is_an_error_naming_its_files(
    tmp_path: Path, files: dict[str, str], cycle: str
) -> None:
    root = tree(tmp_path, {"00_schema.sql": SETUP, **files})
    with pytest.raises(TransformOrderError, match="cycle") as failure:
        sql_files(root)
    assert str(failure.value).endswith(cycle)


def test_two_files_with_one_name_are_an_error(tmp_path: Path) -> None:
    root = tree(tmp_path, {"staging/x.sql": "select 1;\n", "marts/x.sql": "select 1;\n"})
    with pytest.raises(TransformOrderError, match=r"staging/x\.sql and marts/x\.sql"):
        sql_files(root)


def test_an_order_error_runs_nothing(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {"00_schema.sql": SETUP, "marts/m.sql": analytics_table("m", depends_on="nope")},
    )
    con = duckdb.connect()
    with pytest.raises(TransformOrderError):
        run_transforms(con, root)
    schemas = "select count(*) from duckdb_schemas() where schema_name = 'analytics'"
    assert con.execute(schemas).fetchall() == [(0,)]
    con.execute("begin transaction")  # no transaction was left open
    con.execute("rollback")


# --- skipping ------------------------------------------------------------------------------


def test_a_model_whose_dependency_was_skipped_is_skipped_too(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {
            "00_schema.sql": SETUP,
            "staging/stg_x.sql": "-- requires: raw.x\ncreate temp table stg_x as from raw.x;\n",
            "marts/m1.sql": "-- depends_on: stg_x\n"
            "create or replace table analytics.m1 as from stg_x;\n",
            "marts/m2.sql": "-- depends_on: m1\n"
            "create or replace table analytics.m2 as from analytics.m1;\n",
            "marts/other.sql": analytics_table("other"),
        },
    )
    con = duckdb.connect()
    assert run_transforms(con, root) == {"other": 1}

    con.execute("create schema raw; create table raw.x as select 1 as x union all select 2")
    assert run_transforms(con, root) == {"m1": 2, "m2": 2, "other": 1}


# --- the shipped transforms ----------------------------------------------------------------


def _code(sql: str) -> str:
    """The SQL without its comments."""
    return re.sub(r"--[^\n]*", "", sql)


def test_shipped_models_declare_exactly_the_models_and_raw_tables_they_read() -> None:
    transforms = load_transforms(TRANSFORMS_DIR)
    # staging models are TEMP tables read by bare name, marts are read as analytics.<name>
    staging = {t.name for t in transforms if t.label.startswith("staging/")}
    marts = {t.name for t in transforms if t.label.startswith("marts/")}
    for transform in transforms:
        code = _code(transform.sql)
        read = set(re.findall(r"\b\w+\b", code)) & staging
        read |= set(re.findall(r"\banalytics\.(\w+)", code)) & marts
        assert sorted(read - {transform.name}) == sorted(transform.depends_on), transform.label
        # raw tables are read through the runner's union of every account's dataset
        raw = {f"{s}.{t}" for s, t in re.findall(r"\braw_(bizstim|timetap)__(\w+)", code)}
        assert sorted(raw) == sorted(transform.requires), transform.label


def test_shipped_order_puts_each_model_after_what_it_reads() -> None:
    transforms = {t.path: t for t in load_transforms(TRANSFORMS_DIR)}
    ran: set[str] = set()
    for path in sql_files(TRANSFORMS_DIR):
        transform = transforms[path]
        assert transform.is_setup or transform.depends_on or transform.requires, transform.label
        assert set(transform.depends_on) <= ran, transform.label
        ran.add(transform.name)
