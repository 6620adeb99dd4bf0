"""The rationale report's timeline chart (inline SVG): events on an event-time axis, decisions on a
wall-clock axis, each with its own ticks, and a legend.

Two clocks are involved and they are never comparable: an event's time is its producer's timestamp; a
decision's time is rtem's own wall clock when it decided. A replay of last year's recording, a demo whose
simulated time runs ten times faster, or a producer with a skewed clock put them anywhere relative to
each other, so the chart draws two panels, one per clock, and says so on each axis.
"""

from __future__ import annotations

import html
import math
from datetime import datetime, timezone
from typing import Any, Sequence

from .models import DecisionRecord

__all__ = ["timeline_svg"]

MAX_CHART_LANES = 12   # event lanes; the largest groups are drawn
LEFT, PLOT, RIGHT = 230, 540, 50
WIDTH = LEFT + PLOT + RIGHT
LANE = 18
MIN_TICK_PX = 95       # room for one tick label ("00:48:15.250")
SEVERITY_COLOURS = (("critical", "#b91c1c"), ("error", "#ef4444"), ("warning", "#d97706"), ("other", "#2563eb"))
DECISION_COLOUR = "#059669"
# Tick steps in seconds, from a millisecond to a week.
STEPS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900,
         1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800)


def timeline_svg(groups: Sequence[dict[str, Any]], records: Sequence[DecisionRecord]) -> str:
    """The chart for the report's event groups (`first_ts`/`last_ts` in event time) and decision records."""
    lanes = sorted(groups, key=lambda g: (-g["count"], g["first_ts"], g["type"], g["subject"] or ""))[:MAX_CHART_LANES]
    lanes.sort(key=lambda g: (g["first_ts"], g["type"], g["subject"] or ""))
    nodes = list(dict.fromkeys(r.node or r.kind for r in records))
    parts: list[str] = []
    y = 4
    y = _events_panel(parts, lanes, len(groups), y)
    y = _decisions_panel(parts, records, nodes, y + 14)
    y = _legend(parts, y + 10)
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{y}" viewBox="0 0 {WIDTH} {y}" '
            f'role="img" aria-label="incident timeline: events in event time, decisions in rtem\'s wall-clock time" '
            f'font-family="sans-serif" font-size="11">')
    return head + "".join(parts) + "</svg>"


def _events_panel(parts: list[str], lanes: list[dict[str, Any]], total: int, y: float) -> float:
    shown = f"the {len(lanes)} largest of {total} groups" if total > len(lanes) else f"{total} group{'s' * (total != 1)}"
    parts.append(f'<text class="panel-title" x="4" y="{y + 12}" font-weight="bold">Events by event time '
                 f'(the producers\' timestamps), {html.escape(shown)}</text>')
    y += 20
    if not lanes:
        parts.append(f'<text x="{LEFT}" y="{y + 12}">no events stored</text>')
        return y + LANE
    t0, t1 = min(g["first_ts"] for g in lanes), max(g["last_ts"] for g in lanes)
    scale = _Scale(t0, t1)
    colours = dict(SEVERITY_COLOURS)
    parts.append('<g class="lanes events">')
    for n, g in enumerate(lanes):
        top = y + n * LANE
        x0 = scale.x(g["first_ts"])
        x1 = max(scale.x(g["last_ts"]), x0 + 3)
        colour = colours.get(g["severity"], colours["other"])
        name = f"{g['type'].removeprefix('rtem.')} {g['subject'] or ''}"
        name = name if len(name) <= 32 else name[:31] + "…"  # the count must survive a long name
        label = html.escape(f"{name} ×{g['count']}")
        parts.append(f'<text x="4" y="{top + 12}">{label}</text>'
                     f'<rect x="{x0:.1f}" y="{top + 3}" width="{x1 - x0:.1f}" height="{LANE - 6}" fill="{colour}">'
                     f'<title>{html.escape(g["first"])} – {html.escape(g["last"])} (event time)</title></rect>')
    parts.append('</g>')
    return _axis(parts, scale, y + len(lanes) * LANE + 4, "event-time", "event time, UTC")


def _decisions_panel(parts: list[str], records: Sequence[DecisionRecord], nodes: list[str], y: float) -> float:
    parts.append(f'<text class="panel-title" x="4" y="{y + 12}" font-weight="bold">Decisions by rtem\'s '
                 f'wall clock (when it decided; a different clock from the events above)</text>')
    y += 20
    if not records:
        parts.append(f'<text x="{LEFT}" y="{y + 12}">no decision recorded</text>')
        return y + LANE
    times = [r.at.timestamp() for r in records]
    scale = _Scale(min(times), max(times))
    parts.append('<g class="lanes decisions">')
    for n, node in enumerate(nodes):
        parts.append(f'<text x="4" y="{y + n * LANE + 12}">{html.escape(node[:36])}</text>')
    for r, ts in zip(records, times):
        cy = y + nodes.index(r.node or r.kind) * LANE + LANE / 2
        parts.append(f'<circle cx="{scale.x(ts):.1f}" cy="{cy:.1f}" r="4" fill="{DECISION_COLOUR}">'
                     f'<title>seq {r.seq} {html.escape(r.kind)} at {html.escape(_iso(ts))} (wall clock)</title></circle>')
    parts.append('</g>')
    return _axis(parts, scale, y + len(nodes) * LANE + 4, "wall-clock", "rtem's wall clock, UTC")


def _legend(parts: list[str], y: float) -> float:
    parts.append(f'<g class="legend"><text x="4" y="{y + 11}" font-weight="bold">Legend</text>')
    x = 70
    for name, colour in SEVERITY_COLOURS:
        parts.append(f'<rect x="{x}" y="{y + 2}" width="14" height="10" fill="{colour}"/>'
                     f'<text x="{x + 18}" y="{y + 11}">{name} events</text>')
        x += 120
    parts.append(f'<circle cx="{x + 7}" cy="{y + 7}" r="4" fill="{DECISION_COLOUR}"/>'
                 f'<text x="{x + 18}" y="{y + 11}">decision record</text></g>')
    return y + 20


def _axis(parts: list[str], scale: "_Scale", y: float, name: str, title: str) -> float:
    """A horizontal axis at `y`: its line, ticks with labels, and its title with the date(s) and the span."""
    parts.append(f'<g class="axis" data-axis="{name}">'
                 f'<line x1="{LEFT}" y1="{y}" x2="{LEFT + PLOT}" y2="{y}" stroke="#555"/>')
    step = scale.step()
    for ts in scale.ticks(step):
        x = scale.x(ts)
        parts.append(f'<line x1="{x:.1f}" y1="{y}" x2="{x:.1f}" y2="{y + 4}" stroke="#555"/>'
                     f'<text class="tick" x="{x:.1f}" y="{y + 15}" text-anchor="middle">{_tick_label(ts, step)}</text>')
    first, last = _day(scale.t0), _day(scale.t1)
    days = first if first == last else f"{first} to {last}"
    parts.append(f'<text class="axis-title" x="{LEFT}" y="{y + 30}">{html.escape(title)}, {days}; '
                 f'span {_span(scale.t1 - scale.t0)}, ticks every {_span(step)}</text></g>')
    return y + 36


class _Scale:
    """Seconds of one clock to x pixels of the plot area; a zero span is widened to one second."""

    def __init__(self, t0: float, t1: float):
        self.t0, self.t1 = t0, t1
        self.span = max(t1 - t0, 1.0)

    def x(self, ts: float) -> float:
        return LEFT + (ts - self.t0) / self.span * PLOT

    def step(self) -> float:
        most = max(1, PLOT // MIN_TICK_PX)
        return next((s for s in STEPS if self.span / s <= most), STEPS[-1])

    def ticks(self, step: float) -> list[float]:
        first = math.ceil(self.t0 / step - 1e-9) * step
        count = int((self.t0 + self.span - first) / step + 1e-9) + 1
        return [round(first + n * step, 6) for n in range(max(0, count))]


def _tick_label(ts: float, step: float) -> str:
    moment = datetime.fromtimestamp(ts, timezone.utc)
    if step < 1:
        decimals = 3 if step < 0.01 else 2 if step < 0.1 else 1
        return moment.strftime("%H:%M:%S.%f")[:9 + decimals]
    if step < 60:
        return moment.strftime("%H:%M:%S")
    if step < 86400:
        return moment.strftime("%H:%M")
    return moment.strftime("%m-%d")


def _span(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 7200:
        return f"{seconds / 60:.3g} min"
    if seconds < 172800:
        return f"{seconds / 3600:.3g} h"
    return f"{seconds / 86400:.3g} days"


def _day(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
