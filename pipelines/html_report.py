"""`practice-sync report`: one self-contained HTML page of charts for the on-call person and the
practice's managers: how the runs went, what data is broken, how fresh each source is, and the
headline business numbers.

Self-contained because it is mailed around and opened offline: no script, stylesheet or font is
fetched, and every chart is an inline SVG drawn here in Python. Everything read from the data is
escaped. Like `status`, it reads the serving file read-only, so it never waits for a run.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

from practice_sync import status as status_mod
from practice_sync.errors import ConfigError

if TYPE_CHECKING:
    import duckdb

W, H = 600, 320  # every chart's drawing size; the page scales it to its column
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 52, 58
TOP_N = 15
WEEKS = 52
SOURCE_COLOURS = {"bizstim": "#0072B2", "timetap": "#E69F00", "analytics": "#009E73"}
STATUS_COLOURS = {
    "saved": "#009E73",
    "open": "#56B4E9",
    "canceled": "#D55E00",
    "missed": "#CC79A7",
    "unknown": "#999999",
}
FAILED = "#D55E00"
OTHER = "#777777"
Fmt = Callable[[float], str]


def add_command(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """The `report` subcommand's options, kept here so cli.py only names it."""
    cmd = commands.add_parser(
        "report",
        parents=[common],
        help="write one self-contained HTML page of charts (runs, data issues, business)",
    )
    cmd.add_argument(
        "--database", help="a DuckDB file to read (default: the warehouse's serving file)"
    )
    cmd.add_argument(
        "--out", default="report.html", help="the HTML file to write (default: report.html)"
    )


@dataclass(frozen=True)
class Spec:
    """What every chart carries: the attribute tests find it by, and its words for people."""

    key: str  # data-chart="..."
    title: str
    desc: str  # for screen readers: what the chart shows
    x_label: str
    y_label: str


@dataclass(frozen=True)
class Point:
    x: float  # epoch seconds
    y: float
    note: str  # tooltip
    failed: bool = False


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    note: str
    colour: str
    text: str | None = None  # the value as written at the bar's end (default: formatted)


def _num(value: float) -> str:
    if abs(value - round(value)) < 1e-9:
        return f"{int(round(value)):,}"
    return f"{value:,.2f}".rstrip("0").rstrip(".")


def _pct(value: float) -> str:
    return f"{value * 100:.0f}%" if value * 100 >= 10 or value == 0 else f"{value * 100:.1f}%"


def _ticks(top: float) -> list[float]:
    """0 and four or five round steps up to at least `top`."""
    top = top if top > 0 else 1.0
    raw = top / 4
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return [i * step for i in range(math.ceil(top / step - 1e-9) + 1)]


def _frame(spec: Spec, body: str, height: int = H) -> str:
    """The SVG root: class and data attribute, accessible title and description, axis labels."""
    k = escape(spec.key)
    middle = TOP + (height - TOP - BOTTOM) / 2
    return (
        f'<svg class="chart" data-chart="{k}" role="img" '
        f'aria-labelledby="{k}-title {k}-desc" viewBox="0 0 {W} {height}" '
        f'width="{W}" height="{height}">'
        f'<title id="{k}-title">{escape(spec.title)}</title>'
        f'<desc id="{k}-desc">{escape(spec.desc)}</desc>'
        f'<text class="chart-title" x="10" y="20">{escape(spec.title)}</text>'
        f"{body}"
        f'<text class="axis-label" x="{LEFT + (W - LEFT - RIGHT) / 2:.0f}" y="{height - 6}" '
        f'text-anchor="middle">{escape(spec.x_label)}</text>'
        f'<text class="axis-label" transform="rotate(-90)" x="{-middle:.0f}" y="14" '
        f'text-anchor="middle">{escape(spec.y_label)}</text></svg>'
    )


def _legend(items: Sequence[tuple[str, str]], hollow: str | None = None) -> str:
    """One row under the title; `hollow` names the marker for failed runs."""
    out, x = [], 10.0
    for name, colour in items:
        out.append(
            f'<rect x="{x:.0f}" y="30" width="10" height="10" fill="{escape(colour)}"/>'
            f'<text class="legend" x="{x + 14:.0f}" y="39">{escape(name)}</text>'
        )
        x += 24 + 7 * len(name)
    if hollow:
        out.append(
            f'<circle cx="{x + 5:.0f}" cy="35" r="5" fill="#fff" stroke="{FAILED}" '
            f'stroke-width="2"/><text class="legend" x="{x + 14:.0f}" y="39">'
            f"{escape(hollow)}</text>"
        )
    return "".join(out)


def _y_axis(ticks: Sequence[float], y_of: Callable[[float], float], fmt: Fmt) -> str:
    out = []
    for tick in ticks:
        y = y_of(tick)
        out.append(
            f'<line class="gridline" x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{escape(fmt(tick))}</text>"
        )
    return "".join(out)


def _time_format(span: float) -> str:
    if span > 3 * 86400:
        return "%Y-%m-%d"
    return "%m-%d %H:%M" if span > 3600 else "%H:%M:%S"


def line_chart(
    spec: Spec, series: dict[str, list[Point]], colours: dict[str, str], fmt: Fmt = _num
) -> str:
    """Lines over time, one per series; a failed run is a hollow red point on its line."""
    points = [p for pts in series.values() for p in pts]
    if not points:
        return _empty(spec)
    lo, hi = min(p.x for p in points), max(p.x for p in points)
    if hi - lo < 1:
        lo, hi = lo - 1800, hi + 1800
    ticks = _ticks(max(p.y for p in points))
    bottom, width = H - BOTTOM, W - LEFT - RIGHT

    def x_of(x: float) -> float:
        return LEFT + (x - lo) / (hi - lo) * width

    def y_of(y: float) -> float:
        return bottom - y / ticks[-1] * (bottom - TOP)

    body = [_y_axis(ticks, y_of, fmt)]
    pattern = _time_format(hi - lo)
    for i in range(5):
        x = lo + (hi - lo) * i / 4
        label = datetime.fromtimestamp(x, UTC).strftime(pattern)
        anchor = "end" if i == 4 else "middle"
        body.append(
            f'<text class="tick" x="{x_of(x):.1f}" y="{bottom + 16}" text-anchor="{anchor}">'
            f"{escape(label)}</text>"
        )
    marks: list[tuple[bool, str]] = []  # failed runs drawn last, on top of every line
    for name, pts in series.items():
        colour = escape(colours.get(name, OTHER))
        path = " ".join(f"{x_of(p.x):.1f},{y_of(p.y):.1f}" for p in pts)
        body.append(f'<polyline class="line" fill="none" stroke="{colour}" points="{path}"/>')
        for p in pts:
            fill, stroke = ("#fff", FAILED) if p.failed else (colour, colour)
            marks.append(
                (
                    p.failed,
                    f'<circle class="point" cx="{x_of(p.x):.1f}" cy="{y_of(p.y):.1f}" r="4" '
                    f'fill="{fill}" stroke="{stroke}" stroke-width="2"><title>{escape(p.note)}'
                    "</title></circle>",
                )
            )
    body.extend(mark for _, mark in sorted(marks, key=lambda m: m[0]))
    failed = "failed or interrupted run" if any(p.failed for p in points) else None
    legend = _legend([(n, colours.get(n, OTHER)) for n in series], failed)
    return _frame(spec, legend + "".join(body))


def stacked_bars(
    spec: Spec, labels: Sequence[str], stacks: Sequence[tuple[str, Sequence[float], str]]
) -> str:
    """One bar per category, its segments stacked in the order given."""
    if not labels:
        return _empty(spec)
    totals = [sum(values[i] for _, values, _ in stacks) for i in range(len(labels))]
    ticks = _ticks(max(totals))
    bottom = H - BOTTOM
    band = (W - LEFT - RIGHT) / len(labels)

    def y_of(y: float) -> float:
        return bottom - y / ticks[-1] * (bottom - TOP)

    body = [_y_axis(ticks, y_of, _num)]
    every = math.ceil(len(labels) / 6)
    for i, label in enumerate(labels):
        x, base = LEFT + i * band + band * 0.1, 0.0
        for name, values, colour in stacks:
            if values[i] <= 0:
                continue
            top = y_of(base + values[i])
            body.append(
                f'<rect class="bar" x="{x:.1f}" y="{top:.1f}" width="{band * 0.8:.1f}" '
                f'height="{y_of(base) - top:.1f}" fill="{escape(colour)}"><title>'
                f"{escape(f'{label}: {_num(values[i])} {name}')}</title></rect>"
            )
            base += values[i]
        if i % every == 0:
            body.append(
                f'<text class="tick" x="{x + band * 0.4:.1f}" y="{bottom + 16}" '
                f'text-anchor="middle">{escape(label)}</text>'
            )
    legend = _legend([(name, colour) for name, _, colour in stacks])
    return _frame(spec, legend + "".join(body))


def hbars(
    spec: Spec,
    bars: Sequence[Bar],
    fmt: Fmt = _num,
    threshold: tuple[float, str] | None = None,
) -> str:
    """Labelled horizontal bars (top lists), with the value at each bar's end."""
    if not bars:
        return _empty(spec)
    label_w, row = 270, 24
    height = TOP + len(bars) * row + BOTTOM - 10
    bottom = height - BOTTOM + 10
    top_value = max([b.value for b in bars] + ([threshold[0]] if threshold else []))
    ticks = _ticks(top_value)
    width = W - RIGHT - label_w - 40

    def x_of(v: float) -> float:
        return label_w + v / ticks[-1] * width

    body = []
    for tick in ticks:
        body.append(
            f'<line class="gridline" x1="{x_of(tick):.1f}" x2="{x_of(tick):.1f}" y1="{TOP - 4}" '
            f'y2="{bottom}"/><text class="tick" x="{x_of(tick):.1f}" y="{bottom + 16}" '
            f'text-anchor="middle">{escape(fmt(tick))}</text>'
        )
    for i, bar in enumerate(bars):
        y = TOP + i * row
        label = bar.label if len(bar.label) <= 38 else bar.label[:37] + "…"
        end = max(x_of(bar.value), label_w + 2)  # a zero still leaves a mark
        body.append(
            f'<text class="tick" x="{label_w - 6}" y="{y + 15}" text-anchor="end">'
            f"{escape(label)}</text>"
            f'<rect class="bar" x="{label_w}" y="{y + 3}" width="{end - label_w:.1f}"'
            f' height="{row - 6}" fill="{escape(bar.colour)}"><title>{escape(bar.note)}</title>'
            f'</rect><text class="value" x="{end + 4:.1f}" y="{y + 15}">'
            f"{escape(bar.text or fmt(bar.value))}</text>"
        )
    if threshold:
        x = x_of(threshold[0])
        body.append(
            f'<line class="threshold" x1="{x:.1f}" x2="{x:.1f}" y1="{TOP - 8}" y2="{bottom}"/>'
            f'<text class="legend" x="{x - 4:.1f}" y="{TOP - 12}" text-anchor="end">'
            f"{escape(threshold[1])}</text>"
        )
    return _frame(spec, "".join(body), height)


def _empty(spec: Spec) -> str:
    """A chart with nothing to draw still says what it would show (no bar: tests notice)."""
    return _frame(
        spec,
        f'<text class="empty" x="{W / 2}" y="{H / 2}" text-anchor="middle">no data yet</text>',
    )


def _hours(value: float) -> str:
    return f"{_num(value)} h"


def freshness_chart(status: status_mod.Status) -> str:
    """Hours since each configured source last succeeded, against the 26 h line `status` uses."""
    limit = status_mod.DEFAULT_MAX_AGE
    ages = [s.age_s for s in status.sources if s.configured and s.age_s is not None]
    full = max([limit * 1.1, *ages]) / 3600  # "never" draws a full-length red bar
    bars = []
    for item in status.sources:
        if not item.configured:
            continue
        never = item.age_s is None
        late = never or (item.age_s or 0) > limit
        hours = full if never else (item.age_s or 0) / 3600
        note = (
            f"{item.source}: never succeeded"
            if never
            else f"{item.source}: last success {status_mod.when_text(item.last_success_at)} UTC,"
            f" {status_mod.format_age(item.age_s)} ago"
        )
        label = f"{item.source} (never succeeded)" if never else item.source
        text = status_mod.format_age(item.age_s)
        bars.append(Bar(label, hours, note, FAILED if late else "#009E73", text))
    spec = Spec(
        "freshness",
        "Freshness: time since each source's last successful run",
        "Hours since the last successful run of each source and of the analytics rebuild; "
        "red beyond 26 hours or never.",
        "hours since the last success",
        "source",
    )
    limit_h = limit / 3600
    return hbars(spec, bars, _hours, (limit_h, f"{_num(limit_h)} h"))


_RUNS = """
select source, epoch(coalesce(started_at, finished_at)) as run_at, duration_s,
       rows_new, rows_changed, rows_retired, retries, outcome, exit_code
from ops.run_history
where outcome <> 'skipped' and coalesce(started_at, finished_at) is not null
qualify row_number() over (
    partition by source order by coalesce(started_at, finished_at) desc) <= 120
order by run_at, source
"""


def _changed(row: Sequence) -> float | None:
    parts = [v for v in row[3:6] if v is not None]
    return float(sum(parts)) if parts else None


RUN_METRICS: list[tuple[Spec, Callable[[Sequence], float | None], str]] = [
    (
        Spec(
            "run-duration",
            "Run duration per source",
            "Seconds each source's load (and the analytics rebuild) took, per run, over time.",
            "run started (UTC)",
            "seconds",
        ),
        lambda r: r[2],
        "s",
    ),
    (
        Spec(
            "run-rows-changed",
            "Rows changed per run (new + changed + retired)",
            "Records each run added, changed or retired, per source, over time.",
            "run started (UTC)",
            "rows",
        ),
        _changed,
        "rows changed",
    ),
    (
        Spec(
            "run-retries",
            "HTTP retries per run",
            "Requests each source had to retry per run (rate limits, timeouts, 5xx), over time.",
            "run started (UTC)",
            "retries",
        ),
        lambda r: r[6],
        "retries",
    ),
]


def run_charts(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Duration, rows changed and retries per run and source (the last 120 runs of each)."""
    rows = con.execute(_RUNS).fetchall()
    charts = []
    for spec, value_of, unit in RUN_METRICS:
        series: dict[str, list[Point]] = {}
        for row in rows:
            value = value_of(row)
            if value is None:
                continue
            when = datetime.fromtimestamp(row[1], UTC).strftime("%Y-%m-%d %H:%M:%S")
            code = f" (exit {row[8]})" if row[8] else ""
            note = f"{row[0]} run at {when} UTC: {row[7]}{code}, {_num(value)} {unit}"
            failed = row[7] in ("failed", "interrupted")
            series.setdefault(str(row[0]), []).append(Point(row[1], float(value), note, failed))
        charts.append(line_chart(spec, series, SOURCE_COLOURS))
    return charts


def issues_chart(con: duckdb.DuckDBPyConnection) -> str:
    """The most frequent (source, field, problem) triples among the open data issues."""
    spec = Spec(
        "data-issues",
        f"Open data issues by field and problem (top {TOP_N})",
        "How many current records have each unreadable value, by source, field and problem.",
        "records with the problem",
        "field and problem",
    )
    if not status_mod.has_table(con, "analytics", "data_issues"):
        return _empty(spec)
    rows = con.execute(
        "select source, field, problem, count(*) as n from analytics.data_issues "
        "group by all order by n desc, source, field, problem limit ?",
        [TOP_N],
    ).fetchall()
    bars = [
        Bar(
            f"{source} {field}: {problem}",
            float(n),
            f"{source} {field}: {problem} ({n:,} records)",
            SOURCE_COLOURS.get(str(source), OTHER),
        )
        for source, field, problem, n in rows
    ]
    return hbars(spec, bars)


def _weekly_counts(con: duckdb.DuckDBPyConnection) -> dict[date, dict[str, int]]:
    """Sessions per local week (Monday) and status; a session with no readable date is left out."""
    rows = con.execute(
        "select date_trunc('week', session_date)::date, coalesce(status, 'unknown'), count(*) "
        "from analytics.sessions where session_date is not null group by all"
    ).fetchall()
    weeks: dict[date, dict[str, int]] = {}
    for week, state, n in rows:
        weeks.setdefault(week, {})[str(state)] = int(n)
    return weeks


def _window(weeks: Sequence[date], today: date) -> list[date]:
    """The last 52 weeks of data, but no further ahead than 12 weeks of bookings from today."""
    this_week = today - timedelta(days=today.weekday())
    horizon = this_week + timedelta(weeks=12)
    last = max(weeks)
    if last > horizon:
        last = max(horizon, min(weeks))
    first = max(min(weeks), last - timedelta(weeks=WEEKS - 1))
    return [first + timedelta(weeks=i) for i in range((last - first).days // 7 + 1)]


def weekly_charts(con: duckdb.DuckDBPyConnection, today: date) -> list[str]:
    """Sessions per week by status (stacked) and the share of them canceled."""
    sessions = Spec(
        "sessions-per-week",
        "Sessions per week by status",
        f"Sessions per week (local date, weeks from Monday) stacked by status, last {WEEKS} "
        "weeks of data.",
        "week starting",
        "sessions",
    )
    rate = Spec(
        "cancellation-rate",
        "Cancellation rate per week",
        "Share of each week's sessions whose status is canceled.",
        "week starting",
        "canceled sessions",
    )
    weeks = _weekly_counts(con) if status_mod.has_table(con, "analytics", "sessions") else {}
    if not weeks:
        return [_empty(sessions), _empty(rate)]
    window = _window(sorted(weeks), today)
    states = [s for s in STATUS_COLOURS if any(s in weeks.get(w, {}) for w in window)]
    states += sorted({s for w in window for s in weeks.get(w, {})} - set(states))
    stacks = [
        (s, [float(weeks.get(w, {}).get(s, 0)) for w in window], STATUS_COLOURS.get(s, OTHER))
        for s in states
    ]
    labels = [w.isoformat() for w in window]
    points = []
    for w in window:
        total = sum(weeks.get(w, {}).values())
        if total:
            canceled = weeks[w].get("canceled", 0)
            note = f"week of {w.isoformat()}: {canceled:,} of {total:,} sessions canceled"
            epoch = datetime(w.year, w.month, w.day, tzinfo=UTC).timestamp()
            points.append(Point(epoch, canceled / total, note))
    rate_chart = line_chart(rate, {"canceled": points}, {"canceled": FAILED}, _pct)
    return [stacked_bars(sessions, labels, stacks), rate_chart]


# per account: ids are unique within one only (package 5 of two accounts is two packages)
_BALANCES = """
with names as (
    select account, package_id, arg_max(package_name, valid_from) as name
    from analytics.package_history group by 1, 2)
select ps.package_id, any_value(names.name), sum(ps.remaining_quantity), count(*),
       count(*) filter (where ps.is_expired), ps.account,
       count(distinct ps.account) over () as accounts
from analytics.packages_sold ps left join names using (account, package_id)
where ps.status = 'OPEN' and ps.remaining_quantity > 0
group by ps.account, ps.package_id order by 3 desc, 6, 1 limit ?
"""


def balances_chart(con: duckdb.DuckDBPyConnection) -> str:
    """Sessions still owed to clients on open packages sold, by package (top 15)."""
    spec = Spec(
        "package-balances",
        f"Package balances: remaining quantity on open packages sold (top {TOP_N})",
        "Sum of remaining_quantity over open packages sold, per package.",
        "remaining quantity (sessions owed)",
        "package",
    )
    if not all(
        status_mod.has_table(con, "analytics", t) for t in ("packages_sold", "package_history")
    ):
        return _empty(spec)
    bars = []
    rows = con.execute(_BALANCES, [TOP_N]).fetchall()
    for package_id, name, remaining, sold, expired, account, accounts in rows:
        label = f"{name or 'package'} #{package_id}" if package_id is not None else "no package id"
        if accounts > 1:
            label = f"{label} ({account})"
        note = f"{label}: {remaining:,} remaining on {sold:,} open sales ({expired:,} expired)"
        bars.append(Bar(label, float(remaining), note, "#0072B2"))
    return hbars(spec, bars)


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Arial,sans-serif;
 margin:24px;color:#222;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 10px;
 border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#555;margin:0 0 12px}.empty{color:#555;font-style:italic}
.charts{display:grid;grid-template-columns:repeat(2,minmax(0,1fr));gap:16px}
figure{margin:0;border:1px solid #e3e3e3;border-radius:6px;padding:8px;background:#fcfcfc}
svg.chart{width:100%;height:auto;display:block}
svg text{font-size:11px;fill:#333}svg .chart-title{font-size:14px;font-weight:600;fill:#222}
svg .axis-label{font-size:12px;fill:#555}svg .gridline{stroke:#e4e4e4}
svg .line{stroke-width:2}svg .threshold{stroke:#D55E00;stroke-dasharray:4 3;stroke-width:1.5}
table.status{border-collapse:collapse;font-size:13px}
table.status th,table.status td{padding:4px 10px;border-bottom:1px solid #eee;text-align:left}
table.status td.num{text-align:right;font-variant-numeric:tabular-nums}
.bad{color:#b00020;font-weight:600}
"""

STATUS_COLUMNS = status_mod.HEADERS + status_mod.HEADERS_2


def status_table(status: status_mod.Status) -> str:
    """The same lines `practice-sync status` prints, as an HTML table."""
    head = "".join(f"<th>{escape(name)}</th>" for name in STATUS_COLUMNS)
    body = []
    for item in status.sources:
        state = status_mod.state_text(item)
        cells = [
            (item.source, ""),
            (state, "bad" if state in ("STALE", "NEVER") else ""),
            (status_mod.when_text(item.last_success_at), ""),
            (status_mod.format_age(item.age_s), "num"),
            *((status_mod.count_text(getattr(item, c)), "num") for c in status_mod.COUNTS),
            (status_mod.count_text(item.open_issues), "num"),
        ]
        last = status_mod.last_run_text(item)
        # as the text status: a skipped destination means nothing new was published
        quiet = ("skipped",) if item.kind != "destination" else ()
        bad = item.last_outcome not in (*status_mod.SUCCESS, *quiet)
        row = "".join(f'<td class="{css}">{escape(text)}</td>' for text, css in cells)
        title = f' title="{escape(item.last_error)}"' if item.last_error else ""
        row += f'<td class="{"bad" if bad else ""}"{title}>{escape(last)}</td>'
        body.append(f"<tr>{row}</tr>")
    return f'<table class="status"><tr>{head}</tr>{"".join(body)}</table>'


def _section(title: str, parts: Sequence[str], intro: str = "") -> str:
    figures = "".join(f"<figure>{p}</figure>" for p in parts)
    return f"<h2>{escape(title)}</h2>{intro}<div class='charts'>{figures}</div>"


def build_page(con: duckdb.DuckDBPyConnection, path: Path, now: datetime) -> str:
    """The whole page; without run history the run charts give way to one sentence."""
    try:
        status: status_mod.Status | None = status_mod.read_status(con, path, None, now)
        missing = ""
    except status_mod.NoHistory as exc:
        status, missing = None, str(exc)
    if status is not None:
        runs = _section(
            "Freshness and runs",
            [freshness_chart(status), *run_charts(con)],
            status_table(status),
        )
    else:
        runs = f'<h2>Freshness and runs</h2><p class="empty">{escape(missing)}</p>'
    business = _section("Business", [*weekly_charts(con, now.date()), balances_chart(con)])
    stamp = now.strftime("%Y-%m-%d %H:%M UTC")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>practice-sync report {escape(stamp)}</title><style>{CSS}</style></head><body>"
        f"<h1>practice-sync report</h1><p class='meta'>Generated {escape(stamp)} from "
        f"{escape(str(path))} (times in UTC).</p>"
        f"{runs}{_section('Data issues', [issues_chart(con)])}{business}</body></html>\n"
    )


def write_atomically(target: Path, text: str) -> None:
    """A browser or mail client never sees half a page."""
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, target)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise ConfigError(
            f"The report cannot be written to {target} ({exc.strerror or exc}): choose --out."
        ) from None


def main(args: argparse.Namespace, path: Path) -> int:
    """Write the report of `path` to `--out`."""
    with status_mod.open_serving(path) as con:
        page = build_page(con, path, datetime.now(UTC))
    out = Path(args.out).expanduser().resolve()
    write_atomically(out, page)
    charts = page.count('class="chart"')
    print(f"Report written to {out} ({charts} charts from {path}).", flush=True)
    return 0
