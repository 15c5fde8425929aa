"""`practice-sync report`, run as the real CLI against the simulator, then opened in a real headless
Chromium: the page must draw every chart from the data, offline, with nothing from the network.

Chromium is the Debian package `chromium`; when it is missing the session installs it (apt-get),
and a test fails rather than skips when it cannot: CI always checks the page in a browser.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import struct
import subprocess
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import duckdb
import pytest
from conftest import Env
from test_status import History, serving_file

from practice_sync.simulator import Fault, Simulator

CHARTS = {
    "freshness",
    "run-duration",
    "run-rows-changed",
    "run-retries",
    "data-issues",
    "sessions-per-week",
    "cancellation-rate",
    "package-balances",
}
WIDTH, HEIGHT = 1280, 2400
NASTY = "<img src=x onerror=alert(1)> & \"quoted\" 'field'"
INSTALL_TIMEOUT = 1200


def _apt(*args: str) -> None:
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    command = [*sudo, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get"]
    command += ["-o", "DPkg::Lock::Timeout=600", *args]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(command)} failed: {(proc.stderr or proc.stdout)[-2000:]}")


def _find() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The browser, installed once when absent (one installer at a time); never a skip."""
    if _find() is None:
        lock = tmp_path_factory.getbasetemp().parent / "practice-sync-chromium.lock"
        with open(lock, "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # parallel workers: the first one installs
            if _find() is None:
                _apt("update")
                _apt("install", "-y", "chromium")
    found = _find()
    if found is None:
        pytest.fail("apt-get installed chromium, but there is no `chromium` on PATH")
    return found


def browse(chromium: str, profile: Path, *args: str, timeout: float = 120) -> tuple[str, str]:
    """Run headless Chromium once; its whole process group is killed when it ends or times out."""
    profile.mkdir(parents=True, exist_ok=True)
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        *args,
    ]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    assert proc.returncode == 0, err[-3000:]
    return out, err


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def screenshot(chromium: str, tmp: Path, page: Path, name: str) -> Path:
    shot = tmp / f"{name}.png"
    browse(
        chromium,
        tmp / f"profile-{name}",
        f"--screenshot={shot}",
        f"--window-size={WIDTH},{HEIGHT}",
        "--hide-scrollbars",
        page.as_uri(),
    )
    assert png_size(shot) == (WIDTH, HEIGHT)
    return shot


class ChartCounter(HTMLParser):
    """Per `svg.chart` in the DOM: its data-chart name and how many bars and points it holds."""

    def __init__(self) -> None:
        super().__init__()
        self.marks: dict[str, int] = {}
        self.current: str | None = None
        self.images = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        classes = (values.get("class") or "").split()
        if tag == "img":
            self.images += 1
        if tag == "svg" and "chart" in classes:
            self.current = values.get("data-chart") or "?"
            self.marks[self.current] = 0
        elif self.current and {"bar", "point"} & set(classes):
            self.marks[self.current] += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self.current = None


def make_nights(env: Env, sim: Simulator) -> History:
    """Three runs with a night of changes and a failed one between them, then a nasty value."""
    history = History(env)
    assert history.run().code == 0
    sim.bizstim.night_of_changes(edit=0.05, delete=0.01, new=0.02, seed=1)
    assert history.run().code == 0
    sim.add_fault(Fault(path=r"/sessions/", kind="503", times=10**6))
    assert history.run().code == 4
    sim.clear_faults()
    sim.bizstim.night_of_changes(edit=0.02, delete=0.005, new=0.01, seed=2)
    assert history.run().code == 0
    with contextlib.closing(duckdb.connect(str(serving_file(env)))) as con:
        con.execute(
            "insert into analytics.data_issues (source, entity, record_id, field, value, problem) "
            "values ('bizstim', 'session', '1', ?, ?, ?)",
            [NASTY, NASTY, NASTY],
        )
    return history


@pytest.mark.timeout(INSTALL_TIMEOUT + 300)
def test_report_is_one_self_contained_page_that_chromium_draws(
    env: Env, sim: Simulator, tmp_path: Path, chromium: str
) -> None:
    make_nights(env, sim)
    page = tmp_path / "out" / "report.html"
    page.parent.mkdir()
    result = env.run("report", "--out", str(page))
    assert result.code == 0, result.stderr
    assert f"Report written to {page} (8 charts" in result.stdout
    html = page.read_text(encoding="utf-8")

    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, re.I)
    assert "<link" not in html and "<script" not in html and "@import" not in html
    assert not re.search(r"url\(\s*['\"]?\s*(?:https?:)?//", html, re.I)
    assert "<img" not in html
    assert "&lt;img src=x onerror=alert(1)&gt; &amp; &quot;quoted&quot; &#x27;field&#x27;" in html
    svgs = re.findall(r"<svg\b.*?</svg>", html, re.S)
    assert {ET.fromstring(svg).get("data-chart") for svg in svgs} == CHARTS  # well-formed XML
    for svg in svgs:
        root = ET.fromstring(svg)
        key = root.get("data-chart")
        assert root.get("class") == "chart" and root.get("role") == "img"
        assert root.get("aria-labelledby") == f"{key}-title {key}-desc"
        assert root.find("title").text and root.find("desc").text
        labels = [t.text for t in root.iter("text") if t.get("class") == "axis-label"]
        assert len(labels) == 2 and all(labels), key

    dom, log = browse(chromium, tmp_path / "profile-dom", "--dump-dom", page.as_uri())
    assert not re.search(r"CONSOLE\(\d+\)|Uncaught|ERR_", log), log[-3000:]
    counter = ChartCounter()
    counter.feed(dom)
    assert set(counter.marks) == CHARTS
    assert all(n >= 1 for n in counter.marks.values()), counter.marks
    assert counter.images == 0  # the nasty value stayed text

    shot = screenshot(chromium, tmp_path, page, "report")
    blank_page = tmp_path / "blank.html"
    blank_page.write_text("<!DOCTYPE html><html><body></body></html>")
    blank = screenshot(chromium, tmp_path, blank_page, "blank")
    assert shot.stat().st_size > 10 * blank.stat().st_size
    assert shot.stat().st_size > 60_000


def test_report_without_run_history_still_draws_the_data(
    env: Env, tmp_path: Path, first_run
) -> None:
    assert first_run("run", "--quiet").code == 0
    old = tmp_path / "old_serving.duckdb"
    shutil.copy(serving_file(env), old)
    with contextlib.closing(duckdb.connect(str(old))) as con:
        con.execute("drop schema if exists ops cascade")
    out = tmp_path / "old.html"
    result = env.run("report", "--database", str(old), "--out", str(out))
    assert result.code == 0, result.stderr
    html = out.read_text(encoding="utf-8")
    assert "has no run history yet (ops.run_history)" in html
    found = set(re.findall(r'data-chart="([^"]+)"', html))
    assert found == {"data-issues", "sessions-per-week", "cancellation-rate", "package-balances"}
    missing = env.run("report", "--database", str(tmp_path / "nothing.duckdb"))
    assert missing.code == 2 and "There is no serving file" in missing.stderr


def test_package_balances_are_per_account() -> None:
    """Ids are unique within an account only: package 5 of downtown and of uptown were one bar,
    named after either, with their balances summed."""
    from practice_sync import html_report

    with duckdb.connect() as con:
        con.execute("create schema analytics")
        con.execute(
            "create table analytics.package_history (account varchar, package_id bigint, "
            "package_name varchar, valid_from timestamptz)"
        )
        con.execute(
            "create table analytics.packages_sold (account varchar, package_sold_id bigint, "
            "package_id bigint, status varchar, remaining_quantity integer, is_expired boolean)"
        )
        con.execute(
            "insert into analytics.package_history values "
            "('downtown', 5, 'Yoga 10-pack', '2024-01-01'), "
            "('uptown', 5, 'Massage 3-pack', '2024-02-01')"
        )
        con.execute(
            "insert into analytics.packages_sold values "
            "('downtown', 1, 5, 'OPEN', 8, false), ('uptown', 1, 5, 'OPEN', 2, false)"
        )
        svg = html_report.balances_chart(con)
    assert re.findall(r"<title>([^<]*)</title>", svg) == [
        "Yoga 10-pack #5 (downtown): 8 remaining on 1 open sales (0 expired)",
        "Massage 3-pack #5 (uptown): 2 remaining on 1 open sales (0 expired)",
    ]


def test_a_source_that_loaded_without_issues_records_0_and_a_withheld_one_says_so() -> None:
    from practice_sync import history
    from practice_sync.report import RunReport, SourceReport

    report = RunReport()
    report.sources = [
        SourceReport("bizstim", finished=True, withheld=["3 vanished"]),
        SourceReport("timetap", finished=True),
        SourceReport("bizstim.uptown", error="Bizstim rejected the credentials", exit_code=5),
    ]
    report.issues_by_source = {"timetap": 3}  # only sources that have issues are listed
    report.finished = report.started + 1
    rows = {row[1]: (row[5], row[13]) for row in history.rows(report, 0)}
    assert rows["bizstim"] == ("withheld", 0)  # was NULL: no issues read as "not loaded"
    assert rows["timetap"] == ("ok", 3)
    assert rows["bizstim.uptown"] == ("failed", None)  # nothing loaded
    assert report.sources[0].render().startswith("bizstim: withheld")  # was "ok"


def test_a_skipped_destination_is_flagged_in_the_html_status_as_in_the_text() -> None:
    """For a destination, `skipped` means the rebuild failed and nothing new was published:
    `status` prints a `!` line for it, the HTML table showed it as fine."""
    from datetime import UTC, datetime, timedelta

    from practice_sync import html_report, status

    now = datetime.now(UTC)
    line = {"configured": True, "last_run_at": now - timedelta(hours=1), "last_exit_code": 0}
    page = html_report.status_table(
        status.Status(
            Path("serving.duckdb"),
            now,
            None,
            [
                status.SourceStatus("publish.postgres", "destination", last_outcome="skipped",
                                    last_error="the rebuild failed", **line),
                status.SourceStatus("bizstim.uptown", "source", last_outcome="skipped",
                                    last_error=None, **line),
            ],  # fmt: skip
        )
    )
    last = re.findall(r'<td class="([^"]*)"[^>]*>[^<]*</td></tr>', page)
    assert last == ["bad", ""]  # the destination flagged; a source not configured here is not
