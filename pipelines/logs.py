"""Log lines a scheduler's log file can be read by: a UTC timestamp and a level on every line,
or one JSON object per line (`--log-format json`) for log shippers.

Everything a run says goes through `logging`: INFO and DEBUG to stdout, WARNING and above to
stderr (where schedulers look for failures). An event carries structured fields (source,
counts, duration, exit code) that the JSON format writes as keys and the text format leaves in
its sentence.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

LOGGER = "practice_sync"
log = logging.getLogger(LOGGER)


def _timestamp(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created))


class TextFormatter(logging.Formatter):
    """`2026-11-23T02:30:41Z INFO    practice-sync: bizstim: ok — 1,203 requests ...`"""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"{_timestamp(record.created)} {record.levelname:<7} practice-sync: "
        text = "\n".join(prefix + line for line in record.getMessage().splitlines() or [""])
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, event, message and the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname,
            "event": getattr(record, "event", "log"),
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class _Below(logging.Filter):
    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < self.level


class _ThroughOurs(logging.Handler):
    """Put on dlt's logger, which does not propagate and keeps the handler it finds (setting
    only its format): its records reach our handlers, in our format and streams (JSON lines
    stay JSON). Without `--debug` they are dropped: a failure's sentence is ours, and dlt's
    screens of tracebacks drowned it."""

    def __init__(self, debug: bool) -> None:
        super().__init__()
        self.debug = debug

    def emit(self, record: logging.LogRecord) -> None:
        if not self.debug:
            return
        for handler in logging.getLogger().handlers:
            if record.levelno >= handler.level:
                handler.handle(record)


def setup(log_format: str = "text", debug: bool = False) -> None:
    """Route our logs: INFO to stdout, WARNING and up to stderr, in the chosen format."""
    formatter: logging.Formatter = JsonFormatter() if log_format == "json" else TextFormatter()
    out = logging.StreamHandler(sys.stdout)
    out.addFilter(_Below(logging.WARNING))
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.WARNING)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in (out, err):
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(logging.WARNING)  # other libraries: warnings only
    log.setLevel(logging.DEBUG if debug else logging.INFO)
    # urllib3 (under requests, which dlt uses) logs full URLs at
    # debug level; a URL can carry a key, as TimeTap's token URL does
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    dlt_logger = logging.getLogger("dlt")
    for handler in list(dlt_logger.handlers):
        dlt_logger.removeHandler(handler)
    dlt_logger.addHandler(_ThroughOurs(debug))
    dlt_logger.propagate = False


def event(name: str, message: str, level: int = logging.INFO, **fields: object) -> None:
    """Log `message` as event `name` with structured `fields` (keys in JSON, prose in text)."""
    log.log(level, message, extra={"event": name, "fields": fields})


def flush() -> None:
    """Before `os._exit`: nothing buffered may be lost."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
