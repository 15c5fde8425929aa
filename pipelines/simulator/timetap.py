"""TimeTap's package API: session-token auth, packages, clients and the packages sold to them."""

from __future__ import annotations

import hashlib
import random
import secrets
import threading
import time
import unicodedata
from datetime import UTC, datetime
from email.message import Message
from typing import Any

import orjson

from .reply import Reply, json_reply

BUSINESS_ID = 41_234
ABSURD_MS = 99_999_999_999_999_999
_DAY_MS = 86_400_000
_FROM_MS = int(datetime(2022, 1, 1, tzinfo=UTC).timestamp() * 1000)
# Same simulated "today" as Bizstim: generated history ends here, live edits use the real clock.
_TO_MS = int(datetime(2026, 6, 30, tzinfo=UTC).timestamp() * 1000)

_PACKAGE_NAMES = (
    ("Drop-in Single", 1), ("Intro Offer", 3), ("Massage 3-Pack", 3), ("5 Class Pass", 5),
    ("Physio 6 Sessions", 6), ("Private Training 8", 8), ("10 Class Pass", 10),
    ("Wellness Bundle", 12), ("Family Pack", 20), ("Monthly Unlimited", 30),
)  # fmt: skip
_SEASONS = ("Spring", "Summer", "Autumn", "Winter")
_STAFF_RATE_LEVELS = ("ALL", "LEVEL_1", "LEVEL_2", "SENIOR")
_REASONS = ((1, "Gift"), (2, "Promotion"), (3, "Membership renewal"), (4, "Referral"))
_USERS = ("maria.lopez@example.com", "john.doe@example.com", "frontdesk@example.com")
_FIRST_NAMES = (
    "Emma", "Liam", "Olivia", "Noah", "Ava", "Mateo", "Zoë", "José", "Chloé", "Łukasz",
    "Sofia", "Ethan", "Mia", "Lucas", "Amélie", "Björn", "Hana", "Omar",
)  # fmt: skip
_LAST_NAMES = (
    "Smith", "García", "Nguyen", "Müller", "O'Brien", "Kowalski", "Dubois", "Rossi",
    "Johnson", "Núñez", "Søndergaard", "Brown", "Tanaka", "Patel",
)  # fmt: skip
# The package fields copied into a packageSold as they were at the time of sale.
_PKG_SNAPSHOT = (
    "packageId", "businessId", "packageName", "internalName", "price", "quantity",
    "expireInDays", "serviceIds", "active",
)  # fmt: skip


def _ascii(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(c for c in decomposed.lower() if c.isalnum())


def _clone(value: Any) -> Any:
    return orjson.loads(orjson.dumps(value))


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _bump(obj: dict) -> None:
    """Later than before even if generated history runs ahead of the real clock."""
    obj["modifiedDate"] = max(_now_ms(), obj["modifiedDate"] + 1)


class Timetap:
    """Packages, clients and packages sold, behind TimeTap's token handshake."""

    def __init__(
        self,
        *,
        seed: int,
        clients: int,
        packages: int,
        api_key: str,
        private_key: str,
        edge_cases: bool,
    ) -> None:
        self._lock = threading.RLock()
        self._seed = seed
        self._api_key = api_key
        self._signature = hashlib.md5(
            (api_key + private_key).encode(), usedforsecurity=False
        ).hexdigest()
        self._tokens: set[str] = set()
        rnd = random.Random(f"timetap:{seed}")
        self._packages: dict[int, dict] = {}
        self._clients: dict[int, dict] = {}
        self._sold: dict[int, dict] = {}
        self._sold_by_client: dict[int, list[int]] = {}
        self._next_sold_id = 880_000

        package_id = 5100
        for n in range(packages):
            package_id += rnd.randint(1, 4)
            self._packages[package_id] = self._new_package(rnd, package_id, n)
        retired = max(1, packages // 8) if packages else 0
        for package_id in rnd.sample(sorted(self._packages), retired):
            self._packages[package_id]["active"] = False

        client_id = 1_500_000
        for _ in range(clients):
            client_id += rnd.randint(1, 3)
            self._clients[client_id] = self._new_client(rnd, client_id)
            self._sold_by_client[client_id] = []
            if self._packages and rnd.random() < 0.6:
                for _ in range(rnd.randint(1, 3)):
                    self._record_sale(rnd, client_id, rnd.choice(list(self._packages)), None)

        if edge_cases:
            self._add_quirks(rnd)

    # -- generation ------------------------------------------------------------------------

    def _new_package(self, rnd: random.Random, package_id: int, n: int) -> dict:
        base, quantity = _PACKAGE_NAMES[n % len(_PACKAGE_NAMES)]
        created = rnd.randint(_FROM_MS, _TO_MS - 90 * _DAY_MS)
        year = datetime.fromtimestamp(created / 1000, UTC).year
        name = base if n < len(_PACKAGE_NAMES) else f"{rnd.choice(_SEASONS)} {year} {base}"
        expire_days = rnd.choice((30, 60, 90, 180, 365))
        return {
            "packageId": package_id,
            "businessId": BUSINESS_ID,
            "packageName": name,
            "internalName": f"PKG-{package_id}-{_ascii(base)[:12].upper()}",
            "description": f"{quantity} visit(s), valid for {expire_days} days from purchase.",
            "price": quantity * rnd.choice((15, 20, 25, 30, 45)),
            "quantity": quantity,
            "expireInDays": expire_days,
            "remindWhenBelowQuantity": rnd.randint(0, 2),
            "staffRateLevel": rnd.choice(_STAFF_RATE_LEVELS),
            "allowOnline": rnd.random() < 0.7,
            "taxable": rnd.random() < 0.3,
            "active": True,
            "imageURL": f"https://cdn.timetap.example/packages/{package_id}.png"
            if rnd.random() < 0.5
            else "",
            "createdDate": created,
            "modifiedDate": rnd.randint(created, _TO_MS),
            "createdUser": rnd.choice(_USERS),
            "modifiedUser": rnd.choice(_USERS),
            "serviceIds": sorted(rnd.sample(range(100, 140), rnd.randint(1, 4))),
            "reasonList": [
                {"reasonId": rid, "reasonDesc": desc}
                for rid, desc in rnd.sample(_REASONS, rnd.randint(0, 2))
            ],
        }

    @staticmethod
    def _new_client(rnd: random.Random, client_id: int) -> dict:
        first, last = rnd.choice(_FIRST_NAMES), rnd.choice(_LAST_NAMES)
        return {
            "clientId": client_id,
            "firstName": first,
            "lastName": last,
            "emailAddress": f"{_ascii(first)}.{_ascii(last)}{client_id % 1000}@example.com",
        }

    def _record_sale(
        self, rnd: random.Random, client_id: int, package_id: int, at_ms: int | None
    ) -> int:
        """Sell a package; `at_ms` None means a generated, historical sale."""
        package = self._packages[package_id]
        self._next_sold_id += rnd.randint(1, 4)
        sold_id = self._next_sold_id
        maximum = package["quantity"]
        if at_ms is None:
            purchased = rnd.randint(package["createdDate"], _TO_MS)
            used = rnd.randint(0, maximum)
            modified = purchased if used == 0 else rnd.randint(purchased, _TO_MS)
        else:
            purchased, used, modified = at_ms, 0, at_ms
        self._sold[sold_id] = {
            "packageSoldId": sold_id,
            "businessId": BUSINESS_ID,
            "client": dict(self._clients[client_id]),
            "pkg": {key: _clone(package[key]) for key in _PKG_SNAPSHOT},
            "price": package["price"] if rnd.random() < 0.85 else package["price"] * 9 // 10,
            "maxQuantity": maximum,
            "usedQuantity": used,
            "status": "CLOSED" if used >= maximum else "OPEN",
            "purchaseDate": purchased,
            "expireDate": purchased + package["expireInDays"] * _DAY_MS,
            "createdDate": purchased,
            "modifiedDate": modified,
            "createdUser": rnd.choice(_USERS),
            "modifiedUser": rnd.choice(_USERS),
            "active": True,
        }
        self._sold_by_client[client_id].append(sold_id)
        return sold_id

    def _add_quirks(self, rnd: random.Random) -> None:
        """A few of each: overused, unknown status, impossible expiry, package with no service."""
        active = [p for p in self._packages.values() if p["active"]]
        if active:
            rnd.choice(active)["serviceIds"] = []
        per_kind = max(2, len(self._sold) // 100)
        picked = rnd.sample(sorted(self._sold), min(len(self._sold), 4 * per_kind))
        for n, sold_id in enumerate(picked):
            sold = self._sold[sold_id]
            kind = n % 4
            if kind == 0:
                sold["usedQuantity"] = sold["maxQuantity"] + rnd.randint(1, 3)
                sold["status"] = "CLOSED"
            elif kind == 1:
                sold["status"] = "PENDING"
            else:
                sold["expireDate"] = -1 if kind == 2 else ABSURD_MS

    # -- inspection and mutation -----------------------------------------------------------

    def packages(self) -> list[dict]:
        with self._lock:
            return _clone(list(self._packages.values()))

    def active_packages(self) -> list[dict]:
        with self._lock:
            return _clone([p for p in self._packages.values() if p["active"]])

    def client_ids(self) -> list[int]:
        with self._lock:
            return list(self._clients)

    def packages_sold(self) -> list[dict]:
        with self._lock:
            return _clone([self._sold[s] for ids in self._sold_by_client.values() for s in ids])

    def edit_package(self, package_id: int, **fields: Any) -> None:
        with self._lock:
            package = self._packages[package_id]
            _bump(package)
            package.update(fields)

    def retire_package(self, package_id: int) -> None:
        with self._lock:
            package = self._packages[package_id]
            package["active"] = False
            _bump(package)

    def use_package(self, package_sold_id: int, n: int = 1) -> None:
        with self._lock:
            sold = self._sold[package_sold_id]
            sold["usedQuantity"] += n
            if sold["usedQuantity"] >= sold["maxQuantity"]:
                sold["status"] = "CLOSED"
            _bump(sold)

    def refund(self, package_sold_id: int) -> None:
        """The sale disappears from its client's list, as a refunded sale does."""
        with self._lock:
            del self._sold[package_sold_id]
            for sales in self._sold_by_client.values():
                if package_sold_id in sales:
                    sales.remove(package_sold_id)

    def add_client(self, client_id: int | None = None) -> int:
        with self._lock:
            if client_id is None:
                client_id = max(self._clients, default=1_500_000) + 1
            elif client_id in self._clients:
                raise ValueError(f"client {client_id} already exists")
            rnd = random.Random(f"timetap:{self._seed}:client:{client_id}")
            self._clients[client_id] = self._new_client(rnd, client_id)
            self._sold_by_client[client_id] = []
            return client_id

    def sell_package(self, client_id: int, package_id: int) -> int:
        with self._lock:
            if client_id not in self._clients:
                raise KeyError(f"unknown client {client_id}")
            if package_id not in self._packages:
                raise KeyError(f"unknown package {package_id}")
            rnd = random.Random(f"timetap:{self._seed}:sale:{self._next_sold_id}")
            return self._record_sale(rnd, client_id, package_id, _now_ms())

    def has_token(self, token: str) -> bool:
        with self._lock:
            return token in self._tokens

    def expire_tokens(self) -> None:
        with self._lock:
            self._tokens.clear()

    # -- HTTP ------------------------------------------------------------------------------

    def handle(self, method: str, parts: list[str], query: dict, headers: Message) -> Reply:
        if parts == ["sessionToken"]:
            return (
                self._issue_token(query)
                if method == "GET"
                else self.error(405, "Method not allowed")
            )
        scheme, _, token = headers.get("Authorization", "").partition(" ")
        with self._lock:
            if scheme.lower() != "bearer" or token not in self._tokens:
                return self.unauthorized()
            if method != "GET":
                return self.error(405, "Method not allowed")
            match parts:
                case ["package"]:
                    return json_reply(200, [p for p in self._packages.values() if p["active"]])
                case ["package", package_id] if package_id.isascii() and package_id.isdigit():
                    package = self._packages.get(int(package_id))
                    if package is None:
                        return self.error(404, "Package not found")
                    return json_reply(200, package)
                case ["clientIdList"]:
                    return json_reply(200, list(self._clients))
                case ["clients"]:
                    return json_reply(200, list(self._clients.values()))
                case ["clients", "count"]:
                    return json_reply(200, {"count": len(self._clients)})
                case ["packageSold", "client", client_id]:
                    if not (client_id.isascii() and client_id.isdigit()):
                        return self.error(400, "Invalid clientId")
                    sold_ids = self._sold_by_client.get(int(client_id), [])
                    return json_reply(200, [self._sold[s] for s in sold_ids])
        return self.error(404, "Not found")

    def _issue_token(self, query: dict[str, list[str]]) -> Reply:
        if "privateKey" in query:
            return self.error(401, "The private key must never be sent")
        timestamp = query.get("timestamp", [""])[0]
        if not (timestamp.isascii() and timestamp.isdigit()):
            return self.error(401, "Invalid timestamp")
        api_key = query.get("apiKey", [""])[0]
        signature = query.get("signature", [""])[0]
        if api_key != self._api_key or signature != self._signature:
            return self.error(401, "Invalid signature")
        token = f"st:api:api:{secrets.token_hex(16)}"
        with self._lock:
            self._tokens.add(token)
        return json_reply(200, {"sessionToken": token})

    def error(self, status: int, message: str) -> Reply:
        return json_reply(status, {"error": message})

    def unauthorized(self) -> Reply:
        return self.error(401, "Unauthorized")

    def empty(self) -> Reply:
        return json_reply(200, [])
