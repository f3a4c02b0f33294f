"""The dashboard: every run on one page. `index.html` at the store's root, refreshed by every run
(its publish stage) and by `promote`, `rollback` and `gc`; `mnist-pipeline dashboard` writes it
anywhere.

One self-contained HTML page (the chart is inline SVG; no script, no external URL: it opens
offline): accuracy per run over time against the threshold, with production's accuracy as a line
and its changes marked; the newest decisions (promoted, blocked, rollback, unchanged) with their
reasons; the newest runs in a table whose links open their reports; production's lineage (its
rollback stack); accuracy on new data where runs recorded it (metrics.json's "new_data").

Built from the run index (mnist_pipeline/runs.py): one listing of the history's keys, which name
each decision's time and run, then a bounded number of reads: the newest decisions, every decision
about production's lineage, and an even sample of the older ones for the chart. So a store of
5,000 runs costs a few more listing pages than one of 50, not 5,000 reads.

Links to reports are relative on a folder store (to wherever the page is written), presigned on S3
(for MNIST_S3_PUBLIC_URL), expiring after LINK_LIFETIME_S, which the page says.
"""

from __future__ import annotations

import json
import logging
import math
import os
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from markupsafe import Markup, escape

from mnist_pipeline import keys, registry
from mnist_pipeline.errors import NotFoundInStore, PipelineError
from mnist_pipeline.runs import is_flow_decision
from mnist_pipeline.store import ArtifactStore

log = logging.getLogger("mnist_pipeline.dashboard")

# What a page costs (docs/performance.md): one listing of the history's keys, then at most POINTS
# records and NEWEST metrics files, whatever the number of runs.
NEWEST = 40  # decisions in the table
READ_NEWEST = 60  # the newest decisions read, for the table and the newest part of the chart
POINTS = 120  # decisions read at most for the chart: the newest, production's lineage, a sample of the older
LINK_LIFETIME_S = 7 * 24 * 3600  # the longest a presigned S3 link may live (SigV4)
READERS = 16


@dataclass
class Entry:
    """One decision, as the page shows it."""

    key: str
    time: datetime
    run_id: str
    decision: str  # promoted | blocked | rollback | unchanged
    accuracy: float | None = None
    min_accuracy: float | None = None
    reason: str = ""
    note: str = ""
    by: str = ""  # who decided, when not the run's flow alone: the approver, or who ran the command
    from_flow: bool = False  # the run's own flow decided (not a later promote or rollback)
    run: dict = field(default_factory=dict)  # the flow's summary: started_at, model, epochs
    new_data: float | None = None  # accuracy on the newly ingested data, when recorded


@dataclass
class Index:
    """What the page is made of."""

    entries: list[Entry]  # the decisions read, oldest first
    total_decisions: int
    total_runs: int
    production: registry.Production | None
    sampled: bool  # older decisions were sampled, not all read
    problems: list[str] = field(default_factory=list)


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _new_data_accuracy(*sources) -> float | None:
    """metrics.json's or a history record's {"new_data": {"accuracy": ..}}, the first one given."""
    for source in sources:
        found = source.get("new_data") if isinstance(source, dict) else None
        if isinstance(found, dict) and _number(found.get("accuracy")) is not None:
            return _number(found["accuracy"])
    return None


def _entry(key: str, record: registry.HistoryRecord) -> Entry:
    extra = record.model_extra or {}
    run = extra.get("run") if isinstance(extra.get("run"), dict) else {}
    approval = extra.get("approval") if isinstance(extra.get("approval"), dict) else {}
    flow = is_flow_decision(record)
    by = (f"{'approved' if approval.get('approved') else 'rejected'} by {approval['by']}" if approval.get("by")
          else "" if flow else record.actor)
    return Entry(key, registry.history_key_time(key), record.run_id, record.decision, record.test_accuracy,
                 _number(extra.get("min_accuracy")), record.reason, record.note, by, flow, run,
                 _new_data_accuracy(extra, run))


def _sample(items: list, count: int) -> list:
    """`count` items spread evenly over `items` (all of them when there are fewer)."""
    if len(items) <= count:
        return list(items)
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]


def read_index(store: ArtifactStore) -> Index:
    """The decisions the page needs, read from the run index at a bounded cost."""
    problems: list[str] = []
    all_keys = registry.history_keys(store)
    try:
        production, _ = registry.read_production(store)
    except PipelineError as exc:
        production = None
        problems.append(str(exc))
    lineage = {production.run_id, *(e.run_id for e in production.stack)} if production else set()
    newest = all_keys[-READ_NEWEST:]
    older = all_keys[:-READ_NEWEST] if len(all_keys) > READ_NEWEST else []
    wanted = set(newest) | {k for k in older if registry.history_key_run_id(k) in lineage}
    rest = [k for k in older if k not in wanted]
    sampled = _sample(rest, max(0, POINTS - len(wanted)))
    wanted |= set(sampled)

    def read(key: str) -> Entry | None:
        try:
            return _entry(key, registry.read_history_record(store, key))
        except NotFoundInStore:
            return None  # collected between the listing and the read
        except PipelineError as exc:
            problems.append(str(exc))
            return None

    with ThreadPoolExecutor(READERS) as pool:
        entries = [e for e in pool.map(read, sorted(wanted)) if e is not None]
    runs = {registry.history_key_run_id(k) for k in all_keys}
    return Index(entries, len(all_keys), len(runs), production, len(sampled) < len(rest), problems)


# -- links ------------------------------------------------------------------------------------------
class Links:
    """Links to a store's objects from a page written at `page` (a local path), or, for the page
    kept in the store (`page` None), at the store's own index.html."""

    def __init__(self, store: ArtifactStore, page: Path | None = None, lifetime_s: int = LINK_LIFETIME_S):
        self.store, self.lifetime_s = store, lifetime_s
        self.folder = (page or Path(store.location(keys.DASHBOARD))).resolve().parent
        self.expires = None

    def to(self, key: str) -> str:
        url = self.store.link(key, self.lifetime_s)
        if url:
            self.expires = self.expires or datetime.now(timezone.utc) + timedelta(seconds=self.lifetime_s)
            return url
        return urllib.parse.quote(os.path.relpath(self.store.location(key), self.folder))


# -- the chart --------------------------------------------------------------------------------------
COLOURS = {"promoted": "#2f855a", "blocked": "#c53030", "rollback": "#6b46c1", "unchanged": "#718096"}
PRODUCTION, THRESHOLD, NEW_DATA, GRID = "#2b6cb0", "#c05621", "#0f766e", "#e2e8f0"
WIDTH, HEIGHT = 1040, 330
LEFT, RIGHT, TOP, BOTTOM = 58, 150, 14, 40


def _ticks(low: float, high: float, most: int = 6) -> list[float]:
    for step in (0.0005, 0.001, 0.002, 0.0025, 0.005, 0.01, 0.02, 0.025, 0.05, 0.1, 0.2, 0.25, 0.5):
        first = math.ceil(low / step - 1e-9) * step
        ticks = [round(first + i * step, 6) for i in range(int((high - first) / step + 1e-9) + 1)]
        if len(ticks) <= most:
            return ticks
    return [low, high]


def _time_ticks(start: datetime, end: datetime, count: int = 6) -> list[tuple[datetime, str]]:
    span = (end - start).total_seconds()
    fmt = "%m-%d %H:%M" if span < 3 * 86400 else "%Y-%m-%d"
    moments = [start + timedelta(seconds=span * i / (count - 1)) for i in range(count)]
    return [(moment, moment.strftime(fmt)) for moment in moments]


def _steps(points: list[tuple[float, float]], x_end: float) -> str:
    """An SVG path of a step line through (x, y) points, held to x_end."""
    path = [f"M{points[0][0]:.1f},{points[0][1]:.1f}"]
    path += [f"H{x:.1f}V{y:.1f}" for x, y in points[1:]]
    return "".join(path) + f"H{x_end:.1f}"


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else "-"


def chart(entries: list[Entry], production: registry.Production | None, default_threshold: float) -> Markup:
    """Accuracy per run over time: each run's own decision a dot (green promoted, red blocked),
    the threshold a dashed step line, production's accuracy a blue step line (changed by
    promotions and rollbacks, a rollback a purple triangle), accuracy on new data teal diamonds;
    a run far below the rest is a triangle at the bottom edge, its value in the tooltip."""
    if not entries:
        return Markup("")
    start, end = entries[0].time, max(entries[-1].time, entries[0].time)
    if end - start < timedelta(minutes=10):
        start, end = start - timedelta(minutes=5), end + timedelta(minutes=5)
    span = (end - start).total_seconds()
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(moment: datetime) -> float:
        return LEFT + plot_w * (moment - start).total_seconds() / span

    runs = [e for e in entries if e.from_flow and e.accuracy is not None]
    thresholds = [(e.time, e.min_accuracy) for e in entries if e.min_accuracy is not None] or \
                 [(start, default_threshold)]
    changes = [e for e in entries if e.decision in ("promoted", "rollback") and e.accuracy is not None]
    new_data = [e for e in runs if e.new_data is not None]
    steady = sorted([t for _, t in thresholds] + [e.accuracy for e in changes] + [e.new_data for e in new_data])
    accuracies = sorted(e.accuracy for e in runs)
    typical = accuracies[len(accuracies) // 20] if accuracies else steady[0]  # the 5th percentile
    low = min(steady + [typical])
    high = min(1.0, max(steady + accuracies[-1:]))
    pad = max(0.002, 0.08 * (high - low))
    low, high = max(0.0, low - pad), min(1.0, high + pad)

    def y(value: float) -> float:
        return TOP + plot_h * (high - min(max(value, low), high)) / (high - low)

    out = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
           f'aria-label="Test accuracy per run over time, against the threshold and production">']
    for tick in _ticks(low, high):
        out.append(f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" stroke="{GRID}"/>'
                   f'<text x="{LEFT - 8}" y="{y(tick) + 4:.1f}" text-anchor="end" class="tick">{tick:.3f}</text>')
    for moment, label in _time_ticks(start, end):
        out.append(f'<line x1="{x(moment):.1f}" x2="{x(moment):.1f}" y1="{TOP + plot_h}" y2="{TOP + plot_h + 5}" '
                   f'stroke="#a0aec0"/><text x="{x(moment):.1f}" y="{TOP + plot_h + 19}" text-anchor="middle" '
                   f'class="tick">{label}</text>')
    out.append(f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{TOP + plot_h}" y2="{TOP + plot_h}" stroke="#a0aec0"/>')
    right = LEFT + plot_w
    threshold_path = _steps([(x(t), y(v)) for t, v in thresholds], right)
    if thresholds[0][0] > start:
        threshold_path = f"M{LEFT},{y(thresholds[0][1]):.1f}" + threshold_path.replace("M", "L", 1)
    out.append(f'<path d="{threshold_path}" fill="none" stroke="{THRESHOLD}" stroke-width="1.6" '
               f'stroke-dasharray="6 4"><title>threshold {thresholds[-1][1]:.4f}</title></path>')
    out.append(f'<text x="{right + 14}" y="{y(thresholds[-1][1]) + 4:.1f}" class="label" fill="{THRESHOLD}">'
               f'threshold {thresholds[-1][1]:.4f}</text>')
    if changes:
        out.append(f'<path d="{_steps([(x(e.time), y(e.accuracy)) for e in changes], right)}" fill="none" '
                   f'stroke="{PRODUCTION}" stroke-width="3" stroke-opacity=".45"/>')
    if production is not None:
        out.append(f'<text x="{right + 14}" y="{y(production.test_accuracy) - 2:.1f}" class="label" '
                   f'fill="{PRODUCTION}">production {production.test_accuracy:.4f}</text>'
                   f'<text x="{right + 14}" y="{y(production.test_accuracy) + 12:.1f}" class="label small" '
                   f'fill="{PRODUCTION}">run {escape(production.run_id[:8])}</text>')
    if new_data:
        line = " ".join(f"{x(e.time):.1f},{y(e.new_data):.1f}" for e in new_data)
        out.append(f'<polyline points="{line}" fill="none" stroke="{NEW_DATA}" stroke-width="1.2" '
                   f'stroke-dasharray="2 3"/>')
        for e in new_data:
            cx, cy = x(e.time), y(e.new_data)
            out.append(f'<path d="M{cx:.1f},{cy - 5:.1f}l5,5l-5,5l-5,-5z" fill="#fff" stroke="{NEW_DATA}" '
                       f'stroke-width="1.6"><title>{escape(e.run_id)} · {_when(e.time)} · new-data accuracy '
                       f'{e.new_data:.4f}</title></path>')
    for e in changes:
        if e.decision == "rollback":
            cx, cy = x(e.time), y(e.accuracy)
            out.append(f'<path d="M{cx:.1f},{cy - 7:.1f}l6,10h-12z" fill="{COLOURS["rollback"]}">'
                       f'<title>{_when(e.time)} · rollback to {escape(e.run_id)} ({e.accuracy:.4f}) · '
                       f'{escape(e.reason)}</title></path>')
    current = production.run_id if production else None
    for e in runs:
        cx, cy, colour = x(e.time), y(e.accuracy), COLOURS.get(e.decision, COLOURS["unchanged"])
        tip = escape(f"{e.run_id} · {_when(e.time)} · {e.decision} · {e.accuracy:.4f} · {e.reason}")
        if e.accuracy < low:  # far below the rest: at the bottom edge, its value in the tooltip
            out.append(f'<path d="M{cx - 5:.1f},{cy - 8:.1f}h10l-5,8z" fill="{colour}"><title>{tip}</title></path>')
            continue
        if e.run_id == current:
            out.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="9" fill="none" stroke="{PRODUCTION}" '
                       f'stroke-width="2.2"/>')
        out.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4.5" fill="{colour}" stroke="#fff" stroke-width="1">'
                   f'<title>{tip}</title></circle>')
    out.append("</svg>")
    return Markup("".join(out))


# -- the page ---------------------------------------------------------------------------------------
def _jinja():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["when"] = _when
    return env


def _metrics(store: ArtifactStore, run_id: str) -> dict:
    try:
        value = json.loads(store.get(keys.metrics(run_id)))
    except (PipelineError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _lineage(index: Index, links: Links) -> list[dict]:
    """Production, then the models rollback would return to, newest first, each with when it went
    into production (its latest promotion or rollback read)."""
    if not index.production:
        return []
    since = {e.run_id: e for e in index.entries if e.decision in ("promoted", "rollback")}
    return [{"run_id": item.run_id, "accuracy": item.test_accuracy, "back": back, "entry": since.get(item.run_id),
             "link": links.to(keys.report(item.run_id))}
            for back, item in enumerate([index.production, *reversed(index.production.stack)])]


def render(store: ArtifactStore, index: Index, links: Links, min_accuracy: float) -> bytes:
    """The page of `index`, its links made by `links`."""
    decisions = index.entries[::-1][:NEWEST]
    with ThreadPoolExecutor(READERS) as pool:  # new-data accuracy, where the record did not carry it
        for e, metrics in zip(decisions, pool.map(
                lambda e: _metrics(store, e.run_id) if e.from_flow and e.new_data is None else {}, decisions)):
            e.new_data = e.new_data if e.new_data is not None else _new_data_accuracy(metrics)
    runs = [e for e in decisions if e.from_flow]
    html = _jinja().get_template("dashboard.html.j2").render(
        store_url=store.url, index=index, decisions=decisions, lineage=_lineage(index, links),
        report={e.run_id: links.to(keys.report(e.run_id)) for e in decisions},
        chart=chart(index.entries, index.production, min_accuracy), colours=COLOURS,
        any_new_data=any(e.new_data is not None for e in index.entries),
        plotted=sum(1 for e in index.entries if e.from_flow), min_accuracy=min_accuracy,
        latest=runs[0] if runs else None, links_expire=links.expires, built=datetime.now(timezone.utc))
    return html.encode()


def build(store: ArtifactStore, min_accuracy: float, page: Path | None = None) -> bytes:
    """The dashboard of `store`, for a page written at `page` (None: the store's index.html)."""
    return render(store, read_index(store), Links(store, page), min_accuracy)


def refresh(store: ArtifactStore, min_accuracy: float) -> str:
    """Rebuild index.html at the store's root; where it is."""
    store.put(keys.DASHBOARD, build(store, min_accuracy), "text/html; charset=utf-8")
    return store.location(keys.DASHBOARD)
