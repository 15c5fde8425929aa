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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import dlt
import duckdb

from practice_sync import (
    accounts,
    context,
    dlt_glue,
    history,
    interrupt,
    privacy,
    publish,
    rows,
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
    factory: Callable[[], Any]  # the dlt source factory (imported when first needed)
    # how to run one extract: Bizstim reads its listing again when it moved under the sweep
    extract_policy: Callable[[Callable[[], object]], None] = _extract_once


def _bizstim() -> Any:
    from practice_sync.bizstim import bizstim

    return bizstim


def _timetap() -> Any:
    from practice_sync.timetap import timetap

    return timetap


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
    # source -> the listed accounts to load (an orchestrator's asset per account); None: all
    accounts: Mapping[str, Sequence[str]] | None = None

    @property
    def pipelines_dir(self) -> Path:
        """State lives beside the warehouse, so two warehouses never share dlt state."""
        return self.database.parent / ".practice_sync" / self.database.stem


# kept importable from here: the CLI and tests know them by these names
database_from_config = warehouse.database_from_config
duckdb_config = warehouse.duckdb_config


@dataclass(frozen=True)
class AccountLoad:
    """One account of one source to load, or to skip with a reason."""

    spec: SourceSpec
    account: str = accounts.DEFAULT
    listed: bool = False  # named in sources.<source>.accounts: settings read as a clone's
    skipped: str | None = None

    @property
    def label(self) -> str:
        return accounts.label(self.spec.name, self.account)

    @property
    def dataset(self) -> str:
        return accounts.dataset(self.spec.name, self.account)

    @property
    def title(self) -> str:
        suffix = f" account {self.account}" if self.listed else ""
        return f"{self.spec.title}{suffix}"


def configured_loads(job: Job) -> list[AccountLoad]:
    """Each source's accounts to consider, with the reason one is skipped (None: it runs).

    A source without credentials is skipped only if it never loaded into this warehouse: one
    that did and now has none (a typo in a renamed setting, say) fails the run instead. An
    account listed in `sources.<source>.accounts` without credentials is a configuration error.
    """
    chosen = list(job.sources) if job.sources else list(SOURCES)
    out: list[AccountLoad] = []
    for name in chosen:
        spec = SOURCES[name]
        listed = accounts.configured(name)
        wanted = (job.accounts or {}).get(name)
        unknown = [a for a in wanted or [] if a not in (listed or [accounts.DEFAULT])]
        if unknown:
            raise ConfigError(
                f"{spec.title} has no account {unknown[0]!r}: sources.{name}.accounts lists "
                f"{', '.join(listed or [accounts.DEFAULT])}."
            )
        for account in listed or [accounts.DEFAULT]:
            if wanted is None or account in wanted:
                out.append(_account_load(job, spec, account, bool(listed)))
    if all(load.skipped for load in out):
        raise ConfigError(
            "No source has credentials: set SOURCES__BIZSTIM__API_KEY, or SOURCES__TIMETAP__API_KEY "
            f"and SOURCES__TIMETAP__PRIVATE_KEY, or fill secrets.toml ({_settings_read()})."
        )
    return out


def _account_load(job: Job, spec: SourceSpec, account: str, listed: bool) -> AccountLoad:
    """One account with the reason it is skipped, or a `ConfigError` when it may not be."""
    name = spec.name
    given = job.overrides.get(name, {})
    missing = [
        key
        for key in spec.secrets
        if not given.get(key) and not accounts.secret_given(name, account, key, listed)
    ]
    load = AccountLoad(spec, account, listed)
    if not missing:
        return load
    spelled = [accounts.setting(name, account, key, listed) for key in missing]
    settings = ", ".join(f"{path} ({env})" for path, env in spelled)
    if job.sources or listed:
        raise ConfigError(
            f"{load.title} was asked for but has no credentials: set {settings} "
            f"({_settings_read()})."
        )
    if warehouse.has_dataset(job.database, load.dataset):
        raise ConfigError(
            f"{load.title} has loaded into {job.database} before but has no credentials now: "
            f"set {settings} ({_settings_read()})."
        )
    return AccountLoad(spec, account, listed, f"no credentials: set {spelled[0][1]}")


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
    check_outputs(job.database)
    with warehouse.lock(job.database, wait=job.wait_for_lock):
        try:
            code = _load_and_transform(job, report)
        except BaseException as stop:
            _record_stop(job.database, report, stop)
            raise
        report.finished = time.monotonic()
        code = _close(job.database, report, code)
    return report, code


def _load_and_transform(job: Job, report: RunReport) -> ExitCode:
    codes: list[ExitCode] = []
    loads = configured_loads(job)
    try:
        for source in dict.fromkeys(load.spec.name for load in loads):
            mine = [load for load in loads if load.spec.name == source]
            codes += _load_accounts(mine, job, report)
            _apply_policy_to_unlisted(source, job, report)
    except BaseException as stop:
        if _stopped(stop) is None:
            raise
        # the sources a stop request kept from starting get their row in the history too
        # (interrupted, or skipped as a run would have): `status` showed their last ok
        started = {source.name for source in report.sources}
        report.sources += [
            SourceReport(load.label, account=load.account, skipped=load.skipped)
            for load in loads
            if load.label not in started
        ]
        raise
    try:
        _check_no_refresh_in_flight(job.pipelines_dir)
        _transform_into(job.database, report, "--full-refresh" if job.full_refresh else None)
    except TransformFailed as exc:
        report.transform_error, report.transform_exit_code = str(exc), int(exc.exit_code)
        codes.append(exc.exit_code)
    return _worst(codes)


def _check_no_refresh_in_flight(pipelines_dir: Path) -> None:
    """`TransformFailed` while a full refresh's load has begun but not landed (it failed, or
    its run was killed): dlt dropped the refreshed raw tables when that load started, and a build
    from them would publish a warehouse without the source. Yesterday's analytics stay."""
    pending = dlt_glue.pending_refreshes(pipelines_dir, loading_only=True)
    if pending:
        names = ", ".join(name.removeprefix(f"{PIPELINE_PREFIX}_") for name in pending)
        raise TransformFailed(
            f"The analytics tables were kept as they were: the full refresh of {names} has not "
            "finished loading (its old raw tables are already dropped); `practice-sync run` "
            "finishes it first."
        )


def _load_accounts(loads: Sequence[AccountLoad], job: Job, report: RunReport) -> list[ExitCode]:
    """Load one source's accounts, `practice_sync.account_concurrency` at a time; one account's
    failure is recorded in its own report and never stops or rolls back the others."""
    reports = [SourceReport(load.label, account=load.account) for load in loads]
    report.sources.extend(reports)
    todo = [(load, rep) for load, rep in zip(loads, reports, strict=True) if not load.skipped]
    for load, rep in zip(loads, reports, strict=True):
        rep.skipped = load.skipped
    workers = min(accounts.concurrency(), len(todo))
    if workers <= 1:  # one at a time, in this thread, as before accounts existed
        return [code for load, rep in todo for code in _load_account(load, job, rep)]
    with ThreadPoolExecutor(workers, thread_name_prefix="practice-sync-account") as pool:
        futures = [pool.submit(_outcome, _load_account, load, job, rep) for load, rep in todo]
        outcomes = [future.result() for future in futures]
    codes: list[ExitCode] = []
    for outcome in outcomes:  # a bug or a stop request, raised once every account has ended
        if isinstance(outcome, BaseException):
            raise outcome
        codes += outcome
    return codes


def _outcome(work: Callable[..., list[ExitCode]], *args: Any) -> list[ExitCode] | BaseException:
    try:
        return work(*args)
    except BaseException as exc:  # handed back to the caller, which raises it
        return exc


def _load_account(load: AccountLoad, job: Job, report: SourceReport) -> list[ExitCode]:
    """One account's load; its expected failure becomes its report's error and exit code."""
    interrupt.check()  # a stop request: accounts not yet started never start
    codes: list[ExitCode] = []
    try:
        _load_source(load, job, report)
    except PracticeSyncError as exc:
        report.error = _for_account(str(exc), load)
        report.exit_code = int(exc.exit_code)
        codes.append(exc.exit_code)
    report.finished = True
    if report.withheld:
        codes.append(ExitCode.DELETIONS_WITHHELD)
    return codes


def _close(
    database: Path, report: RunReport, code: int, signal_code: int | None = None
) -> ExitCode:
    """Record the run in `ops.run_history`, then (unless interrupted) publish the serving file
    and, after a good rebuild, the `practice_sync.publish` destinations (exit 10 if one fails),
    each of which gets its own history row. The history and the serving file do not depend on
    the rebuild having worked; a failure to write either is exit 8. An interrupted run records
    its destinations as interrupted (nothing was published) and leaves the serving file."""
    if not database.exists():
        return ExitCode(code) if signal_code is None else ExitCode.OK
    at = datetime.now(UTC)  # the run's end, on every row it records
    try:
        with warehouse.writer(database) as con:
            report.issues_by_source = status.issues_by_source(con) or {}
            history.record(con, history.rows(report, code, signal_code, at))
            if signal_code is not None:
                for item in publish.not_started(report):
                    item.outcome, item.exit_code = "interrupted", signal_code
                history.record(con, history.destination_rows(report, at))
                return ExitCode.OK
            published = _serve_and_publish(con, database, report, at)
            if published and code in (ExitCode.OK, ExitCode.DELETIONS_WITHHELD):
                code = published  # a failure outranks a withheld deletion, as in _worst
    except (LoadFailed, duckdb.Error) as exc:
        if signal_code is not None:
            return ExitCode.OK
        report.transform_error = report.transform_error or str(exc)
        # a failure outranks a withheld deletion (as in _worst): the serving file is stale
        failed = code not in (ExitCode.OK, ExitCode.DELETIONS_WITHHELD)
        return ExitCode(code) if failed else ExitCode.LOAD_FAILED
    return ExitCode(code)


def _serve_and_publish(
    con: duckdb.DuckDBPyConnection, database: Path, report: RunReport, at: datetime
) -> ExitCode:
    """The serving file first, so its readers never wait for a remote server; then each
    destination (even when the serving file failed: neither depends on the other), its row in
    the history, and the serving file's history brought up to date so `status` shows it.

    A stop request during publishing records the destinations as interrupted and is raised
    again; the serving file then gets their rows with the next run (as after any interruption).
    """
    target = serve.serve_path(database)
    served: LoadFailed | None = None
    try:
        with phase(report.phases, "publish"):
            serve.publish(con, target)
        report.serving = target
    except LoadFailed as exc:
        served = exc
    try:
        code = publish.publish_all(con, database, report)
    finally:
        history.record(con, history.destination_rows(report, at))
    if served is not None:
        history.serving_failed(con, report.run_id, str(served))
        raise served
    if report.destinations:
        serve.refresh_history(con, target)
    return code


def transform(
    database: Path, full_rebuild: bool = False, wait: float = 0.0
) -> tuple[RunReport, ExitCode]:
    """Build analytics from the raw data already loaded, without calling any API (in full with
    `full_rebuild`), and publish and record it as a run's end does (`_close`); `wait`: seconds
    to wait for a run holding the warehouse (`--wait-for-lock`)."""
    report = RunReport(database=database)
    warehouse.check_writable(database)
    check_outputs(database)
    if not database.exists():
        raise ConfigError(
            f"There is no warehouse at {database} yet: run `practice-sync run` first, or fix "
            f"{warehouse.SETTING}."
        )
    code = ExitCode.OK
    with warehouse.lock(database, wait=wait):
        _refuse_serving_file(database)
        try:
            _check_no_refresh_in_flight(Job(database=database).pipelines_dir)
            _transform_into(database, report, "--full-rebuild" if full_rebuild else None)
        except TransformFailed as exc:
            report.transform_error, report.transform_exit_code = str(exc), int(exc.exit_code)
            code = exc.exit_code
        except BaseException as stop:  # recorded as a run's interruption is
            _record_stop(database, report, stop)
            raise
        report.finished = time.monotonic()
        # as a run's end: the analytics row and each destination's in the history, the
        # serving file, the destinations (so catching a destination up by hand shows in status)
        code = _close(database, report, code)
    return report, code


def _refuse_serving_file(database: Path) -> None:
    """`ConfigError` for a serving file given as the warehouse (`sql`, `status` and `report`
    take either): `transform` rebuilt `analytics` from nothing inside it and readers lost it.
    A serving file has `analytics` without the build state every build saves, and without any
    raw dataset (dlt's `_dlt_loads`); a warehouse of a release before that state has those."""
    with contextlib.closing(warehouse.connect(database)) as con:
        schemas = {
            row[0]
            for row in con.execute(
                "select table_schema from information_schema.tables "
                "where table_catalog = current_database() "
                "and (table_schema in ('analytics', 'analytics_state') or table_name = '_dlt_loads')"
            ).fetchall()
        }
    if schemas == {"analytics"}:
        raise ConfigError(
            f"{database} is a serving file, not a warehouse: give `transform` the warehouse "
            f"(--database, or {warehouse.SETTING})."
        )


def check_outputs(database: Path) -> None:
    """`ConfigError` for a serving-file path or publish setting that would fail at the night's
    end, found before anything loads: afterwards it cost the whole night, with exit 10 blaming
    the destination's credentials, or exit 2 after the loads."""
    target = serve.serve_path(database)
    if not target.parent.is_dir():  # the commonest slip of that setting
        raise ConfigError(
            f"The serving file cannot be written (folder {target.parent} does not exist): fix "
            f"{serve.SETTING}."
        )
    publish.target_schema()
    for name in publish.destinations():
        _check_credentials(name)


def _check_credentials(name: str) -> None:
    """A publish destination without credentials is a missing setting (exit 2), found before
    the night's loads; anything else about it is found when publishing (exit 10)."""
    from dlt.common.configuration.container import Container
    from dlt.common.configuration.specs.config_section_context import ConfigSectionContext
    from dlt.common.destination import Destination

    destination = Destination.from_reference(name)
    if destination is None:
        return
    # resolved as the publish pipeline resolves it: its own section's keys count too
    section = ConfigSectionContext(pipeline_name=f"practice_sync_publish_{name}", sections=())
    try:
        with Container().injectable_context(section):
            destination.configuration(None)  # type: ignore[arg-type]  # None: from the settings
    except dlt_glue.ConfigFieldMissingException as exc:
        if "credentials" in exc.fields:
            raise ConfigError(
                f"{publish.SETTING} names {name}, which has no credentials: set "
                f"{publish.credentials_setting(name)}."
            ) from None
    except Exception:  # noqa: BLE001 - dlt's own checks of the rest run when publishing
        return


def _record_stop(database: Path, report: RunReport, exc: BaseException) -> None:
    """A stop request ends the run recorded as interrupted (history rows, no serving file);
    a failure passes unrecorded. The caller re-raises either way."""
    signal_code = _stopped(exc)
    if signal_code is not None:
        report.finished = time.monotonic()
        _close(database, report, signal_code, signal_code=signal_code)


def _stopped(exc: BaseException) -> int | None:
    """The exit code of a stop request, or None for a failure: our signal handlers' stop, or
    another framework's (Dagster turns SIGTERM into its own BaseException; Ctrl-C without our
    handlers is KeyboardInterrupt), so a stopped launch gets its `interrupted` history rows."""
    if isinstance(exc, interrupt.Interrupted):
        return int(exc.exit_code)
    if isinstance(exc, Exception | SystemExit | GeneratorExit):
        return None
    return 130


def _worst(codes: Sequence[ExitCode]) -> ExitCode:
    """Failures outrank a withheld deletion: the scheduler should see the most serious one."""
    if not codes:
        return ExitCode.OK
    failures = [c for c in codes if c != ExitCode.DELETIONS_WITHHELD]
    return failures[0] if failures else ExitCode.DELETIONS_WITHHELD


def _for_account(message: str, load: AccountLoad) -> str:
    """A source's error sentence naming the account and its own settings: "Bizstim account
    uptown rejected the credentials …: check sources.bizstim.uptown.api_key (…)"."""
    if not load.listed or load.title in message:
        return message
    source, account = load.spec.name, load.account
    message = message.replace(load.spec.title, load.title, 1)
    message = message.replace(f"sources.{source}.", f"sources.{source}.{account}.")
    return message.replace(
        f"SOURCES__{source.upper()}__", f"SOURCES__{source.upper()}__{account.upper()}__"
    )


def _load_source(load: AccountLoad, job: Job, report: SourceReport) -> None:
    """Extract, normalize and load one account step by step: a crash between the steps is
    recovered on the next run, which first finishes a complete extract left behind. Accounts
    extract concurrently; their writes to the one DuckDB file take turns (`warehouse.access`)."""
    spec = load.spec
    pipeline = dlt_glue.make_pipeline(
        f"{PIPELINE_PREFIX}_{load.dataset}",
        load.dataset,
        job.database,
        job.pipelines_dir,
        warehouse.duckdb_config(),
        on_load_job=(lambda: failpoint("mid-load")) if armed("mid-load") else None,
    )
    dlt_glue.discard_interrupted_extracts(pipeline)
    dlt_glue.finish_interrupted_commits(pipeline)
    started = datetime.now(UTC)
    # a left-over package's rows carry its own time as `valid_from`: counted from there, its
    # changes are this run's (the run that made it recorded none)
    left_over = dlt_glue.pending_since(pipeline)
    if left_over is not None:
        started = min(started, left_over - timedelta(seconds=1))
    run_context = _run_context(load, job, report)
    refresh: Literal["drop_sources"] | None = "drop_sources" if job.full_refresh else None
    kwargs = job.overrides.get(spec.name, {})
    try:
        if pipeline.has_pending_data:
            _finish_left_over(pipeline, load, job, report, kwargs)
        # a changed privacy policy reaches the account's stored history first, so this load
        # compares like with like (practice_sync.privacy)
        with warehouse.access:
            report.notes += privacy.apply_to_history(
                job.database,
                spec.name,
                _privacy_policy(load, kwargs),
                dataset=load.dataset,
                full_refresh=job.full_refresh,
            )
        with context.running(spec.name, run_context), phase(report.phases, "extract"):
            spec.extract_policy(
                lambda: pipeline.extract(
                    _account_source(load, kwargs), loader_file_format="parquet", refresh=refresh
                )
            )
        failpoint("after-extract")
        _normalize_and_load(pipeline, load, job, report)
        if job.full_refresh:  # landed: the policy is recorded only now (privacy.record)
            privacy.record(job.database, load.dataset, _privacy_policy(load, kwargs))
    except Exception as exc:
        explained = _explain(exc, load, job)
        if explained is None:
            raise
        # our own sentences stand alone: a chained dlt error could quote a URL with a key in it
        raise explained from (exc if isinstance(explained, LoadFailed) else None)
    report.tables = warehouse.table_changes(job.database, load.dataset, spec.tables, started)


def _finish_left_over(
    pipeline: dlt.Pipeline,
    load: AccountLoad,
    job: Job,
    report: SourceReport,
    kwargs: Mapping[str, Any],
) -> None:
    """Load what an interrupted or failed run left behind, before anything new is read."""
    refreshed = pipeline.pipeline_name in dlt_glue.pending_refreshes(Path(pipeline.pipelines_dir))
    report.notes.append("finished a load left over from an interrupted run")
    _normalize_and_load(pipeline, load, job, report)
    replayed = warehouse.remove_replayed_rows(job.database, load.dataset)
    if replayed:
        report.notes.append(f"removed {replayed:,} rows the resumed load wrote twice")
    if refreshed:  # the history is now the refresh's, written under today's policy
        privacy.record(job.database, load.dataset, _privacy_policy(load, kwargs))


def _apply_policy_to_unlisted(source: str, job: Job, report: RunReport) -> None:
    """The source's privacy policy, brought to the stored history of accounts no longer in
    `sources.<source>.accounts` as well: their rows stay in raw and in `analytics`, and a
    column dropped later stayed there in plain text (the serving file and `sql` showed it)."""
    if not job.database.exists() or job.overrides.get(source, {}).get("privacy") is not None:
        return
    listed = set(accounts.names(source))
    with warehouse.writer(job.database) as con:
        schemas = [
            row[0]
            for row in con.execute(
                "select schema_name from duckdb_tables() where database_name = current_database() "
                "and table_name = '_dlt_loads' order by schema_name"
            ).fetchall()
        ]
    unlisted = [
        schema
        for schema in schemas
        if (account := accounts.account_of(source, schema, True)) and account not in listed
    ]
    if not unlisted:
        return
    policy = privacy.configured(source)
    notes: list[str] = []
    for dataset in unlisted:
        try:
            with warehouse.access:
                notes += privacy.apply_to_history(job.database, source, policy, dataset=dataset)
        except ConfigError as exc:  # a changed salt: nothing reloads this history to fix it
            notes.append(f"{dataset} keeps its history as it was: {exc}")
    mine = [item for item in report.sources if item.name.split(".")[0] == source]
    if notes and mine:
        mine[0].notes += [f"{note} (an account no longer listed)" for note in notes]


def _privacy_policy(load: AccountLoad, kwargs: Mapping[str, Any]) -> Any:
    """The account's privacy policy: its own `sources.<source>.<account>.privacy`, else the
    source's, as dlt resolves the clone's `privacy` argument."""
    override = kwargs.get("privacy")
    if override is None and load.listed:
        override = dlt.config.get(f"sources.{load.spec.name}.{load.account}.privacy")
    return privacy.configured(load.spec.name, override)


def _run_context(load: AccountLoad, job: Job, report: SourceReport) -> context.RunContext:
    """What the account's resources see: the guard reads the account's own dataset, whatever
    dataset name the resource asks for; a full refresh compares with nothing (its tables are
    replaced when the new load lands), so every row reaches dlt. Both are read during the
    extract: after a left-over load was finished and a changed privacy policy rewrote history."""
    quiet = context.RunContext(report)
    reader, versions = quiet.read_current, quiet.read_versions
    if not job.full_refresh:

        def reader(dataset: str, table: str, columns: Sequence[str], condition: str) -> Any:
            return warehouse.current_rows(job.database, load.dataset, table, columns, condition)

        def versions(dataset: str, table: str, key: str) -> context.CurrentVersions:
            return warehouse.current_versions(job.database, load.dataset, table, key)

    return context.RunContext(
        report,
        allow_deletions=job.allow_deletions,
        show_progress=job.show_progress,
        read_current=reader,
        read_versions=versions,
    )


def _account_source(load: AccountLoad, kwargs: Mapping[str, Any]) -> Any:
    """The account's dlt source, every table of it stamped (`stamp`)."""
    factory = accounts.source_for(load.spec.factory(), load.spec.name, load.account, load.listed)
    source = factory(**kwargs)
    for resource in source.resources.values():
        stamp(resource, load.account)
    return source


def stamp(resource: Any, account: str) -> Any:
    """`resource` with the account's name and dlt's load id (`dlt_glue.with_load_id`) added to
    every page it yields."""
    return (
        resource.add_map(functools.partial(rows.with_column, accounts.ACCOUNT_COLUMN, account))
        .add_map(dlt_glue.with_load_id)
        .add_map(functools.partial(rows.apart_after_naming, _dlt_spelling()))
    )


@functools.cache
def _dlt_spelling() -> Callable[[str], str]:
    """How dlt's default naming (snake_case) spells a column name in the warehouse."""
    from dlt.common.normalizers.naming.snake_case import NamingConvention

    return NamingConvention().normalize_identifier


def _normalize_and_load(
    pipeline: dlt.Pipeline, load: AccountLoad, job: Job, report: SourceReport
) -> None:
    """Normalize (local files only, so accounts overlap here too), then load under the
    warehouse's one-writer lock and name the account on rows loaded before accounts existed
    (a single-account warehouse upgrading in place)."""
    with phase(report.phases, "normalize"):
        pipeline.normalize()
    failpoint("after-normalize")
    with warehouse.access:
        with phase(report.phases, "load"):
            pipeline.load()
        warehouse.stamp_account(job.database, load.dataset, load.account)
        dlt_glue.drop_staging_dataset(pipeline)


def _explain(exc: Exception, load: AccountLoad, job: Job) -> PracticeSyncError | None:
    """The one-sentence error a person can act on, or None when `exc` is a bug."""
    spec = load.spec
    setting = dlt_glue.missing_setting(exc)
    if setting is not None:
        path, env = accounts.setting(spec.name, load.account, setting, load.listed)
        return ConfigError(f"{load.title} is missing a setting: set {path} ({env}).")
    expected = is_expected(exc)
    if expected is not None:
        return expected
    write_error = dlt_glue.failed_write(exc)
    if write_error is not None:
        extracting = isinstance(exc, dlt_glue.PipelineStepFailed) and exc.step == "extract"
        then = (
            "nothing of it was applied and the next run reads it again"
            if extracting
            else "what was read is kept and the next run loads it first"
        )
        return LoadFailed(
            f"{spec.title} data could not be written to {job.database} "
            f"({dlt_glue.write_cause(write_error)}); {then}."
        )
    return None


def _transform_into(database: Path, report: RunReport, full: str | None = None) -> None:
    """Build `analytics` in one transaction (a failure keeps yesterday's tables): incrementally
    where it can, in full when `full` says why (incremental.py)."""
    from practice_sync.contract import ContractError
    from practice_sync.incremental import IncrementalError
    from practice_sync.transform import TransformOrderError, build_analytics

    if not database.exists():
        return
    connection = contextlib.closing(warehouse.connect(database))
    with connection as con:
        # the loads' rows written into the file first: many accounts' small loads each stay
        # below DuckDB's own checkpoint threshold, and a build reading them from the log ran
        # 9.4 s instead of 6.4 s at 50 accounts (the checkpoint: 2 s, owed at close anyway)
        with contextlib.suppress(duckdb.Error):
            con.execute("checkpoint")
        try:
            with phase(report.phases, "transforms"):
                build = build_analytics(con, full=full)
            report.analytics, report.analytics_build = build.counts, build.summary
        except (duckdb.Error, TransformOrderError, ContractError, IncrementalError) as exc:
            full = _disk_problem(exc)
            if full is not None:
                raise TransformFailed(
                    f"The analytics tables could not be written to {database} ({full}) and were "
                    "kept as they were: free disk space, and the next run rebuilds them.",
                    ExitCode.LOAD_FAILED,
                ) from exc
            raise TransformFailed(
                "The analytics tables could not be rebuilt and were kept as they were "
                f"({first_line(exc)})."
            ) from exc
        report.data_issues = report.analytics.get("data_issues", report.data_issues)


def _disk_problem(exc: BaseException) -> str | None:
    """What DuckDB said when the disk filled during a build (exit 8, as for a load): its text,
    or, once the failed write has invalidated the database, that it stopped writing."""
    text = str(exc)
    if "No space left on device" in text or dlt_glue.disk_full(exc) is not None:
        return "No space left on device"
    if "database has been invalidated" in text:
        return "DuckDB stopped writing after a failed write"
    return None


def first_line(exc: BaseException) -> str:
    """The first line of an error's text (and its last note), short enough for a summary."""
    text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    notes = getattr(exc, "__notes__", None)
    return f"{text}, {notes[-1]}" if notes else text
