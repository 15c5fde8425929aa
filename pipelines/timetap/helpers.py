"""TimeTap auth and calls, and the reads behind the source's resources.

Auth: a session token signed with md5(apiKey + privateKey), refreshed on 401. The private key
only ever enters the signature; the api key travels in the token request's query string, which
is why the shared HTTP layer never logs or reports URLs.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import quote

import dlt
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from dlt.common.normalizers.naming.snake_case import NamingConvention

from practice_sync import context, guard
from practice_sync.errors import AuthRejected, NotFound, SourceUnavailable
from practice_sync.http import BadBody, HttpClient, JsonResponse, SourceNames
from practice_sync.privacy import HASH, Policy
from practice_sync.report import Progress
from practice_sync.rows import ROW_HASH, rows_to_table, text_columns

from .settings import CLIENT_BATCH, CLIENT_ID_COLUMN, PACKAGE_FIELDS, PACKAGE_SOLD_FIELDS

NAMES = SourceNames("TimeTap", "timetap")
_naming = NamingConvention()


@lru_cache(maxsize=1024)
def snake(name: str) -> str:
    """dlt's own column naming, applied before hashing so hints and data agree on names."""
    return _naming.normalize_identifier(name)


PACKAGE_COLUMNS = text_columns(map(snake, PACKAGE_FIELDS))
SOLD_FIELDS = (*map(snake, PACKAGE_SOLD_FIELDS), CLIENT_ID_COLUMN)
PACKAGE_SOLD_COLUMNS = text_columns(SOLD_FIELDS)


def signature(api_key: str, private_key: str) -> str:
    return hashlib.md5((api_key + private_key).encode()).hexdigest()


def check_list(data: Any) -> None:
    if not isinstance(data, list):
        raise BadBody("a body that is not a JSON array")


def check_object(data: Any) -> None:
    if not isinstance(data, dict):
        raise BadBody("a body that is not a JSON object")


class TimeTapApi:
    """Authenticated GETs; a token that expires mid-run is replaced once per failing call."""

    def __init__(self, client: HttpClient, api_key: str, private_key: str) -> None:
        self.client = client
        self._api_key = api_key
        self._private_key = private_key
        self._token: str | None = None
        self._lock = threading.Lock()

    def _new_token(self, stale: str | None) -> str:
        with self._lock:
            if self._token is not None and self._token != stale:
                return self._token  # another worker already refreshed it
            params = {
                "apiKey": self._api_key,
                "timestamp": str(int(time.time())),
                "signature": signature(self._api_key, self._private_key),
            }
            try:
                data = self.client.get_json("/sessionToken", params=params, check=_check_token).data
            except AuthRejected:
                raise AuthRejected(
                    "TimeTap rejected the credentials: check sources.timetap.api_key "
                    "(SOURCES__TIMETAP__API_KEY) and sources.timetap.private_key "
                    "(SOURCES__TIMETAP__PRIVATE_KEY)."
                ) from None
            self._token = str(data["sessionToken"])
            return self._token

    def token(self) -> str:
        return self._token or self._new_token(None)

    def get(self, path: str, check: Callable[[Any], None] = check_list) -> Any:
        """GET JSON (an array unless `check` says otherwise); on 401 refresh the token once."""
        return self.get_response(path, check).data

    def get_response(self, path: str, check: Callable[[Any], None] = check_list) -> JsonResponse:
        """`get` with what the HTTP layer noticed, i.e. whether invalid UTF-8 was replaced: the
        rows of that answer are then checked for U+FFFD and reported."""
        token = self.token()
        for attempt in range(2):
            try:
                return self.client.get_json(
                    path, headers={"Authorization": f"Bearer {token}"}, check=check
                )
            except AuthRejected:
                if attempt:
                    raise AuthRejected(
                        "TimeTap accepted the credentials but then refused a fresh session token: "
                        "check that the key in sources.timetap.api_key (SOURCES__TIMETAP__API_KEY) "
                        "may read packages and clients."
                    ) from None
                token = self._new_token(token)
        raise AssertionError("unreachable")


def _check_token(data: Any) -> None:
    if not isinstance(data, dict) or not isinstance(data.get("sessionToken"), str):
        raise BadBody("a token response without `sessionToken`")


# -- packages ---------------------------------------------------------------------------------

PACKAGE_TABLE_FIELDS = [snake(f) for f in PACKAGE_FIELDS]
# a package without these is reported ("missing from the record"): an id-less one has a NULL key,
# and one without `active` stays on offer only because an unreadable flag does not retire it
PACKAGE_REQUIRED = ("package_id", "active")


def read_packages(
    api: TimeTapApi, deletions: guard.DeletionGuard, policy: Policy | None = None
) -> Generator[pa.Table, None, None]:
    """Every listed package, then the vanished ones (as far as the guard permits) as TimeTap
    now has them.

    Every listed package is handed on, not only those whose modifiedDate moved: `only_changes`
    leaves out the unchanged ones by row hash, so a version stored wrong (a night's mangled
    text, a listing glitch, values a privacy policy no longer drops) is corrected the next
    night, with no new version otherwise. Packages are few; this costs one page a night.
    """
    run = context.current("timetap")
    listing = api.get_response("/package")
    listed = [snake_row(row) for row in listing.data]
    run.report.count("packages", len(listed))
    listed_ids = pa.array([_text(_field(row, "package_id")) for row in listed], pa.string())
    review = deletions.review(listed_ids)
    if listed:
        yield _package_table(listed, listing.replaced_utf8, policy)
    # each vanished package looked up first: only one TimeTap has no more, or has marked
    # inactive, counts against the deletion share; one still on offer there (an unreadable
    # `active`, a listing glitch) is stored as it is and withheld nothing, every night
    gone: list[str] = []
    retired: list[JsonResponse] = []
    for package_id in review.vanished.to_pylist():
        found = _vanished_package(api, package_id)
        if found is None:
            gone.append(package_id)
        elif _marked_inactive(found.data):
            retired.append(found)
        else:  # one answer each: only an answer that had invalid UTF-8 is checked for it
            yield _package_table([snake_row(found.data)], found.replaced_utf8, policy)
    if deletions.permit(review, vanished=len(gone) + len(retired)):
        for found in retired:
            yield _package_table([snake_row(found.data)], found.replaced_utf8, policy)
        yield from deletions.tombstones(gone)
    yield from deletions.placeholder(review, _package_table([], False, None))


def _marked_inactive(data: Any) -> bool:
    """`active` false as the transforms read it (`parse_bool`: any case, spaces trimmed)."""
    active = data.get("active") if isinstance(data, dict) else None
    return str(active).strip().lower() == "false"


def _package_table(rows: list[Any], replaced_utf8: bool, policy: Policy | None) -> pa.Table:
    return rows_to_table(
        rows,
        PACKAGE_TABLE_FIELDS,
        entity="package",
        required=PACKAGE_REQUIRED,
        check_replacement=replaced_utf8,
        expect_text=False,
        policy=policy,
    )


def _vanished_package(api: TimeTapApi, package_id: str) -> JsonResponse | None:
    """A package missing from GET /package as GET /package/{id} has it: retired (active=false,
    as DELETE leaves it), or still active when the listing dropped it by mistake, stored as it is
    either way; None when TimeTap has no such package any more."""
    try:
        # quoted whole: an id such as `A B` made a malformed URL that failed every night
        return api.get_response(f"/package/{quote(package_id, safe='')}", check=check_object)
    except NotFound:  # gone altogether; an outage (RetriesExhausted) must not retire it
        return None


# -- packages sold ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientList:
    """The business's client ids, passed whole from `client_ids` to `packages_sold`."""

    ids: list[str]
    # entries of GET /clientIdList that are not client ids: reported; the others load
    garbled: list[str] = field(default_factory=list)


def client_list(api: TimeTapApi, configured: Sequence[int] | None) -> ClientList:
    """The ids to sweep. An entry that is not a client id (null, -1) stood for a client nobody
    can name: it is reported, the rest load, and no sale is retired that night (`_sweep_sold`),
    where it used to fail every client's night."""
    raw = list(configured) if configured else api.get("/clientIdList")
    ids: list[str] = []
    garbled: list[str] = []
    for value in raw:
        text = str(value)
        if isinstance(value, bool) or not isinstance(value, int | str) or not _is_id(text):
            garbled.append(orjson.dumps(value, default=str).decode()[:40])
            continue
        ids.append(str(int(text)))
    return ClientList(list(dict.fromkeys(ids)), garbled)


def _is_id(text: str) -> bool:
    """ASCII digits only: str.isdigit() also takes '²', which int() refuses."""
    return text.isascii() and text.isdigit()


@dataclass
class SoldSweep:
    """What a sweep of packages sold saw: the ids, and the clients whose list could not be read
    (client id -> why)."""

    ids: pa.ChunkedArray
    problems: dict[str, str]

    @property
    def missing_clients(self) -> list[str]:
        return list(self.problems)


NOT_FOUND = "its packages sold answered HTTP 404 (not found)"
KEPT_FAILING = "its packages sold could not be read after every retry"
REFUSED = "its packages sold were refused with a fresh session token"
# clients whose list keeps failing are their own problem up to this share of the business (at
# least FAILING_CLIENTS_MIN); more, or 2 x concurrency in a row, and TimeTap itself is broken:
# the source fails (exit 4 or 5) and nothing of it is applied, as before
FAILING_CLIENTS_SHARE = 0.01
FAILING_CLIENTS_MIN = 3


class _Failures:
    """Counts the clients whose list failed; says when that is TimeTap failing, not a client."""

    def __init__(self, clients: int, concurrency: int) -> None:
        self.allowed = max(FAILING_CLIENTS_MIN, int(clients * FAILING_CLIENTS_SHARE))
        self.in_a_row_allowed = 2 * concurrency
        self.count = self.in_a_row = 0
        self._lock = threading.Lock()

    def ok(self) -> None:
        with self._lock:
            self.in_a_row = 0

    def failed(self) -> bool:
        """Count one; True when it is one too many (the caller re-raises)."""
        with self._lock:
            self.count += 1
            self.in_a_row += 1
            return self.count > self.allowed or self.in_a_row >= self.in_a_row_allowed


def read_packages_sold(
    api: TimeTapApi, client_ids: Sequence[str], policy: Policy | None = None
) -> Generator[pa.Table, None, SoldSweep]:
    """Yield the packages sold of every client, `CLIENT_BATCH` clients per Arrow table, fetched
    `concurrency` at a time. A client whose list answers 404, keeps failing after every retry or
    is refused is that client's problem: the others load, and it is returned so its earlier
    sales are not retired on a failure's word. Many such clients (`_Failures`) are TimeTap's
    problem: the source fails."""
    run = context.current("timetap")
    progress = Progress("TimeTap clients", len(client_ids)) if run.show_progress else None
    failures = _Failures(len(client_ids), api.client.concurrency)

    def fetch(client_id: str) -> tuple[str, JsonResponse | None, str | None]:
        try:
            answer = api.get_response(f"/packageSold/client/{client_id}")
        except NotFound:
            return client_id, None, NOT_FOUND
        except (SourceUnavailable, AuthRejected) as exc:
            if failures.failed():
                raise
            return client_id, None, REFUSED if isinstance(exc, AuthRejected) else KEPT_FAILING
        failures.ok()
        return client_id, answer, None

    seen: list[pa.Array] = []
    problems: dict[str, str] = {}
    # rows of answers that had invalid UTF-8 replaced go apart, so that only their values are
    # searched for U+FFFD (a real U+FFFD elsewhere in the batch is not invalid UTF-8)
    batches: dict[bool, list[Any]] = {False: [], True: []}
    try:
        for done, (client_id, sold, problem) in enumerate(
            api.client.map_ordered(fetch, client_ids), 1
        ):
            if sold is None:
                problems[client_id] = problem or NOT_FOUND
            else:
                batches[sold.replaced_utf8].extend(
                    _with_client(row, client_id) for row in sold.data
                )
            if progress:
                progress.advance(1)
            if done % CLIENT_BATCH and done != len(client_ids):
                continue
            for replaced, batch in batches.items():
                if batch:
                    table = _sold_table(batch, replaced, policy)
                    seen.append(table["package_sold_id"].combine_chunks())
                    batch.clear()
                    yield table
    finally:
        if progress:
            progress.close()
    ids = pa.chunked_array(seen, pa.string())
    run.report.count("packages_sold", len(ids))
    run.report.notes += _unread_notes(problems, hides_clients(policy))
    return SoldSweep(ids, problems)


def _unread_notes(problems: Mapping[str, str], hidden: bool = False) -> list[str]:
    """The summary's lines about clients whose packages sold could not be read, one per reason;
    without their ids where a privacy policy hashes or drops `client_id`."""
    notes = []
    for reason, said in ((NOT_FOUND, "answered 404"), (KEPT_FAILING, "kept failing"),
                         (REFUSED, "were refused")):  # fmt: skip
        clients = [client for client, problem in problems.items() if problem == reason]
        if clients:
            named = (
                ""
                if hidden
                else f" (client {', '.join(clients[:5])}{' …' if len(clients) > 5 else ''})"
            )
            notes.append(
                f"{len(clients):,} TimeTap clients {said} for their packages sold{named}; their "
                "earlier sales stay as they were (see analytics.data_issues)"
            )
    return notes


def hides_clients(policy: Policy | None) -> bool:
    """Whether a privacy policy hashes or drops `client_id`: then no plain client id may be
    stored or shown, in a fetch problem or a note either."""
    return bool(policy and policy.columns.get(CLIENT_ID_COLUMN))


def client_as_stored(policy: Policy | None, client_id: str) -> str | None:
    """A client id as `packages_sold.client_id` stores it under the policy: as is, its salted
    hash, or nothing (dropped)."""
    rule = policy.columns.get(CLIENT_ID_COLUMN) if policy else None
    if rule is None:
        return client_id
    return policy.hash_text(client_id) if policy and rule == HASH else None


def empty_sold() -> pa.Table:
    return _sold_table([], False, None)


# a package sold without its id has a NULL key: reported, as the contract's key_nulls says
SOLD_REQUIRED = ("package_sold_id",)


def _sold_table(rows: list[Any], replaced_utf8: bool, policy: Policy | None) -> pa.Table:
    return rows_to_table(
        rows,
        SOLD_FIELDS,
        entity="package_sold",
        required=SOLD_REQUIRED,
        check_replacement=replaced_utf8,
        expect_text=False,
        policy=policy,
    )


FETCH_PROBLEMS = "fetch_problems"


def fetch_problems(unread: Mapping[str, str], policy: Policy | None = None) -> Any:
    """This run's unreadable clients (id -> why), replacing the last run's, for
    `analytics.data_issues`; each id stored as the policy stores `client_id` (a plain id under
    a hash policy reached the warehouse, the serving file and the summary)."""
    stored = [client_as_stored(policy, client) for client in unread]
    clients = pa.array(stored, pa.string())
    problems = list(unread.values())
    # the row's identity: the stored id, or its position where the policy drops it
    keys = pa.array([c if c is not None else f"#{n}" for n, c in enumerate(stored)], pa.string())
    schema = pa.schema(
        [
            pa.field("client_id", pa.string()),
            pa.field("problem", pa.string()),
            pa.field(ROW_HASH, pa.string(), nullable=False),
        ]
    )
    row_ids = pc.binary_join_element_wise("client", keys, ":")
    table = pa.Table.from_arrays([clients, pa.array(problems, pa.string()), row_ids], schema=schema)
    hints = dlt.mark.make_hints(
        table_name=FETCH_PROBLEMS,
        write_disposition="replace",
        columns={
            "client_id": {"data_type": "text", "nullable": True},
            "problem": {"data_type": "text", "nullable": True},
            "account": {"data_type": "text", "nullable": True},
        },
    )
    return dlt.mark.with_hints(table, hints, create_table_variant=True)


def spare_clients(missing_clients: Sequence[str], policy: Policy | None = None) -> str:
    """SQL condition for the current sales of clients whose list could not be read.

    Matched as stored: a privacy policy may hash `client_id` (or `client.clientId`), or drop
    `client_id`, whose sales are then tied to their client by the embedded object's clientId
    (as the staging model ties them). A hash is 64 hex digits, never a plain id, so plain and
    hashed ids can be listed together."""
    if not missing_clients:
        return "false"
    ids = [str(int(c)) for c in missing_clients]
    stored = list(ids)
    if policy and HASH in (
        policy.columns.get(CLIENT_ID_COLUMN),
        policy.nested.get("client", {}).get(CLIENT_ID_COLUMN),
    ):
        stored += [policy.hash_text(c) for c in ids]
    listed = ", ".join(repr(c) for c in stored)
    # the object is only read where client_id is NULL, and only if it is valid JSON
    fallback = "case when json_valid(client) then client ->> 'clientId' end"
    return f"coalesce(client_id, {fallback}) in ({listed})"


def _with_client(row: Any, client_id: str) -> Any:
    out = snake_row(row)
    if isinstance(out, dict):
        out[CLIENT_ID_COLUMN] = client_id
    return out


def snake_row(row: Any) -> Any:
    if not isinstance(row, dict):
        return row
    return {snake(key): value for key, value in row.items()}


def _field(row: Any, name: str) -> Any:
    """A row's field; None for a row that is not an object (loaded as an issue-only row)."""
    return row.get(name) if isinstance(row, dict) else None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
