"""Scripted failures, so clients can be tested against the ways real vendor APIs misbehave."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .reply import Reply, json_reply

KINDS = frozenset(
    {
        "429",
        "500",
        "502",
        "503",
        "reset",
        "truncate",
        "slow",
        "badjson",
        "failure",
        "401",
        "empty",
        "latin1",
    }
)

_GATEWAY_PAGE = (
    "<html><head><title>{status} {reason}</title></head><body><center><h1>{status} {reason}</h1>"
    "</center><hr><center>nginx</center></body></html>"
)


@dataclass(frozen=True)
class Fault:
    """One scripted failure.

    `path` is a regex searched in the request path (query excluded). The first `after`
    matching requests pass, then the next `times` ones fail. `after` counts every matching
    request, even one another fault answered. `status` overrides the HTTP status of kinds
    that write a response (all but "reset" and "slow").
    """

    path: str
    kind: str
    times: int = 1
    retry_after: float | None = None
    delay: float = 0.0
    status: int | None = None
    after: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {sorted(KINDS)}")
        if self.times < 1 or self.after < 0:
            raise ValueError("times must be >= 1 and after >= 0")
        re.compile(self.path)


class _Armed:
    """Counters live here rather than on Fault, so one Fault can be added more than once."""

    __slots__ = ("fault", "pattern", "skip", "left")

    def __init__(self, fault: Fault) -> None:
        self.fault = fault
        self.pattern = re.compile(fault.path)
        self.skip = fault.after
        self.left = fault.times


class FaultBook:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: list[_Armed] = []

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._armed.append(_Armed(fault))

    def clear(self) -> None:
        with self._lock:
            self._armed.clear()

    def take(self, path: str) -> Fault | None:
        """The fault that answers this request, if any (the earliest added one that is due)."""
        chosen = None
        with self._lock:
            for armed in list(self._armed):
                if not armed.pattern.search(path):
                    continue
                if armed.skip:
                    armed.skip -= 1
                elif chosen is None:
                    chosen = armed.fault
                    armed.left -= 1
                    if not armed.left:
                        self._armed.remove(armed)
        return chosen


class HookBook:
    """Callbacks keyed like faults, for tests that change data between two page requests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: list[list] = []  # [pattern, callback, skip, left]

    def add(self, path: str, callback: Callable[[], object], *, after: int, times: int) -> None:
        with self._lock:
            self._armed.append([re.compile(path), callback, after, times])

    def take(self, path: str) -> list[Callable[[], object]]:
        due: list[Callable[[], object]] = []
        with self._lock:
            for armed in list(self._armed):
                if not armed[0].search(path):
                    continue
                if armed[2]:
                    armed[2] -= 1
                    continue
                due.append(armed[1])
                armed[3] -= 1
                if not armed[3]:
                    self._armed.remove(armed)
        return due


class Vendor(Protocol):
    """What a fault needs from a vendor to answer in that vendor's own error style."""

    def error(self, status: int, message: str) -> Reply: ...

    def unauthorized(self) -> Reply: ...

    def empty(self) -> Reply: ...


def fault_reply(fault: Fault, vendor: Vendor) -> Reply:
    """The canned response for a kind that replaces the real answer (not reset/slow/truncate)."""
    kind = fault.kind
    if kind == "429":
        wait = 1 if fault.retry_after is None else fault.retry_after
        reply = vendor.error(429, "Too many requests")
        reply = reply._replace(headers=(("Retry-After", f"{wait:g}"),))
    elif kind == "500":
        reply = vendor.error(500, "Internal server error")
    elif kind in ("502", "503"):
        # Gateways in front of the vendors answer these, in HTML rather than the vendor's JSON.
        reason = "Bad Gateway" if kind == "502" else "Service Temporarily Unavailable"
        page = _GATEWAY_PAGE.format(status=kind, reason=reason)
        reply = Reply(int(kind), page.encode(), "text/html")
    elif kind == "badjson":
        page = _GATEWAY_PAGE.format(status=200, reason="OK - maintenance in progress")
        reply = Reply(200, page.encode(), "text/html")
    elif kind == "failure":
        reply = json_reply(200, {"status": "failure", "response": "Internal error"})
    elif kind == "401":
        reply = vendor.unauthorized()
    elif kind == "empty":
        reply = vendor.empty()
    else:
        raise ValueError(f"fault kind {kind!r} does not replace the response")
    return reply if fault.status is None else reply._replace(status=fault.status)
