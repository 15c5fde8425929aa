"""Errors a person can act on, each with the exit code a scheduler sees.

Every failure that reaches the CLI is one of these, so the message is a single sentence that
names the source and the setting to fix, and never carries a URL with keys in it.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum
from typing import TypeVar


class ExitCode(IntEnum):
    """Exit codes documented in the README; a scheduler alerts on anything but OK."""

    OK = 0
    INTERNAL = 1  # a bug: the message asks to re-run with --debug and report it
    USAGE = 2  # bad command line or configuration (missing key, unwritable path, ...)
    DELETIONS_WITHHELD = 3  # loaded, but suspiciously many records vanished: not retired
    SOURCE_FAILED = 4  # an API stayed unreachable or broken after every retry
    AUTH_FAILED = 5  # the vendor rejected the key
    LOCKED = 6  # another run holds the warehouse
    TRANSFORM_FAILED = 7  # raw data loaded, analytics tables kept as they were
    LOAD_FAILED = 8  # the warehouse refused the write (disk full, file held by another program)
    STALE = 9  # (`status --max-age` only) a source's last success is older than allowed
    PUBLISH_FAILED = 10  # analytics rebuilt, but a `practice_sync.publish` destination refused it


class PracticeSyncError(Exception):
    """An expected failure: its message is shown to the user as is."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str, exit_code: ExitCode | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(PracticeSyncError):
    exit_code = ExitCode.USAGE


class SourceUnavailable(PracticeSyncError):
    """A source could not deliver what the run needs; its tables keep last night's state.

    Callers that can act on the reason catch one of the subclasses below instead.
    """

    exit_code = ExitCode.SOURCE_FAILED


class NotFound(SourceUnavailable):
    """HTTP 404: the endpoint or record does not exist, so asking again cannot help.

    A wrong base URL when listing; an answer, not a failure, when looking up one record (a
    retired TimeTap package that is gone altogether).
    """

    def __init__(self, message: str, endpoint: str = "") -> None:
        super().__init__(message)
        self.endpoint = endpoint  # "/package": the first path segment, never ids or keys


class RetriesExhausted(SourceUnavailable):
    """Transient failures (timeouts, 5xx, 429, broken bodies) used up every attempt.

    Nothing is known about the data behind them: a caller must not read this as "not there".
    """

    def __init__(self, message: str, attempts: int = 0, problem: str = "") -> None:
        super().__init__(message)
        self.attempts = attempts
        self.problem = problem  # the last attempt's failure: "HTTP 503", "connection dropped"


class UnusableResponse(SourceUnavailable):
    """The source answered, but with a value the run cannot use (a client id that is not one)."""


class BadBody(UnusableResponse):
    """A 200 whose body is not what the endpoint promises, found by a check inside an attempt.

    The message is the problem as a phrase ("a body that is not a JSON array"): the HTTP layer
    retries it like a 5xx and, if it persists, words it into a `RetriesExhausted` sentence.
    """


class AuthRejected(PracticeSyncError):
    exit_code = ExitCode.AUTH_FAILED


class WarehouseLocked(PracticeSyncError):
    exit_code = ExitCode.LOCKED


class SweepInconsistent(PracticeSyncError):
    """The listing changed under a paged sweep; the sweep must be read again."""

    exit_code = ExitCode.SOURCE_FAILED


class TransformFailed(PracticeSyncError):
    exit_code = ExitCode.TRANSFORM_FAILED


class LoadFailed(PracticeSyncError):
    exit_code = ExitCode.LOAD_FAILED


E = TypeVar("E", bound=BaseException)


def find_cause(
    exc: BaseException, kind: type[E], where: Callable[[E], bool] | None = None
) -> E | None:
    """The first `kind` in `exc`'s chain of causes, including dlt's `.exception` wrapping (and,
    with `where`, the first for which it holds)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind) and (where is None or where(current)):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__ or getattr(current, "exception", None)
    return None


def is_expected(exc: BaseException) -> PracticeSyncError | None:
    """Find our own error inside whatever dlt wrapped it in."""
    return find_cause(exc, PracticeSyncError)
