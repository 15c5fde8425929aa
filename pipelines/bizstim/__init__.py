"""Bizstim appointment sessions.

API reference: `../shared/api-docs/bizstim-sessions.txt` (paths, fields) and its README (quirks).
A key is made in Bizstim under Settings > System > API Settings (trial and Enterprise accounts);
it is sent as the `x-api-key` header. Returns one resource, `sessions`, landing in dataset
`bizstim` with every value as delivered (text) plus the account `timezone` of its response.

Bizstim has no modified-since filter, so every run sweeps all sessions and dlt's `scd2` merge
writes only what changed: new versions for edited sessions; vanished sessions are retired by the
deletion guard (`practice_sync.guard`) once the sweep is complete.
"""

from __future__ import annotations

from collections.abc import Iterator

import dlt
import pyarrow as pa
from dlt.sources import DltResource

from practice_sync import context, guard
from practice_sync.http import HttpClient, RetryPolicy
from practice_sync.rows import text_columns

from .helpers import NAMES, read_sweep
from .settings import DEFAULT_BASE_URL, MAX_PAGE_SIZE, SESSION_FIELDS, TIMEZONE_COLUMN


@dlt.source(name="bizstim", max_table_nesting=0)
def bizstim(
    api_key: str = dlt.secrets.value,
    base_url: str = DEFAULT_BASE_URL,
    concurrency: int = 8,
    page_size: int = MAX_PAGE_SIZE,
    parse_processes: int = 2,
    max_deletion_share: float = 0.2,
    max_attempts: int = 6,
    backoff_base: float = 0.5,
    backoff_cap: float = 30.0,
    request_timeout: float = 60.0,
) -> DltResource:
    """Sessions of one Bizstim account."""
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
    )
    deletions = guard.DeletionGuard(
        "bizstim", "Bizstim", "sessions", "id", "sessions", max_share=max_deletion_share
    )
    return sessions(client, min(max(page_size, 2), MAX_PAGE_SIZE), parse_processes, deletions)


@dlt.resource(
    name="sessions",
    write_disposition=guard.scd2("id"),
    columns={**text_columns((*SESSION_FIELDS, TIMEZONE_COLUMN)), **guard.columns("id")},
)
def sessions(
    client: HttpClient, page_size: int, parse_processes: int, deletions: guard.DeletionGuard
) -> Iterator[pa.Table]:
    """Every session, read in one consistent sweep, then tombstones for the vanished ones."""
    try:
        ids = yield from read_sweep(client, page_size, max(parse_processes, 0))
        yield from deletions.tombstones(deletions.vanished(ids))
    finally:
        client.close()
