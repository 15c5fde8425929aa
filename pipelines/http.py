"""The one HTTP layer both vendors use: retries, backoff, Retry-After, bounded concurrency.

Vendors differ in auth and paging, not in how their servers fail, so the rules for a flaky API
live here once. One function makes one attempt and sorts its outcome into a result or a typed
error; one tenacity policy decides what to retry and how long to wait. Every failure leaves as a
`PracticeSyncError` whose sentence names the setting to fix; URLs are never put in messages or
logs because TimeTap's token call carries its key in the query string.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import random
import re
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit

import certifi
import orjson
import pycurl
import requests
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
        # 2**attempt capped: a large max_attempts would overflow the float from attempt 1024
        jittered = random.uniform(
            0, min(self.backoff_cap, self.backoff_base * 2 ** min(attempt, 60))
        )
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
    """libcurl connections with the project's retry rules, safe to share across worker
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
        account: str | None = None,
    ) -> None:
        parts = urlsplit(base_url or "")
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(
                f"{names.title} base URL {without_userinfo(base_url or '')!r} is not an http(s) "
                f"URL: fix {names.setting('base_url')}."
            )
        if concurrency < 1:
            raise ConfigError(f"{names.setting('concurrency')} must be at least 1.")
        policy = policy or RetryPolicy()
        if policy.max_attempts < 1:
            raise ConfigError(f"{names.setting('max_attempts')} must be at least 1.")
        self.names = names
        # named in retry warnings: accounts load at once, and their lines interleave
        self.who = f"{names.title} account {account}" if account else names.title
        self.base_url = base_url.rstrip("/")
        # a gateway's `user:password@` stays in the URL requests go to, never in a message
        self.host = parts.netloc.rpartition("@")[2]
        self._shown_base = without_userinfo(self.base_url)
        self.concurrency = concurrency
        # `concurrency` bounds requests on the wire, not threads: a thread decoding the page it
        # just got gives its slot back first, so decoding never holds a request slot idle
        self._slots = threading.BoundedSemaphore(concurrency)
        self.policy = policy
        self.stats = stats or HttpStats()
        self._answered = False  # has any request reached a real endpoint yet?
        self._retrying = policy.retrying(before=self._count_retry, before_sleep=self._log_retry)
        self._transport = CurlTransport(self.base_url, policy, headers or {})

    def close(self) -> None:
        self._transport.close()

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
        transport = self._transport
        lines = transport.header_lines(headers)
        try:
            with self._slots:
                # the whole body is read here: one cut off mid-way raises
                status, retry_after, body = transport.get(url, lines)
        except pycurl.error as exc:
            code, message = (*exc.args, 0, "")[:2]  # (libcurl's code, its message)
            problem = _describe_curl_error(int(code), str(message), transport.proxied)
            raise Transient(problem) from None
        self.stats.add(requests_=1, nbytes=len(body))
        self._check_status(path, status, retry_after)
        try:
            return decode(body)
        except BadBody as exc:
            raise Transient(str(exc)) from exc

    def _check_status(self, path: str, status: int, retry_after: str | None) -> None:
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
                f"{self._shown_base + path.split('?', 1)[0]}: check {self.names.setting('base_url')}."
            )
        self._answered = True
        if status == 404:
            raise NotFound(
                f"{self.names.title} has no {_endpoint(path)} endpoint at {self.host} "
                f"(HTTP 404): check {self.names.setting('base_url')}.",
                endpoint=_endpoint(path),
            )
        if status in RETRY_STATUSES:
            raise Transient(f"HTTP {status}", parse_retry_after(retry_after))
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
            self.who,
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


_USERINFO = re.compile(r"^((?:[A-Za-z][A-Za-z0-9+.-]*:)?//)?[^/?#]*@")


def without_userinfo(url: str) -> str:
    """`url` without the `user:password@` before its host, read as text (a URL missing its
    `https://` has no host part to parse): what a message may show of it."""
    return _USERINFO.sub(lambda found: (found.group(1) or "") + "***@", url, count=1)


def parse_json(body: bytes) -> JsonResponse:
    """JSON of a response body, tolerating invalid UTF-8 (reported, not fatal) and a leading
    byte-order mark (RFC 8259 lets a parser ignore it; orjson refuses it, and such a body was
    retried as broken until the source failed)."""
    if body.startswith(b"\xef\xbb\xbf"):
        body = body[3:]
    try:
        return JsonResponse(orjson.loads(body))
    except orjson.JSONDecodeError:
        pass
    # orjson refuses invalid UTF-8 outright; a body that parses once bytes are replaced is
    # kept (the values carry U+FFFD and the source reports them) rather than failing the run
    text = body.decode("utf-8", errors="replace")
    try:
        return JsonResponse(orjson.loads(text), replaced_utf8="\ufffd" in text)
    except orjson.JSONDecodeError:
        pass
    # a lone surrogate escape (`\ud83d`: half an emoji, cut off) is JSON's syntax but no text,
    # and orjson refuses the whole body: one such note failed the account every night. Read
    # here, it becomes U+FFFD and is reported as the invalid bytes above are
    try:
        data = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite)
        data = _without_lone_surrogates(data)
    except (ValueError, RecursionError):  # nested deeper than Python's parser goes
        raise BadBody("a body that is not complete JSON") from None
    return JsonResponse(data, replaced_utf8=True)


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN and Infinity: orjson refuses them too


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):  # 1e400: orjson refuses it too
        raise ValueError(f"{text} is beyond a float")
    return number


def _without_lone_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_without_lone_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {_without_lone_surrogates(k): _without_lone_surrogates(v) for k, v in value.items()}
    return value


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
        except (TypeError, ValueError, IndexError, OverflowError):  # year 99999999999999
            return None
        if when.tzinfo is None:  # "-0000" parses naive; HTTP dates are always UTC
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_CAP)


# libcurl's error codes (curl/curl.h), sorted into the phrases the log and messages use
_NOT_FOUND_HOST = frozenset({pycurl.E_COULDNT_RESOLVE_HOST})
_PROXY_FAILED = frozenset({pycurl.E_COULDNT_RESOLVE_PROXY, 97})  # 97: CURLE_PROXY (handshake)
_CANNOT_CONNECT = frozenset(
    {
        pycurl.E_COULDNT_CONNECT,
        pycurl.E_SSL_CONNECT_ERROR,
        pycurl.E_PEER_FAILED_VERIFICATION,
        pycurl.E_SSL_CERTPROBLEM,
        pycurl.E_SSL_CIPHER,
        pycurl.E_SSL_CACERT_BADFILE,
    }
)
_DROPPED = frozenset({pycurl.E_GOT_NOTHING, pycurl.E_SEND_ERROR, pycurl.E_RECV_ERROR})


def _describe_curl_error(code: int, message: str, proxied: bool = False) -> str:
    """A phrase for what went wrong on the wire. libcurl's own message is read only to tell a
    connect timeout from a stalled answer, and never repeated: it may name the host or URL."""
    if code in _NOT_FOUND_HOST:
        return "host not found"
    if code in _PROXY_FAILED or (proxied and code == pycurl.E_COULDNT_CONNECT):
        return "cannot connect (through the proxy)"
    if code in _CANNOT_CONNECT:
        return "cannot connect"
    if code == pycurl.E_OPERATION_TIMEDOUT:
        connecting = "connection time" in message.lower()  # "Connection timed out after …"
        return "cannot connect" if connecting else "no answer within the timeout"
    if code == pycurl.E_PARTIAL_FILE or (code in _DROPPED and "chunk" in message.lower()):
        return "a body cut off mid-way"
    if code in _DROPPED:
        return "connection dropped"
    if code == pycurl.E_BAD_CONTENT_ENCODING:
        return "a broken response (content encoding)"
    if code == pycurl.E_TOO_MANY_REDIRECTS:
        return "a broken response (too many redirects)"
    return f"a broken response (curl error {code})"


class CurlTransport:
    """GETs through libcurl (pycurl), the part of a request that is not our policy.

    libcurl does in C what urllib3 does in Python: ~0.07 ms of CPU a call on the loopback
    against urllib3's ~0.30, which is most of a TimeTap client's cost (one call per client).
    It brings what a mature client must: TLS (verified against REQUESTS_CA_BUNDLE,
    CURL_CA_BUNDLE or certifi, as requests verifies), gzip/deflate/brotli answers, redirects
    (an Authorization header is not sent on to another host), keep-alive, timeouts. The proxy is
    the one requests would use (HTTP(S)_PROXY, ALL_PROXY, NO_PROXY), read once here and set
    explicitly, so libcurl's own, slightly different reading of the environment never applies.
    One easy handle per request in flight, reused: each keeps its connection alive.
    """

    def __init__(self, base_url: str, policy: RetryPolicy, headers: dict[str, str]) -> None:
        self._headers = {"Accept": "application/json", **headers}
        self._lines = _lines(self._headers)
        self._idle: list[pycurl.Curl] = []
        self._lock = threading.Lock()
        proxies = requests.utils.get_environ_proxies(base_url)
        self.proxy = proxies.get(urlsplit(base_url).scheme) or proxies.get("all") or ""
        self.proxied = bool(self.proxy)
        self._ca = (
            os.environ.get("REQUESTS_CA_BUNDLE")
            or os.environ.get("CURL_CA_BUNDLE")
            or certifi.where()
        )
        self._connect_ms = max(1, round(policy.connect_timeout * 1000))
        # no byte for this long ends the attempt, as a socket read timeout would
        self._stall_s = max(1, math.ceil(policy.read_timeout))
        # ten stalls' worth: a page of a few MB takes seconds, a trickle is cut off (transient)
        self._total_ms = self._connect_ms + 10 * self._stall_s * 1000

    def header_lines(self, headers: Mapping[str, str] | None) -> list[str]:
        """The request's header lines: a call's own headers replace the client's."""
        return _lines({**self._headers, **headers}) if headers else self._lines

    def get(self, url: str, header_lines: list[str]) -> tuple[int, str | None, bytes]:
        """(status, Retry-After as sent or None, decoded body); raises `pycurl.error`."""
        with self._lock:
            handle = self._idle.pop() if self._idle else self._new_handle()
        body = io.BytesIO()
        retry_after: list[str] = []

        def header(line: bytes) -> None:
            if line[:5] == b"HTTP/":  # a redirect's next response starts afresh
                retry_after.clear()
            elif line[:12].lower() == b"retry-after:":
                retry_after.append(line[12:].decode("latin-1").strip())

        try:
            handle.setopt(pycurl.URL, url)
            handle.setopt(pycurl.HTTPHEADER, header_lines)
            handle.setopt(pycurl.WRITEDATA, body)
            handle.setopt(pycurl.HEADERFUNCTION, header)
            handle.perform()
            status = handle.getinfo(pycurl.RESPONSE_CODE)
            data = body.getvalue()
        finally:
            body.close()  # an idle handle still points at it: drop the page it held now
            with self._lock:
                self._idle.append(handle)
        return status, (retry_after[-1] if retry_after else None), data

    def _new_handle(self) -> pycurl.Curl:
        handle = pycurl.Curl()
        web = pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS
        for option, value in (
            (pycurl.NOSIGNAL, 1),  # threads: no SIGALRM for DNS timeouts
            (pycurl.PROTOCOLS, web),
            (pycurl.REDIR_PROTOCOLS, web),
            (pycurl.FOLLOWLOCATION, 1),
            (pycurl.MAXREDIRS, 10),
            (pycurl.ACCEPT_ENCODING, ""),  # every encoding this libcurl decodes
            (pycurl.CONNECTTIMEOUT_MS, self._connect_ms),
            (pycurl.LOW_SPEED_LIMIT, 1),
            (pycurl.LOW_SPEED_TIME, self._stall_s),
            # and a whole attempt's cap: a server trickling a byte a second is never "stalled"
            (pycurl.TIMEOUT_MS, self._total_ms),
            (pycurl.PROXY, self.proxy),  # "" turns libcurl's own environment reading off
            # a folder of certificates is accepted where requests accepts one
            (pycurl.CAPATH if os.path.isdir(self._ca) else pycurl.CAINFO, self._ca),
        ):
            handle.setopt(option, value)
        return handle

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for handle in idle:
            handle.close()


def _lines(headers: Mapping[str, str]) -> list[str]:
    return [f"{name}: {value}" for name, value in headers.items()]


def _endpoint(path: str) -> str:
    """`/sessions/2000/1000` -> `/sessions`: enough to say where, never ids or keys."""
    first = path.split("?", 1)[0].strip("/").split("/", 1)[0]
    return "/" + first
