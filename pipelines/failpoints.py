"""Named points where a test can make a run die as if killed (`SIGKILL`), or hold still there
until a signal arrives, for real.

Crash and interruption recovery can only be proven by crashing and interrupting:
`PRACTICE_SYNC_FAILPOINT=after-extract` makes a run kill itself right there;
`PRACTICE_SYNC_PAUSEPOINT=after-extract` makes it create the file named by
`PRACTICE_SYNC_PAUSEFILE` and wait there (signal-aware) for up to two minutes. Unset (always, in
production) each is one dict lookup.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from practice_sync import interrupt

ENV = "PRACTICE_SYNC_FAILPOINT"
PAUSE_ENV = "PRACTICE_SYNC_PAUSEPOINT"
PAUSE_FILE_ENV = "PRACTICE_SYNC_PAUSEFILE"
POINTS = ("mid-extract", "after-extract", "after-normalize", "mid-load", "mid-transform")
# only where publishing is configured (tests/test_publish.py pauses and kills a run there)
PUBLISH_POINTS = ("mid-publish",)
PAUSE_SECONDS = 120.0


def armed(name: str) -> bool:
    return os.environ.get(ENV) == name or os.environ.get(PAUSE_ENV) == name


def failpoint(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get(PAUSE_ENV) == name:
        Path(os.environ[PAUSE_FILE_ENV]).touch()
        interrupt.sleep(PAUSE_SECONDS)
