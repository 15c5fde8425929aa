"""The one HTTP layer both vendors use: retries, backoff, Retry-After, bounded concurrency.

Vendors differ in auth and paging, not in how their servers fail, so the rules for a flaky API
live here once. Every failure leaves as a `PracticeSyncError` whose sentence names the setting
to fix; URLs are never put in messages or logs because TimeTap's token call carries its key in
the query string.
"""

from __future__ import annotations

import logging
import os
import random
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import orjson
import requests
from requests.adapters import HTTPAdapter

from practice_sync import interrupt
from practice_sync.errors import AuthRejected, ConfigError, SourceUnavailable

log = logging.getLogger("practice_sync.http")

T = TypeVar("T")
R = TypeVar("R")

RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
AUTH_STATUSES = frozenset({401, 403})


class BadBody(Exception):
    """A 200 whose body is not what the endpoint promises; worth asking again."""


@dataclass
class RetryPolicy:
    """Bounded, jittered exponential backoff; `Retry-After` wins when the server sends it."""

    max_attempts: int = 6
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    connect_timeout: float = 10.0
    read_timeout: float = 60.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Full jitter keeps many workers from retrying in lockstep after a shared 5xx burst."""
        jittered = random.uniform(0, min(self.backoff_cap, self.backoff_base * 2**attempt))
        if retry_after is not None:
            return min(max(retry_after, jittered), max(self.backoff_cap, retry_after))
        return jittered


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
    """A requests session with the project's retry rules, safe to share across worker threads."""

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
        self.names = names
        self.base_url = base_url.rstrip("/")
        self.host = parts.netloc
        self.concurrency = concurrency
        self.policy = policy or RetryPolicy()
        self.stats = stats or HttpStats()
        self.session = requests.Session()
        # the environment's proxy and CA settings are read once here rather than on every call
        # (~0.2 ms each, which adds up over 20,000 TimeTap clients)
        self.session.trust_env = False
        self.session.proxies.update(requests.utils.get_environ_proxies(base_url))
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if bundle:
            self.session.verify = bundle
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=max(concurrency, 4))
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update({"Accept": "application/json", **(headers or {})})

    def close(self) -> None:
        self.session.close()

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

        `decode` raises `BadBody` for a 200 that is not what the endpoint promises. Auth failures
        are not retried here: the caller may refresh a token first.
        """
        problem = "no attempt made"
        for attempt in range(self.policy.max_attempts):
            interrupt.check()
            if attempt:
                self.stats.add(retries=1)
            retry_after: float | None = None
            try:
                response = self.session.get(
                    self.base_url + path,
                    params=params,
                    headers=headers,
                    timeout=(self.policy.connect_timeout, self.policy.read_timeout),
                )
                body = response.content  # raises on a body cut off mid-way
            except requests.exceptions.ConnectionError as exc:
                problem = _describe_connection_error(exc)
            except requests.exceptions.Timeout:
                problem = "no answer within the timeout"
            except requests.exceptions.ChunkedEncodingError:
                problem = "a body cut off mid-way"
            except requests.exceptions.RequestException as exc:
                problem = f"a broken response ({type(exc).__name__})"
            else:
                self.stats.add(requests_=1, nbytes=len(body))
                status = response.status_code
                if status in AUTH_STATUSES:
                    raise AuthRejected(
                        f"{self.names.title} rejected the credentials (HTTP {status}): "
                        f"check {self.names.setting('api_key')}."
                    )
                if status in RETRY_STATUSES:
                    problem = f"HTTP {status}"
                    retry_after = _retry_after(response.headers.get("Retry-After"))
                elif status == 404:
                    raise SourceUnavailable(
                        f"{self.names.title} has no {_endpoint(path)} endpoint at {self.host} "
                        f"(HTTP 404): check {self.names.setting('base_url')}."
                    )
                elif status >= 400:
                    problem = f"HTTP {status}"
                else:
                    try:
                        return decode(body)
                    except BadBody as exc:
                        problem = str(exc)
            if attempt + 1 < self.policy.max_attempts:
                pause = self.policy.delay(attempt, retry_after)
                log.warning(
                    "%s %s: %s; retry %d of %d in %.1fs",
                    self.names.title,
                    _endpoint(path),
                    problem,
                    attempt + 1,
                    self.policy.max_attempts - 1,
                    pause,
                )
                interrupt.sleep(pause)
        if problem.startswith("cannot connect") or problem.startswith("host not found"):
            raise SourceUnavailable(
                f"{self.names.title} could not be reached at {self.host} ({problem}): "
                f"check {self.names.setting('base_url')} and the network."
            )
        raise SourceUnavailable(
            f"{self.names.title} kept failing on {_endpoint(path)} after "
            f"{self.policy.max_attempts} attempts ({problem}); nothing from this run was applied."
        )

    def map_ordered(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        """Run `fn` over `items` on `concurrency` threads, yielding results in input order.

        At most two results per worker wait in memory, so a million-row sweep streams instead
        of piling up; closing the generator cancels what has not started.
        """
        window = 2 * self.concurrency
        pending: deque[Future[R]] = deque()
        source = iter(items)
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix=self.names.section)
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


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def _describe_connection_error(exc: requests.exceptions.ConnectionError) -> str:
    text = repr(exc)
    if "NameResolutionError" in text or "Name or service not known" in text:
        return "host not found"
    if "RemoteDisconnected" in text or "reset" in text.lower() or "aborted" in text.lower():
        return "connection dropped"
    if "IncompleteRead" in text or "ProtocolError" in text:
        return "a body cut off mid-way"
    return "cannot connect"


def _endpoint(path: str) -> str:
    """`/sessions/2000/1000` -> `/sessions`: enough to say where, never ids or keys."""
    first = path.split("?", 1)[0].strip("/").split("/", 1)[0]
    return "/" + first
