"""One nightly job: load each configured source with dlt, then rebuild `analytics` in SQL.

Each source is its own dlt pipeline (`practice_sync_bizstim`, `practice_sync_timetap`) so it
lands in its own dataset and keeps its own state; a failing source never blocks the other, and
the transforms run after every load so dashboards always see the newest raw data that loaded.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dlt
import duckdb
from dlt.common.configuration.exceptions import ConfigFieldMissingException
from dlt.destinations.impl.duckdb.configuration import DuckDbCredentials
from dlt.pipeline.exceptions import PipelineStepFailed

from practice_sync.errors import (
    ConfigError,
    ExitCode,
    LoadFailed,
    PracticeSyncError,
    SweepInconsistent,
    TransformFailed,
    WarehouseLocked,
    is_expected,
)
from practice_sync.failpoints import failpoint, load_collector
from practice_sync.report import RunReport, SourceReport, TableChange

log = logging.getLogger("practice_sync")

PIPELINE_PREFIX = "practice_sync"
DEFAULT_DATABASE = "practice_sync.duckdb"
MAX_SWEEPS = 3
DEFAULT_MEMORY_LIMIT = "512MB"

# dlt settings the job depends on, whatever folder it is started from (a user's own value wins):
# the raw layer keeps each row's load id, finished load files are not kept forever, and the
# staging copy of a night's sweep does not linger in the warehouse
DLT_DEFAULTS = {
    "NORMALIZE__PARQUET_NORMALIZER__ADD_DLT_LOAD_ID": "true",
    "LOAD__DELETE_COMPLETED_JOBS": "true",
    "LOAD__TRUNCATE_STAGING_DATASET": "true",
    "RUNTIME__DLTHUB_TELEMETRY": "false",
}


@dataclass(frozen=True)
class SourceSpec:
    name: str
    title: str
    secrets: tuple[str, ...]
    tables: Mapping[str, str]  # raw table -> its id column, for the change summary
    factory: Callable[..., Any]


def _bizstim(**kwargs: Any) -> Any:
    from practice_sync.bizstim import bizstim

    return bizstim(**kwargs)


def _timetap(**kwargs: Any) -> Any:
    from practice_sync.timetap import timetap

    return timetap(**kwargs)


SOURCES: dict[str, SourceSpec] = {
    "bizstim": SourceSpec("bizstim", "Bizstim", ("api_key",), {"sessions": "id"}, _bizstim),
    "timetap": SourceSpec(
        "timetap",
        "TimeTap",
        ("api_key", "private_key"),
        {"packages": "package_id", "packages_sold": "package_sold_id"},
        _timetap,
    ),
}


@dataclass
class Job:
    """Everything a run needs that is not a source setting dlt resolves by itself."""

    database: Path
    sources: Sequence[str] | None = None  # None: every source with credentials
    allow_deletions: bool = False
    show_progress: bool = True
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # source -> kwargs

    @property
    def pipelines_dir(self) -> Path:
        """State lives beside the warehouse, so two warehouses never share dlt state."""
        return self.database.parent / ".practice_sync" / self.database.stem


def database_from_config(explicit: str | None = None) -> Path:
    """The DuckDB file from `--database`, DESTINATION__DUCKDB__CREDENTIALS or `.dlt/config.toml`."""
    value = explicit or dlt.config.get("destination.duckdb.credentials") or DEFAULT_DATABASE
    if not isinstance(value, str):
        raise ConfigError(
            "destination.duckdb.credentials (DESTINATION__DUCKDB__CREDENTIALS) must be a file path."
        )
    if value.startswith("duckdb:///"):
        value = value[len("duckdb:///") :]
    if value == ":memory:":
        raise ConfigError(
            "destination.duckdb.credentials (DESTINATION__DUCKDB__CREDENTIALS) must be a file, "
            "not :memory:, or the warehouse is gone when the run ends."
        )
    return Path(value).expanduser().resolve()


def _check_writable(database: Path) -> None:
    where = database.parent
    problem = None
    if not where.is_dir():
        problem = f"folder {where} does not exist"
    elif not os.access(where, os.W_OK) or (database.exists() and not os.access(database, os.W_OK)):
        problem = f"{database} is not writable"
    if problem:
        raise ConfigError(
            f"The warehouse cannot be written ({problem}): fix destination.duckdb.credentials "
            "(DESTINATION__DUCKDB__CREDENTIALS)."
        )


def _check_not_held(database: Path) -> None:
    """DuckDB allows one writing process: find out now, not halfway through a load."""
    if not database.exists():
        return
    try:
        duckdb.connect(str(database)).close()
    except duckdb.IOException:
        raise LoadFailed(
            f"The warehouse {database} is open in another program (a DuckDB shell or BI tool "
            "holding it for writing); close it and run again. Nothing was changed."
        ) from None


@contextlib.contextmanager
def warehouse_lock(database: Path) -> Iterator[None]:
    """One run per warehouse: a second one is refused instead of racing the first's state."""
    lock_path = database.with_name(database.name + ".lock")
    handle = open(lock_path, "a+")  # noqa: SIM115 - held for the whole run
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise WarehouseLocked(
            f"Another practice-sync run is using {database}; this run changed nothing "
            "(the lock frees itself when that run ends)."
        ) from None
    try:
        _check_not_held(database)  # after the lock: our own other run is reported as such
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def configured_sources(job: Job) -> list[tuple[SourceSpec, str | None]]:
    """Each source to consider with the reason it is skipped (None: it runs)."""
    chosen = list(job.sources) if job.sources else list(SOURCES)
    out: list[tuple[SourceSpec, str | None]] = []
    for name in chosen:
        spec = SOURCES[name]
        given = job.overrides.get(name, {})
        missing = [
            key
            for key in spec.secrets
            if not given.get(key) and not dlt.secrets.get(f"sources.{name}.{key}")
        ]
        if missing and job.sources:
            settings = ", ".join(
                f"sources.{name}.{k} (SOURCES__{name.upper()}__{k.upper()})" for k in missing
            )
            raise ConfigError(f"{spec.title} was asked for but has no credentials: set {settings}.")
        reason = (
            f"no credentials: set SOURCES__{name.upper()}__{missing[0].upper()}"
            if missing
            else None
        )
        out.append((spec, reason))
    if all(reason for _, reason in out):
        raise ConfigError(
            "No source has credentials: set SOURCES__BIZSTIM__API_KEY, or SOURCES__TIMETAP__API_KEY "
            "and SOURCES__TIMETAP__PRIVATE_KEY (or fill .dlt/secrets.toml)."
        )
    return out


def run(job: Job) -> tuple[RunReport, ExitCode]:
    """Load every configured source, then rebuild the analytics schema."""
    report = RunReport()
    _check_writable(job.database)
    with warehouse_lock(job.database):
        codes: list[ExitCode] = []
        for spec, skipped in configured_sources(job):
            source_report = SourceReport(spec.name)
            report.sources.append(source_report)
            if skipped:
                source_report.skipped = skipped
                continue
            try:
                _load_source(spec, job, source_report)
            except PracticeSyncError as exc:
                source_report.error = str(exc)
                codes.append(exc.exit_code)
            except Exception as exc:  # dlt wraps our errors; unwrap or report a bug
                expected = is_expected(exc)
                if expected is None:
                    raise
                source_report.error = str(expected)
                codes.append(expected.exit_code)
            if source_report.withheld:
                codes.append(ExitCode.DELETIONS_WITHHELD)
        try:
            _transform_into(job.database, report)
        except TransformFailed as exc:
            report.transform_error = str(exc)
            codes.append(exc.exit_code)
    report.finished = time.monotonic()
    return report, _worst(codes)


def transform(database: Path) -> tuple[RunReport, ExitCode]:
    """Rebuild analytics from the raw data already loaded, without calling any API."""
    report = RunReport()
    _check_writable(database)
    if not database.exists():
        raise ConfigError(
            f"There is no warehouse at {database} yet: run `practice-sync run` first, or fix "
            "destination.duckdb.credentials (DESTINATION__DUCKDB__CREDENTIALS)."
        )
    with warehouse_lock(database):
        try:
            _transform_into(database, report)
        except TransformFailed as exc:
            report.transform_error = str(exc)
            report.finished = time.monotonic()
            return report, exc.exit_code
    report.finished = time.monotonic()
    return report, ExitCode.OK


def _worst(codes: Sequence[ExitCode]) -> ExitCode:
    """Failures outrank a withheld deletion: the scheduler should see the most serious one."""
    if not codes:
        return ExitCode.OK
    failures = [c for c in codes if c != ExitCode.DELETIONS_WITHHELD]
    return failures[0] if failures else ExitCode.DELETIONS_WITHHELD


def duckdb_config() -> dict[str, str]:
    """DuckDB's own default takes 80% of RAM for a big merge; a bounded limit spills to disk
    instead, so a million-session night fits beside whatever else the server runs."""
    limit = dlt.config.get("practice_sync.memory_limit") or DEFAULT_MEMORY_LIMIT
    return {"memory_limit": str(limit)}


def make_pipeline(spec: SourceSpec, job: Job) -> dlt.Pipeline:
    for key, value in DLT_DEFAULTS.items():
        os.environ.setdefault(key, value)
    credentials = DuckDbCredentials(str(job.database), global_config=duckdb_config())
    return dlt.pipeline(
        pipeline_name=f"{PIPELINE_PREFIX}_{spec.name}",
        pipelines_dir=str(job.pipelines_dir),
        destination=dlt.destinations.duckdb(credentials),
        dataset_name=spec.name,
        progress=load_collector(),
    )


def _discard_interrupted_extracts(pipeline: dlt.Pipeline) -> None:
    """A killed extract leaves a half-written sweep in a uniquely named folder that dlt never
    reads again; remove it so crashes do not pile up on disk (we hold the warehouse lock)."""
    folder = Path(pipeline.working_dir) / "normalize"
    if folder.is_dir():
        for child in folder.iterdir():
            if child.is_dir() and child.name != "extracted":
                shutil.rmtree(child, ignore_errors=True)


def _load_source(spec: SourceSpec, job: Job, report: SourceReport) -> None:
    pipeline = make_pipeline(spec, job)
    _discard_interrupted_extracts(pipeline)
    if pipeline.has_pending_data:
        # a crash after extraction left a complete sweep behind: finish it before a new one
        report.notes.append("finished a load left over from an interrupted run")
        pipeline.normalize()
        pipeline.load()
    current = _current_counts(job.database, spec)
    started = datetime.now(UTC)
    kwargs = dict(job.overrides.get(spec.name, {}))
    kwargs.update(
        allow_deletions=job.allow_deletions,
        current_rows=current,
        report=report,
        show_progress=job.show_progress,
    )
    for attempt in range(1, MAX_SWEEPS + 1):
        try:
            source = spec.factory(**kwargs)
            # the steps one by one: a crash between them is recovered above on the next run
            pipeline.extract(source, loader_file_format="parquet")
            failpoint("after-extract")
            pipeline.normalize()
            failpoint("after-normalize")
            pipeline.load()
            break
        except ConfigFieldMissingException as exc:
            raise ConfigError(
                f"{spec.title} is missing a setting: set sources.{spec.name}.{exc.fields[0]} "
                f"(SOURCES__{spec.name.upper()}__{exc.fields[0].upper()})."
            ) from None
        except Exception as exc:
            expected = is_expected(exc)
            if isinstance(expected, SweepInconsistent) and attempt < MAX_SWEEPS:
                log.warning("%s; reading it again (%d of %d)", expected, attempt + 1, MAX_SWEEPS)
                continue
            if expected is not None:
                raise expected from None
            if isinstance(exc, PipelineStepFailed) and exc.step in ("normalize", "load"):
                raise LoadFailed(
                    f"{spec.title} data could not be written to {job.database} "
                    f"({_first_line(exc.exception)}); what was read is kept and the next run "
                    "loads it first."
                ) from exc
            raise
    report.tables = _changes(job.database, spec, started)


def _table_exists(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    row = con.execute(
        "select count(*) from information_schema.tables where table_schema = ? and table_name = ?",
        [schema, table],
    ).fetchone()
    return bool(row and row[0])


def _current_counts(database: Path, spec: SourceSpec) -> dict[str, int]:
    """Current rows per raw table before the run, for the mass-deletion guard."""
    counts: dict[str, int] = {}
    if not database.exists():
        return counts
    with contextlib.closing(duckdb.connect(str(database), read_only=True)) as con:
        for table in spec.tables:
            if _table_exists(con, spec.name, table):
                row = con.execute(
                    f'select count(*) from "{spec.name}"."{table}" where _dlt_valid_to is null'
                ).fetchone()
                counts[table] = int(row[0]) if row else 0
    return counts


def _changes(database: Path, spec: SourceSpec, since: datetime) -> dict[str, TableChange]:
    """New, changed and retired records of this run, read back from the scd2 validity columns."""
    out: dict[str, TableChange] = {}
    with contextlib.closing(duckdb.connect(str(database), read_only=True)) as con:
        for table, key in spec.tables.items():
            if not _table_exists(con, spec.name, table):
                continue
            row = con.execute(
                f"""
                with t as (select "{key}" as k, _dlt_valid_from as f, _dlt_valid_to as v
                           from "{spec.name}"."{table}"),
                     added as (select distinct k from t where f >= $since),
                     older as (select distinct k from t where f < $since)
                select
                    (select count(*) from added where k not in (select k from older)),
                    (select count(*) from added where k in (select k from older)),
                    (select count(distinct k) from t where v >= $since
                        and k not in (select k from added)),
                    (select count(*) from t where v is null)
                """,
                {"since": since},
            ).fetchone()
            assert row is not None
            out[table] = TableChange(*map(int, row))
    return out


def _transform_into(database: Path, report: RunReport) -> None:
    from practice_sync.transform import run_transforms

    if not database.exists():
        return
    try:
        with contextlib.closing(duckdb.connect(str(database), config=duckdb_config())) as con:
            report.analytics = run_transforms(con)
            if "data_issues" in report.analytics:
                report.data_issues = report.analytics["data_issues"]
    except duckdb.Error as exc:
        raise TransformFailed(
            f"The analytics tables could not be rebuilt and were kept as they were ({_first_line(exc)})."
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    notes = getattr(exc, "__notes__", None)
    return f"{text}, {notes[-1]}" if notes else text
