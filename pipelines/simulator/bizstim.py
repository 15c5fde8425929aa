"""Bizstim's sessions API: seeded rows, the mutations tests script, and cached page bodies."""

from __future__ import annotations

import random
import threading
from array import array
from bisect import bisect_left
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from email.message import Message
from typing import Any, NamedTuple, cast
from zoneinfo import ZoneInfo

import orjson

from .reply import Reply, json_reply

FIELDS = (
    "id", "confirmed", "multi", "slots", "class_id", "display", "pract_id", "wage_id",
    "client_id", "client_due_id", "cancel_clients", "temp", "service_id", "location_id",
    "recurr_id", "recurr_on", "qb_invoice_id", "session_status", "custom_map_id",
    "session_reminder", "session_sms", "session_description", "session_date",
    "session_start_time", "session_end_time", "session_note", "session_private_note",
    "session_other_note", "assessment_moderation", "assessment_present",
)  # fmt: skip
_ID, _CLIENT, _DATE, _END = map(
    FIELDS.index, ("id", "client_id", "session_date", "session_end_time")
)
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
FIRST_ID = 1000

# The runs of FIELDS that live in a shared profile, between the per-row fields.
_HEAD, _MIDDLE, _TAIL = slice(_ID + 1, _CLIENT), slice(_CLIENT + 1, _DATE), slice(_END + 1, None)
_ROW_JSON = (
    '{"id":"%s",%s,"client_id":"%s",%s,'
    '"session_date":"%s","session_start_time":"%s","session_end_time":"%s",%s}'
)


class _Profile(NamedTuple):
    """Values many rows share, with their JSON members pre-rendered for _ROW_JSON."""

    values: tuple[str, ...]  # in FIELDS order; the per-row fields hold placeholders
    head: str
    middle: str
    tail: str


def _members(values: tuple[str, ...], run: slice) -> str:
    return orjson.dumps(dict(zip(FIELDS[run], values[run], strict=True)))[1:-1].decode()


# A generated row is (id, client_id, date, start, end, profile): a tenth of a dict's memory and
# rendered by one string format. A row that is not plain generated data (a quirk, an edit, an
# added row) is a dict instead, replaced rather than mutated, so a page render may read it
# outside the lock. Per-row values are digits, dates and times: safe inside _ROW_JSON's quotes.
_PackedRow = tuple[str, str, str, str, str, _Profile]
Row = _PackedRow | dict[str, str]

_FIRST_DAY, _LAST_DAY = date(2021, 1, 1), date(2026, 12, 31)
# The simulated "today": later sessions are still open, earlier ones mostly saved.
_AS_OF = date(2026, 6, 30)
_DATES = [
    (_FIRST_DAY + timedelta(days=d)).isoformat() for d in range((_LAST_DAY - _FIRST_DAY).days + 1)
]
_FUTURE_FROM = (_AS_OF - _FIRST_DAY).days + 1


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60 % 24:02d}:{minutes % 60:02d}"


_TIMES = [
    (_hhmm(start), _hhmm(start + length))
    for length in range(30, 121, 15)
    for start in range(7 * 60, 21 * 60 - length + 1, 15)
]
_NUMBERS = [str(n) for n in range(1 << 16)]

_TITLES = (
    "Initial Consultation", "Follow-up Session", "Massage 60", "Physio Assessment",
    "Nutrition Coaching", "Personal Training", "Therapy Session", "Check-in Call",
)  # fmt: skip
_GROUP_TITLES = ("Open Group Session", "Yoga Flow", "Pilates Mat", "Mindfulness Circle", "HIIT")
_STAFF = ("John Doe", "Maria Lopez", "Sam Carter", "Priya Shah", "Alex Kim")
_MARKETING = ("Drop-ins welcome!", "Bring your own mat.", "Beginners welcome.")
_LONG_TEXT = ("Extended intake notes and session plan. " * 260).strip()
_NON_ASCII = (
    ("Séance de yoga 🧘 – Zoë", "Notiz für Jürgen ✓"),
    ("Консультация 🌿", "Tomás Ñúñez — café ☕"),
    ("個別セッション", "😀 Emoji-only note 🎉"),
)
_IMPOSSIBLE_DATES = ("2022-02-30", "2023-02-29", "2021-04-31", "2025-09-31")
_EMPTY_INT_FIELDS = ("client_id", "service_id", "location_id", "slots", "wage_id")


def _profile(rnd: random.Random, future: bool) -> _Profile:
    """Everything of a row except id, client, date and times, with coherent combinations."""
    multi = rnd.random() < 0.2
    status = "0" if future else rnd.choices("0123", weights=(3, 12, 8, 77))[0]
    recurring = rnd.random() < 0.3
    staff = rnd.choice(_STAFF)
    note_day = rnd.choice(_DATES)
    row = dict.fromkeys(FIELDS, "0")
    row.update(
        confirmed="1" if rnd.random() < 0.9 else "0",
        multi="1" if multi else "0",
        slots=str(rnd.randint(5, 20)) if multi else "0",
        class_id=str(rnd.randint(1, 40)) if multi else "0",
        display="1" if multi or rnd.random() < 0.7 else "0",
        pract_id=str(350 + rnd.randrange(12)),
        wage_id="0" if multi else str(rnd.randint(1, 80)),
        client_due_id="0" if multi else str(rnd.randint(1000, 999_999)),
        cancel_clients=_cancellations(rnd) if multi and rnd.random() < 0.35 else "",
        temp=str(rnd.randint(FIRST_ID, 900_000)) if rnd.random() < 0.02 else "0",
        service_id=str(rnd.randint(10, 40)),
        location_id=str(rnd.randint(20, 27)),
        recurr_id=str(rnd.randint(1, 5000)) if recurring else "0",
        recurr_on="1" if recurring else "0",
        qb_invoice_id=str(rnd.randint(10_000, 99_999))
        if status == "3" and rnd.random() < 0.5
        else "0",
        session_status=status,
        custom_map_id=str(rnd.randint(1, 9)) if rnd.random() < 0.1 else "0",
        session_reminder="0" if future else rnd.choice("01"),
        session_sms="0" if future else rnd.choice("001"),
        session_description=rnd.choice(_GROUP_TITLES if multi else _TITLES),
        session_note=f"This is a public session note | {staff} {note_day} | 11:25 am PDT"
        if rnd.random() < 0.3
        else "",
        session_private_note=f"{staff} {note_day} | 8:28 am PDT | Added by administrator"
        if rnd.random() < 0.5
        else "",
        session_other_note=rnd.choice(_MARKETING) if multi and rnd.random() < 0.5 else "",
        assessment_moderation="1" if rnd.random() < 0.1 else "0",
        assessment_present="1" if rnd.random() < 0.4 else "0",
    )
    values = tuple(row[name] for name in FIELDS)
    return _Profile(values, *(_members(values, run) for run in (_HEAD, _MIDDLE, _TAIL)))


def _cancellation(rnd: random.Random) -> str:
    return f"{rnd.randint(1, 5000)}|{rnd.randint(1000, 9999)}|{rnd.randint(400_000, 999_999)}"


def _cancellations(rnd: random.Random) -> str:
    return ",".join(_cancellation(rnd) for _ in range(rnd.randint(1, 3)))


def _dst_wall_times(zone: ZoneInfo) -> tuple[list[datetime], list[datetime]]:
    """15-minute wall times in 2021-2026 that do not exist (gap) or exist twice (overlap)."""
    gaps: list[datetime] = []
    overlaps: list[datetime] = []
    noon = datetime.combine(_FIRST_DAY, time(12))
    offset = noon.replace(tzinfo=zone).utcoffset()
    while noon.date() < _LAST_DAY:
        following = noon + timedelta(days=1)
        next_offset = following.replace(tzinfo=zone).utcoffset()
        if next_offset != offset:
            wall = noon
            while wall < following:
                first, second = wall.replace(tzinfo=zone), wall.replace(tzinfo=zone, fold=1)
                if first.utcoffset() != second.utcoffset():
                    back = first.astimezone(UTC).astimezone(zone).replace(tzinfo=None)
                    (overlaps if back == wall else gaps).append(wall)
                wall += timedelta(minutes=15)
        noon, offset = following, next_offset
    return gaps, overlaps


Quirk = Callable[[dict[str, str], random.Random], dict[str, str]]


def _at(walls: list[datetime]) -> Quirk:
    def quirk(row: dict[str, str], rnd: random.Random) -> dict[str, str]:
        wall = rnd.choice(walls)
        row["session_date"] = wall.date().isoformat()
        row["session_start_time"] = wall.strftime("%H:%M")
        row["session_end_time"] = (wall + timedelta(minutes=30)).strftime("%H:%M")
        return row

    return quirk


def _zero_date(row: dict[str, str], rnd: random.Random) -> dict[str, str]:
    row["session_date"] = "0000-00-00"
    return row


def _impossible_date(row: dict[str, str], rnd: random.Random) -> dict[str, str]:
    row["session_date"] = rnd.choice(_IMPOSSIBLE_DATES)
    return row


def _past_midnight(row: dict[str, str], rnd: random.Random) -> dict[str, str]:
    start = rnd.choice((22 * 60 + 30, 23 * 60, 23 * 60 + 15, 23 * 60 + 30))
    row["session_start_time"] = _hhmm(start)
    row["session_end_time"] = _hhmm(start + rnd.choice((90, 120, 150)))
    return row


def _spaced_cancellations(row: dict[str, str], rnd: random.Random) -> dict[str, str]:
    row.update(multi="1", slots="12", client_due_id="0")
    row["cancel_clients"] = f" {_cancellation(rnd)} , ,{_cancellation(rnd)},"
    return row


def _malformed_cancellations(row: dict[str, str], rnd: random.Random) -> dict[str, str]:
    client, due, temp = _cancellation(rnd).split("|")
    bad = rnd.choice((f"{client}|{due}", f"abc|{due}|{temp}", f"{client}||{temp}"))
    row.update(multi="1", slots="10", client_due_id="0")
    row["cancel_clients"] = rnd.choice((bad, f"{_cancellation(rnd)},{bad}"))
    return row


def _unknown_status(row: dict[str, str], rnd: random.Random) -> dict[str, str]:
    row["session_status"] = "7"
    return row


def _pract_d(row: dict[str, str], rnd: random.Random) -> dict[str, str]:
    return {("pract_d" if key == "pract_id" else key): value for key, value in row.items()}


def _empty_integer(row: dict[str, str], rnd: random.Random) -> dict[str, str]:
    row[rnd.choice(_EMPTY_INT_FIELDS)] = ""
    return row


def _long_description(row: dict[str, str], rnd: random.Random) -> dict[str, str]:
    row["session_description"] = _LONG_TEXT
    return row


def _non_ascii(row: dict[str, str], rnd: random.Random) -> dict[str, str]:
    row["session_description"], row["session_note"] = rnd.choice(_NON_ASCII)
    return row


def _quirks(zone: str) -> list[Quirk]:
    """Every messy-row kind; the DST ones only where the zone has DST in 2021-2026."""
    gaps, overlaps = _dst_wall_times(ZoneInfo(zone))
    dst = [_at(walls) for walls in (gaps, overlaps) if walls]
    return [
        _zero_date, _impossible_date, *dst, _past_midnight, _spaced_cancellations,
        _malformed_cancellations, _unknown_status, _pract_d, _empty_integer, _long_description,
        _non_ascii,
    ]  # fmt: skip


def _as_dict(row: Row) -> dict[str, str]:
    """A fresh dict, so callers may change it without touching stored (shared) rows."""
    if type(row) is dict:
        return dict(row)
    session_id, client, day, start, end, profile = cast(_PackedRow, row)
    fields = dict(zip(FIELDS, profile.values, strict=True))
    fields.update(
        id=session_id,
        client_id=client,
        session_date=day,
        session_start_time=start,
        session_end_time=end,
    )
    return fields


def _row_json(row: Row) -> bytes:
    """Bytes, not str: one emoji would make the joined page a 4-byte-per-char str."""
    if type(row) is dict:
        return orjson.dumps(row)
    session_id, client, day, start, end, profile = cast(_PackedRow, row)
    text = _ROW_JSON % (
        session_id,
        profile.head,
        client,
        profile.middle,
        day,
        start,
        end,
        profile.tail,
    )
    return text.encode()


def _share(fraction: float, total: int) -> int:
    return max(1, round(fraction * total)) if fraction > 0 else 0


class Bizstim:
    """Session rows in ascending id order, served as the Bizstim REST API serves them.

    Every mutation bumps a version and drops the page cache, so a page is never stale.
    """

    def __init__(
        self, *, seed: int, sessions: int, timezone: str, api_key: str, edge_cases: bool
    ) -> None:
        self._lock = threading.RLock()
        self._seed = seed
        self._timezone = timezone
        self._api_key = api_key
        self._pages: dict[tuple[int, int], bytes] = {}
        self._hidden: dict[str, Any] = {}  # listing glitches: gone from /sessions only
        self._version = 0
        rnd = random.Random(seed)
        profiles = min(1024, max(64, sessions))
        self._past = [_profile(rnd, future=False) for _ in range(profiles)]
        self._future = [_profile(rnd, future=True) for _ in range(profiles)]
        self._clients = max(50, min(sessions // 10, len(_NUMBERS) - 1))
        self._ids, self._rows = self._generate(rnd, sessions, FIRST_ID - 1)
        if edge_cases:
            self._add_quirks(rnd, _quirks(timezone))

    def _generate(self, rnd: random.Random, count: int, last_id: int) -> tuple[array, list[Row]]:
        """A shared profile plus five per-row values: under two seconds per million rows."""
        ids = array("q")
        rows: list[Row] = []
        past, future, clients = self._past, self._future, self._clients
        dates, times, numbers, future_from = _DATES, _TIMES, _NUMBERS, _FUTURE_FROM
        bits, n_dates, n_times, n_profiles = rnd.getrandbits, len(dates), len(times), len(past)
        session_id = last_id
        for _ in range(count):
            r = bits(64)
            session_id += 1 if r & 31 else 2 + (r >> 5 & 63)  # ~3% of ids leave a gap
            day = (r >> 11 & 0x3FFF) % n_dates
            start, end = times[(r >> 53) % n_times]
            client = numbers[1 + (r >> 37 & 0xFFFF) % clients]
            profile = (future if day >= future_from else past)[(r >> 25 & 0xFFF) % n_profiles]
            rows.append((str(session_id), client, dates[day], start, end, profile))
            ids.append(session_id)
        return ids, rows

    def _add_quirks(self, rnd: random.Random, quirks: list[Quirk]) -> None:
        """Turn ~5% of rows (at least 3 per kind from ~360 rows, 1 per kind from 12) messy."""
        total = len(self._rows)
        count = min(total, len(quirks) * max(3, total // 240), max(len(quirks), total // 10))
        for n, index in enumerate(rnd.sample(range(total), count)):
            quirk = quirks[n % len(quirks)]
            self._rows[index] = quirk(_as_dict(self._rows[index]), rnd)

    # -- inspection and mutation -----------------------------------------------------------

    @property
    def timezone(self) -> str:
        return self._timezone

    @timezone.setter
    def timezone(self, zone: str) -> None:
        with self._lock:
            self._timezone = zone
            self._invalidate()

    def rows(self) -> list[dict[str, str]]:
        with self._lock:
            rows = list(self._rows)
        return [_as_dict(row) for row in rows]

    def edit(self, session_id: str, **fields: str) -> None:
        if "id" in fields:
            raise ValueError("a session's id cannot change; delete and add instead")
        with self._lock:
            index = self._index(session_id)
            row = _as_dict(self._rows[index])
            row.update(fields)
            self._rows[index] = row
            self._invalidate()

    def hide(self, session_id: str) -> None:
        """A listing glitch: the session drops out of `/sessions` but `/session/{id}` still
        answers it, as a live session does."""
        with self._lock:
            index = self._index(session_id)
            self._hidden[str(session_id)] = self._rows[index]
            del self._rows[index]
            del self._ids[index]
            self._invalidate()

    def delete(self, session_id: str) -> None:
        with self._lock:
            index = self._index(session_id)
            del self._rows[index]
            del self._ids[index]
            self._invalidate()

    def add(self, row: dict | None = None, drop: tuple[str, ...] = ()) -> str:
        """Add a session; fields of `row` override a generated one (an `id` places it).

        Values need not be strings and `drop` removes fields, for tests of malformed input.
        """
        with self._lock:
            last_id = self._ids[-1] if self._ids else FIRST_ID - 1
            rnd = random.Random(f"{self._seed}:add:{last_id}:{len(self._ids)}")
            _, (generated,) = self._generate(rnd, 1, last_id)
            new = _as_dict(generated)
            new.update(row or {})
            session_id = int(new["id"])
            new["id"] = str(session_id)
            for field in drop:
                new.pop(field, None)
            index = bisect_left(self._ids, session_id)
            if index < len(self._ids) and self._ids[index] == session_id:
                raise ValueError(f"session {session_id} already exists")
            self._ids.insert(index, session_id)
            self._rows.insert(index, new)
            self._invalidate()
            return new["id"]

    def night_of_changes(
        self, edit: float = 0.01, delete: float = 0.001, new: float = 0.005, seed: int = 1
    ) -> dict:
        """What a night at the practice does: status and note edits, deletions, bookings."""
        rnd = random.Random(f"{self._seed}:night:{seed}")
        with self._lock:
            total = len(self._rows)
            n_edit = min(total, _share(edit, total))
            n_delete = min(total - n_edit, _share(delete, total))
            picked = rnd.sample(range(total), n_edit + n_delete)
            edited = []
            for index in sorted(picked[:n_edit]):
                row = _as_dict(self._rows[index])
                row["session_status"] = rnd.choice(
                    [s for s in "0123" if s != row.get("session_status")]
                )
                note = row.get("session_private_note", "")
                update = f"Updated by administrator (night {seed})"
                row["session_private_note"] = f"{note} | {update}" if note else update
                self._rows[index] = row
                edited.append(row["id"])
            gone = set(picked[n_edit:])
            deleted = [str(self._ids[index]) for index in sorted(gone)]
            if gone:
                self._rows = [row for i, row in enumerate(self._rows) if i not in gone]
                self._ids = array("q", (x for i, x in enumerate(self._ids) if i not in gone))
            last_id = self._ids[-1] if self._ids else FIRST_ID - 1
            ids, rows = self._generate(rnd, _share(new, total), last_id)
            self._ids.extend(ids)
            self._rows.extend(rows)
            self._invalidate()
        return {"edited": edited, "deleted": deleted, "added": [str(i) for i in ids]}

    def _index(self, session_id: str) -> int:
        try:
            wanted = int(session_id)
        except ValueError:
            raise KeyError(session_id) from None
        index = bisect_left(self._ids, wanted)
        if index == len(self._ids) or self._ids[index] != wanted:
            raise KeyError(session_id)
        return index

    def _invalidate(self) -> None:
        self._version += 1
        self._pages.clear()

    # -- HTTP ------------------------------------------------------------------------------

    def handle(self, method: str, parts: list[str], query: dict, headers: Message) -> Reply:
        if headers.get("x-api-key") != self._api_key:
            return self.unauthorized()
        if method != "GET":
            return self.error(405, "Method not allowed")
        match parts:
            case ["sessions", *params] if len(params) <= 2:
                if not all(p.isascii() and p.isdigit() for p in params):
                    return self.error(400, "Invalid parameter")
                start = int(params[0]) if params else 0
                limit = min(int(params[1]), MAX_LIMIT) if len(params) == 2 else DEFAULT_LIMIT
                return Reply(200, self._page(start, limit))
            case ["session", session_id]:
                with self._lock:
                    try:
                        row = self._rows[self._index(session_id)]
                    except KeyError:
                        if session_id not in self._hidden:
                            return self.error(404, "Session not found")
                        row = self._hidden[session_id]
                    zone = self._timezone
                body = {"status": "success", "timezone": zone, "response": _as_dict(row)}
                return json_reply(200, body)
        return self.error(404, "Unknown method")

    def _page(self, start: int, limit: int) -> bytes:
        """Rendered outside the lock, so cached pages keep flowing while a new one renders."""
        with self._lock:
            body = self._pages.get((start, limit))
            if body is not None:
                return body
            version = self._version
            chunk = self._rows[start : start + limit]
            total, zone = len(self._rows), orjson.dumps(self._timezone).decode()
        head = f'{{"status":"success","total":{total},"timezone":{zone},"response":['
        body = b"".join((head.encode(), b",".join(map(_row_json, chunk)), b"]}"))
        with self._lock:
            if version == self._version:
                self._pages[(start, limit)] = body
        return body

    def error(self, status: int, message: str) -> Reply:
        return json_reply(status, {"status": "failure", "response": message})

    def unauthorized(self) -> Reply:
        return self.error(401, "Invalid API key")

    def empty(self) -> Reply:
        body = {"status": "success", "total": 0, "timezone": self._timezone, "response": []}
        return json_reply(200, body)
