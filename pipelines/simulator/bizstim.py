"""Bizstim's sessions API: seeded rows, the mutations tests script, and cached page bodies.

Rows live in `rowstore.Columns` (16 bytes a generated row) and pages are rendered when asked for,
so 5,000,000 sessions need ~100 MB rather than gigabytes; the same seed gives the same rows as
when every row was a Python tuple.
"""

from __future__ import annotations

import random
import threading
from bisect import bisect_left
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from email.message import Message
from typing import Any, NamedTuple, cast
from zoneinfo import ZoneInfo

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from .reply import Reply, json_reply
from .rowstore import Columns, PageCache, PageFile, arrow, bits, draws, modulo

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
# Enough for every page a test or a small sweep asks for; a bigger sweep renders as it goes.
PAGE_CACHE_BYTES = 64 << 20

# The runs of FIELDS that live in a shared profile, between the per-row fields. A generated row
# renders as '{"id":"<id>",<head>,"client_id":"<client>",<middle>,"session_date":"<date>",
# "session_start_time":"<start>","session_end_time":"<end>",<tail>}'; per-row values are
# digits, dates and times, safe inside the quotes.
_HEAD, _MIDDLE, _TAIL = slice(_ID + 1, _CLIENT), slice(_CLIENT + 1, _DATE), slice(_END + 1, None)


class _Profile(NamedTuple):
    """Values many rows share, with their JSON members pre-rendered."""

    values: tuple[str, ...]  # in FIELDS order; the per-row fields hold placeholders
    head: str
    middle: str
    tail: str


def _members(values: tuple[str, ...], run: slice) -> str:
    return orjson.dumps(dict(zip(FIELDS[run], values[run], strict=True)))[1:-1].decode()


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


def _text(values: list[str]) -> pa.Array:
    return pa.array([value.encode() for value in values], pa.binary())


# The JSON of the per-row values, with the fixed text that follows each (see _HEAD's comment).
_OPEN = pa.scalar(b'{"id":"', pa.binary())
_CLIENT_TEXT = _text(_NUMBERS)
_DATE_TEXT = _text([f'{day}","session_start_time":"' for day in _DATES])
_SLOT_TEXT = _text([f'{start}","session_end_time":"{end}' for start, end in _TIMES])
_U64 = pa.uint64()


class _Fragments(NamedTuple):
    """Each profile's JSON between the per-row values, indexed by a row's kind. The entry past
    the last profile is empty: it is the kind of a row kept whole, which replaces its render."""

    head: pa.Array
    middle: pa.Array
    tail: pa.Array


def _fragments(profiles: list[_Profile]) -> _Fragments:
    return _Fragments(
        _text([f'",{p.head},"client_id":"' for p in profiles] + [""]),
        _text([f'",{p.middle},"session_date":"' for p in profiles] + [""]),
        _text([f'",{p.tail}}},' for p in profiles] + [""]),
    )


def _render(rows: Columns, fragments: _Fragments, whole: list[bytes], kind: int) -> memoryview:
    """The rows' JSON objects joined by commas: one C++ kernel call per column (~0.3 ms for
    1000 rows) where a Python format per row took ~0.8 ms. `whole` holds, in row order, the
    JSON (with its comma) of the rows of `kind`, which are kept whole rather than generated."""
    if not len(rows):
        return memoryview(b"")
    kinds = arrow(rows.kinds, pa.uint16())
    ids = pc.cast(pc.cast(arrow(rows.ids, pa.int64()), pa.string()), pa.binary())
    text = pc.binary_join_element_wise(
        _OPEN,
        ids,
        fragments.head.take(kinds),
        _CLIENT_TEXT.take(arrow(rows.clients, pa.uint16())),
        fragments.middle.take(kinds),
        _DATE_TEXT.take(arrow(rows.days, pa.uint16())),
        _SLOT_TEXT.take(arrow(rows.slots, pa.uint16())),
        fragments.tail.take(kinds),
        b"",
    )
    if whole:
        mask = pc.equal(kinds, pa.scalar(kind, pa.uint16()))
        text = pc.replace_with_mask(text, mask, pa.array(whole, pa.binary()))
    _, offsets, data = text.buffers()
    bounds = memoryview(offsets).cast("i")  # int32 offsets of the binary array's values
    first, last = bounds[text.offset], bounds[text.offset + len(text)]
    return memoryview(data)[first : last - 1]  # without the last row's comma


def _json(row: dict[str, Any]) -> bytes:
    """A row kept whole: a copy, since orjson 3.13's bytes keep its 8 kB buffer (50,000 edits
    of 5,000,000 sessions would hold 400 MB rather than 40 MB)."""
    return bytes(memoryview(orjson.dumps(row)))


def _share(fraction: float, total: int) -> int:
    return max(1, round(fraction * total)) if fraction > 0 else 0


class Bizstim:
    """Session rows in ascending id order, served as the Bizstim REST API serves them.

    A generated row is five integers in `self._rows`; a row that is not plain generated data (a
    quirk, an edit, an added row) has kind `self._whole` and its JSON in `self._overrides`,
    replaced rather than changed. Every mutation bumps a version and drops the page cache, so a
    page is never stale.
    """

    def __init__(
        self,
        *,
        seed: int,
        sessions: int,
        timezone: str,
        api_key: str,
        edge_cases: bool,
        page_cache_bytes: int = PAGE_CACHE_BYTES,
        page_file: str | None = None,
    ) -> None:
        """`page_cache_bytes` bounds the rendered pages kept in memory; `page_file` (a folder)
        keeps every rendered page in a temporary file there instead."""
        self._lock = threading.RLock()
        self._seed = seed
        self._timezone = timezone
        self._api_key = api_key
        self._pages = PageFile(page_file) if page_file else PageCache(page_cache_bytes)
        self._hidden: dict[str, bytes] = {}  # listing glitches: gone from /sessions only
        self._overrides: dict[int, bytes] = {}  # JSON of the rows kept whole, by id
        self._version = 0
        rnd = random.Random(seed)
        profiles = min(1024, max(64, sessions))
        past = [_profile(rnd, future=False) for _ in range(profiles)]
        future = [_profile(rnd, future=True) for _ in range(profiles)]
        self._profiles = past + future  # a generated row's kind indexes this list
        self._whole = len(self._profiles)
        self._fragments = _fragments(self._profiles)
        self._clients = max(50, min(sessions // 10, len(_NUMBERS) - 1))
        self._rows = self._generate(rnd, sessions, FIRST_ID - 1)
        if edge_cases:
            self._add_quirks(rnd, _quirks(timezone))

    def _generate(self, rnd: random.Random, count: int, last_id: int) -> Columns:
        """`count` rows after id `last_id`, drawn in bulk (~0.2 s per million rows)."""
        rows = Columns()
        for r in draws(rnd, count):
            rows.extend(self._split(r, rows.ids[-1] if rows.ids else last_id))
        return rows

    def _split(self, r: pa.Array, last_id: int) -> Columns:
        """One 64-bit draw per row split into id gap, day, times, client and profile, in C++:
        the same rows a per-row Python loop made from these draws."""
        per_half = len(self._profiles) // 2  # past profiles, then as many future ones
        gap = pc.equal(bits(r, 0, 31), pa.scalar(0, _U64))  # ~3% of ids leave a gap
        step = pc.if_else(gap, pc.add(bits(r, 5, 63), pa.scalar(2, _U64)), pa.scalar(1, _U64))
        ids = pc.add(pc.cumulative_sum(pc.cast(step, pa.int64())), pa.scalar(last_id, pa.int64()))
        day = modulo(bits(r, 11, 0x3FFF), len(_DATES))
        future = pc.greater_equal(day, pa.scalar(_FUTURE_FROM, _U64))
        half = pc.if_else(future, pa.scalar(per_half, _U64), pa.scalar(0, _U64))
        return Columns.from_arrow(
            [
                ids,
                pc.add(modulo(bits(r, 37, 0xFFFF), self._clients), pa.scalar(1, _U64)),
                day,
                modulo(bits(r, 53), len(_TIMES)),
                pc.add(modulo(bits(r, 25, 0xFFF), per_half), half),
            ]
        )

    def _add_quirks(self, rnd: random.Random, quirks: list[Quirk]) -> None:
        """Turn ~5% of rows (at least 3 per kind from ~360 rows, 1 per kind from 12) messy."""
        total = len(self._rows)
        count = min(total, len(quirks) * max(3, total // 240), max(len(quirks), total // 10))
        for n, index in enumerate(rnd.sample(range(total), count)):
            quirk = quirks[n % len(quirks)]
            self._keep_whole(index, quirk(self._row(index), rnd))

    def _row(self, index: int, rows: Columns | None = None) -> dict[str, str]:
        """Row `index` (of `self._rows` unless given) as a fresh dict the caller may change."""
        rows = self._rows if rows is None else rows
        session_id, kind = rows.ids[index], rows.kinds[index]
        if kind == self._whole:
            return cast(dict[str, str], orjson.loads(self._overrides[session_id]))
        fields = dict(zip(FIELDS, self._profiles[kind].values, strict=True))
        start, end = _TIMES[rows.slots[index]]
        fields.update(
            id=str(session_id),
            client_id=_NUMBERS[rows.clients[index]],
            session_date=_DATES[rows.days[index]],
            session_start_time=start,
            session_end_time=end,
        )
        return fields

    def _keep_whole(self, index: int, row: dict[str, Any]) -> None:
        self._rows.kinds[index] = self._whole
        self._overrides[self._rows.ids[index]] = _json(row)

    def _remove(self, index: int) -> None:
        self._overrides.pop(self._rows.ids[index], None)
        self._rows.delete(index)

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
        """Every listed row as a fresh dict: for tests of small simulators (a million rows
        take seconds and a gigabyte this way; the API serves them from the compact store)."""
        with self._lock:
            return [self._row(index) for index in range(len(self._rows))]

    def cached(self) -> tuple[int, int]:
        """(pages, bytes) of rendered pages held now: what the page cache or file costs."""
        with self._lock:
            return len(self._pages), self._pages.size

    def flush_pages(self) -> None:
        """Finish writing a page file to disk (see `PageFile.flush`); nothing for memory."""
        with self._lock:
            self._pages.flush()

    def edit(self, session_id: str, **fields: str) -> None:
        if "id" in fields:
            raise ValueError("a session's id cannot change; delete and add instead")
        with self._lock:
            index = self._index(session_id)
            row = self._row(index)
            row.update(fields)
            self._keep_whole(index, row)
            self._invalidate()

    def hide(self, session_id: str) -> None:
        """A listing glitch: the session drops out of `/sessions` but `/session/{id}` still
        answers it, as a live session does."""
        with self._lock:
            index = self._index(session_id)
            self._hidden[str(session_id)] = _json(self._row(index))
            self._remove(index)
            self._invalidate()

    def delete(self, session_id: str) -> None:
        with self._lock:
            self._remove(self._index(session_id))
            self._invalidate()

    def add(self, row: dict | None = None, drop: tuple[str, ...] = ()) -> str:
        """Add a session; fields of `row` override a generated one (an `id` places it).

        Values need not be strings and `drop` removes fields, for tests of malformed input.
        """
        with self._lock:
            ids = self._rows.ids
            last_id = ids[-1] if ids else FIRST_ID - 1
            rnd = random.Random(f"{self._seed}:add:{last_id}:{len(ids)}")
            new: dict[str, Any] = self._row(0, self._generate(rnd, 1, last_id))
            new.update(row or {})
            session_id = int(new["id"])
            new["id"] = str(session_id)
            for field in drop:
                new.pop(field, None)
            index = bisect_left(ids, session_id)
            if index < len(ids) and ids[index] == session_id:
                raise ValueError(f"session {session_id} already exists")
            body = _json(new)  # before the insert: a value JSON cannot hold fails here
            self._rows.insert(index, session_id, self._whole)
            self._overrides[session_id] = body
            self._invalidate()
            return new["id"]

    def night_of_changes(
        self, edit: float = 0.01, delete: float = 0.001, new: float = 0.005, seed: int = 1
    ) -> dict:
        """What a night at the practice does: status and note edits, deletions, bookings."""
        rnd = random.Random(f"{self._seed}:night:{seed}")
        with self._lock:
            rows = self._rows
            total = len(rows)
            n_edit = min(total, _share(edit, total))
            n_delete = min(total - n_edit, _share(delete, total))
            picked = rnd.sample(range(total), n_edit + n_delete)
            edited = [self._edit_overnight(i, rnd, seed) for i in sorted(picked[:n_edit])]
            gone = sorted(picked[n_edit:])
            deleted = [str(rows.ids[index]) for index in gone]
            for index in gone:
                self._overrides.pop(rows.ids[index], None)
            rows.drop(gone)
            last_id = rows.ids[-1] if rows.ids else FIRST_ID - 1
            added = self._generate(rnd, _share(new, total), last_id)
            rows.extend(added)
            self._invalidate()
        return {"edited": edited, "deleted": deleted, "added": [str(i) for i in added.ids]}

    def _edit_overnight(self, index: int, rnd: random.Random, night: int) -> str:
        row = self._row(index)
        row["session_status"] = rnd.choice([s for s in "0123" if s != row.get("session_status")])
        note = row.get("session_private_note", "")
        update = f"Updated by administrator (night {night})"
        row["session_private_note"] = f"{note} | {update}" if note else update
        self._keep_whole(index, row)
        return row["id"]

    def _index(self, session_id: str) -> int:
        try:
            wanted = int(session_id)
        except ValueError:
            raise KeyError(session_id) from None
        ids = self._rows.ids
        index = bisect_left(ids, wanted)
        if index == len(ids) or ids[index] != wanted:
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
                        row = self._row(self._index(session_id))
                    except KeyError:
                        if session_id not in self._hidden:
                            return self.error(404, "Session not found")
                        row = orjson.loads(self._hidden[session_id])
                    zone = self._timezone
                body = {"status": "success", "timezone": zone, "response": row}
                return json_reply(200, body)
        return self.error(404, "Unknown method")

    def _page(self, start: int, limit: int) -> bytes:
        """Rendered outside the lock, so cached pages keep flowing while a new one renders."""
        with self._lock:
            body = self._pages.get((start, limit))
            if body is not None:
                return body
            version = self._version
            rows = self._rows.slice(start, start + limit)
            whole = self._whole_json(rows)
            total, zone = len(self._rows), orjson.dumps(self._timezone).decode()
        head = f'{{"status":"success","total":{total},"timezone":{zone},"response":['
        text = _render(rows, self._fragments, whole, self._whole)
        body = b"".join((head.encode(), text, b"]}"))
        with self._lock:
            if version == self._version:
                self._pages.put((start, limit), body)
        return body

    def _whole_json(self, rows: Columns) -> list[bytes]:
        """The JSON, each with a comma, of the rows in `rows` kept whole, in row order."""
        kinds, whole = rows.kinds, self._whole
        found, index = [], -1
        for _ in range(kinds.count(whole)):
            index = kinds.index(whole, index + 1)
            found.append(self._overrides[rows.ids[index]] + b",")
        return found

    def error(self, status: int, message: str) -> Reply:
        return json_reply(status, {"status": "failure", "response": message})

    def unauthorized(self) -> Reply:
        return self.error(401, "Invalid API key")

    def empty(self) -> Reply:
        body = {"status": "success", "total": 0, "timezone": self._timezone, "response": []}
        return json_reply(200, body)
