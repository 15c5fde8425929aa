"""The API simulator, exercised over real sockets the way the pipeline's clients will use it."""

from __future__ import annotations

import hashlib
import random
import re
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
from array import array
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import requests
from conftest import spawn

from practice_sync.simulator import Fault, Simulator
from practice_sync.simulator.bizstim import FIRST_ID
from practice_sync.simulator.rowstore import Columns, PageCache, draws

BIZSTIM_KEY = "sim-bizstim-key-0000000000000000000000000"
TIMETAP_KEY = "sim-timetap-api-key"
TIMETAP_PRIVATE = "sim-timetap-private-key"
SIGNATURE = hashlib.md5((TIMETAP_KEY + TIMETAP_PRIVATE).encode()).hexdigest()
FIELDS = [
    "id", "confirmed", "multi", "slots", "class_id", "display", "pract_id", "wage_id",
    "client_id", "client_due_id", "cancel_clients", "temp", "service_id", "location_id",
    "recurr_id", "recurr_on", "qb_invoice_id", "session_status", "custom_map_id",
    "session_reminder", "session_sms", "session_description", "session_date",
    "session_start_time", "session_end_time", "session_note", "session_private_note",
    "session_other_note", "assessment_moderation", "assessment_present",
]  # fmt: skip
INT_FIELDS = [
    "confirmed", "multi", "slots", "class_id", "display", "pract_id", "wage_id", "client_id",
    "client_due_id", "service_id", "location_id", "recurr_id", "recurr_on", "session_status",
    "custom_map_id", "session_reminder", "session_sms", "assessment_moderation",
    "assessment_present",
]  # fmt: skip
QUIRKS = {
    "zero_date", "impossible_date", "dst_gap", "dst_overlap", "past_midnight", "cancel_spaces",
    "cancel_malformed", "unknown_status", "pract_d", "empty_int", "long_text", "non_ascii",
}  # fmt: skip
ROOT = Path(__file__).resolve().parents[1]


def biz(sim: Simulator, path: str, key: str = BIZSTIM_KEY) -> requests.Response:
    return requests.get(sim.bizstim_url + path, headers={"x-api-key": key}, timeout=10)


def token(sim: Simulator) -> str:
    params = {"apiKey": TIMETAP_KEY, "timestamp": int(time.time()), "signature": SIGNATURE}
    response = requests.get(sim.timetap_url + "/sessionToken", params=params, timeout=10)
    assert response.status_code == 200
    return response.json()["sessionToken"]


def tt(sim: Simulator, path: str, session_token: str) -> requests.Response:
    headers = {"Authorization": f"Bearer {session_token}"}
    return requests.get(sim.timetap_url + path, headers=headers, timeout=10)


def sweep(sim: Simulator) -> list[dict]:
    rows: list[dict] = []
    while True:
        body = biz(sim, f"/sessions/{len(rows)}/1000").json()
        rows += body["response"]
        if len(rows) >= body["total"]:
            return rows


def dst_kind(zone: ZoneInfo, day: str, hhmm: str) -> str | None:
    wall = datetime.fromisoformat(f"{day}T{hhmm}")
    first, second = wall.replace(tzinfo=zone), wall.replace(tzinfo=zone, fold=1)
    if first.utcoffset() == second.utcoffset():
        return None
    back = first.astimezone(UTC).astimezone(zone).replace(tzinfo=None)
    return "dst_overlap" if back == wall else "dst_gap"


def quirks(row: dict[str, str], zone: ZoneInfo) -> set[str]:
    """What is messy about a row, judged from the documented format alone."""
    found = set()
    day, start, end = row["session_date"], row["session_start_time"], row["session_end_time"]
    if day == "0000-00-00":
        found.add("zero_date")
    else:
        try:
            date.fromisoformat(day)
        except ValueError:
            found.add("impossible_date")
        else:
            found |= {dst_kind(zone, day, start)} - {None}
    if end < start:
        found.add("past_midnight")
    entries = row["cancel_clients"].split(",") if row["cancel_clients"] else []
    if any(e != e.strip() or not e.strip() for e in entries):
        found.add("cancel_spaces")
    if any(e.strip() and not re.fullmatch(r"\d+\|\d+\|\d+", e.strip()) for e in entries):
        found.add("cancel_malformed")
    if row["session_status"] not in {"0", "1", "2", "3"}:
        found.add("unknown_status")
    if "pract_d" in row:
        found.add("pract_d")
    if any(row.get(f) == "" for f in INT_FIELDS):
        found.add("empty_int")
    if len(row["session_description"]) >= 10_000:
        found.add("long_text")
    if not all(value.isascii() for value in row.values()):
        found.add("non_ascii")
    return found


@pytest.fixture(scope="module")
def sim():
    with Simulator() as running:
        yield running


@pytest.fixture
def fresh():
    with Simulator(sessions=300, clients=60, packages=10) as running:
        yield running


# -- Bizstim ------------------------------------------------------------------------------


def test_bizstim_paging_defaults_cap_and_strings():
    with Simulator(sessions=2500, edge_cases=False) as sim:
        default = biz(sim, "/sessions").json()
        assert default["status"] == "success" and default["total"] == 2500
        assert default["timezone"] == "America/Los_Angeles"
        assert len(default["response"]) == 100 and default["response"][0]["id"] == "1000"
        assert len(biz(sim, "/sessions/2450").json()["response"]) == 50
        capped = biz(sim, "/sessions/0/5000?format=json").json()
        assert len(capped["response"]) == 1000
        assert len(biz(sim, "/sessions/2000/1000/").json()["response"]) == 500
        assert biz(sim, "/sessions/3000/10").json()["response"] == []
        rows = sweep(sim)
        assert rows == sim.bizstim.rows()
    ids = [int(row["id"]) for row in rows]
    assert ids == sorted(set(ids)) and max(ids) - min(ids) + 1 > len(ids)  # ascending, with gaps
    assert all(list(row) == FIELDS for row in rows)
    assert all(isinstance(value, str) for row in rows for value in row.values())
    assert isinstance(capped["total"], int)


def test_bizstim_single_session_errors_and_auth(sim):
    row = sim.bizstim.rows()[10]
    one = biz(sim, f"/session/{row['id']}").json()
    assert one == {"status": "success", "timezone": "America/Los_Angeles", "response": row}
    missing = biz(sim, "/session/1")
    assert missing.status_code == 404
    assert missing.json() == {"status": "failure", "response": "Session not found"}
    for response in (
        biz(sim, "/sessions", key="wrong"),
        requests.get(sim.bizstim_url + "/sessions"),
    ):
        assert response.status_code == 401
        assert response.json() == {"status": "failure", "response": "Invalid API key"}
    unknown = biz(sim, "/practitioners/0/10")
    assert unknown.status_code == 404 and unknown.json()["status"] == "failure"
    assert biz(sim, "/sessions/abc/10").status_code == 400


def test_bizstim_data_is_realistic():
    with Simulator(sessions=3000, edge_cases=False) as sim:
        rows = sim.bizstim.rows()
    zone = ZoneInfo("America/Los_Angeles")
    assert all(quirks(row, zone) == set() for row in rows)
    years = Counter(row["session_date"][:4] for row in rows)
    assert set(years) == {"2021", "2022", "2023", "2024", "2025", "2026"}
    for row in rows:
        start, end = (
            int(t[:2]) * 60 + int(t[3:])
            for t in (row["session_start_time"], row["session_end_time"])
        )
        assert start % 15 == 0 and 7 * 60 <= start and end <= 21 * 60 and 30 <= end - start <= 120
    groups = [row for row in rows if row["multi"] == "1"]
    assert 0.15 < len(groups) / len(rows) < 0.25
    assert all(5 <= int(row["slots"]) <= 20 for row in groups)
    cancelled = [row["cancel_clients"] for row in rows if row["cancel_clients"]]
    assert cancelled and all(row["multi"] == "1" for row in rows if row["cancel_clients"])
    assert Counter(row["session_status"] for row in rows).keys() == {"0", "1", "2", "3"}


def test_bizstim_edge_cases_present_and_rare(sim):
    rows = sim.bizstim.rows()
    found = [quirks(row, ZoneInfo("America/Los_Angeles")) for row in rows]
    counts = Counter(kind for kinds in found for kind in kinds)
    assert set(counts) == QUIRKS
    assert min(counts.values()) >= 3, counts
    assert 0.03 <= sum(1 for kinds in found if kinds) / len(rows) <= 0.08
    assert sweep(sim) == rows  # served exactly as listed, non-ASCII and 10k-char text included


def test_bizstim_dst_rows_follow_the_account_zone():
    for zone_name in ("Europe/Berlin", "Australia/Sydney"):
        with Simulator(sessions=400, timezone=zone_name) as sim:
            assert biz(sim, "/sessions/0/1").json()["timezone"] == zone_name
            kinds = Counter(k for row in sweep(sim) for k in quirks(row, ZoneInfo(zone_name)))
        assert kinds["dst_gap"] >= 3 and kinds["dst_overlap"] >= 3, (zone_name, kinds)
    utc = Simulator(sessions=400, timezone="UTC")
    assert all(
        quirks(row, ZoneInfo("UTC")).isdisjoint({"dst_gap", "dst_overlap"})
        for row in utc.bizstim.rows()
    )


def test_bizstim_mutations_are_served(fresh):
    sim = fresh
    first_page = biz(sim, "/sessions/0/1000").json()  # now cached
    target = first_page["response"][5]["id"]
    sim.bizstim.edit(target, session_status="1", session_note="moved")
    assert biz(sim, f"/session/{target}").json()["response"]["session_note"] == "moved"
    assert biz(sim, "/sessions/0/1000").json()["response"][5]["session_status"] == "1"

    sim.bizstim.delete(target)
    assert biz(sim, f"/session/{target}").status_code == 404
    assert biz(sim, "/sessions/0/1000").json()["total"] == first_page["total"] - 1

    added = sim.bizstim.add()
    assert int(added) > int(first_page["response"][-1]["id"])
    custom = sim.bizstim.add({"session_date": "2026-12-24", "session_description": "Xmas"})
    served = biz(sim, f"/session/{custom}").json()["response"]
    assert served["session_date"] == "2026-12-24" and list(served) == FIELDS
    assert sim.bizstim.add({"id": "5"}) == "5" and sim.bizstim.rows()[0]["id"] == "5"
    with pytest.raises(ValueError):
        sim.bizstim.add({"id": added})
    with pytest.raises(KeyError):
        sim.bizstim.delete("999999999")

    sim.bizstim.timezone = "Europe/Berlin"
    assert biz(sim, "/sessions/0/1000").json()["timezone"] == "Europe/Berlin"


def test_bizstim_night_of_changes(fresh):
    sim = fresh
    before = {row["id"]: row for row in sweep(sim)}
    changes = sim.bizstim.night_of_changes(edit=0.02, delete=0.01, new=0.01, seed=3)
    assert {k: len(v) for k, v in changes.items()} == {"edited": 6, "deleted": 3, "added": 3}
    after = {row["id"]: row for row in sweep(sim)}
    assert set(before) - set(after) == set(changes["deleted"])
    assert set(after) - set(before) == set(changes["added"])
    for session_id in changes["edited"]:
        assert after[session_id]["session_status"] != before[session_id]["session_status"]
        assert after[session_id]["session_private_note"].endswith("(night 3)")
    tiny = sim.bizstim.night_of_changes(edit=0.0001, delete=0.0001, new=0.0001)
    assert [len(v) for v in tiny.values()] == [1, 1, 1]
    assert sim.bizstim.night_of_changes(edit=0, delete=0, new=0) == {
        "edited": [],
        "deleted": [],
        "added": [],
    }


def test_concurrent_reads_during_mutations(fresh):
    sim = fresh
    stop = threading.Event()

    def read(_: int) -> int:
        pages = 0
        with requests.Session() as session:
            session.headers["x-api-key"] = BIZSTIM_KEY
            while not stop.is_set():
                body = session.get(sim.bizstim_url + "/sessions/0/1000", timeout=10).json()
                assert len(body["response"]) == body["total"]
                pages += 1
        return pages

    with ThreadPoolExecutor(4) as pool:
        readers = [pool.submit(read, n) for n in range(4)]
        for night in range(20):
            sim.bizstim.night_of_changes(seed=night)
        stop.set()
        assert all(reader.result() > 0 for reader in readers)


def test_bizstim_serves_the_same_bytes_for_the_same_seed():
    # sha256 prefixes of the bodies the simulator served when every row was a Python object:
    # the compact store must keep every seed's data (and each quirk) byte for byte
    def digest(sim: Simulator, path: str) -> str:
        return hashlib.sha256(biz(sim, path).content).hexdigest()[:16]

    with Simulator(sessions=500) as sim:
        assert digest(sim, "/sessions/0/1000") == "db6e3420f0f192c2"
        sim.bizstim.night_of_changes(edit=0.02, delete=0.01, new=0.01, seed=3)
        assert digest(sim, "/sessions/0/1000") == "8d228fadf643b525"
    with Simulator(sessions=5000, edge_cases=False) as sim:
        assert digest(sim, "/sessions/999/1000") == "8484efb144c2aebd"
        assert digest(sim, "/sessions/4995/1000") == "cb110cdad001e20e"


def test_bizstim_page_cache_is_bounded_and_never_stale():
    with Simulator(sessions=20_000, edge_cases=False, page_cache_bytes=2_000_000) as sim:
        rows = sweep(sim)
        pages, size = sim.bizstim.cached()
        assert 1 <= pages <= 3 and 0 < size <= 2_000_000  # a page is ~660 kB
        assert sweep(sim) == rows == sim.bizstim.rows()
        last = rows[-1]["id"]
        cached = biz(sim, "/sessions/19000/1000").json()
        sim.bizstim.edit(last, session_note="edited after caching")
        assert sim.bizstim.cached() == (0, 0)
        fresh = biz(sim, "/sessions/19000/1000").json()
        assert fresh["response"][-1]["session_note"] == "edited after caching"
        assert fresh["response"][:-1] == cached["response"][:-1]
    with Simulator(sessions=500, page_cache_bytes=0) as sim:
        assert sweep(sim) == sim.bizstim.rows() and sim.bizstim.cached() == (0, 0)


def test_bizstim_page_file_keeps_every_page_out_of_memory(tmp_path):
    folder = tmp_path / "pages"
    folder.mkdir()
    with (
        Simulator(sessions=3000, page_file=str(folder)) as sim,
        Simulator(sessions=3000) as plain,
    ):
        starts = range(0, 3000, 999)
        bodies = [biz(sim, f"/sessions/{start}/1000").content for start in starts]
        assert bodies == [biz(plain, f"/sessions/{start}/1000").content for start in starts]
        assert sim.bizstim.cached() == (4, sum(map(len, bodies)))
        sim.bizstim.flush_pages()  # on disk now; still served from the file
        assert [biz(sim, f"/sessions/{start}/1000").content for start in starts] == bodies
        sim.bizstim.delete(sim.bizstim.rows()[0]["id"])
        assert sim.bizstim.cached() == (0, 0)
        assert biz(sim, "/sessions/0/1000").json()["response"] == sim.bizstim.rows()[:1000]
        assert list(folder.iterdir()) == []  # an unlinked file: nothing to clean up


def test_row_store_draws_the_same_stream_and_keeps_columns_aligned():
    stream = random.Random(5)
    expected = [stream.getrandbits(64) for _ in range((1 << 16) + 3)]
    drawn = random.Random(5)
    assert [v for chunk in draws(drawn, (1 << 16) + 3) for v in chunk.to_pylist()] == expected
    assert drawn.getrandbits(64) == stream.getrandbits(64)  # and leaves the same state
    columns = Columns([array(code, range(10, 20)) for code, _ in Columns.TYPES])
    columns.drop([0, 4, 5, 9])
    assert [list(a) for a in columns.arrays] == [[11, 12, 13, 16, 17, 18]] * 5
    columns.insert(2, 99, 7)
    assert [columns.ids[2], columns.clients[2], columns.kinds[2], len(columns)] == [99, 0, 7, 7]
    cache = PageCache(budget=10)
    for key, body in (((0, 1), b"aaaa"), ((1, 1), b"bbbb"), ((0, 1), b"aaaa"), ((2, 1), b"cc")):
        if cache.get(key) is None:
            cache.put(key, body)
    cache.put((3, 1), b"dddd")  # over budget: the least recently used page (1, 1) goes
    assert [cache.get((n, 1)) for n in range(4)] == [b"aaaa", None, b"cc", b"dddd"]
    assert (len(cache), cache.size) == (3, 10)
    cache.put((4, 1), b"x" * 11)  # bigger than the whole budget: not kept
    assert (len(cache), cache.size) == (3, 10)


# -- TimeTap ------------------------------------------------------------------------------


def test_timetap_token_handshake_and_expiry(sim):
    url = sim.timetap_url + "/sessionToken"
    now = int(time.time())
    bad = [
        {"apiKey": TIMETAP_KEY, "timestamp": now, "signature": "0" * 32},
        {"apiKey": "other", "timestamp": now, "signature": SIGNATURE},
        {"apiKey": TIMETAP_KEY, "timestamp": now, "signature": SIGNATURE, "privateKey": "x"},
        {"apiKey": TIMETAP_KEY, "signature": SIGNATURE},
    ]
    for params in bad:
        assert requests.get(url, params=params, timeout=10).status_code == 401
    assert requests.get(url, params=bad[0], timeout=10).json() == {"error": "Invalid signature"}

    session_token = token(sim)
    assert session_token.startswith("st:api:api:")
    assert tt(sim, "/package", session_token).status_code == 200
    unauthorized = requests.get(sim.timetap_url + "/package", timeout=10)
    assert unauthorized.status_code == 401 and unauthorized.json() == {"error": "Unauthorized"}
    assert tt(sim, "/package", "st:api:api:forged").status_code == 401

    sim.timetap.expire_tokens()
    assert tt(sim, "/package", session_token).status_code == 401
    assert tt(sim, "/package", token(sim)).status_code == 200


def test_timetap_endpoints_match_the_model(sim):
    session_token = token(sim)
    active = tt(sim, "/package", session_token).json()
    assert active == sim.timetap.active_packages() and all(p["active"] for p in active)
    everything = sim.timetap.packages()
    retired = [p for p in everything if not p["active"]]
    assert len(everything) == 25 and 1 <= len(retired) <= 5
    assert tt(sim, f"/package/{retired[0]['packageId']}", session_token).json() == retired[0]
    assert tt(sim, "/package/1", session_token).status_code == 404
    package = active[0]
    assert {type(package[k]) for k in ("packageId", "price", "createdDate", "modifiedDate")} == {
        int
    }
    assert isinstance(package["serviceIds"], list) and isinstance(package["reasonList"], list)

    client_ids = tt(sim, "/clientIdList", session_token).json()
    assert client_ids == sim.timetap.client_ids() and len(client_ids) == 200
    assert tt(sim, "/clients/count", session_token).json() == {"count": 200}
    sold = []
    for client_id in client_ids:
        bought = tt(sim, f"/packageSold/client/{client_id}", session_token).json()
        assert len(bought) <= 3 and all(s["client"]["clientId"] == client_id for s in bought)
        sold += bought
    assert sold == sim.timetap.packages_sold()
    with_packages = sum(1 for c in client_ids if any(s["client"]["clientId"] == c for s in sold))
    assert 0.45 < with_packages / len(client_ids) < 0.75
    assert tt(sim, "/packageSold/client/42", session_token).json() == []
    low, high = 1640995200000, 1798761600000  # 2022-01-01 .. 2027-01-01
    assert all(low <= s["purchaseDate"] <= s["modifiedDate"] < high for s in sold)


def test_timetap_edge_cases(sim):
    sold = sim.timetap.packages_sold()
    assert sum(s["usedQuantity"] > s["maxQuantity"] for s in sold) >= 2
    assert sum(s["status"] == "PENDING" for s in sold) >= 2
    assert {-1, 99999999999999999} <= {s["expireDate"] for s in sold}
    assert any(p["serviceIds"] == [] for p in sim.timetap.active_packages())
    with Simulator(edge_cases=False) as clean:
        sold = clean.timetap.packages_sold()
        assert all(s["usedQuantity"] <= s["maxQuantity"] for s in sold)
        assert {s["status"] for s in sold} == {"OPEN", "CLOSED"}
        assert all(0 < s["expireDate"] < 1830297600000 for s in sold)
        assert all(p["serviceIds"] for p in clean.timetap.packages())


def test_timetap_mutations_are_served(fresh):
    sim = fresh
    session_token = token(sim)
    package = sim.timetap.active_packages()[0]
    sim.timetap.edit_package(package["packageId"], price=999)
    edited = tt(sim, f"/package/{package['packageId']}", session_token).json()
    assert edited["price"] == 999 and edited["modifiedDate"] > package["modifiedDate"]
    assert edited["modifiedDate"] >= time.time() * 1000 - 60_000

    sim.timetap.retire_package(package["packageId"])
    served = tt(sim, "/package", session_token).json()
    assert package["packageId"] not in {p["packageId"] for p in served}
    assert tt(sim, f"/package/{package['packageId']}", session_token).json()["active"] is False

    client_id = sim.timetap.add_client()
    assert client_id in tt(sim, "/clientIdList", session_token).json()
    other = sim.timetap.active_packages()[0]
    sold_id = sim.timetap.sell_package(client_id, other["packageId"])
    (sold,) = tt(sim, f"/packageSold/client/{client_id}", session_token).json()
    assert sold["packageSoldId"] == sold_id and sold["usedQuantity"] == 0
    assert sold["status"] == "OPEN" and sold["maxQuantity"] == other["quantity"]
    assert sold["pkg"]["packageId"] == other["packageId"]

    sim.timetap.use_package(sold_id, other["quantity"])
    (used,) = tt(sim, f"/packageSold/client/{client_id}", session_token).json()
    assert used["usedQuantity"] == other["quantity"] and used["status"] == "CLOSED"
    assert used["modifiedDate"] > sold["modifiedDate"]
    with pytest.raises(ValueError):
        sim.timetap.add_client(client_id)


# -- faults, latency, server --------------------------------------------------------------


def test_every_fault_kind_as_the_client_sees_it(fresh):
    sim = fresh
    page = "/sessions/0/50"

    sim.add_fault(Fault(r"/sessions/", "429", retry_after=0.5))
    sim.add_fault(Fault(r"/sessions/", "429"))
    first, second = biz(sim, page), biz(sim, page)
    assert (first.status_code, first.headers["Retry-After"]) == (429, "0.5")
    assert (second.status_code, second.headers["Retry-After"]) == (429, "1")
    for status in ("500", "502", "503"):
        sim.add_fault(Fault(r"/sessions/", status))
        assert biz(sim, page).status_code == int(status)

    sim.add_fault(Fault(r"/sessions/", "reset"))
    with pytest.raises(requests.ConnectionError):
        biz(sim, page)
    sim.add_fault(Fault(r"/sessions/", "truncate"))
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.ConnectionError)):
        biz(sim, page)

    sim.add_fault(Fault(r"/sessions/", "slow", delay=0.3))
    started = time.perf_counter()
    assert len(biz(sim, page).json()["response"]) == 50
    assert time.perf_counter() - started >= 0.3

    sim.add_fault(Fault(r"/sessions/", "badjson"))
    glitch = biz(sim, page)
    assert glitch.status_code == 200
    with pytest.raises(ValueError):
        glitch.json()
    sim.add_fault(Fault(r"/sessions/", "failure"))
    assert biz(sim, page).json() == {"status": "failure", "response": "Internal error"}
    sim.add_fault(Fault(r"/sessions/", "401"))
    assert biz(sim, page).status_code == 401
    sim.add_fault(Fault(r"/sessions/", "empty"))
    empty = biz(sim, page).json()
    assert (empty["total"], empty["response"]) == (0, [])

    sim.add_fault(Fault(r"/packageSold/", "empty"))
    sim.add_fault(Fault(r"/package$", "401"))
    session_token = token(sim)
    assert tt(sim, "/package", session_token).json() == {"error": "Unauthorized"}
    client_id = sim.timetap.client_ids()[0]
    assert tt(sim, f"/packageSold/client/{client_id}", session_token).json() == []

    assert len(biz(sim, page).json()["response"]) == 50  # all consumed
    statuses = [status for _, path, status in sim.request_log if path.endswith(page)]
    assert statuses == [429, 429, 500, 502, 503, 0, 200, 200, 200, 200, 401, 200, 200]


def test_fault_times_after_status_and_clear(fresh):
    sim = fresh
    sim.add_fault(Fault(r"/session/", "503", times=2, after=1, status=504))
    sim.add_fault(Fault(r"/sessionToken", "429"))
    session_id = sim.bizstim.rows()[0]["id"]
    assert [biz(sim, f"/session/{session_id}").status_code for _ in range(4)] == [
        200,
        504,
        504,
        200,
    ]
    assert biz(sim, "/sessions/0/1").status_code == 200  # not matched by r"/session/"
    params = {"apiKey": TIMETAP_KEY, "timestamp": 1, "signature": SIGNATURE}
    throttled = requests.get(sim.timetap_url + "/sessionToken", params=params, timeout=10)
    assert throttled.status_code == 429 and throttled.json() == {"error": "Too many requests"}
    sim.add_fault(Fault(r".", "500", times=100))
    sim.clear_faults()
    assert biz(sim, "/sessions/0/1").status_code == 200
    with pytest.raises(ValueError):
        Fault(r"/x", "teapot")


def test_latency_is_applied_and_overlaps(fresh):
    # margins far above scheduling noise, so a loaded 2-core machine cannot fail this
    sim = fresh
    sim.latency = 1.0
    started = time.perf_counter()
    assert biz(sim, "/sessions/0/10").status_code == 200
    assert time.perf_counter() - started >= 1.0
    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        assert all(r.ok for r in pool.map(lambda n: biz(sim, f"/sessions/{n}/10"), range(8)))
    assert time.perf_counter() - started < 4.0  # eight requests, overlapping rather than 8 s
    sim.latency = 0.0
    started = time.perf_counter()
    biz(sim, "/sessions/0/10")
    assert time.perf_counter() - started < 0.5  # no second of latency left


def test_keep_alive_log_and_stop(fresh):
    sim = fresh
    sim.reset_log()
    with requests.Session() as session:
        session.headers["x-api-key"] = BIZSTIM_KEY
        responses = [session.get(sim.bizstim_url + "/sessions/0/5", timeout=10) for _ in range(3)]
        assert all(r.headers["Content-Length"] == str(len(r.content)) for r in responses)
        assert requests.get(sim.url + "/nowhere", timeout=10).status_code == 404
        assert sim.request_log == [("GET", "/bizstim/api/sessions/0/5", 200)] * 3 + [
            ("GET", "/nowhere", 404)
        ]
        sim.stop()
        with pytest.raises(requests.ConnectionError):
            session.get(sim.bizstim_url + "/sessions/0/5", timeout=2)


def test_same_seed_same_data_other_seed_other_data():
    one, two, other = (Simulator(seed=s, sessions=400, clients=80) for s in (3, 3, 4))
    assert one.bizstim.rows() == two.bizstim.rows() != other.bizstim.rows()
    assert one.timetap.packages() == two.timetap.packages() != other.timetap.packages()
    assert one.timetap.packages_sold() == two.timetap.packages_sold()
    assert one.bizstim.night_of_changes() == two.bizstim.night_of_changes()
    assert one.bizstim.add() == two.bizstim.add()
    assert one.bizstim.rows() == two.bizstim.rows()


def test_command_line_serves_until_interrupted():
    command = [sys.executable, "-m", "practice_sync.simulator", "--port", "0", "--sessions", "50"]
    process = spawn(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        banner = [process.stdout.readline() for _ in range(4)]
        url = re.search(r"(http://\S+/bizstim/api)", "".join(banner)).group(1)
        assert BIZSTIM_KEY in "".join(banner) and TIMETAP_PRIVATE in "".join(banner)
        response = requests.get(url + "/sessions", headers={"x-api-key": BIZSTIM_KEY}, timeout=10)
        assert response.json()["total"] == 50
    finally:
        process.send_signal(signal.SIGINT)
    assert process.wait(timeout=10) == 0


@pytest.mark.slow
def test_five_million_sessions_generate_compactly_and_serve():
    tracemalloc.start()
    try:
        started = time.perf_counter()
        sim = Simulator(sessions=5_000_000, clients=10, packages=5, edge_cases=False)
        elapsed = time.perf_counter() - started
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"\ngenerated 5,000,000 Bizstim sessions in {elapsed:.2f} s, {held / 2**20:.0f} MiB")
    assert elapsed < 20  # ~0.3 s alone; a Python object per row took 13 s
    assert held < 5_000_000 * 24  # 16 bytes a row, where a Python object per row took ~170
    with sim:
        first, last = (biz(sim, f"/sessions/{start}/1000").json() for start in (0, 4_999_000))
        assert first["total"] == last["total"] == 5_000_000
        assert len(first["response"]) == len(last["response"]) == 1000
        assert list(last["response"][-1]) == FIELDS
        ids = [int(row["id"]) for row in (*first["response"], *last["response"])]
        assert ids == sorted(ids) and ids[0] == FIRST_ID
        changes = sim.bizstim.night_of_changes()
        assert [len(v) for v in changes.values()] == [50_000, 5_000, 25_000]
        after = biz(sim, "/sessions/0/1").json()
        assert after["total"] == 5_000_000 - 5_000 + 25_000
