"""Dagster definitions for the nightly job: `dagster dev -m practice_sync.dagster`.

Needs the `dagster` extra (`pip install "practice-sync[dagster]"`). There is one asset per source
and account (`bizstim/default`, `timetap/default`; the accounts are the pipeline's own,
`sources.<source>.accounts`, default one named `default`) and one for the `analytics` rebuild.

They are one multi-asset that runs the very job `practice-sync run` runs, once per launch, and
reports each source as its own materialisation. DuckDB allows one writer and the job already
takes the warehouse's lock, serialises its sources and rebuilds once after them; separate assets
would each take the lock (and rebuild) in turn, fight over it when launched together, and split
one night over several rows of `ops.run_history`. A failing source is reported as the CLI
reports it: its asset alone is not materialised (an observation carries the sentence and exit
code), the others are, and the step then fails with the CLI's sentence and exit code, so a
Dagster alert fires where cron's would. Runs launched together wait for each other's lock
(`wait_for_lock_seconds`); the `practice_sync_warehouse` pool lets Dagster queue them instead.
"""

# no `from __future__ import annotations` here: Dagster reads the asset function's annotations
# at definition time (the `config: RunSettings` parameter) and needs them as real types
from collections.abc import Iterator, Set
from typing import Any

import dagster as dg

from practice_sync import accounts as account_names
from practice_sync import config_check, history
from practice_sync.errors import ExitCode, PracticeSyncError
from practice_sync.pipeline import SOURCES, Job, database_from_config, run, transform
from practice_sync.report import RunReport, SourceReport

GROUP = "practice_sync"
POOL = "practice_sync_warehouse"  # one writer: `dagster instance concurrency set` it to 1
ANALYTICS = dg.AssetKey(["analytics"])
DEFAULT_ACCOUNT = account_names.DEFAULT
NIGHTLY_CRON = "30 2 * * *"


def accounts(source: str) -> list[str]:
    """The accounts the pipeline loads for `source`, read and checked as the pipeline reads them."""
    return account_names.names(source)


def source_key(source: str, account: str = DEFAULT_ACCOUNT) -> dg.AssetKey:
    """`bizstim/default`: the asset of one account's raw tables."""
    return dg.AssetKey([source, account])


def report_key(source: SourceReport) -> dg.AssetKey:
    """The asset a source's report is about (its name is `bizstim`, or `bizstim.<account>`)."""
    return source_key(source.name.split(".")[0], source.account)


def asset_specs() -> list[dg.AssetSpec]:
    """One spec per source and account, then `analytics`, which is built from all of them."""
    raw = [
        dg.AssetSpec(
            source_key(name, account),
            description=f"{spec.title} raw tables ({', '.join(spec.tables)}) of account "
            f"{account}, with their full history (dlt `scd2`).",
            group_name=GROUP,
            kinds={"dlt", "duckdb"},
            skippable=True,  # a source without credentials is skipped, as `practice-sync run` does
        )
        for name, spec in SOURCES.items()
        for account in accounts(name)
    ]
    analytics = dg.AssetSpec(
        ANALYTICS,
        deps=[spec.key for spec in raw],
        description="The `analytics` schema, rebuilt in one transaction after the loads and "
        "published to the serving file.",
        group_name=GROUP,
        kinds={"duckdb", "sql"},
        skippable=True,
    )
    return [*raw, analytics]


class RunSettings(dg.Config):
    """The options of `practice-sync run` a launch may set (launchpad or a schedule)."""

    allow_deletions: bool = False
    full_refresh: bool = False
    # a run launched while another holds the warehouse waits this long, then fails with exit 6
    wait_for_lock_seconds: float = 1800.0


def build_assets() -> dg.AssetsDefinition:
    """The multi-asset; a subset selection runs only the chosen sources (`--source`) and accounts."""

    @dg.multi_asset(specs=asset_specs(), name="practice_sync_run", can_subset=True, pool=POOL)
    def practice_sync_run(
        context: dg.AssetExecutionContext, config: RunSettings
    ) -> Iterator[dg.MaterializeResult | dg.AssetObservation]:
        selected = context.selected_asset_keys
        report, code = run_job(selected, config)
        yield from results(context, report, selected)
        if code != ExitCode.OK:
            raise failure(report, code)

    return practice_sync_run


def run_job(selected: Set[dg.AssetKey], settings: RunSettings) -> tuple[RunReport, int]:
    """`practice-sync run` for the selected sources and accounts (`transform` for analytics
    alone): selecting `bizstim/uptown` alone loads that account alone (`Job.accounts`)."""
    try:
        config_check.check()
        database = database_from_config()
        chosen: dict[str, set[str]] = {}
        for key in selected - {ANALYTICS}:
            chosen.setdefault(key.path[0], set()).add(key.path[1])
        if not chosen:  # analytics alone: waits for the lock as a run does
            return transform(database, wait=settings.wait_for_lock_seconds)
        job = Job(
            database=database,
            # all of them: every source with credentials, the others skipped, as a plain `run`
            sources=None if sorted(chosen) == sorted(SOURCES) else sorted(chosen),
            allow_deletions=settings.allow_deletions,
            full_refresh=settings.full_refresh,
            wait_for_lock=settings.wait_for_lock_seconds,
            accounts={
                source: sorted(names)
                for source, names in chosen.items()
                if names != set(accounts(source))
            }
            or None,
        )
        return run(job)
    except PracticeSyncError as exc:  # nothing ran: the CLI's sentence and exit code
        raise dg.Failure(description=str(exc), metadata={"exit_code": int(exc.exit_code)}) from None


def results(
    context: dg.AssetExecutionContext, report: RunReport, selected: Set[dg.AssetKey]
) -> Iterator[dg.MaterializeResult | dg.AssetObservation]:
    """A materialisation per source that loaded; an observation with the error per one that
    failed; nothing for one skipped. The log gets the CLI's summary lines."""
    for source in report.sources:
        key = report_key(source)
        context.log.info(source.render())
        if key not in selected or source.skipped:
            continue
        metadata = source_metadata(source, report)
        if source.error:
            yield dg.AssetObservation(asset_key=key, description=source.error, metadata=metadata)
        else:
            yield dg.MaterializeResult(asset_key=key, metadata=metadata)
    context.log.info(report.render_run())
    if ANALYTICS in selected and report.analytics and report.transform_error is None:
        yield dg.MaterializeResult(asset_key=ANALYTICS, metadata=analytics_metadata(report))


def source_metadata(source: SourceReport, report: RunReport) -> dict[str, Any]:
    """What the summary and `ops.run_history` say about one source, as asset metadata."""
    outcome, code = history.source_outcome(source, interrupted=False)
    metadata: dict[str, Any] = {
        "outcome": outcome,  # and exit code: as in this source's row of ops.run_history
        "exit_code": code,
        "requests": source.http.requests,
        "retries": source.http.retries,
        "duration_s": round(sum(source.phases.values()), 3),
        "run_id": report.run_id,  # the `run_id` of its row in ops.run_history
    }
    for table, change in sorted(source.tables.items()):
        for column, rows in vars(change).items():
            metadata[f"{table}_{column}"] = rows  # sessions_new, sessions_current, ...
    if source.error:
        metadata["error"] = source.error
    if source.withheld:
        metadata["withheld"] = " ".join(source.withheld)
    return metadata


def analytics_metadata(report: RunReport) -> dict[str, Any]:
    """Row counts of the rebuilt tables (`rows_data_issues` too) and where readers find them."""
    metadata: dict[str, Any] = {f"rows_{table}": rows for table, rows in report.analytics.items()}
    metadata["run_id"] = report.run_id
    if report.serving is not None:
        metadata["serving_file"] = dg.MetadataValue.path(str(report.serving))
    return metadata


def failure(report: RunReport, code: int) -> dg.Failure:
    """The step's failure: the CLI's sentences, its exit code, and the assets they are about."""
    failed = [
        report_key(source).to_user_string()
        for source in report.sources
        if source.error or source.withheld
    ]
    if report.transform_error:
        failed.append(ANALYTICS.to_user_string())
    sentences = report.problems() or [f"The run ended with exit code {code}."]
    return dg.Failure(
        description=" ".join(sentences),
        metadata={"exit_code": int(code), "failed": ", ".join(failed), "run_id": report.run_id},
    )


practice_sync_assets = build_assets()
nightly_job = dg.define_asset_job(
    "practice_sync_nightly", selection=dg.AssetSelection.assets(practice_sync_assets)
)
# stopped until switched on in the UI (or `dagster schedule start`), as every Dagster schedule
nightly_schedule = dg.ScheduleDefinition(
    name="practice_sync_nightly_schedule", job=nightly_job, cron_schedule=NIGHTLY_CRON
)
defs = dg.Definitions(
    assets=[practice_sync_assets], jobs=[nightly_job], schedules=[nightly_schedule]
)
