"""Stop promptly on Ctrl-C (SIGINT) and SIGTERM, whichever thread the kernel hands the signal to.

Python's default is not enough for a command that waits: a process started with SIGINT ignored
(every background job of a non-interactive shell, and every child it starts) gets no
KeyboardInterrupt at all, and a main thread parked in an untimed lock wait sleeps through a
signal that landed on another thread. So long-running commands install their own handlers for
both signals and keep the main thread in short timed waits: the work runs in one job thread, the
main thread only waits for it or for a stop request. The work notices the request at its next
`check()` or `sleep()`; what does not stop within the grace period is cut off, which is safe
because every step of a run is crash-safe (tests/test_crash.py kills runs for real).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
POLL_SECONDS = 0.2  # the longest the main thread sleeps before it looks at the signal flag
GRACE_SECONDS = 3.0  # how long the job thread gets to stop by itself once asked

_stop = threading.Event()
_received: list[int] = []


class Interrupted(BaseException):
    """A stop was requested. A BaseException, so that no `except Exception` in the work (ours,
    dlt's, a thread pool's) mistakes it for a failure and carries on."""

    def __init__(self, signum: int, *, finished: bool = True) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.finished = finished  # False: the job thread was still running when we gave up

    @property
    def exit_code(self) -> int:
        """The shell's convention: 128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + self.signum


def requested() -> int | None:
    """The signal that asked us to stop, if one did."""
    return _received[0] if _received else None


def check() -> None:
    """Raise `Interrupted` if a stop was requested; called between units of work."""
    if _stop.is_set():
        raise Interrupted(_received[0] if _received else signal.SIGINT)


def sleep(seconds: float) -> None:
    """`time.sleep` that ends early, raising `Interrupted`, when a stop is requested."""
    if _stop.wait(max(seconds, 0.0)):
        check()


def _handle(signum: int, frame: object) -> None:
    if not _received:
        _received.append(signum)
    _stop.set()


@contextlib.contextmanager
def stop_handlers() -> Iterator[None]:
    """Our handlers for SIGINT and SIGTERM while the block runs, even over an inherited ignore.

    Outside the main thread Python cannot install handlers; the block then runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _stop.clear()
    _received.clear()
    previous = {sig: signal.signal(sig, _handle) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def wait_for_stop() -> int:
    """Inside `stop_handlers()`: block until SIGINT or SIGTERM arrives; return its number.

    Waits in short timed steps: a signal that landed on another thread is seen within
    POLL_SECONDS rather than never.
    """
    while not _stop.wait(POLL_SECONDS):
        pass
    return _received[0] if _received else signal.SIGINT


def run_in_foreground(work: Callable[[], T], *, grace: float = GRACE_SECONDS) -> T:
    """Run `work` in a job thread and return its result, or raise `Interrupted` on a signal.

    The main thread only waits, in steps of POLL_SECONDS. On a signal the job thread gets
    `grace` seconds to stop at its next `check()`; `Interrupted.finished` says whether it did
    (if not, the caller should end the process without waiting for it).
    """
    if threading.current_thread() is not threading.main_thread():
        return work()
    outcome: list[T] = []
    failure: list[BaseException] = []

    def job() -> None:
        try:
            outcome.append(work())
        except BaseException as exc:  # handed to the main thread as it is
            failure.append(exc)

    thread = threading.Thread(target=job, name="practice-sync-job", daemon=True)
    with stop_handlers():
        thread.start()
        while thread.is_alive() and not _stop.is_set():
            thread.join(POLL_SECONDS)
        if thread.is_alive():  # asked to stop while working
            thread.join(grace)
            if thread.is_alive() or not failure:
                raise Interrupted(_received[0], finished=not thread.is_alive())
    if failure:
        raise failure[0]
    return outcome[0]
