"""TimeTap packages and packages sold.

API reference: `../shared/api-docs/timetap-package.txt` and the README beside it. Credentials are
an API key and a private key from TimeTap's API settings; the private key is never sent, only
used to sign the session-token request. Returns two resources landing in dataset `timetap`:

- `packages` (`GET /package`): incremental on `modifiedDate` — only packages whose modifiedDate
  differs from the last load are written. A package that drops out of the list was retired
  upstream (DELETE only sets `active=false`): its record is fetched by id and loaded as a new,
  inactive version, so it is marked inactive and never lost.
- `packages_sold` (`GET /packageSold/client/{id}` for every id of `GET /clientIdList`, or the
  configured `client_ids`): no modified-since filter exists, so every run sweeps all clients
  concurrently and dlt's `scd2` merge keeps the history of used quantities and statuses.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import Any

import dlt
import pyarrow as pa
from dlt.common.normalizers.naming.snake_case import NamingConvention
from dlt.sources import DltResource

from practice_sync.errors import NotFound, UnusableResponse
from practice_sync.http import HttpClient, RetryPolicy, SourceNames
from practice_sync.report import Progress, SourceReport
from practice_sync.rows import rows_to_table, text_columns

from .helpers import TimeTapApi, check_object
from .settings import (
    CLIENT_BATCH,
    CLIENT_ID_COLUMN,
    DEFAULT_BASE_URL,
    PACKAGE_FIELDS,
    PACKAGE_SOLD_FIELDS,
)

NAMES = SourceNames("TimeTap", "timetap")
SCD2 = {"disposition": "merge", "strategy": "scd2"}
_naming = NamingConvention()


@lru_cache(maxsize=1024)
def snake(name: str) -> str:
    """dlt's own column naming, applied before hashing so hints and data agree on names."""
    return _naming.normalize_identifier(name)


@dlt.source(name="timetap", max_table_nesting=0)
def timetap(
    api_key: str = dlt.secrets.value,
    private_key: str = dlt.secrets.value,
    base_url: str = DEFAULT_BASE_URL,
    concurrency: int = 8,
    client_ids: Sequence[int] | None = None,
    max_deletion_share: float = 0.2,
    allow_deletions: bool = False,
    max_attempts: int = 6,
    backoff_base: float = 0.5,
    backoff_cap: float = 30.0,
    request_timeout: float = 60.0,
    current_rows: dict[str, int] | None = None,
    report: SourceReport | None = None,
    show_progress: bool = False,
) -> Sequence[DltResource]:
    """Packages and packages sold of one TimeTap business."""
    report = report or SourceReport("timetap")
    held = current_rows or {}
    client = HttpClient(
        NAMES,
        base_url,
        concurrency=concurrency,
        policy=RetryPolicy(
            max_attempts=max_attempts,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            read_timeout=request_timeout,
        ),
        stats=report.http,
    )
    api = TimeTapApi(client, api_key, private_key)
    report.sweeps += 1

    @dlt.resource(
        name="packages",
        write_disposition=SCD2,
        merge_key="package_id",
        columns=text_columns(map(snake, PACKAGE_FIELDS)),
    )
    def packages() -> Iterator[pa.Table]:
        state = dlt.current.resource_state()
        if not held.get("packages"):
            state["modified"] = {}  # an empty warehouse must get everything again
        known: dict[str, str | None] = state.setdefault("modified", {})
        listed = [_snake_row(row) for row in api.get("/package")]
        report.count("packages", len(listed))
        listed_ids = {str(row.get("package_id")) for row in listed}
        changed = [
            row
            for row in listed
            if str(row.get("package_id")) not in known
            or known[str(row.get("package_id"))] != _text(row.get("modified_date"))
        ]
        dropped = [pid for pid in known if pid not in listed_ids]
        if dropped and not allow_deletions and len(dropped) > max_deletion_share * len(known):
            report.withheld.append(
                f"TimeTap lists {len(listed):,} packages but {len(dropped):,} of the "
                f"{len(known):,} known ones vanished; more than {max_deletion_share:.0%}, so none "
                "were marked inactive (re-run with --allow-deletions if they really were retired)."
            )
            dropped = []
        for pid in dropped:
            changed.append(_retired_package(api, pid))
        if changed:
            yield rows_to_table(
                changed, [snake(f) for f in PACKAGE_FIELDS], entity="package", expect_text=False
            )
        for row in changed:
            known[str(row.get("package_id"))] = _text(row.get("modified_date"))
        for pid in dropped:
            known.pop(pid, None)

    @dlt.resource(
        name="packages_sold",
        write_disposition=SCD2,
        columns={
            **text_columns([*map(snake, PACKAGE_SOLD_FIELDS), CLIENT_ID_COLUMN]),
            # dlt keeps hints in the stored schema: a guarded run's merge key must not stick
            "package_sold_id": {"data_type": "text", "nullable": True, "merge_key": False},
        },
    )
    def packages_sold() -> Iterator[Any]:
        ids = _client_ids(api, client_ids)
        progress = Progress("TimeTap clients", len(ids)) if show_progress else None

        def fetch(client_id: str) -> tuple[str, list[Any]]:
            return client_id, api.get(f"/packageSold/client/{client_id}")

        # buffered (a business's packages sold are small) so the mass-deletion guard can
        # decide before anything is handed to dlt
        tables: list[pa.Table] = []
        batch: list[dict[str, Any]] = []
        rows = 0
        try:
            for done, (client_id, sold) in enumerate(client.map_ordered(fetch, ids), 1):
                for row in sold:
                    out = _snake_row(row) if isinstance(row, dict) else row
                    if isinstance(out, dict):
                        out[CLIENT_ID_COLUMN] = client_id
                    batch.append(out)
                if progress:
                    progress.advance(1)
                if done % CLIENT_BATCH == 0 or done == len(ids):
                    if batch:
                        tables.append(_sold_table(batch))
                        rows += len(batch)
                        batch = []
        finally:
            if progress:
                progress.close()
        report.count("packages_sold", rows)
        previous = held.get("packages_sold", 0)
        vanishing = previous - rows
        hints = None
        if previous and not allow_deletions and vanishing > max_deletion_share * previous:
            # with a merge key, scd2 retires only packages sold present in this sweep
            hints = dlt.mark.make_hints(
                columns={"package_sold_id": {"data_type": "text", "merge_key": True}}
            )
            report.withheld.append(
                f"TimeTap lists {rows:,} packages sold but the warehouse holds {previous:,}; more "
                f"than {max_deletion_share:.0%} would vanish, so none were retired "
                "(re-run with --allow-deletions if they really were removed)."
            )
        for i, table in enumerate(tables):
            yield dlt.mark.with_hints(table, hints) if hints is not None and i == 0 else table

    return packages(), packages_sold()


def _snake_row(row: Any) -> Any:
    if not isinstance(row, dict):
        return row
    return {snake(key): value for key, value in row.items()}


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _sold_table(rows: list[dict[str, Any]]) -> pa.Table:
    fields = [*map(snake, PACKAGE_SOLD_FIELDS), CLIENT_ID_COLUMN]
    return rows_to_table(rows, fields, entity="package_sold", expect_text=False)


def _retired_package(api: TimeTapApi, package_id: str) -> dict[str, Any]:
    """The retired package as TimeTap now has it (active=false); a bare tombstone if gone."""
    try:
        found = api.get(f"/package/{package_id}", check=check_object)
    except NotFound:  # gone altogether; an outage (RetriesExhausted) must not tombstone it
        found = None
    if isinstance(found, dict):
        row = _snake_row(found)
        row["active"] = False
        return row
    return {"package_id": package_id, "active": False}


def _client_ids(api: TimeTapApi, configured: Sequence[int] | None) -> list[str]:
    raw = list(configured) if configured else api.get("/clientIdList")
    ids: list[str] = []
    for value in raw:
        if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit():
            raise UnusableResponse(
                f"TimeTap's client id list holds {str(value)[:40]!r}, which is not a client id; "
                "set sources.timetap.client_ids (SOURCES__TIMETAP__CLIENT_IDS) to work around it."
            )
        ids.append(str(int(value)))
    return list(dict.fromkeys(ids))
