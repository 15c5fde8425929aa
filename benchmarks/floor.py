"""The floor: what fetching the same pages and loading them into DuckDB costs with no pipeline.

Plain `http.client` keep-alive connections, one per worker thread, `concurrency` at a time (the
pipeline's setting), each body written untouched to a file; then one DuckDB `read_json` turns the
files into a table in a DuckDB file. Nothing is parsed in Python, nothing retried or checked, so
no correct pipeline can be faster: pipeline time / floor time is what its own work costs.
"""

from __future__ import annotations

import hashlib
import http.client
import multiprocessing
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlencode, urlsplit

import duckdb
import orjson
from sim_process import PAGE_SIZE, page_starts

from practice_sync.bizstim.settings import SESSION_FIELDS

# Every value of a Bizstim row is a JSON string: read as text, as the pipeline's raw layer has it
# (the field list is the product's own, so the floor reads exactly what the pipeline reads).
SESSION_COLUMNS = SESSION_FIELDS
# TimeTap sends numbers and nested objects; nested ones stay JSON, as the raw layer keeps them.
PACKAGE_SOLD_COLUMNS = {
    "packageSoldId": "BIGINT", "businessId": "BIGINT", "client": "JSON", "pkg": "JSON",
    "price": "DOUBLE", "maxQuantity": "BIGINT", "usedQuantity": "BIGINT", "status": "VARCHAR",
    "purchaseDate": "BIGINT", "expireDate": "BIGINT", "createdDate": "BIGINT",
    "createdUser": "VARCHAR", "modifiedDate": "BIGINT", "modifiedUser": "VARCHAR",
    "active": "BOOLEAN",
}  # fmt: skip


@dataclass
class FloorResult:
    download_s: float
    read_json_s: float
    requests: int
    bytes: int
    rows: int
    confirm_s: float = 0.0  # one GET per vanished session after the sweep (see bizstim_floor)
    confirmations: int = 0

    @property
    def seconds(self) -> float:
        return self.download_s + self.confirm_s + self.read_json_s


class _Fetcher:
    """One keep-alive connection per worker thread; a GET returns the body bytes, nothing else."""

    def __init__(self, base_url: str, headers: dict[str, str]) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self.headers = headers
        self._local = threading.local()

    def get(self, path: str, headers: dict[str, str] | None = None, ok: int = 200) -> bytes:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        conn.request("GET", self.prefix + path, headers={**self.headers, **(headers or {})})
        response = conn.getresponse()
        body = response.read()
        if response.status not in (200, ok):
            raise RuntimeError(f"floor fetch of {path} answered HTTP {response.status}")
        return body


def _download(
    fetch: Callable[[str], bytes], paths: Sequence[str], folder: Path, concurrency: int
) -> tuple[int, float]:
    """GET every path on `concurrency` threads; (bytes, seconds).

    Each worker appends its bodies to its own file, one body per line: DuckDB pays ~0.5 ms per
    file it opens, which at 20,000 one-client files would be most of the floor and flatter the
    pipeline. Compact JSON has no raw newline (inside strings it is escaped), so a line is a body.
    """
    local = threading.local()
    files: list[BinaryIO] = []
    lock = threading.Lock()

    def one(path: str) -> int:
        out = getattr(local, "out", None)
        if out is None:
            with lock:
                out = local.out = open(folder / f"worker-{len(files)}.ndjson", "wb")  # noqa: SIM115
                files.append(out)
        body = fetch(path)
        out.write(body.replace(b"\n", b" ") if b"\n" in body else body)
        out.write(b"\n")
        return len(body)

    started = time.perf_counter()
    try:
        with ThreadPoolExecutor(concurrency, thread_name_prefix="floor") as pool:
            total = sum(pool.map(one, paths))
    finally:
        for out in files:
            out.close()
    return total, time.perf_counter() - started


def _read_json(database: Path, sql: str) -> tuple[int, float]:
    """Run the CREATE TABLE ... read_json statement in a fresh DuckDB file; (rows, seconds).

    In a process of its own: Linux hands a process's peak RSS on through fork and exec
    (ru_maxrss), so DuckDB's memory for the floor's read_json, had it grown the benchmark's own
    process, would have been reported as the peak of every pipeline run started after it.
    """
    rows, seconds = isolated(_read_json_here, database, sql)
    return int(rows), float(seconds)


def isolated(fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` in a fresh spawned process (for DuckDB work the benchmark does itself)."""
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn) as pool:
        return pool.submit(fn, *args).result()


def _read_json_here(database: Path, sql: str) -> tuple[int, float]:
    started = time.perf_counter()
    with duckdb.connect(str(database)) as con:
        con.execute(sql)
        con.execute("checkpoint")
        (rows,) = con.execute("select count(*) from raw").fetchone() or (0,)
    return int(rows), time.perf_counter() - started


def bizstim_floor(
    base_url: str,
    api_key: str,
    concurrency: int,
    folder: str,
    total: int,
    vanished: Sequence[str] = (),
) -> FloorResult:
    """The pipeline's exact page URLs (overlapping by one row), fetched and bulk-loaded; then,
    as the product must before retiring a session (README: How it works), one `GET
    /session/{id}` per session gone from the listing, with the same concurrency, only once the
    sweep has ended (before that no one knows which sessions are missing)."""
    work = Path(folder)
    pages = work / "pages"
    pages.mkdir(parents=True)
    fetcher = _Fetcher(base_url, {"x-api-key": api_key, "Accept": "application/json"})
    paths = [f"/sessions/{start}/{PAGE_SIZE}" for start in page_starts(total)]
    nbytes, download_s = _download(fetcher.get, paths, pages, concurrency)
    confirm_s = 0.0
    if vanished:
        answers = work / "confirmations"
        answers.mkdir()
        lookups = [f"/session/{session_id}" for session_id in vanished]
        _, confirm_s = _download(
            lambda path: fetcher.get(path, ok=404), lookups, answers, concurrency
        )
    rows, read_s = _read_session_pages(pages, work / "floor.duckdb")
    return FloorResult(
        download_s, read_s, len(paths), nbytes, rows, confirm_s=confirm_s,
        confirmations=len(vanished),
    )  # fmt: skip


def _read_session_pages(pages: Path, database: Path) -> tuple[int, float]:
    """The sweep's pages into one DuckDB table by DuckDB's own JSON reader: (rows, seconds)."""
    struct = ", ".join(f"{name} VARCHAR" for name in SESSION_COLUMNS)
    sql = f"""
        create table raw as
        select unnest(response, recursive := true), timezone
        from read_json('{pages}/*.ndjson', format = 'newline_delimited',
                       columns = {{timezone: 'VARCHAR', response: 'STRUCT({struct})[]'}})
    """
    return _read_json(database, sql)


def bizstim_accounts_floor(
    base_url: str, accounts: Sequence[tuple[str, int]], concurrency: int, folder: str
) -> FloorResult:
    """Every account's sweep pages (key, total sessions per account), all in one pool of
    `concurrency` connections (the pipeline's accounts at once x each account's concurrency)."""
    work = Path(folder)
    pages = work / "pages"
    pages.mkdir(parents=True)
    fetcher = _Fetcher(base_url, {"Accept": "application/json"})
    paths = [
        f"{key}\x00/sessions/{start}/{PAGE_SIZE}"
        for key, total in accounts
        for start in page_starts(total)
    ]

    def fetch(keyed: str) -> bytes:
        key, _, path = keyed.partition("\x00")
        return fetcher.get(path, {"x-api-key": key})

    nbytes, download_s = _download(fetch, paths, pages, concurrency)
    rows, read_s = _read_session_pages(pages, work / "floor.duckdb")
    return FloorResult(download_s, read_s, len(paths), nbytes, rows)


def timetap_floor(
    base_url: str, api_key: str, private_key: str, concurrency: int, folder: str
) -> FloorResult:
    """Token, client list and packages, then one call per client, then one bulk load."""
    work = Path(folder)
    pages = work / "pages"
    pages.mkdir(parents=True)
    started = time.perf_counter()
    plain = _Fetcher(base_url, {"Accept": "application/json"})
    signature = hashlib.md5((api_key + private_key).encode(), usedforsecurity=False).hexdigest()
    query = urlencode({"apiKey": api_key, "timestamp": int(time.time()), "signature": signature})
    token = orjson.loads(plain.get(f"/sessionToken?{query}"))["sessionToken"]
    authed = _Fetcher(base_url, {"Accept": "application/json", "Authorization": f"Bearer {token}"})
    ids_body = authed.get("/clientIdList")
    (work / "packages.json").write_bytes(authed.get("/package"))
    setup_s = time.perf_counter() - started
    paths = [f"/packageSold/client/{cid}" for cid in orjson.loads(ids_body)]
    nbytes, download_s = _download(authed.get, paths, pages, concurrency)
    struct = ", ".join(f"{name} {kind}" for name, kind in PACKAGE_SOLD_COLUMNS.items())
    sql = f"""
        create table packages as select * from read_json('{work}/packages.json');
        create table raw as
        select unnest(json, recursive := true)
        from read_json('{pages}/*.ndjson', format = 'newline_delimited', records = false,
                       columns = {{json: 'STRUCT({struct})[]'}})
    """
    rows, read_s = _read_json(work / "floor.duckdb", sql)
    return FloorResult(setup_s + download_s, read_s, len(paths) + 3, nbytes, rows)
