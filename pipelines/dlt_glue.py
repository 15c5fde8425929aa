"""Every place the job reaches into dlt below its public `dlt.*` API, in one module, so that a dlt
upgrade that renames one of them breaks here and nowhere else: the DuckDB credentials class,
the layout of the normalize folder, the progress collector, the load id column of extracted
pages, and dlt's exception types.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import re
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dlt
import pyarrow as pa
from dlt.common.configuration.exceptions import ConfigFieldMissingException
from dlt.common.runtime.collector import NullCollector
from dlt.common.storages.exceptions import CurrentLoadPackageStateNotAvailable
from dlt.destinations.impl.duckdb.configuration import DuckDbCredentials
from dlt.pipeline.exceptions import PipelineStepFailed

from practice_sync.errors import find_cause

# dlt settings the job depends on, whatever folder it is started from (a user's own value wins):
# the raw layer keeps each row's load id, finished load files are not kept forever, and the
# staging copy of a night's sweep does not linger in the warehouse
DLT_DEFAULTS = {
    "NORMALIZE__PARQUET_NORMALIZER__ADD_DLT_LOAD_ID": "true",
    "LOAD__DELETE_COMPLETED_JOBS": "true",
    "LOAD__TRUNCATE_STAGING_DATASET": "true",
    "RUNTIME__DLTHUB_TELEMETRY": "false",
}

__all__ = ["ConfigFieldMissingException", "PipelineStepFailed", "make_pipeline"]


LOAD_ID = "_dlt_load_id"


def with_load_id(item: Any) -> Any:
    """`item` with dlt's `_dlt_load_id` column already in it, holding this load's id.

    dlt adds that column itself, but after putting the page in the stored schema's column order,
    so it lands last in the extracted file while the schema has it before the columns only the
    hints create (`_vanished`, the scd2 validity). Normalize then rewrote every file of a load
    (2.4 s for a million sessions). Present before, it is ordered with the rest (dlt replaces
    it in place), and normalize moves the file instead. Outside an extract, `item` passes
    unchanged."""
    if not isinstance(item, pa.Table) or LOAD_ID in item.column_names:
        return item
    try:
        load_id = dlt.current.load_package_state()["load_id"]
    except CurrentLoadPackageStateNotAvailable:
        return item
    return item.append_column(
        pa.field(LOAD_ID, pa.string(), nullable=False),
        pa.array([load_id] * item.num_rows, pa.string()),
    )


def duckdb_setting_names() -> list[str]:
    """Every setting dlt reads in `destination.duckdb`."""
    from dlt.destinations.impl.duckdb.configuration import DuckDbClientConfiguration

    fields = dataclasses.fields(DuckDbClientConfiguration)
    return [f.name for f in fields if not f.name.startswith("__")]


def postgres_setting_names() -> dict[str, str]:
    """Every setting dlt reads in `destination.postgres`, the credentials' parts included
    (`DESTINATION__POSTGRES__CREDENTIALS__PASSWORD`)."""
    from dlt.destinations.impl.postgres.configuration import (
        PostgresClientConfiguration,
        PostgresCredentials,
    )

    names = {f.name: "any" for f in dataclasses.fields(PostgresClientConfiguration)}
    for part in dataclasses.fields(PostgresCredentials):
        if not part.name.startswith("__"):
            names[f"credentials__{part.name}"] = "any"
    return {name: kind for name, kind in names.items() if not name.startswith("__")}


def settings_dir() -> str:
    """The `.dlt` folder dlt reads config.toml and secrets.toml from."""
    from dlt.common.runtime.run_context import active

    return os.path.abspath(active().settings_dir)


def toml_documents() -> tuple[dict[str, Any], list[str]]:
    """Each TOML settings file dlt read, as {where: its content}, and the list of files read.

    A file that is not valid TOML is a `ConfigError` naming it and the line.
    """
    from dlt.common.configuration.container import Container
    from dlt.common.configuration.providers.toml import TomlProviderReadException
    from dlt.common.configuration.specs.pluggable_run_context import PluggableRunContext

    from practice_sync.errors import ConfigError

    try:
        providers = Container()[PluggableRunContext].providers.providers
    except TomlProviderReadException as exc:
        raise ConfigError(_toml_problem(exc)) from None
    documents: dict[str, Any] = {}
    read: list[str] = []
    for provider in providers:
        locations = [os.path.abspath(p) for p in getattr(provider, "present_locations", [])]
        content = getattr(provider, "_config_toml", None)
        if locations and content is not None:
            documents[" and ".join(locations)] = content
            read.extend(locations)
    return documents, read


def _toml_problem(exc: Exception) -> str:
    text = str(exc)
    paths = re.findall(r"'([^']+\.toml)'", text)
    where = re.search(r"line (\d+) col (\d+)", text)
    found = next((p for p in paths if os.path.exists(p)), paths[0] if paths else "a .toml file")
    at = f" (line {where.group(1)}, column {where.group(2)})" if where else ""
    return f"{os.path.abspath(found)} is not valid TOML{at}: fix or remove it."


# dlt's own connections only (session settings): raw rows have no meaningful order (scd2 finds
# them by key), and copying a load file into a table without keeping its order is ~2.5x faster
# under the memory limit (4.1 -> 1.7 s for a million sessions)
LOAD_SESSION = {"preserve_insertion_order": False}


def make_pipeline(
    name: str,
    dataset: str,
    database: Path,
    pipelines_dir: Path,
    duckdb_config: dict[str, Any],
    on_load_job: Callable[[], None] | None = None,
) -> dlt.Pipeline:
    """A dlt pipeline writing `dataset` into the DuckDB file, with its state in `pipelines_dir`.

    `on_load_job` is called after each finished load job (dlt's only hook inside its load step).
    """
    for key, value in DLT_DEFAULTS.items():
        os.environ.setdefault(key, value)
    credentials = DuckDbCredentials(
        str(database), global_config=duckdb_config, local_config=LOAD_SESSION
    )
    progress: Any = _LoadJobCollector(on_load_job) if on_load_job else None
    return dlt.pipeline(
        pipeline_name=name,
        pipelines_dir=str(pipelines_dir),
        destination=_resolving_partial_once(dlt.destinations.duckdb(credentials)),
        dataset_name=dataset,
        progress=progress,
    )


def _resolving_partial_once(destination: Any) -> Any:
    """`destination`, resolving its *partial* configuration only once.

    dlt's `capabilities()` (asked a dozen times per load) resolves a partial configuration
    through every settings provider each time, about 20 ms a call: a third of a small account's
    load. Only `capabilities()` asks for a partial one, always built from the factory's own
    arguments, and settings do not change while a pipeline runs, so the first answer holds.
    (An instance attribute, not a subclass: dlt names a destination after its class.)
    """
    resolve = destination.configuration
    cache: list[Any] = []

    def configuration(initial_config: Any, accept_partial: bool = False) -> Any:
        if not accept_partial:
            return resolve(initial_config, accept_partial)
        if not cache:
            cache.append(resolve(initial_config, accept_partial=True))
        return cache[0]

    destination.configuration = configuration
    return destination


def drop_staging_dataset(pipeline: dlt.Pipeline) -> None:
    """Drop the `<dataset>_staging` schema dlt's merge (scd2) loads through, once a load is
    complete: dlt only truncates it, and an empty schema in every BI tool's list is noise. The
    next load creates it again (dlt initializes the staging dataset on every merge load). Call
    it only after a successful load: an interrupted one may still need its staged rows."""
    with pipeline.sql_client() as client:
        with client.with_staging_dataset():
            if client.has_dataset():
                client.drop_dataset()


def discard_interrupted_extracts(pipeline: dlt.Pipeline) -> None:
    """A killed extract leaves a half-written sweep in a uniquely named folder that dlt never
    reads again; remove it so crashes do not pile up on disk (the caller holds the lock)."""
    folder = Path(pipeline.working_dir) / "normalize"
    if folder.is_dir():
        for child in folder.iterdir():
            if child.is_dir() and child.name != "extracted":
                shutil.rmtree(child, ignore_errors=True)


def finish_interrupted_commits(pipeline: dlt.Pipeline) -> int:
    """Remove the extracted copy of every package dlt already normalized: a kill inside
    normalize's commit (the package renamed into `load/normalized`, its extracted files not yet
    deleted; dlt logs "do not kill this process" there) leaves both, and normalizing the copy
    again fails to rename onto the committed package ("Directory not empty"), run after run.
    Returns how many were removed (the caller holds the lock)."""
    working = Path(pipeline.working_dir)
    removed = 0
    # and a half-normalized copy a failed retry of it left in `load/new`
    for folder in (working / "normalize" / "extracted", working / "load" / "new"):
        if not folder.is_dir():
            continue
        for package in folder.iterdir():
            done = (working / "load" / state / package.name for state in ("normalized", "loaded"))
            if package.is_dir() and any(path.is_dir() for path in done):
                shutil.rmtree(package)
                removed += folder.name == "extracted"
    return removed


def pending_refreshes(pipelines_dir: Path, *, loading_only: bool = False) -> list[str]:
    """The pipelines (folder names under `pipelines_dir`) holding a package of a full refresh
    that has not landed. dlt drops the refreshed tables when that package's load *starts*, so
    from then until it lands they are empty: nothing may be built from them. `loading_only`
    leaves out packages not yet normalized (their load has not begun, the tables are whole).

    Read from dlt's package folders (`<pipeline>/load/normalized/<load id>`,
    `<pipeline>/normalize/extracted/<load id>`): their state names the tables to drop."""
    stages = ["load/normalized"] if loading_only else ["normalize/extracted", "load/normalized"]
    found: list[str] = []
    for stage in stages:
        for state in sorted(pipelines_dir.glob(f"*/{stage}/*/load_package_state.json")):
            try:
                dropped = json.loads(state.read_text(encoding="utf-8")).get("dropped_tables")
            except (OSError, ValueError, AttributeError):
                continue
            name = state.parents[3].name
            if dropped and name not in found:
                found.append(name)
    return found


def pending_since(pipeline: dlt.Pipeline) -> datetime | None:
    """When the oldest package a killed or failed run left behind was made: its rows are loaded
    with that time as their scd2 `valid_from` (load ids are epoch seconds)."""
    ids = [*pipeline.list_extracted_load_packages(), *pipeline.list_normalized_load_packages()]
    stamps = []
    for load_id in ids:
        with contextlib.suppress(ValueError):
            stamps.append(float(load_id))
    return datetime.fromtimestamp(min(stamps), UTC) if stamps else None


def write_cause(error: BaseException) -> str:
    """What a failed load job said, for the one-sentence error: dlt's own text ends in "Last
    failure message was: Traceback (most recent call last):", the cause's last line is what a
    person can act on ("No space left on device")."""
    if isinstance(error, OSError) and error.strerror:
        # a full disk is the disk's, whichever file: "No space left on device"; anything else
        # names its file ("Permission denied: …"), or the person would not know where to look
        full = error.errno in (errno.ENOSPC, errno.EDQUOT) or not error.filename
        return error.strerror if full else f"{error.strerror}: {error.filename}"
    message = str(getattr(error, "failed_message", "") or "")
    # not a parser's `^^^^^` marker under the statement it points into
    lines = [line.strip() for line in message.splitlines() if line.strip(" ^\t")]
    if lines:
        return lines[-1][:300]
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


def missing_setting(exc: BaseException) -> str | None:
    """The name of the setting dlt found missing, if that is what `exc` is."""
    if isinstance(exc, ConfigFieldMissingException):
        return str(exc.fields[0])
    return None


def failed_write(exc: BaseException) -> BaseException | None:
    """The underlying error when dlt failed to normalize or load what was extracted, or failed
    any step (extract included: its files sit beside the warehouse) because the disk is full."""
    if isinstance(exc, PipelineStepFailed) and exc.step in ("normalize", "load"):
        return exc.exception
    return disk_full(exc)


def disk_full(exc: BaseException) -> OSError | None:
    """The `OSError` for a full disk or quota anywhere in `exc`'s causes, if there is one."""
    return find_cause(exc, OSError, lambda error: error.errno in (errno.ENOSPC, errno.EDQUOT))


class _LoadJobCollector(NullCollector):
    """Calls back after each finished load job; dlt reports every job to its collector."""

    def __init__(self, on_load_job: Callable[[], None]) -> None:
        super().__init__()
        self._on_load_job = on_load_job
        self._step = ""

    def _start(self, step: str) -> None:
        self._step = step

    def update(self, name: str, inc: int = 1, *args: Any, **kwargs: Any) -> None:
        if self._step.startswith("Load") and name == "Jobs" and inc > 0:
            self._on_load_job()
