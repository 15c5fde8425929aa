"""TimeTap packages and packages sold.

API reference: `../shared/api-docs/timetap-package.txt` and the README beside it. Credentials are
an API key and a private key from TimeTap's API settings; the private key is never sent, only
used to sign the session-token request. Returns two resources landing in dataset `timetap`:

- `packages` (`GET /package`): every listed package, so that a version stored wrong is corrected
  the next night (unchanged ones go no further, see below). A package that drops out of the list
  is fetched by id and loaded as TimeTap has it: retired upstream (DELETE only sets
  `active=false`), it becomes a new, inactive version and is never lost; still active (the
  listing dropped it by mistake), it stays on offer. Only one TimeTap no longer has is retired.
- `packages_sold` (`GET /packageSold/client/{id}`), a transformer fed by `client_ids` (every id
  of `GET /clientIdList`, or the configured `client_ids`): no modified-since filter exists, so
  every run sweeps all clients concurrently and dlt's `scd2` merge keeps the history of used
  quantities and statuses.

Of both, only rows whose row hash is not the warehouse's current one reach dlt
(`practice_sync.guard.only_changes`).

Vanished records of both are retired by the deletion guard (`practice_sync.guard`).
`privacy` ({"drop": [...], "hash": [...]}, see `practice_sync.privacy`) is applied to both
tables' rows before dlt sees them (`client.<key>` names a key of the embedded client object).
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from typing import Any

import dlt
import pyarrow as pa
from dlt.sources import DltResource

from practice_sync import context, guard
from practice_sync import privacy as _privacy
from practice_sync.http import HttpClient, RetryPolicy

from .helpers import (
    NAMES,
    PACKAGE_COLUMNS,
    PACKAGE_SOLD_COLUMNS,
    ClientList,
    TimeTapApi,
    client_list,
    empty_sold,
    fetch_problems,
    hides_clients,
    read_packages,
    read_packages_sold,
    spare_clients,
)
from .settings import DEFAULT_BASE_URL


@dlt.source(name="timetap", max_table_nesting=0)
def timetap(
    api_key: str = dlt.secrets.value,
    private_key: str = dlt.secrets.value,
    base_url: str = DEFAULT_BASE_URL,
    concurrency: int = 8,
    client_ids: Sequence[int] | None = None,
    max_deletion_share: float = 0.2,
    max_attempts: int = 6,
    backoff_base: float = 0.5,
    backoff_cap: float = 30.0,
    request_timeout: float = 60.0,
    privacy: dict[str, list[str]] | None = None,
) -> Sequence[DltResource]:
    """Packages and packages sold of one TimeTap business."""
    policy = _privacy.policy_for("timetap", privacy)
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
        stats=context.current("timetap").report.http,
        account=context.current("timetap").report.name.partition(".")[2] or None,
    )
    api = TimeTapApi(client, api_key, private_key)
    package_guard = guard.DeletionGuard(
        "timetap",
        "TimeTap",
        "packages",
        "package_id",
        "packages",
        retired_as="marked inactive",
        gone_as="retired",
        max_share=max_deletion_share,
        # retired ones stay current; `false` read as the transforms read it (any case, trimmed)
        current_condition="lower(trim(active)) is distinct from 'false'",
    )
    sold_guard = guard.DeletionGuard(
        "timetap",
        "TimeTap",
        "packages_sold",
        "package_sold_id",
        "packages sold",
        gone_as="removed",
        max_share=max_deletion_share,
    )
    return (
        packages(api, package_guard, policy),
        timetap_clients(api, client_ids) | packages_sold(api, sold_guard, policy),
    )


@dlt.resource(
    name="packages",
    write_disposition=guard.scd2("package_id"),
    columns=guard.columns("package_id", PACKAGE_COLUMNS),
)
def packages(
    api: TimeTapApi, deletions: guard.DeletionGuard, policy: _privacy.Policy
) -> Iterator[pa.Table]:
    """New and changed active packages, then the vanished ones as TimeTap now has them."""
    yield from deletions.only_changes(read_packages(api, deletions, policy))


@dlt.resource(name="client_ids", selected=False)
def timetap_clients(api: TimeTapApi, configured: Sequence[int] | None) -> Iterator[ClientList]:
    """One item, the whole list: the guard decides on a complete sweep of packages sold."""
    yield client_list(api, configured)


@dlt.transformer(
    name="packages_sold",
    write_disposition=guard.scd2("package_sold_id"),
    columns=guard.columns("package_sold_id", PACKAGE_SOLD_COLUMNS),
)
def packages_sold(
    clients: ClientList, api: TimeTapApi, deletions: guard.DeletionGuard, policy: _privacy.Policy
) -> Iterator[pa.Table]:
    """Every client's packages sold, fetched concurrently, then tombstones for vanished ones;
    only those new or changed since the warehouse's current version reach dlt."""
    yield from deletions.only_changes(_sweep_sold(clients, api, deletions, policy))


def _sweep_sold(
    clients: ClientList, api: TimeTapApi, deletions: guard.DeletionGuard, policy: _privacy.Policy
) -> Generator[Any, None, None]:
    """The whole sweep as the guard sees it, before `only_changes` leaves out what is current."""
    sweep = yield from read_packages_sold(api, clients.ids, policy)
    spare = spare_clients(sweep.missing_clients, policy)
    if clients.garbled:  # a sale of the client a garbled entry stood for would look removed
        spare = "true"
        shown = "" if hides_clients(policy) else f" ({', '.join(clients.garbled[:3])})"
        context.current("timetap").report.notes.append(
            f"TimeTap's client id list held {len(clients.garbled):,} entries that are not client "
            f"ids{shown}; the other clients loaded, and no sale was retired tonight (see "
            "analytics.data_issues)"
        )
        sweep.problems.update(
            (value, "GET /clientIdList listed it, and it is not a client id")
            for value in clients.garbled
        )
    review = deletions.review(sweep.ids, spare=spare)
    yield from deletions.placeholder(review, empty_sold())
    if deletions.permit(review):
        yield from deletions.tombstones(review.vanished)
    yield fetch_problems(sweep.problems, policy)
