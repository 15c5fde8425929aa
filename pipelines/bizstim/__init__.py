"""Bizstim appointment sessions.

API reference: `../shared/api-docs/bizstim-sessions.txt` (paths, fields) and its README (quirks).
A key is made in Bizstim under Settings > System > API Settings (trial and Enterprise accounts);
it is sent as the `x-api-key` header. Returns one resource, `sessions`, landing in dataset
`bizstim` with every value as delivered (text) plus the account `timezone` of its response.

Bizstim has no modified-since filter, so every run sweeps all sessions and dlt's `scd2` merge
writes only what changed: new versions for edited sessions, `_dlt_valid_to` for vanished ones.
"""

from __future__ import annotations

from collections.abc import Iterator

import dlt
import pyarrow as pa
from dlt.sources import DltResource

from practice_sync.http import HttpClient, RetryPolicy, SourceNames
from practice_sync.report import Progress, SourceReport
from practice_sync.rows import text_columns

from .helpers import Sweep
from .settings import DEFAULT_BASE_URL, MAX_PAGE_SIZE, SESSION_FIELDS, TIMEZONE_COLUMN

NAMES = SourceNames("Bizstim", "bizstim")


@dlt.source(name="bizstim", max_table_nesting=0)
def bizstim(
    api_key: str = dlt.secrets.value,
    base_url: str = DEFAULT_BASE_URL,
    concurrency: int = 8,
    page_size: int = MAX_PAGE_SIZE,
    parse_processes: int = 2,
    max_deletion_share: float = 0.2,
    allow_deletions: bool = False,
    max_attempts: int = 6,
    backoff_base: float = 0.5,
    backoff_cap: float = 30.0,
    request_timeout: float = 60.0,
    current_rows: dict[str, int] | None = None,
    report: SourceReport | None = None,
    show_progress: bool = False,
) -> DltResource:
    """Sessions of one Bizstim account.

    `current_rows` says how many sessions the warehouse holds as current; when the API lists far
    fewer (an outage that answers `total: 0`, say), vanished sessions are not retired unless
    `allow_deletions` is set — edits and new sessions still load.
    """
    report = report or SourceReport("bizstim")
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
        stats=report.http,
    )
    sweep = Sweep(
        client, min(max(page_size, 2), MAX_PAGE_SIZE), parse_processes=max(parse_processes, 0)
    )
    report.sweeps += 1
    first = sweep.first_page()  # before extraction starts, so the guard can set hints

    @dlt.resource(
        name="sessions",
        write_disposition={"disposition": "merge", "strategy": "scd2"},
        columns=text_columns((*SESSION_FIELDS, TIMEZONE_COLUMN)),
    )
    def sessions() -> Iterator[pa.Table]:
        progress = Progress("Bizstim sessions", first.total) if show_progress else None
        try:
            yield from sweep.pages(progress.advance if progress else None)
        finally:
            if progress:
                progress.close()
            client.close()
        report.count("sessions", sweep.rows)
        sweep.raise_if_inconsistent()

    resource = sessions()
    held = (current_rows or {}).get("sessions", 0)
    vanishing = held - first.total
    guarded = bool(held) and not allow_deletions and vanishing > max_deletion_share * held
    # with a merge key, scd2 retires only sessions present in this sweep; dlt keeps hints in
    # the stored schema, so a normal run must switch it off explicitly
    resource.apply_hints(columns={"id": {"data_type": "text", "merge_key": guarded}})
    if guarded:
        report.withheld.append(
            f"Bizstim lists {first.total:,} sessions but the warehouse holds {held:,}; "
            f"more than {max_deletion_share:.0%} would vanish, so none were retired "
            "(re-run with --allow-deletions if they really were deleted)."
        )
    return resource
