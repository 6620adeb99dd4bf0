"""Rationale reports: why rtem did what it did for one incident, rebuilt from the store and the audit log.

A report reads only what was recorded (the incident row, its events, its decision records), never the
clock or the running configuration, so the same store always gives byte-identical Markdown and HTML.

Everything in a report may come from an event's producer (messages, attributes, subjects), so none of it
may turn into markup: the HTML template is autoescaped, and in Markdown every value is written as text
(`<`, `>` and `&` as entities, which Markdown renders as the characters) or inside a code span fenced
longer than any run of backticks in it (`code`), where Markdown reads nothing as HTML.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from .audit import AuditLog
from .incident import ConfirmedCause, confirmed_cause
from .models import DecisionRecord
from .store import IncidentStore

__all__ = ["Report", "build_report", "render", "write_reports"]

TEMPLATES = Path(__file__).parent / "templates"
MAX_GROUPS = 40        # timeline rows in the table; the rest are counted, not listed
MAX_CHART_LANES = 12   # event lanes in the SVG chart


@dataclass
class Report:
    incident_id: str
    summary: dict[str, Any]
    timeline: list[dict[str, Any]]          # events grouped by (type, subject, severity)
    timeline_omitted: int
    decisions: list[dict[str, Any]]         # every audit record of the incident, in seq order
    hypotheses: list[dict[str, Any]]
    actions: list[dict[str, Any]]
    approvals: list[dict[str, Any]]
    executions: list[dict[str, Any]]
    compensations: list[dict[str, Any]]
    blocked: list[dict[str, Any]]
    verification: dict[str, Any]
    versions: dict[str, list[str]]
    chart_svg: str = field(default="", repr=False)

    def render(self, fmt: str = "md") -> str:
        return render(self, fmt)


def build_report(store: IncidentStore, audit: AuditLog, incident_id: str) -> Report:
    """The report of `incident_id` (a unique prefix is enough); LookupError if the store has no such incident."""
    row = store.incident(incident_id)
    if row is None:
        raise LookupError(f"no incident {incident_id!r} in {store.where} (see `rtem incidents`)")
    events = store.events(row["id"])
    # The record of a written report is about the report, not the incident: leaving it out keeps a
    # rebuilt report identical to the one written at close.
    records = [r for r in audit.records(incident_id=row["id"]) if r.kind != "report.written"]
    groups = _group_events(events)
    decisions = [_decision(r) for r in records]
    report = Report(
        incident_id=row["id"],
        summary=_summary(row, events, records),
        timeline=groups[:MAX_GROUPS], timeline_omitted=max(0, len(groups) - MAX_GROUPS),
        decisions=decisions,
        hypotheses=_hypotheses(row, records),
        actions=_actions(row, records),
        approvals=[_approval(r) for r in records if r.kind in ("approval.requested", "action.approval")],
        executions=[_execution(r) for r in records if r.kind == "action.executed"],
        compensations=[_execution(r) for r in records if r.kind == "action.compensated"],
        blocked=[{"seq": r.seq, "action": r.inputs.get("action", ""), "status": r.decision.get("status", ""),
                  "reasons": r.reasons} for r in records if r.kind == "action.blocked"],
        verification=_verification(row, records),
        versions=_versions(row, records),
    )
    report.chart_svg = timeline_svg(groups, records)
    return report


def write_reports(store: IncidentStore, audit: AuditLog, incident_id: str, directory: Path) -> dict[str, str]:
    """Write the Markdown and HTML reports of a closed incident and record them (path and SHA-256) in
    the audit log, so anyone can rebuild them with `rtem report` and compare."""
    report = build_report(store, audit, incident_id)
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for fmt in ("md", "html"):
        path = directory / f"{report.incident_id}.{fmt}"
        text = report.render(fmt)
        path.write_text(text, encoding="utf-8")
        written[fmt] = str(path)
        written[f"{fmt}_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    audit.append("report.written", incident_id=report.incident_id, node="report", decision=written,
                 reasons=[f"incident {report.incident_id} closed: rationale report written to {written['md']} "
                          f"and {written['html']}"])
    return written


def render(report: Report, fmt: str = "md") -> str:
    if fmt not in ("md", "html"):
        raise ValueError(f"unknown report format {fmt!r}: use md or html")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=fmt == "html",
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True,
                             undefined=jinja2.StrictUndefined, finalize=_markdown_text if fmt == "md" else None)
    env.filters["pct"] = lambda v: f"{float(v) * 100:.0f}%"
    env.filters["dur"] = duration
    env.filters["cell"] = lambda v: str(v).replace("|", "\\|").replace("\n", " ")
    env.filters["code"] = markdown_code
    return env.get_template(f"report.{fmt}.j2").render(r=report, svg=Markup(report.chart_svg))


def markdown_code(value: Any, cell: bool = False) -> Markup:
    """`value` as one inline code span, whatever it holds: fenced with more backticks than its longest
    run, padded when it starts or ends with one, on one line; in a table `cell`, with its pipes escaped."""
    text = str(value).replace("\n", " ")
    if cell:
        text = text.replace("|", "\\|")
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return Markup(f"{fence}{pad}{text}{pad}{fence}")


def _markdown_text(value: Any) -> Any:
    """Every `{{ … }}` of the Markdown template: plain text, so raw HTML from an event is shown, not run,
    and a link written in an event (`[x](javascript:…)`) is not a link. (Table cells escape `|` themselves.)"""
    if isinstance(value, Markup):  # a code span made by `code`
        return value
    text = str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("[", "\\[").replace("]", "\\]")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = float(seconds)
    if seconds < 120:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


# -- sections ---------------------------------------------------------------------------------------

def _summary(row: dict[str, Any], events: list, records: list[DecisionRecord]) -> dict[str, Any]:
    top = row["root_causes"][0] if row["root_causes"] else None
    confirmed = confirmed_cause(records)
    return {"id": row["id"], "status": row["status"], "severity": row["severity"], "opened_at": row["opened_at"],
            "updated_at": row["updated_at"], "entities": row["entities"], "detections": row["detections"],
            "event_count": row["event_count"], "stored_events": len(events), "signal_count": row["signal_count"],
            "records": len(records), "resolution": row.get("resolution"), "mttr_s": row.get("mttr_s"),
            "root_cause": f"{top['entity']} ({top['fault_type']}, {top['confidence']:.2f})" if top else None,
            "confirmed_cause": _confirmed(confirmed), "confirmed_seq": confirmed.seq if confirmed else None,
            "actions": len(row["actions"]),
            "executed": sum(1 for a in row["actions"] if a.get("executed"))}


def _confirmed(confirmed: ConfirmedCause | None) -> str | None:
    """A person's confirmed cause (the latest `cause.confirmed`), to read beside rtem's ranking."""
    if confirmed is None:
        return None
    ranked = "rtem ranked it first" if confirmed.agreed else (
        f"rtem ranked it #{confirmed.rank}" if confirmed.rank else "rtem did not rank it")
    fault = f", {confirmed.fault_type}" if confirmed.fault_type else ""
    note = f": {confirmed.note}" if confirmed.note else ""
    return f"{confirmed.entity} ({confirmed.by}{fault}; {ranked}){note}"


def _group_events(events: list) -> list[dict[str, Any]]:
    groups: dict[tuple, dict[str, Any]] = {}
    for e in events:  # already ordered by (ts, id)
        key = (e.type, e.subject, e.severity)
        group = groups.get(key)
        if group is None:
            groups[key] = {"type": e.type, "subject": e.subject, "severity": e.severity, "count": 1,
                           "first": _time(e.time), "last": _time(e.time), "first_ts": e.ts, "last_ts": e.ts,
                           "first_id": e.id, "last_id": e.id, "message": e.message}
        else:
            group.update(count=group["count"] + 1, last=_time(e.time), last_ts=e.ts, last_id=e.id)
    return sorted(groups.values(), key=lambda g: (g["first_ts"], g["type"], g["subject"] or "", g["severity"] or ""))


def _decision(r: DecisionRecord) -> dict[str, Any]:
    return {"seq": r.seq, "at": _time(r.at), "kind": r.kind, "node": r.node,
            "summary": _short("; ".join(r.reasons), 300) or _short(r.decision), "evidence": r.evidence, "hash": r.hash[:12]}


def _hypotheses(row: dict[str, Any], records: list[DecisionRecord]) -> list[dict[str, Any]]:
    ranked = [r for r in records if r.kind == "causes.ranked"]
    seq = ranked[-1].seq if ranked else None
    causes = ranked[-1].decision.get("root_causes", []) if ranked else row["root_causes"]
    return [{"rank": n, "entity": c.get("entity"), "fault_type": c.get("fault_type"),
             "confidence": c.get("confidence", 0.0), "evidence": c.get("evidence", []),
             "explanation": c.get("explanation", ""), "seq": seq} for n, c in enumerate(causes, 1)]


def _actions(row: dict[str, Any], records: list[DecisionRecord]) -> list[dict[str, Any]]:
    """Each proposed action with its verdict, every rule that matched and the records behind it."""
    verdicts = [r for r in records if r.kind == "action.verdict"]
    proposed = [r for r in records if r.kind == "actions.proposed"]
    actions = []
    for a in row["actions"]:
        label = f"#{a['index']} {a['type']} on {a['target']}"
        mine = [v for v in verdicts if (v.inputs.get("proposal") or {}).get("type") == a["type"]
                and (v.inputs.get("proposal") or {}).get("target") == a["target"]]
        verdict = mine[-1] if mine else None
        related = [r.seq for r in records if r.kind in ("action.approval", "action.executed", "action.compensated",
                                                        "action.blocked") and r.inputs.get("action") == label]
        actions.append({
            "index": a["index"], "label": label, "type": a["type"], "target": a["target"], "params": a["params"],
            "proposed_by": a.get("proposed_by"), "verdict": verdict.decision.get("outcome") if verdict else a["verdict"],
            "rules": verdict.decision.get("rules", []) if verdict else a.get("rules", []),
            "reasons": verdict.reasons if verdict else [a.get("reason", "")],
            "approver_role": a.get("approver_role"), "status": a.get("status"), "executed": a.get("executed", False),
            "ruleset": verdict.versions.get("ruleset", "") if verdict else "",
            "proposed_seq": proposed[-1].seq if proposed else None,
            "verdict_seq": verdict.seq if verdict else None, "seqs": related})
    return actions


def _approval(r: DecisionRecord) -> dict[str, Any]:
    if r.kind == "approval.requested":
        return {"seq": r.seq, "at": _time(r.at), "kind": "requested", "action": ", ".join(r.inputs.get("actions", [])),
                "status": "requested", "by": ", ".join(r.decision.get("approver_roles", [])), "reason": "; ".join(r.reasons)}
    return {"seq": r.seq, "at": _time(r.at), "kind": "decided", "action": r.inputs.get("action", ""),
            "status": r.decision.get("status", ""), "by": r.decision.get("by", ""), "reason": "; ".join(r.reasons)}


def _execution(r: DecisionRecord) -> dict[str, Any]:
    return {"seq": r.seq, "at": _time(r.at), "action": r.inputs.get("action", ""),
            "key": r.inputs.get("idempotency_key", ""), "attempts": r.inputs.get("attempts"),
            "params": r.inputs.get("params", {}), "ok": bool(r.decision.get("ok")),
            "result": _short(r.decision.get("result")), "outcome": "; ".join(r.reasons)}


def _verification(row: dict[str, Any], records: list[DecisionRecord]) -> dict[str, Any]:
    closing = [r for r in records if r.kind in ("incident.closed", "incident.diagnosed")]
    last = closing[-1] if closing else None
    return {"status": row["status"], "resolution": row.get("resolution"), "mttr_s": row.get("mttr_s"),
            "seq": last.seq if last else None, "closed_at": _time(last.at) if last else None,
            "dry_run": any("dry run" in reason for r in closing for reason in r.reasons)}


def _versions(row: dict[str, Any], records: list[DecisionRecord]) -> dict[str, list[str]]:
    """Every version each component had across the incident's decisions, in order of first use."""
    seen: dict[str, list[str]] = {}
    for versions in [r.versions for r in records] + [row.get("versions") or {}]:
        for key, value in versions.items():
            if value and value not in seen.setdefault(key, []):
                seen[key].append(str(value))
    return {k: seen[k] for k in sorted(seen) if seen[k]}


# -- the chart ----------------------------------------------------------------------------------------

def timeline_svg(groups: list[dict[str, Any]], records: list[DecisionRecord]) -> str:
    """An inline SVG: one lane per event group (event time) and one lane of decisions (wall time of the
    records, on their own scale since rtem decides after the events it reads)."""
    lanes = sorted(groups, key=lambda g: (-g["count"], g["first_ts"], g["type"], g["subject"] or ""))[:MAX_CHART_LANES]
    lanes.sort(key=lambda g: (g["first_ts"], g["type"], g["subject"] or ""))
    left, width, lane_h = 230, 560, 18
    height = 40 + lane_h * (len(lanes) + 2)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 20}" height="{height}" '
             f'viewBox="0 0 {left + width + 20} {height}" role="img" aria-label="incident timeline" '
             f'font-family="sans-serif" font-size="11">']
    if lanes:
        t0 = min(g["first_ts"] for g in lanes)
        t1 = max(g["last_ts"] for g in lanes)
        span = max(t1 - t0, 1.0)
        parts.append(f'<text x="{left}" y="14">events, event time: {html.escape(_time_ts(t0))} → '
                     f'{html.escape(_time_ts(t1))} ({duration(t1 - t0)})</text>')
        for n, g in enumerate(lanes):
            y = 24 + n * lane_h
            x0 = left + (g["first_ts"] - t0) / span * width
            x1 = max(left + (g["last_ts"] - t0) / span * width, x0 + 3)
            colour = {"critical": "#b91c1c", "error": "#dc2626", "warning": "#d97706"}.get(g["severity"], "#2563eb")
            label = html.escape(f"{g['type'].removeprefix('rtem.')} {g['subject'] or ''} ×{g['count']}"[:40])
            parts.append(f'<text x="4" y="{y + 12}">{label}</text>'
                         f'<rect x="{x0:.1f}" y="{y + 3}" width="{x1 - x0:.1f}" height="{lane_h - 6}" '
                         f'fill="{colour}"><title>{html.escape(g["first"])} – {html.escape(g["last"])}</title></rect>')
    y = 24 + len(lanes) * lane_h + 8
    parts.append(f'<text x="4" y="{y + 12}">decisions (wall time)</text>')
    if records:
        r0, r1 = records[0].at.timestamp(), records[-1].at.timestamp()
        rspan = max(r1 - r0, 1e-6)
        for r in records:
            x = left + (r.at.timestamp() - r0) / rspan * width if r1 > r0 else left
            parts.append(f'<circle cx="{x:.1f}" cy="{y + 9}" r="4" fill="#059669"><title>seq {r.seq} '
                         f'{html.escape(r.kind)}</title></circle>')
    parts.append('</svg>')
    return "".join(parts)


# -- helpers ---------------------------------------------------------------------------------------------

def _time(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _time_ts(ts: float) -> str:
    return _time(datetime.fromtimestamp(ts, timezone.utc))


def _short(value: Any, limit: int = 160) -> str:
    if value in (None, {}, []):
        return ""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[:limit - 1] + "…"
