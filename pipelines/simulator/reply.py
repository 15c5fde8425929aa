"""The response value every route and fault produces, so the HTTP layer stays vendor-agnostic."""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson


class Reply(NamedTuple):
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


def json_reply(status: int, payload: Any) -> Reply:
    return Reply(status, orjson.dumps(payload))
