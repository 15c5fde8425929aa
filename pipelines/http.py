"""The one HTTP layer both vendors use: retries, backoff, Retry-After, bounded concurrency.

Vendors differ in auth and paging, not in how their servers fail, so the rules for a flaky API
live here once. One function makes one attempt and sorts its outcome into a result or a typed
error; one tenacity policy decides what to retry and how long to wait. Every failure leaves as a
`PracticeSyncError` whose sentence names the setting to fix; URLs are never put in messages or
logs because TimeTap's token call carries its key in the query string.
"""

from __future__ import annotations

import logging
import math
import os
import random
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar
from urllib.parse import unquote, urlencode, urlsplit

import certifi
import orjson
import requests
import urllib3
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt

from practice_sync import interrupt
from practice_sync.errors import (
    AuthRejected,
    BadBody,
    ConfigError,
    NotFound,
    RetriesExhausted,
    SourceUnavailable,
)

__all__ = [
    "BadBody",
    "HttpClient",
    "HttpStats",
    "JsonResponse",
    "RetryPolicy",
    "SourceNames",
    "SourceUnavailable",
    "Transient",
    "parse_json",
    "parse_retry_after",
]

log = logging.getLogger("practice_sync.http")

T = TypeVar("T")
R = TypeVar("R")

RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
AUTH_STATUSES = frozenset({401, 403})

# The longest a `Retry-After` may hold a worker. A server asking for more (an hour-long
# maintenance window, a misconfigured header) is asked again after this long; with the default
# six attempts a run then fails within the hour rather than sleeping past its nightly window.
RETRY_AFTER_CAP = 600.0


class Transient(Exception):
    """One attempt failed in a way a healthy server would not repeat: worth asking again."""

    def __init__(self, problem: str, retry_after: float | None = None) -> None:
        super().__init__(problem)
        self.problem = problem  # a phrase for the log and the final sentence: "HTTP 503"
        self.retry_after = retry_after  # seconds the server asked for, if it did


@dataclass
class RetryPolicy:
    """Bounded, jittered exponential backoff; `Retry-After` wins when the server sends it.

    Only `Transient` is retried: auth failures, 404s and interruptions end the call at once.
    """

    max_attempts: int = 6
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    connect_timeout: float = 10.0
    read_timeout: float = 60.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt `attempt` (0-based).

        Full jitter keeps many workers from retrying in lockstep after a shared 5xx burst;
        a longer `Retry-After` wins even past `backoff_cap` (it is capped when parsed).
        """
        jittered = random.uniform(0, min(self.backoff_cap, self.backoff_base * 2**attempt))
        return jittered if retry_after is None else max(retry_after, jittered)

    def wait(self, state: RetryCallState) -> float:
        """tenacity's `wait`: the delay after the attempt that just failed."""
        failure = state.outcome.exception() if state.outcome is not None else None
        retry_after = failure.retry_after if isinstance(failure, Transient) else None
        return self.delay(state.attempt_number - 1, retry_after)

    def retrying(
        self,
        before: Callable[[RetryCallState], None] | None = None,
        before_sleep: Callable[[RetryCallState], None] | None = None,
    ) -> Retrying:
        """The policy as a tenacity `Retrying`; safe to share across threads.

        Every attempt starts with `interrupt.check()` and every pause is `interrupt.sleep`, so
        Ctrl-C and SIGTERM stop a run mid-backoff. The last `Transient` is re-raised as is.
        """

        def before_attempt(state: RetryCallState) -> None:
            interrupt.check()
            if before is not None:
                before(state)

        return Retrying(
            retry=retry_if_exception_type(Transient),
            stop=stop_after_attempt(self.max_attempts),
            wait=self.wait,
            sleep=interrupt.sleep,
            before=before_attempt,
            before_sleep=before_sleep,
            reraise=True,
        )


@dataclass
class HttpStats:
    """Counters for the run summary; shared by worker threads."""

    requests: int = 0
    retries: int = 0
    bytes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, requests_: int = 0, retries: int = 0, nbytes: int = 0) -> None:
        with self._lock:
            self.requests += requests_
            self.retries += retries
            self.bytes += nbytes


@dataclass
class JsonResponse:
    data: Any
    replaced_utf8: bool = False  # the body had invalid UTF-8 that was replaced with U+FFFD


@dataclass
class SourceNames:
    """How the user knows the source: used to word every error."""

    title: str  # "Bizstim"
    section: str  # "bizstim" -> sources.bizstim.* and SOURCES__BIZSTIM__*

    def setting(self, key: str) -> str:
        return f"sources.{self.section}.{key} (SOURCES__{self.section.upper()}__{key.upper()})"


class HttpClient:
    """A urllib3 connection pool with the project's retry rules, safe to share across worker
    threads."""

    def __init__(
        self,
        names: SourceNames,
        base_url: str,
        *,
        headers: dict[str, str] | None = None,
        concurrency: int = 8,
        policy: RetryPolicy | None = None,
        stats: HttpStats | None = None,
    ) -> None:
        parts = urlsplit(base_url or "")
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(
                f"{names.title} base URL {base_url!r} is not an http(s) URL: "
                f"fix {names.setting('base_url')}."
            )
        if concurrency < 1:
            raise ConfigError(f"{names.setting('concurrency')} must be at least 1.")
        policy = policy or RetryPolicy()
        if policy.max_attempts < 1:
            raise ConfigError(f"{names.setting('max_attempts')} must be at least 1.")
        self.names = names
        self.base_url = base_url.rstrip("/")
        self.host = parts.netloc
        self.concurrency = concurrency
        # `concurrency` bounds requests on the wire, not threads: a thread decoding the page it
        # just got gives its slot back first, so decoding never holds a request slot idle
        self._slots = threading.BoundedSemaphore(concurrency)
        self.policy = policy
        self.stats = stats or HttpStats()
        self._answered = False  # has any request reached a real endpoint yet?
        self._retrying = policy.retrying(before=self._count_retry, before_sleep=self._log_retry)
        self._pool = _pool_manager(self.base_url, concurrency, policy, headers or {})

    def close(self) -> None:
        self._pool.clear()

    def get_json(
        self,
        path: str,
        *,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        check: Callable[[Any], None] | None = None,
    ) -> JsonResponse:
        """GET `path` and parse JSON; `check` raises `BadBody` for an error document or the
        wrong shape, which is retried like a 5xx."""

        def decode(body: bytes) -> JsonResponse:
            parsed = parse_json(body)
            if check is not None:
                check(parsed.data)
            return parsed

        return self.get(path, decode, params=params, headers=headers)

    def get(
        self,
        path: str,
        decode: Callable[[bytes], R],
        *,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> R:
        """GET `path` and `decode` the body, retrying whatever a healthy server would not repeat.

        `decode` raises `BadBody` for a 200 that is not what the endpoint promises. Raises
        `AuthRejected` at once (the caller may refresh a token first), `NotFound` at once, and
        `RetriesExhausted` when transient failures use up every attempt.
        """
        try:
            return self._retrying(self._attempt, path, decode, params, headers)
        except Transient as last:
            raise self._exhausted(path, last) from None

    def _attempt(
        self,
        path: str,
        decode: Callable[[bytes], R],
        params: dict[str, str] | None,
        headers: dict[str, str] | None,
    ) -> R:
        """One GET, sorted into a result or a typed error before any retry logic sees it."""
        url = self.base_url + path + (f"?{urlencode(params)}" if params else "")
        # a call's own headers replace the pool's, so they are given together
        merged = {**self._pool.headers, **headers} if headers else None
        try:
            with self._slots:
                # the whole body is read here: one cut off mid-way raises
                response = self._pool.request("GET", url, headers=merged)
        except urllib3.exceptions.HTTPError as exc:
            raise Transient(_describe_request_error(exc)) from exc
        body = response.data
        self.stats.add(requests_=1, nbytes=len(body))
        self._check_status(path, response.status, response.headers)
        try:
            return decode(body)
        except BadBody as exc:
            raise Transient(str(exc)) from exc

    def _check_status(self, path: str, status: int, headers: Mapping[str, str]) -> None:
        """Raise for anything but a success: auth and 404 are final, the rest transient."""
        if status in AUTH_STATUSES:
            raise AuthRejected(
                f"{self.names.title} rejected the credentials (HTTP {status}): "
                f"check {self.names.setting('api_key')}."
            )
        if status == 404 and not self._answered:
            # the very first call is not found: the base URL is wrong, not the data
            raise ConfigError(
                f"{self.names.title} answered HTTP 404 (not found) at "
                f"{self.base_url + path.split('?', 1)[0]}: check {self.names.setting('base_url')}."
            )
        self._answered = True
        if status == 404:
            raise NotFound(
                f"{self.names.title} has no {_endpoint(path)} endpoint at {self.host} "
                f"(HTTP 404): check {self.names.setting('base_url')}.",
                endpoint=_endpoint(path),
            )
        if status in RETRY_STATUSES:
            retry_after = parse_retry_after(headers.get("Retry-After"))
            raise Transient(f"HTTP {status}", retry_after)
        if status >= 400:  # not known to be transient, but not proof the request is wrong either
            raise Transient(f"HTTP {status}")

    def _exhausted(self, path: str, last: Transient) -> RetriesExhausted:
        attempts = self.policy.max_attempts
        if last.problem.startswith(("cannot connect", "host not found")):
            message = (
                f"{self.names.title} could not be reached at {self.host} ({last.problem}): "
                f"check {self.names.setting('base_url')} and the network."
            )
        else:
            message = (
                f"{self.names.title} kept failing on {_endpoint(path)} after {attempts} attempts "
                f"({last.problem}); nothing from this run was applied."
            )
        return RetriesExhausted(message, attempts=attempts, problem=last.problem)

    def _count_retry(self, state: RetryCallState) -> None:
        if state.attempt_number > 1:
            self.stats.add(retries=1)

    def _log_retry(self, state: RetryCallState) -> None:
        """One warning per retry; the endpoint, never the URL (it may carry a key)."""
        failure = state.outcome.exception() if state.outcome is not None else None
        pause = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning(
            "%s %s: %s; retry %d of %d in %.1fs",
            self.names.title,
            _endpoint(state.args[0]),
            failure.problem if isinstance(failure, Transient) else failure,
            state.attempt_number,
            self.policy.max_attempts - 1,
            pause,
        )

    def map_ordered(
        self, fn: Callable[[T], R], items: Iterable[T], threads: int | None = None
    ) -> Iterator[R]:
        """Run `fn` over `items`, yielding results in input order, with `concurrency` requests
        on the wire at a time.

        `threads` (default `concurrency`) may be more than that where `fn` spends long after
        its request: a Bizstim page waits ~10 ms for a parse worker, and meanwhile another
        thread keeps the slot busy, so a sweep at 150 ms latency runs at the pace of its round
        trips. Where `fn` is all Python (TimeTap's small answers), extra threads only contend
        for the GIL. At most one result per thread waits in memory, so a million-row sweep
        streams instead of piling up; closing the generator cancels what has not started.
        """
        threads = threads or self.concurrency
        window = threads
        pending: deque[Future[R]] = deque()
        source = iter(items)
        pool = ThreadPoolExecutor(threads, thread_name_prefix=self.names.section)
        try:
            for item in source:
                interrupt.check()
                pending.append(pool.submit(fn, item))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)


def parse_json(body: bytes) -> JsonResponse:
    """JSON of a response body, tolerating invalid UTF-8 (reported, not fatal)."""
    try:
        return JsonResponse(orjson.loads(body))
    except orjson.JSONDecodeError:
        pass
    # orjson refuses invalid UTF-8 outright; a body that parses once bytes are replaced is
    # kept (the values carry U+FFFD and the source reports them) rather than failing the run
    try:
        text = body.decode("utf-8", errors="replace")
        return JsonResponse(orjson.loads(text), replaced_utf8="\ufffd" in text)
    except orjson.JSONDecodeError:
        raise BadBody("a body that is not complete JSON") from None


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds a `Retry-After` header asks for, as delta-seconds or an HTTP date (RFC 9110).

    None when absent or unreadable (our own backoff applies); a date in the past is 0; never
    more than RETRY_AFTER_CAP. Fractional seconds are accepted: some servers send them.
    """
    text = (value or "").strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # "-0000" parses naive; HTTP dates are always UTC
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_CAP)


def _describe_request_error(error: urllib3.exceptions.HTTPError) -> str:
    """A phrase for what went wrong on the wire, without the URL that urllib3 puts in it."""
    exc: Exception = error
    if isinstance(error, urllib3.exceptions.MaxRetryError) and error.reason is not None:
        exc = error.reason  # urllib3's wrapper around the one failed attempt
    if isinstance(exc, urllib3.exceptions.NameResolutionError):
        return "host not found"
    if isinstance(exc, urllib3.exceptions.NewConnectionError | urllib3.exceptions.SSLError):
        return "cannot connect"
    if isinstance(exc, urllib3.exceptions.ProxyError):
        return "cannot connect (through the proxy)"
    if isinstance(exc, urllib3.exceptions.ConnectTimeoutError):
        return "cannot connect"
    if isinstance(exc, urllib3.exceptions.TimeoutError):
        return "no answer within the timeout"
    if isinstance(exc, urllib3.exceptions.ProtocolError):
        text = repr(exc)
        if "IncompleteRead" in text or "InvalidChunkLength" in text:
            return "a body cut off mid-way"
        return "connection dropped"
    return f"a broken response ({type(exc).__name__})"


def _pool_manager(
    base_url: str, concurrency: int, policy: RetryPolicy, headers: dict[str, str]
) -> urllib3.PoolManager:
    """urllib3, the engine under requests, used directly: requests' per-call cookie, hook and
    environment handling cost ~0.35 ms of CPU a call, most of a TimeTap client's. The
    environment's proxy and CA settings are read once here, as requests reads them."""
    options: dict[str, Any] = {
        "maxsize": max(concurrency, 4),
        "headers": {"Accept": "application/json", "Accept-Encoding": "gzip, deflate", **headers},
        "timeout": urllib3.Timeout(connect=policy.connect_timeout, read=policy.read_timeout),
        # no retries of its own (that is `RetryPolicy`'s job), redirects followed as requests
        # follows them, a redirect's Authorization dropped when the host changes
        "retries": urllib3.Retry(
            total=None,
            connect=0,
            read=0,
            status=0,
            other=0,
            redirect=10,
            raise_on_redirect=False,
            raise_on_status=False,
            respect_retry_after_header=False,
        ),
        "ca_certs": os.environ.get("REQUESTS_CA_BUNDLE")
        or os.environ.get("CURL_CA_BUNDLE")
        or certifi.where(),
    }
    proxies = requests.utils.get_environ_proxies(base_url)
    proxy = proxies.get(urlsplit(base_url).scheme) or proxies.get("all")
    if proxy:
        return urllib3.ProxyManager(proxy, proxy_headers=_proxy_auth(proxy), **options)
    return urllib3.PoolManager(**options)


def _proxy_auth(proxy: str) -> dict[str, str] | None:
    """The Proxy-Authorization header for a proxy URL with a user name, as requests sends it."""
    auth = urllib3.util.parse_url(proxy).auth
    return urllib3.util.make_headers(proxy_basic_auth=unquote(auth)) if auth else None


def _endpoint(path: str) -> str:
    """`/sessions/2000/1000` -> `/sessions`: enough to say where, never ids or keys."""
    first = path.split("?", 1)[0].strip("/").split("/", 1)[0]
    return "/" + first
