"""Named points where a test can make the process die as if killed (`SIGKILL`), for real.

Crash recovery can only be proven by crashing: `PRACTICE_SYNC_FAILPOINT=after-extract` makes a
run kill itself right there. Unset (always, in production) this is one dict lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "PRACTICE_SYNC_FAILPOINT"
POINTS = ("mid-extract", "after-extract", "after-normalize", "mid-load", "mid-transform")


def armed(name: str) -> bool:
    return os.environ.get(ENV) == name


def failpoint(name: str) -> None:
    if armed(name):
        os.kill(os.getpid(), signal.SIGKILL)
