"""Named points where a test can make the process die as if killed (`SIGKILL`), for real.

Crash recovery can only be proven by crashing: `PRACTICE_SYNC_FAILPOINT=after-extract` makes a
run kill itself right there. Unset (always, in production) this is one dict lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "PRACTICE_SYNC_FAILPOINT"
POINTS = ("mid-extract", "after-extract", "after-normalize", "mid-load", "mid-transform")


def failpoint(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def load_collector() -> object | None:
    """A dlt progress collector that dies after the first finished load job (`mid-load`).

    dlt reports each finished job to its collector, which is the only hook inside its load step.
    """
    if os.environ.get(ENV) != "mid-load":
        return None
    from dlt.common.runtime.collector import NullCollector

    class _MidLoad(NullCollector):
        step = ""

        def _start(self, step: str) -> None:
            self.step = step

        def update(self, name: str, inc: int = 1, *args: object, **kwargs: object) -> None:
            if self.step.startswith("Load") and name == "Jobs" and inc > 0:
                failpoint("mid-load")

    return _MidLoad()
