"""TimeTap auth and calls: a session token signed with md5(apiKey + privateKey), refreshed on 401.

The private key only ever enters the signature; the api key travels in the token request's
query string, which is why the shared HTTP layer never logs or reports URLs.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from typing import Any

from practice_sync.errors import AuthRejected
from practice_sync.http import BadBody, HttpClient


def signature(api_key: str, private_key: str) -> str:
    return hashlib.md5((api_key + private_key).encode()).hexdigest()


def check_list(data: Any) -> None:
    if not isinstance(data, list):
        raise BadBody("a body that is not a JSON array")


def check_object(data: Any) -> None:
    if not isinstance(data, dict):
        raise BadBody("a body that is not a JSON object")


class TimeTapApi:
    """Authenticated GETs; a token that expires mid-run is replaced once per failing call."""

    def __init__(self, client: HttpClient, api_key: str, private_key: str) -> None:
        self.client = client
        self._api_key = api_key
        self._private_key = private_key
        self._token: str | None = None
        self._lock = threading.Lock()

    def _new_token(self, stale: str | None) -> str:
        with self._lock:
            if self._token is not None and self._token != stale:
                return self._token  # another worker already refreshed it
            params = {
                "apiKey": self._api_key,
                "timestamp": str(int(time.time())),
                "signature": signature(self._api_key, self._private_key),
            }
            try:
                data = self.client.get_json("/sessionToken", params=params, check=_check_token).data
            except AuthRejected:
                raise AuthRejected(
                    "TimeTap rejected the credentials: check sources.timetap.api_key "
                    "(SOURCES__TIMETAP__API_KEY) and sources.timetap.private_key "
                    "(SOURCES__TIMETAP__PRIVATE_KEY)."
                ) from None
            self._token = str(data["sessionToken"])
            return self._token

    def token(self) -> str:
        return self._token or self._new_token(None)

    def get(self, path: str, check: Callable[[Any], None] = check_list) -> Any:
        """GET JSON (an array unless `check` says otherwise); on 401 refresh the token once."""
        token = self.token()
        for attempt in range(2):
            try:
                return self.client.get_json(
                    path, headers={"Authorization": f"Bearer {token}"}, check=check
                ).data
            except AuthRejected:
                if attempt:
                    raise AuthRejected(
                        "TimeTap accepted the credentials but then refused a fresh session token: "
                        "check that the key in sources.timetap.api_key (SOURCES__TIMETAP__API_KEY) "
                        "may read packages and clients."
                    ) from None
                token = self._new_token(token)
        raise AssertionError("unreachable")


def _check_token(data: Any) -> None:
    if not isinstance(data, dict) or not isinstance(data.get("sessionToken"), str):
        raise BadBody("a token response without `sessionToken`")
