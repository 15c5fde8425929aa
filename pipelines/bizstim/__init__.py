"""Bizstim appointment sessions.

API reference: `../shared/api-docs/bizstim-sessions.txt` (paths, fields) and its README (quirks).
A key is made in Bizstim under Settings > System > API Settings (trial and Enterprise accounts);
it is sent as the `x-api-key` header. Returns one resource, `sessions`, landing in dataset
`bizstim` with every value as delivered (text) plus the account `timezone` of its response.

Bizstim has no modified-since filter, so every run sweeps all sessions; only those whose row
hash is not the warehouse's current one reach dlt (`practice_sync.guard.only_changes`), and its
`scd2` merge writes them as new versions. A session missing from the listing is looked up with
`GET /session/{id}` (at most `max_confirmations` per run, concurrently): one that still answers
was dropped by a listing glitch and stays current with the values it returned; only one that
Bizstim confirms gone is retired, and only if the deletion guard (`practice_sync.guard`) permits.
Vanished sessions beyond the bound stay current until a later run confirms them.

`privacy` ({"drop": [...], "hash": [...]}, see `practice_sync.privacy`) is applied to every
page before dlt sees it.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator

import dlt
import pyarrow as pa
from dlt.sources import DltResource

from practice_sync import context, guard
from practice_sync import privacy as _privacy
from practice_sync.http import HttpClient, RetryPolicy
from practice_sync.rows import text_columns

from .helpers import NAMES, confirm_vanished, empty_page, read_sweep
from .settings import DEFAULT_BASE_URL, MAX_PAGE_SIZE, SESSION_FIELDS, TIMEZONE_COLUMN


@dlt.source(name="bizstim", max_table_nesting=0)
def bizstim(
    api_key: str = dlt.secrets.value,
    base_url: str = DEFAULT_BASE_URL,
    concurrency: int = 8,
    page_size: int = MAX_PAGE_SIZE,
    parse_processes: int = 2,
    max_deletion_share: float = 0.2,
    max_confirmations: int = 1000,
    max_attempts: int = 6,
    backoff_base: float = 0.5,
    backoff_cap: float = 30.0,
    request_timeout: float = 60.0,
    privacy: dict[str, list[str]] | None = None,
) -> DltResource:
    """Sessions of one Bizstim account."""
    policy = _privacy.policy_for("bizstim", privacy)
    client = HttpClient(
        NAMES,
        base_url,
        headers={"x-api-key": api_key},
        concurrency=concurrency,
        policy=RetryPolicy(
            max_attempts=max_attempts,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            read_timeout=request_timeout,
        ),
        stats=context.current("bizstim").report.http,
        account=context.current("bizstim").report.name.partition(".")[2] or None,
    )
    deletions = guard.DeletionGuard(
        "bizstim", "Bizstim", "sessions", "id", "sessions", max_share=max_deletion_share
    )
    size = min(max(page_size, 2), MAX_PAGE_SIZE)
    return sessions(client, size, parse_processes, deletions, max(max_confirmations, 0), policy)


@dlt.resource(
    name="sessions",
    write_disposition=guard.scd2("id"),
    columns=guard.columns("id", text_columns((*SESSION_FIELDS, TIMEZONE_COLUMN))),
)
def sessions(
    client: HttpClient,
    page_size: int,
    parse_processes: int,
    deletions: guard.DeletionGuard,
    max_confirmations: int,
    policy: _privacy.Policy,
) -> Iterator[pa.Table]:
    """Every session, read in one consistent sweep; then each vanished session is looked up by
    id, and only those Bizstim confirms gone are retired (if the guard permits). Only sessions
    new or changed since the warehouse's current version reach dlt."""
    try:
        yield from deletions.only_changes(
            _sweep(client, page_size, parse_processes, deletions, max_confirmations, policy)
        )
    finally:
        client.close()


def _sweep(
    client: HttpClient,
    page_size: int,
    parse_processes: int,
    deletions: guard.DeletionGuard,
    max_confirmations: int,
    policy: _privacy.Policy,
) -> Generator[pa.Table, None, None]:
    """The whole sweep as the guard sees it, before `only_changes` leaves out what is current."""
    ids = yield from read_sweep(
        client, page_size, max(parse_processes, 0), policy, deletions.prefilter
    )
    review = deletions.review(ids)
    yield from deletions.placeholder(review, empty_page())
    # a person who confirmed the deletions (--allow-deletions) gets every one looked up: with
    # the bound, the rest were withheld again the next night (exit 3) until asked once more
    limit = (
        len(review.vanished) if context.current("bizstim").allow_deletions else max_confirmations
    )
    gone = yield from confirm_vanished(client, review.vanished, limit, policy)
    if deletions.permit(review, confirmed_gone=len(gone)):
        yield from deletions.tombstones(gone)
