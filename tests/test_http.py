"""The HTTP layer's rules without a server: backoff delays, `Retry-After`, and how every outcome of
an attempt is sorted into a result, a retry, or a typed error.

`interrupt.sleep` is replaced by a recorder, so no test here waits for a backoff; a fake transport
stands in for libcurl's (answers and real `pycurl.error`s, scripted per call). The last tests talk
to the simulator over loopback sockets: the proxy, and each way a connection fails, worded.
"""

from __future__ import annotations

import gzip
import http.server
import logging
import random
import shutil
import signal
import socket
import ssl
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any, ClassVar

import pycurl
import pytest

from practice_sync import interrupt
from practice_sync.errors import (
    AuthRejected,
    BadBody,
    ConfigError,
    ExitCode,
    NotFound,
    RetriesExhausted,
    SourceUnavailable,
)
from practice_sync.http import (
    RETRY_AFTER_CAP,
    HttpClient,
    JsonResponse,
    RetryPolicy,
    SourceNames,
    Transient,
    parse_json,
    parse_retry_after,
)
from practice_sync.simulator import Fault

NAMES = SourceNames("Bizstim", "bizstim")
NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def slept(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Pauses the retry policy asked for, instead of sleeping them (patch before building one)."""
    pauses: list[float] = []
    monkeypatch.setattr(interrupt, "sleep", lambda seconds: pauses.append(float(seconds)))
    return pauses


def top_of_range(monkeypatch: pytest.MonkeyPatch) -> None:
    """Full jitter always picks its upper bound, so delays are exact."""
    monkeypatch.setattr(random, "uniform", lambda low, high: high)


# --- delays ---------------------------------------------------------------------------------


def test_delay_bound_doubles_per_attempt_up_to_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    bounds: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        bounds.append((low, high))
        return high

    monkeypatch.setattr(random, "uniform", uniform)
    policy = RetryPolicy(backoff_base=0.5, backoff_cap=3.0)
    assert [policy.delay(n) for n in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert all(low == 0 for low, _ in bounds)  # full jitter: anything from no wait at all


def test_a_large_max_attempts_does_not_overflow_the_backoff() -> None:
    policy = RetryPolicy(backoff_base=0.5, backoff_cap=3.0)
    assert 0 <= policy.delay(2000) <= 3.0  # 0.5 * 2**2000 is no float


def test_a_body_with_a_byte_order_mark_is_json() -> None:
    """orjson refuses the mark RFC 8259 lets a parser ignore: such a body was retried as
    broken until the source failed, every night."""
    assert parse_json(b'\xef\xbb\xbf{"a": 1}') == JsonResponse({"a": 1})


def test_a_lone_surrogate_escape_is_replaced_not_a_broken_body() -> None:
    """`\\ud83d` (half an emoji, cut off) is JSON syntax orjson refuses: one such note failed
    the whole account every night. A whole pair stays the character it makes."""
    body = b'{"response": [{"note": "cut \\ud83d off", "whole": "\\ud83d\\ude00", "\\udc00": 1}]}'
    assert parse_json(body) == JsonResponse(
        {"response": [{"note": "cut \ufffd off", "whole": "\U0001f600", "\ufffd": 1}]},
        replaced_utf8=True,
    )
    for broken in (b'{"a": NaN}', b'{"a": "\\ud83d"'):
        with pytest.raises(BadBody, match="not complete JSON"):
            parse_json(broken)


def test_delays_are_jittered_within_their_bound() -> None:
    policy = RetryPolicy(backoff_base=0.5, backoff_cap=30.0)
    delays = [policy.delay(2) for _ in range(200)]
    assert all(0 <= d <= 2.0 for d in delays)
    assert len(set(delays)) > 100  # not in lockstep
    assert max(policy.delay(40) for _ in range(200)) <= 30.0


def test_a_longer_retry_after_wins_even_past_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    top_of_range(monkeypatch)
    policy = RetryPolicy(backoff_base=0.5, backoff_cap=3.0)
    assert policy.delay(0, retry_after=2.5) == 2.5  # longer than the 0.5 s bound
    assert policy.delay(0, retry_after=120.0) == 120.0  # the server knows best, past backoff_cap
    assert policy.delay(3, retry_after=1.0) == 3.0  # a shorter one does not shorten our backoff
    monkeypatch.setattr(random, "uniform", lambda low, high: low)
    assert policy.delay(3, retry_after=0.0) == 0.0


# --- Retry-After ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("1.5", 1.5),
        ("0", 0.0),
        ("-5", 0.0),
        ("86400", RETRY_AFTER_CAP),
        ("inf", RETRY_AFTER_CAP),
        ("Sat, 01 Mar 2025 12:00:45 GMT", 45.0),
        ("Sat, 01 Mar 2025 12:00:10 -0000", 10.0),
        ("Sat, 01 Mar 2025 13:00:20 +0100", 20.0),
        ("Sat, 01 Mar 2025 11:59:00 GMT", 0.0),  # already past: ask again now
        ("Sun, 02 Mar 2025 12:00:00 GMT", RETRY_AFTER_CAP),
    ],
)
def test_retry_after_as_seconds_or_http_date(header: str, seconds: float) -> None:
    assert parse_retry_after(header, now=NOW) == seconds


@pytest.mark.parametrize(
    "header",
    [
        None, "", "   ", "soon", "nan", "Sat, 99 Foo 2025 12:00:00",
        "Wed, 21 Oct 99999999999999999999 07:28:00 GMT",  # OverflowError: exit 1, a traceback
    ],
)  # fmt: skip
def test_unreadable_retry_after_leaves_the_backoff_to_us(header: str | None) -> None:
    assert parse_retry_after(header, now=NOW) is None


def test_retry_after_date_is_measured_from_the_clock() -> None:
    header = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
    assert 55.0 <= (parse_retry_after(header) or 0) <= 60.0


# --- the policy on its own ------------------------------------------------------------------


def scripted(*outcomes: BaseException | str) -> tuple[list[int], Any]:
    """An attempt function failing or answering as scripted; the last outcome repeats."""
    calls: list[int] = []

    def attempt() -> str:
        calls.append(1)
        outcome = outcomes[min(len(calls), len(outcomes)) - 1]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return calls, attempt


def test_policy_retries_transient_failures_with_the_delays_it_computes(
    slept: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    top_of_range(monkeypatch)
    policy = RetryPolicy(max_attempts=4, backoff_base=1.0, backoff_cap=3.0)
    calls, attempt = scripted(
        Transient("HTTP 503"), Transient("HTTP 429", retry_after=7.5), Transient("x"), "ok"
    )
    assert policy.retrying()(attempt) == "ok"
    assert len(calls) == 4
    assert slept == [1.0, 7.5, 3.0]


def test_policy_gives_up_after_max_attempts_with_the_last_failure(slept: list[float]) -> None:
    policy = RetryPolicy(max_attempts=3, backoff_base=0.01)
    calls, attempt = scripted(Transient("HTTP 500"), Transient("HTTP 502"))
    with pytest.raises(Transient) as caught:
        policy.retrying()(attempt)
    assert caught.value.problem == "HTTP 502"
    assert len(calls) == 3 and len(slept) == 2


@pytest.mark.parametrize(
    "error",
    [
        AuthRejected("rejected"),
        NotFound("no such endpoint", endpoint="/x"),
        ValueError("a bug"),
        interrupt.Interrupted(signal.SIGTERM),
    ],
    ids=lambda error: type(error).__name__,
)
def test_policy_does_not_retry_anything_else(slept: list[float], error: BaseException) -> None:
    calls, attempt = scripted(error, "ok")
    with pytest.raises(type(error)):
        RetryPolicy().retrying()(attempt)
    assert len(calls) == 1 and slept == []


def test_a_stop_during_backoff_ends_the_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    def stop(seconds: float) -> None:
        raise interrupt.Interrupted(signal.SIGINT)

    monkeypatch.setattr(interrupt, "sleep", stop)
    calls, attempt = scripted(Transient("HTTP 503"), "ok")
    with pytest.raises(interrupt.Interrupted):
        RetryPolicy().retrying()(attempt)
    assert len(calls) == 1


def test_a_stop_requested_earlier_prevents_the_next_attempt(slept: list[float]) -> None:
    calls, attempt = scripted("ok")
    interrupt._handle(signal.SIGTERM, None)  # what the SIGTERM handler does
    try:
        with pytest.raises(interrupt.Interrupted):
            RetryPolicy().retrying()(attempt)
    finally:
        interrupt._stop.clear()
        interrupt._received.clear()
    assert calls == []


# --- the client: one attempt, sorted -------------------------------------------------------


def response(
    status: int, body: bytes = b"{}", headers: dict[str, str] | None = None
) -> tuple[int, str | None, bytes]:
    """As `CurlTransport.get` answers: status, the Retry-After header as sent, the body."""
    return status, (headers or {}).get("Retry-After"), body


class FakeTransport:
    """Answers (or raises) as scripted, the last outcome repeating; records what was asked."""

    proxied = False

    def __init__(self, outcomes: tuple[Any, ...]) -> None:
        self.outcomes = outcomes
        self.urls: list[str] = []

    def header_lines(self, headers: dict[str, str] | None) -> list[str]:
        return [f"{name}: {value}" for name, value in (headers or {}).items()]

    def get(self, url: str, header_lines: list[str]) -> Any:
        self.urls.append(url)
        outcome = self.outcomes[min(len(self.urls), len(self.outcomes)) - 1]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def close(self) -> None:
        pass


def client(*outcomes: Any, attempts: int = 4) -> tuple[HttpClient, FakeTransport]:
    http = HttpClient(
        NAMES,
        "https://api.example.test/v1",
        policy=RetryPolicy(max_attempts=attempts, backoff_base=0.01, backoff_cap=0.02),
    )
    pool = FakeTransport(outcomes)
    http._transport = pool  # type: ignore[assignment]
    return http, pool


def ok(data: bytes) -> Any:
    return data.decode()


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504, 400, 409])
def test_transient_statuses_are_retried_and_counted(
    slept: list[float], caplog: pytest.LogCaptureFixture, status: int
) -> None:
    http, pool = client(response(status, b"busy"), response(status, b"busy"), response(200))
    with caplog.at_level(logging.WARNING, logger="practice_sync.http"):
        assert http.get("/sessions/100/100", ok, params={"key": "SECRET"}) == "{}"
    assert len(pool.urls) == 3 and len(slept) == 2
    assert (http.stats.requests, http.stats.retries, http.stats.bytes) == (3, 2, 10)
    assert [r.getMessage().rsplit(" in ", 1)[0] for r in caplog.records] == [
        f"Bizstim /sessions: HTTP {status}; retry 1 of 3",
        f"Bizstim /sessions: HTTP {status}; retry 2 of 3",
    ]
    assert "100" not in caplog.text and "example" not in caplog.text


@pytest.mark.parametrize("status", [401, 403])
def test_rejected_credentials_are_not_retried(slept: list[float], status: int) -> None:
    http, pool = client(response(status), response(200))
    with pytest.raises(AuthRejected) as caught:
        http.get("/sessions/0/100", ok)
    assert str(caught.value) == (
        f"Bizstim rejected the credentials (HTTP {status}): "
        "check sources.bizstim.api_key (SOURCES__BIZSTIM__API_KEY)."
    )
    assert caught.value.exit_code == ExitCode.AUTH_FAILED
    assert not isinstance(caught.value, SourceUnavailable)
    assert len(pool.urls) == 1 and http.stats.retries == 0 and slept == []


def test_not_found_is_not_retried_and_names_the_endpoint(slept: list[float]) -> None:
    http, pool = client(response(200), response(404, b'{"error": "Not found"}'), response(200))
    http.get("/package", ok)  # the base URL reaches the API ...
    with pytest.raises(NotFound) as caught:  # ... so a later 404 is about the record
        http.get("/package/4711", ok)
    assert str(caught.value) == (
        "Bizstim has no /package endpoint at api.example.test (HTTP 404): "
        "check sources.bizstim.base_url (SOURCES__BIZSTIM__BASE_URL)."
    )
    assert caught.value.endpoint == "/package"
    assert caught.value.exit_code == ExitCode.SOURCE_FAILED
    assert not isinstance(caught.value, RetriesExhausted)
    assert len(pool.urls) == 2 and slept == []


def test_not_found_on_the_first_call_is_a_wrong_base_url(slept: list[float]) -> None:
    http, pool = client(response(404, b'{"error": "Not found"}'), response(200))
    with pytest.raises(ConfigError) as caught:
        http.get("/sessions/0/1000?x=1", ok)
    assert str(caught.value) == (
        "Bizstim answered HTTP 404 (not found) at https://api.example.test/v1/sessions/0/1000: "
        "check sources.bizstim.base_url (SOURCES__BIZSTIM__BASE_URL)."
    )
    assert caught.value.exit_code == ExitCode.USAGE
    assert len(pool.urls) == 1 and slept == []


def test_exhausted_retries_say_how_often_and_why(slept: list[float]) -> None:
    http, pool = client(response(500), response(503))
    with pytest.raises(RetriesExhausted) as caught:
        http.get("/sessions/0/100", ok)
    assert str(caught.value) == (
        "Bizstim kept failing on /sessions after 4 attempts (HTTP 503); "
        "nothing from this run was applied."
    )
    assert (caught.value.attempts, caught.value.problem) == (4, "HTTP 503")
    assert caught.value.exit_code == ExitCode.SOURCE_FAILED
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert len(pool.urls) == 4 and len(slept) == 3
    assert (http.stats.requests, http.stats.retries) == (4, 3)


KEYED = "https://api.example.test/v1/sessionToken?apiKey=SECRET-KEY"


def curl_error(code: int, message: str) -> pycurl.error:
    """As pycurl raises a failed transfer: libcurl's code and its message (which may name the
    host or URL)."""
    return pycurl.error(code, message)


@pytest.mark.parametrize(
    ("error", "problem"),
    [
        (curl_error(56, "Recv failure: Connection reset by peer"), "connection dropped"),
        (curl_error(52, "Empty reply from server"), "connection dropped"),
        (
            curl_error(
                28, "Operation too slow. Less than 1 bytes/sec transferred the last 2 seconds"
            ),
            "no answer within the timeout",
        ),
        (
            curl_error(18, f"transfer closed with 3567 bytes remaining to read {KEYED}"),
            "a body cut off mid-way",
        ),
        (
            curl_error(56, "Illegal or missing hexadecimal sequence in chunked-encoding"),
            "a body cut off mid-way",
        ),
        (
            curl_error(61, f"Error while processing content unencoding: {KEYED}"),
            "a broken response (content encoding)",
        ),
        (
            curl_error(47, "Maximum (10) redirects followed"),
            "a broken response (too many redirects)",
        ),
        (curl_error(8, f"Weird server reply {KEYED}"), "a broken response (curl error 8)"),
    ],
    ids=["reset", "empty", "timeout", "cut-off", "bad-chunk", "decoding", "redirects", "weird"],
)
def test_broken_connections_are_retried_then_worded_without_the_url(
    slept: list[float], caplog: pytest.LogCaptureFixture, error: Exception, problem: str
) -> None:
    http, pool = client(error, attempts=3)
    with caplog.at_level(logging.WARNING, logger="practice_sync.http"):
        with pytest.raises(RetriesExhausted) as caught:
            http.get("/sessionToken", ok, params={"apiKey": "SECRET-KEY"})
    assert str(caught.value) == (
        f"Bizstim kept failing on /sessionToken after 3 attempts ({problem}); "
        "nothing from this run was applied."
    )
    assert len(pool.urls) == 3
    assert (http.stats.requests, http.stats.retries, http.stats.bytes) == (0, 2, 0)
    assert len(caplog.records) == 2
    assert "SECRET" not in caplog.text


@pytest.mark.parametrize(
    ("cause", "problem"),
    [
        (
            curl_error(7, "Failed to connect to api.example.test port 443: Refused"),
            "cannot connect",
        ),
        (curl_error(6, "Could not resolve host: api.example.test"), "host not found"),
        (curl_error(28, "Connection timed out after 10001 milliseconds"), "cannot connect"),
        (curl_error(60, "SSL certificate problem: unable to get local issuer"), "cannot connect"),
    ],
    ids=["refused", "dns", "connect-timeout", "certificate"],
)
def test_an_unreachable_host_asks_to_check_the_base_url(
    slept: list[float], cause: Exception, problem: str
) -> None:
    http, _ = client(cause)
    with pytest.raises(RetriesExhausted) as caught:
        http.get("/sessions/0/100", ok)
    assert str(caught.value) == (
        f"Bizstim could not be reached at api.example.test ({problem}): "
        "check sources.bizstim.base_url (SOURCES__BIZSTIM__BASE_URL) and the network."
    )
    assert caught.value.problem == problem


def test_a_body_that_breaks_its_promise_is_retried_like_a_5xx(slept: list[float]) -> None:
    def check(data: Any) -> None:
        if not isinstance(data, list):
            raise BadBody("a body that is not a JSON array")

    http, pool = client(response(200, b'{"error": 1}'), response(200, b"[1, 2]"))
    assert http.get_json("/clientIdList", check=check).data == [1, 2]
    assert (len(pool.urls), http.stats.retries, http.stats.bytes) == (2, 1, 18)

    http, _ = client(response(200, b'{"error": 1'), attempts=2)
    with pytest.raises(RetriesExhausted) as caught:
        http.get_json("/clientIdList", check=check)
    assert str(caught.value) == (
        "Bizstim kept failing on /clientIdList after 2 attempts (a body that is not complete "
        "JSON); nothing from this run was applied."
    )


def test_a_decoder_bug_is_not_retried(slept: list[float]) -> None:
    def decode(body: bytes) -> Any:
        raise KeyError("total")

    http, pool = client(response(200), response(200))
    with pytest.raises(KeyError):
        http.get("/sessions/0/100", decode)
    assert len(pool.urls) == 1 and slept == []


def test_retry_after_from_the_server_sets_the_pause(
    slept: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(random, "uniform", lambda low, high: low)
    in_30s = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    http, _ = client(
        response(429, headers={"Retry-After": "2"}),
        response(503, headers={"Retry-After": in_30s}),
        response(400, headers={"Retry-After": "9"}),  # not a status that promises a retry time
        response(200),
    )
    assert http.get("/sessions/0/100", ok) == "{}"
    assert slept[0] == 2.0 and 25.0 <= slept[1] <= 30.0 and slept[2] == 0.0


def test_at_least_one_attempt_is_required() -> None:
    with pytest.raises(ConfigError, match=r"SOURCES__BIZSTIM__MAX_ATTEMPTS"):
        HttpClient(NAMES, "https://api.example.test", policy=RetryPolicy(max_attempts=0))


def test_a_proxy_from_the_environment_carries_the_requests(
    sim: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As requests would: HTTP_PROXY is read when the client is made, and every request goes
    through it. The simulator answers a proxied (absolute-URI) request like a direct one, so
    a host that does not exist is reached only if the proxy really carried the request."""
    for name in ("NO_PROXY", "no_proxy", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", sim.url)  # http://127.0.0.1:<port>
    http = HttpClient(NAMES, "http://bizstim.example.invalid/bizstim/api")
    sim.reset_log()
    page = http.get_json("/sessions/0/10", headers={"x-api-key": sim.bizstim_api_key}).data
    assert [row["id"] for row in page["response"]] == [row["id"] for row in sim.bizstim.rows()[:10]]
    assert [path for _, path, _ in sim.request_log] == ["/bizstim/api/sessions/0/10"]
    monkeypatch.delenv("HTTP_PROXY")
    direct = HttpClient(NAMES, "http://bizstim.example.invalid/bizstim/api", policy=RetryPolicy(1))
    with pytest.raises(RetriesExhausted, match="host not found"):
        direct.get_json("/sessions/0/10")


def test_a_failed_connection_to_the_proxy_says_so(slept: list[float]) -> None:
    http, pool = client(curl_error(7, "Failed to connect to proxy.example.test port 3128"))
    pool.proxied = True
    with pytest.raises(RetriesExhausted, match=r"\(cannot connect \(through the proxy\)\)"):
        http.get("/sessions/0/100", ok)


# --- the wire: libcurl against real sockets -------------------------------------------------


def wire_client(base_url: str, **policy: Any) -> HttpClient:
    options = {"max_attempts": 1, "read_timeout": 1.0, "connect_timeout": 2.0, **policy}
    return HttpClient(NAMES, base_url, policy=RetryPolicy(**options))


@pytest.mark.parametrize(
    ("kind", "problem"),
    [
        ("reset", "connection dropped"),
        ("truncate", "a body cut off mid-way"),
        ("slow", "no answer within the timeout"),
    ],
)
def test_each_broken_answer_on_the_wire_is_worded(sim: Any, kind: str, problem: str) -> None:
    """The simulator breaks the connection as a failing server does; libcurl's failure comes
    out as the phrase the log and the final sentence use, and the next call is served."""
    sim.add_fault(Fault(r"/sessions/", kind, delay=3.0 if kind == "slow" else 0.0))
    http = wire_client(sim.url + "/bizstim/api")
    key = {"x-api-key": sim.bizstim_api_key}
    with pytest.raises(RetriesExhausted) as caught:
        http.get_json("/sessions/0/10", headers=key)
    assert caught.value.problem == problem
    assert "127.0.0.1" not in str(caught.value) and sim.bizstim_api_key not in str(caught.value)
    page = http.get_json("/sessions/0/10", headers=key).data  # the handle is reused afterwards
    assert [row["id"] for row in page["response"]] == [row["id"] for row in sim.bizstim.rows()[:10]]
    http.close()


def test_a_closed_port_cannot_be_connected_to() -> None:
    with socket.socket() as probe:  # a port nobody listens on: bound, never listened
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        http = wire_client(f"http://127.0.0.1:{port}/api")
        with pytest.raises(RetriesExhausted) as caught:
            http.get_json("/sessions/0/10")
    assert str(caught.value) == (
        f"Bizstim could not be reached at 127.0.0.1:{port} (cannot connect): "
        "check sources.bizstim.base_url (SOURCES__BIZSTIM__BASE_URL) and the network."
    )


class _Recording(http.server.BaseHTTPRequestHandler):
    """Redirects `/moved` to `target`, answers anything else with gzip'd JSON and Retry-After
    headers; records each request's headers."""

    seen: ClassVar[list[tuple[int, str, dict[str, str]]]] = []
    target = ""

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        port = self.server.server_address[1]
        self.seen.append((port, self.path, {k.lower(): v for k, v in self.headers.items()}))
        if self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", self.target)
            self.send_header("Retry-After", "99")  # must not leak into the next answer
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = gzip.compress(b'{"answer": [1, 2, 3]}')
        self.send_response(503 if self.path == "/busy" else 200)
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        if self.path == "/busy":
            self.send_header("retry-after", "7")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_redirects_gzip_and_retry_after_on_the_wire(slept: list[float]) -> None:
    """A redirect to another origin is followed without the Authorization header (as requests
    does), a gzip'd answer is decoded, and Retry-After is read from the answer that failed."""
    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recording) for _ in range(2)]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    first, second = (s.server_address[1] for s in servers)
    _Recording.seen.clear()
    _Recording.target = f"http://127.0.0.1:{second}/landed"
    try:
        client_ = wire_client(f"http://127.0.0.1:{first}", max_attempts=2)
        auth = {"Authorization": "Bearer SECRET", "x-trace": "1"}
        assert client_.get_json("/moved", headers=auth).data == {"answer": [1, 2, 3]}
        assert [(port, path) for port, path, _ in _Recording.seen] == [
            (first, "/moved"),
            (second, "/landed"),
        ]
        asked, landed = (headers for _, _, headers in _Recording.seen)
        assert asked["authorization"] == "Bearer SECRET" and "authorization" not in landed
        assert landed["x-trace"] == "1" and "gzip" in landed["accept-encoding"]
        assert client_.stats.bytes == len(b'{"answer": [1, 2, 3]}')  # decoded, as parsed
        with pytest.raises(RetriesExhausted, match=r"after 2 attempts \(HTTP 503\)"):
            client_.get_json("/busy")
        assert slept == [7.0]
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def test_https_is_verified_against_the_ca_bundle_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slept: list[float]
) -> None:
    """A server whose certificate no known CA signed is refused ("cannot connect"); with its
    CA in REQUESTS_CA_BUNDLE (as requests reads it: a file or a folder) it is trusted."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
        + ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
        + ["-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recording)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"https://127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(RetriesExhausted) as caught:
            wire_client(base).get_json("/data")
        assert caught.value.problem == "cannot connect"
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
        assert wire_client(base).get_json("/data").data == {"answer": [1, 2, 3]}
        # a folder of certificates (hashed names, as OpenSSL looks them up) works as well
        folder = tmp_path / "cas"
        folder.mkdir()
        shutil.copy(cert, folder / "ours.pem")
        subprocess.run(["openssl", "rehash", str(folder)], check=True, capture_output=True)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(folder))
        assert wire_client(base).get_json("/data").data == {"answer": [1, 2, 3]}
    finally:
        server.shutdown()
        server.server_close()


def test_a_server_trickling_bytes_is_cut_off(slept: list[float]) -> None:
    """libcurl's stall check wants one byte a second over `read_timeout`: a server sending a
    byte every 0.4 s held an attempt (and the run) as long as it liked. Ten stalls' worth ends
    it, as a transient failure."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def trickle() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n[")
            # for 30 s at most: without the cap the test fails then (a cut body), never hangs
            for _ in range(75):
                if stop.wait(0.4):
                    return
                try:
                    conn.sendall(b" ")
                except OSError:
                    return

    threading.Thread(target=trickle, daemon=True).start()
    started = datetime.now(UTC)
    try:
        with pytest.raises(RetriesExhausted) as caught:
            wire_client(f"http://127.0.0.1:{listener.getsockname()[1]}").get_json("/slow")
    finally:
        stop.set()
        listener.close()
    assert caught.value.problem == "no answer within the timeout"
    assert (datetime.now(UTC) - started).total_seconds() < 20  # 1 s stalls: cut at ~12 s


def test_a_password_in_the_base_url_never_reaches_a_message(slept: list[float]) -> None:
    """A gateway's `user:password@` in the base URL was quoted by the 404, unreachable and
    not-a-URL sentences, and so reached stderr, the run history and the serving file."""
    secret = "GWPASS-planted"
    http = HttpClient(NAMES, f"https://gw:{secret}@api.example.test/v1")
    http._transport = FakeTransport([response(404, b"{}")])  # type: ignore[assignment]
    with pytest.raises(ConfigError) as not_found:
        http.get("/sessions/0/1000", ok)
    assert str(not_found.value).startswith(
        "Bizstim answered HTTP 404 (not found) at https://***@api.example.test/v1/sessions/0/1000"
    )
    assert http.host == "api.example.test"
    with pytest.raises(ConfigError) as not_http:
        HttpClient(NAMES, f"ftp://gw:{secret}@api.example.test/v1")
    assert "'ftp://***@api.example.test/v1' is not an http(s) URL" in str(not_http.value)
    assert secret not in str(not_found.value) + str(not_http.value)


def test_a_body_the_fallback_parser_cannot_read_is_a_broken_body() -> None:
    """The fallback for lone surrogates ran into Python's recursion limit on a deeply nested
    body (exit 1), and read 1e400 as infinity, which orjson refuses."""
    for body in (b"[" * 5000 + b'"\\ud83d"' + b"]" * 5000, b'{"a": "\\ud83d", "b": 1e400}'):
        with pytest.raises(BadBody, match="not complete JSON"):
            parse_json(body)


def test_a_base_url_without_its_scheme_hides_its_password() -> None:
    with pytest.raises(ConfigError) as caught:
        HttpClient(NAMES, "gateway:S3cret@api.example.test/v1")
    assert "'***@api.example.test/v1' is not an http(s) URL" in str(caught.value)
    assert "S3cret" not in str(caught.value)
