"""One nightly job: load each configured source with dlt, then rebuild `analytics` in SQL.

Each source is its own dlt pipeline (`practice_sync_bizstim`, `practice_sync_timetap`) so it
lands in its own dataset and keeps its own state; a failing source never blocks the other, and
the transforms run after every load so dashboards always see the newest raw data that loaded.
Where things live: the warehouse's lock and checks in `warehouse`, dlt internals in
`dlt_glue`, the deletion guard in `guard`, each vendor's sweep in its source package.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import dlt
import duckdb

from practice_sync import (
    context,
    dlt_glue,
    history,
    interrupt,
    privacy,
    serve,
    status,
    warehouse,
)
from practice_sync.errors import (
    ConfigError,
    ExitCode,
    LoadFailed,
    PracticeSyncError,
    TransformFailed,
    is_expected,
)
from practice_sync.failpoints import armed, failpoint
from practice_sync.report import RunReport, SourceReport, phase

PIPELINE_PREFIX = "practice_sync"


def _extract_once(extract: Callable[[], object]) -> None:
    extract()


@dataclass(frozen=True)
class SourceSpec:
    name: str
    title: str
    secrets: tuple[str, ...]
    tables: Mapping[str, str]  # raw table -> its id column, for the change summary
    factory: Callable[..., Any]
    # how to run one extract: Bizstim reads its listing again when it moved under the sweep
    extract_policy: Callable[[Callable[[], object]], None] = _extract_once


def _bizstim(**kwargs: Any) -> Any:
    from practice_sync.bizstim import bizstim

    return bizstim(**kwargs)


def _timetap(**kwargs: Any) -> Any:
    from practice_sync.timetap import timetap

    return timetap(**kwargs)


def _until_settled(extract: Callable[[], object]) -> None:
    from practice_sync.bizstim.helpers import until_settled

    until_settled(extract)


SOURCES: dict[str, SourceSpec] = {
    "bizstim": SourceSpec(
        "bizstim", "Bizstim", ("api_key",), {"sessions": "id"}, _bizstim, _until_settled
    ),
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
    wait_for_lock: float = 0.0  # seconds to wait for another run to release the warehouse
    full_refresh: bool = False  # reload the chosen sources from scratch (their history restarts)

    @property
    def pipelines_dir(self) -> Path:
        """State lives beside the warehouse, so two warehouses never share dlt state."""
        return self.database.parent / ".practice_sync" / self.database.stem


# kept importable from here: the CLI and tests know them by these names
database_from_config = warehouse.database_from_config
duckdb_config = warehouse.duckdb_config


def configured_sources(job: Job) -> list[tuple[SourceSpec, str | None]]:
    """Each source to consider with the reason it is skipped (None: it runs).

    A source without credentials is skipped only if it never loaded into this warehouse: one
    that did and now has none (a typo in a renamed setting, say) fails the run instead.
    """
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
        settings = ", ".join(
            f"sources.{name}.{k} (SOURCES__{name.upper()}__{k.upper()})" for k in missing
        )
        if missing and job.sources:
            raise ConfigError(
                f"{spec.title} was asked for but has no credentials: set {settings} "
                f"({_settings_read()})."
            )
        if missing and warehouse.has_dataset(job.database, name):
            raise ConfigError(
                f"{spec.title} has loaded into {job.database} before but has no credentials now: "
                f"set {settings} ({_settings_read()})."
            )
        reason = (
            f"no credentials: set SOURCES__{name.upper()}__{missing[0].upper()}"
            if missing
            else None
        )
        out.append((spec, reason))
    if all(reason for _, reason in out):
        raise ConfigError(
            "No source has credentials: set SOURCES__BIZSTIM__API_KEY, or SOURCES__TIMETAP__API_KEY "
            f"and SOURCES__TIMETAP__PRIVATE_KEY, or fill secrets.toml ({_settings_read()})."
        )
    return out


def _settings_read() -> str:
    """Which settings files this run read, for messages about missing settings."""
    _, read = dlt_glue.toml_documents()
    folder = dlt_glue.settings_dir()
    if not read:
        return f"no config.toml or secrets.toml found in {folder}; --config-dir names another"
    return "read " + ", ".join(read)


def run(job: Job) -> tuple[RunReport, ExitCode]:
    """Load every configured source, rebuild the analytics schema, then record the run in
    `ops.run_history` and publish the serving file; an interrupted run is recorded too."""
    report = RunReport(database=job.database)
    warehouse.check_writable(job.database)
    with warehouse.lock(job.database, wait=job.wait_for_lock):
        try:
            code = _load_and_transform(job, report)
        except interrupt.Interrupted as stop:
            report.finished = time.monotonic()
            _close(job.database, report, stop.exit_code, signal_code=stop.exit_code)
            raise
        report.finished = time.monotonic()
        code = _close(job.database, report, code)
    return report, code


def _load_and_transform(job: Job, report: RunReport) -> ExitCode:
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
            source_report.exit_code = int(exc.exit_code)
            codes.append(exc.exit_code)
        source_report.finished = True
        if source_report.withheld:
            codes.append(ExitCode.DELETIONS_WITHHELD)
    try:
        _transform_into(job.database, report)
    except TransformFailed as exc:
        report.transform_error = str(exc)
        codes.append(exc.exit_code)
    return _worst(codes)


def _close(
    database: Path, report: RunReport, code: int, signal_code: int | None = None
) -> ExitCode:
    """Record the run in `ops.run_history`, then (unless interrupted) publish the serving file.
    Neither depends on the rebuild having worked; a failure to publish is exit 8."""
    if not database.exists():
        return ExitCode(code) if signal_code is None else ExitCode.OK
    config = duckdb_config()
    try:
        with contextlib.closing(duckdb.connect(str(database), config=config)) as con:
            report.issues_by_source = status.issues_by_source(con) or {}
            history.record(con, history.rows(report, code, signal_code))
            if signal_code is None:
                with phase(report.phases, "publish"):
                    target = serve.serve_path(database)
                    serve.publish(con, target)
                report.serving = target
    except (LoadFailed, duckdb.Error) as exc:
        if signal_code is not None:
            return ExitCode.OK
        report.transform_error = report.transform_error or str(exc)
        return ExitCode(code) if code else ExitCode.LOAD_FAILED
    return ExitCode(code) if signal_code is None else ExitCode.OK


def transform(database: Path) -> tuple[RunReport, ExitCode]:
    """Rebuild analytics from the raw data already loaded, without calling any API."""
    report = RunReport(database=database)
    warehouse.check_writable(database)
    if not database.exists():
        raise ConfigError(
            f"There is no warehouse at {database} yet: run `practice-sync run` first, or fix "
            f"{warehouse.SETTING}."
        )
    code = ExitCode.OK
    with warehouse.lock(database):
        try:
            _transform_into(database, report)
        except TransformFailed as exc:
            report.transform_error = str(exc)
            code = exc.exit_code
        report.finished = time.monotonic()
        if code == ExitCode.OK:
            with contextlib.closing(duckdb.connect(str(database), config=duckdb_config())) as con:
                target = serve.serve_path(database)
                serve.publish(con, target)
                report.serving = target
    return report, code


def _worst(codes: Sequence[ExitCode]) -> ExitCode:
    """Failures outrank a withheld deletion: the scheduler should see the most serious one."""
    if not codes:
        return ExitCode.OK
    failures = [c for c in codes if c != ExitCode.DELETIONS_WITHHELD]
    return failures[0] if failures else ExitCode.DELETIONS_WITHHELD


def _load_source(spec: SourceSpec, job: Job, report: SourceReport) -> None:
    """Extract, normalize and load one source step by step: a crash between the steps is
    recovered on the next run, which first finishes a complete extract left behind."""
    pipeline = dlt_glue.make_pipeline(
        f"{PIPELINE_PREFIX}_{spec.name}",
        spec.name,
        job.database,
        job.pipelines_dir,
        warehouse.duckdb_config(),
        on_load_job=(lambda: failpoint("mid-load")) if armed("mid-load") else None,
    )
    dlt_glue.discard_interrupted_extracts(pipeline)
    started = datetime.now(UTC)
    # a full refresh compares with nothing: its tables are replaced when the new load lands
    reader = context.RunContext(report).read_current
    if not job.full_refresh:
        reader = functools.partial(warehouse.current_rows, job.database)
    run_context = context.RunContext(
        report,
        allow_deletions=job.allow_deletions,
        show_progress=job.show_progress,
        read_current=reader,
    )
    refresh: Literal["drop_sources"] | None = "drop_sources" if job.full_refresh else None
    try:
        if pipeline.has_pending_data:
            report.notes.append("finished a load left over from an interrupted run")
            pipeline.normalize()
            pipeline.load()
        kwargs = job.overrides.get(spec.name, {})
        # a changed privacy policy reaches the stored history first, so this load compares
        # like with like (practice_sync.privacy)
        policy = privacy.configured(spec.name, kwargs.get("privacy"))
        report.notes += privacy.apply_to_history(
            job.database, spec.name, policy, full_refresh=job.full_refresh
        )
        with context.running(spec.name, run_context), phase(report.phases, "extract"):
            spec.extract_policy(
                lambda: pipeline.extract(
                    spec.factory(**kwargs), loader_file_format="parquet", refresh=refresh
                )
            )
        failpoint("after-extract")
        with phase(report.phases, "normalize"):
            pipeline.normalize()
        failpoint("after-normalize")
        with phase(report.phases, "load"):
            pipeline.load()
            dlt_glue.drop_staging_dataset(pipeline)
    except Exception as exc:
        explained = _explain(exc, spec, job)
        if explained is None:
            raise
        # our own sentences stand alone: a chained dlt error could quote a URL with a key in it
        raise explained from (exc if isinstance(explained, LoadFailed) else None)
    report.tables = warehouse.table_changes(job.database, spec.name, spec.tables, started)


def _explain(exc: Exception, spec: SourceSpec, job: Job) -> PracticeSyncError | None:
    """The one-sentence error a person can act on, or None when `exc` is a bug."""
    setting = dlt_glue.missing_setting(exc)
    if setting is not None:
        return ConfigError(
            f"{spec.title} is missing a setting: set sources.{spec.name}.{setting} "
            f"(SOURCES__{spec.name.upper()}__{setting.upper()})."
        )
    expected = is_expected(exc)
    if expected is not None:
        return expected
    write_error = dlt_glue.failed_write(exc)
    if write_error is not None:
        return LoadFailed(
            f"{spec.title} data could not be written to {job.database} "
            f"({first_line(write_error)}); what was read is kept and the next run loads it first."
        )
    return None


def _transform_into(database: Path, report: RunReport) -> None:
    """Rebuild `analytics` in one transaction (a failure keeps yesterday's tables)."""
    from practice_sync.contract import ContractError
    from practice_sync.transform import TransformOrderError, run_transforms

    if not database.exists():
        return
    connection = contextlib.closing(duckdb.connect(str(database), config=duckdb_config()))
    with connection as con:
        try:
            with phase(report.phases, "transforms"):
                report.analytics = run_transforms(con)
        except (duckdb.Error, TransformOrderError, ContractError) as exc:
            raise TransformFailed(
                "The analytics tables could not be rebuilt and were kept as they were "
                f"({first_line(exc)})."
            ) from exc
        report.data_issues = report.analytics.get("data_issues", report.data_issues)


def first_line(exc: BaseException) -> str:
    """The first line of an error's text (and its last note), short enough for a summary."""
    text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    notes = getattr(exc, "__notes__", None)
    return f"{text}, {notes[-1]}" if notes else text
