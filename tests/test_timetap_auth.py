"""TimeTap's session token: fetched once, replaced once when a call is refused, shared by workers;
and a package that cannot be confirmed is not written off as retired.

The token tests use a fake client (the HTTP layer has its own tests); the last test runs the real
pipeline against the simulator, because what matters there is what lands in the warehouse.
"""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import Env

from practice_sync.errors import AuthRejected, ExitCode
from practice_sync.http import JsonResponse
from practice_sync.pipeline import Job, run
from practice_sync.simulator import Fault, Simulator
from practice_sync.timetap.helpers import TimeTapApi

API_KEY = "tt-api-key"
PRIVATE_KEY = "tt-private-key"


class FakeClient:
    """`HttpClient.get_json` as TimeTapApi uses it: tokens t1, t2, ... and calls that succeed
    only with a token `accept` approves (otherwise a 401, as `AuthRejected`)."""

    def __init__(self, accept: Any = lambda token: True) -> None:
        self.accept = accept
        self.token_requests: list[dict[str, str]] = []
        self.calls: list[tuple[str, str]] = []
        self.reject_token_request = False
        self._lock = threading.Lock()

    def get_json(
        self,
        path: str,
        *,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        check: Any = None,
    ) -> JsonResponse:
        if path == "/sessionToken":
            if self.reject_token_request:
                raise AuthRejected("TimeTap rejected the credentials (HTTP 401): check ...")
            with self._lock:
                self.token_requests.append(dict(params or {}))
                data: Any = {"sessionToken": f"t{len(self.token_requests)}"}
        else:
            token = (headers or {})["Authorization"].removeprefix("Bearer ")
            with self._lock:
                self.calls.append((path, token))
            if not self.accept(token):
                raise AuthRejected("TimeTap rejected the credentials (HTTP 401): check ...")
            data = [{"path": path, "token": token}]
        if check is not None:
            check(data)
        return JsonResponse(data)


def test_one_signed_token_serves_every_call() -> None:
    client = FakeClient()
    api = TimeTapApi(client, API_KEY, PRIVATE_KEY)  # type: ignore[arg-type]
    assert api.get("/package") == [{"path": "/package", "token": "t1"}]
    assert api.get("/clientIdList") == [{"path": "/clientIdList", "token": "t1"}]
    [params] = client.token_requests
    assert params["apiKey"] == API_KEY
    assert params["signature"] == hashlib.md5((API_KEY + PRIVATE_KEY).encode()).hexdigest()
    assert PRIVATE_KEY not in params.values()  # only ever inside the signature


def test_a_refused_call_gets_one_new_token_and_is_asked_again() -> None:
    client = FakeClient(accept=lambda token: token != "t1")
    api = TimeTapApi(client, API_KEY, PRIVATE_KEY)  # type: ignore[arg-type]
    assert api.get("/packageSold/client/7") == [{"path": "/packageSold/client/7", "token": "t2"}]
    assert client.calls == [("/packageSold/client/7", "t1"), ("/packageSold/client/7", "t2")]
    assert len(client.token_requests) == 2
    assert api.get("/package")[0]["token"] == "t2"  # kept for later calls
    assert len(client.token_requests) == 2


def test_workers_refused_at_once_refresh_the_token_once() -> None:
    both_refused = threading.Barrier(2, timeout=10)

    def accept(token: str) -> bool:
        if token == "t1":
            both_refused.wait()  # neither worker refreshes before both were refused
            return False
        return True

    client = FakeClient(accept)
    api = TimeTapApi(client, API_KEY, PRIVATE_KEY)  # type: ignore[arg-type]
    assert api.token() == "t1"
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(api.get, ["/packageSold/client/1", "/packageSold/client/2"]))
    assert [rows[0]["token"] for rows in results] == ["t2", "t2"]
    assert len(client.token_requests) == 2  # the first token and one refresh
    assert sorted(token for _, token in client.calls) == ["t1", "t1", "t2", "t2"]


def test_a_fresh_token_refused_again_is_a_permissions_problem() -> None:
    client = FakeClient(accept=lambda token: False)
    api = TimeTapApi(client, API_KEY, PRIVATE_KEY)  # type: ignore[arg-type]
    with pytest.raises(AuthRejected) as caught:
        api.get("/package")
    assert str(caught.value) == (
        "TimeTap accepted the credentials but then refused a fresh session token: check that "
        "the key in sources.timetap.api_key (SOURCES__TIMETAP__API_KEY) may read packages and "
        "clients."
    )
    assert caught.value.exit_code == ExitCode.AUTH_FAILED
    assert len(client.token_requests) == 2 and len(client.calls) == 2  # no loop


def test_a_refused_token_request_names_both_keys_but_shows_neither() -> None:
    client = FakeClient()
    client.reject_token_request = True
    api = TimeTapApi(client, API_KEY, PRIVATE_KEY)  # type: ignore[arg-type]
    with pytest.raises(AuthRejected) as caught:
        api.get("/package")
    message = str(caught.value)
    assert message == (
        "TimeTap rejected the credentials: check sources.timetap.api_key "
        "(SOURCES__TIMETAP__API_KEY) and sources.timetap.private_key "
        "(SOURCES__TIMETAP__PRIVATE_KEY)."
    )
    assert API_KEY not in message and PRIVATE_KEY not in message
    assert client.calls == []


def current_package(job: Job, package_id: int) -> list[tuple]:
    return Env({}, job.database).query(
        "select active, package_name from timetap.packages "
        "where package_id = ? and _dlt_valid_to is null",
        [str(package_id)],
    )


def test_an_outage_while_confirming_a_retired_package_writes_no_tombstone(
    sim: Simulator, tmp_path: Path
) -> None:
    job = Job(
        database=tmp_path / "w" / "practice_sync.duckdb",
        sources=["timetap"],
        show_progress=False,
        overrides={
            "timetap": {
                "base_url": sim.timetap_url,
                "api_key": sim.timetap_api_key,
                "private_key": sim.timetap_private_key,
                "backoff_base": 0.01,
                "backoff_cap": 0.05,
                "max_attempts": 3,
            }
        },
    )
    job.database.parent.mkdir()
    assert run(job)[1] == ExitCode.OK
    retired = sim.timetap.active_packages()[0]
    sim.timetap.retire_package(retired["packageId"])
    sim.add_fault(Fault(path=rf"/package/{retired['packageId']}$", kind="503", times=3))

    report, code = run(job)
    assert code == ExitCode.SOURCE_FAILED
    assert report.sources[0].error == (
        "TimeTap kept failing on /package after 3 attempts (HTTP 503); "
        "nothing from this run was applied."
    )
    assert current_package(job, retired["packageId"]) == [("true", retired["packageName"])]

    # once TimeTap answers again the package is retired with its data, not as a bare id; one
    # that TimeTap no longer knows at all (404) is retired: its last version is closed
    gone = sim.timetap.active_packages()[0]
    sim.timetap.retire_package(gone["packageId"])
    sim.add_fault(Fault(path=rf"/package/{gone['packageId']}$", kind="500", status=404))
    report, code = run(job)
    assert code == ExitCode.OK, report.render()
    assert current_package(job, retired["packageId"]) == [("false", retired["packageName"])]
    assert current_package(job, gone["packageId"]) == []
    closed = Env({}, job.database).query(
        "select count(*) from timetap.packages where package_id = ? and _dlt_valid_to is not null",
        [str(gone["packageId"])],
    )
    assert closed == [(1,)]
