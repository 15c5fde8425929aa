"""The files dlt loads: each page is written in the stored schema's column order, so dlt's
normalize step moves the file instead of rewriting it (`dlt_glue.with_load_id`), and every raw row
carries the id of the load that wrote it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dlt
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dlt.common.libs.pyarrow import should_normalize_arrow_schema

from practice_sync import dlt_glue, guard, rows, warehouse
from practice_sync.pipeline import stamp

FIELDS = ["id", "note"]


def sessions(pages: list[list[dict[str, Any]]]) -> Any:
    """A raw table as the sources declare theirs (scd2 by id, text columns), stamped as the job
    stamps every account's resources."""

    @dlt.resource(
        name="sessions",
        write_disposition=guard.scd2("id"),
        columns=guard.columns("id", rows.text_columns(FIELDS)),
    )
    def resource() -> Iterator[pa.Table]:
        for page in pages:
            yield rows.rows_to_table(page, FIELDS, entity="session")

    return stamp(resource, "downtown")


def extracted_files(pipeline: dlt.Pipeline) -> list[Path]:
    return sorted(Path(pipeline.working_dir, "normalize", "extracted").rglob("sessions.*.parquet"))


def needs_rewrite(pipeline: dlt.Pipeline, file: Path) -> bool:
    """dlt's own test, as its normalize step applies it to each extracted Arrow file."""
    schema = pipeline.default_schema
    return should_normalize_arrow_schema(
        pq.read_schema(file),
        schema.get_table_columns("sessions"),
        schema.naming,
        pipeline.destination.capabilities(),
    )[0]


@pytest.fixture
def pipeline(tmp_path: Path) -> dlt.Pipeline:
    return dlt_glue.make_pipeline(
        "practice_sync_test",
        "bizstim",
        tmp_path / "warehouse.duckdb",
        tmp_path / "pipelines",
        warehouse.duckdb_config(),
    )


def test_pages_need_no_rewrite_and_rows_carry_their_load_id(
    pipeline: dlt.Pipeline, tmp_path: Path
) -> None:
    nights = [
        [[{"id": str(i), "note": f"first {i}"} for i in range(3)], [{"id": "3", "note": None}]],
        [[{"id": "1", "note": "edited"}, {"id": "4", "note": "new"}]],  # a night of changes
    ]
    for pages in nights:
        pipeline.extract(sessions(pages))
        files = extracted_files(pipeline)
        assert files
        assert [needs_rewrite(pipeline, file) for file in files] == [False] * len(files)
        # the column dlt adds is where the schema has it, not appended after the hint columns
        assert pq.read_schema(files[0]).names == list(
            pipeline.default_schema.get_table_columns("sessions")
        )
        pipeline.normalize()
        pipeline.load()

    with contextlib.closing(duckdb.connect(str(tmp_path / "warehouse.duckdb"))) as con:
        loads = [r[0] for r in con.execute("select load_id from bizstim._dlt_loads order by 1").fetchall()]
        assert len(loads) == 2
        versions = con.execute(
            "select id, note, account, _dlt_load_id, _dlt_valid_to is null "
            "from bizstim.sessions order by _dlt_load_id, id"
        ).fetchall()
    first, night = loads
    assert versions == [
        ("0", "first 0", "downtown", first, True),
        ("1", "first 1", "downtown", first, False),  # retired by the night's edit
        ("2", "first 2", "downtown", first, True),
        ("3", None, "downtown", first, True),
        ("1", "edited", "downtown", night, True),
        ("4", "new", "downtown", night, True),
    ]


def test_outside_an_extract_a_page_passes_unchanged() -> None:
    page = pa.table({"id": ["1"]})
    assert dlt_glue.with_load_id(page) is page
    assert dlt_glue.with_load_id({"id": "1"}) == {"id": "1"}
