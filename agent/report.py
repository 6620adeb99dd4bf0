"""Rationale reports: why rtem did what it did for one incident, rebuilt from the store and the audit log.

A report reads only what was recorded (the incident row, its events, its decision records), never the
clock or the running configuration, so the same store always gives byte-identical Markdown and HTML.

Everything in a report may come from an event's producer (messages, attributes, subjects), so none of it
may turn into markup: the HTML template is autoescaped, and in Markdown every value is written as text
(`<`, `>` and `&` as entities, which Markdown renders as the characters) or inside a code span fenced
longer than any run of backticks in it (`code`), where Markdown reads nothing as HTML.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from .audit import AuditLog
from .deciders import described_in, unlisted_in
from .incident import ConfirmedCause, confirmed_cause
from .models import DecisionRecord
from .reasoner import described_note, unlisted_note
from .report_chart import timeline_svg
from .report_scores import score_causes
from .report_wording import approver_text, merge_reasons, signals_text, split_reasons
from .store import IncidentStore

__all__ = ["Report", "build_report", "render", "write_reports"]

TEMPLATES = Path(__file__).parent / "templates"
MAX_GROUPS = 40        # timeline rows in the table; the rest are counted, not listed
RECEIPT_CHUNK = 500    # event ids per query when reading when each event was received


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
    replaced: list[dict[str, Any]] = field(default_factory=list)  # proposals left out as unfit (agent/fitness.py)
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
    receipts = _receipts(store, [e.id for e in events])
    watermarks = _watermarks(events, receipts, records)
    decisions = [_decision(r, watermarks.get(r.seq)) for r in records]
    actions = _actions(row, records)
    report = Report(
        incident_id=row["id"],
        summary=_summary(row, events, records, receipts, watermarks),
        timeline=groups[:MAX_GROUPS], timeline_omitted=max(0, len(groups) - MAX_GROUPS),
        decisions=decisions,
        hypotheses=_hypotheses(row, records),
        actions=actions,
        approvals=[_approval(r, actions) for r in records if r.kind in ("approval.requested", "action.approval")],
        executions=[_execution(r) for r in records if r.kind == "action.executed"],
        compensations=[_execution(r) for r in records if r.kind == "action.compensated"],
        blocked=[{"seq": r.seq, "action": r.inputs.get("action", ""), "status": r.decision.get("status", ""),
                  "reasons": r.reasons} for r in records if r.kind == "action.blocked"],
        verification=_verification(row, records),
        versions=_versions(row, records),
        replaced=[{"seq": r.seq, "text": text} for r in records if r.kind == "actions.proposed"
                  for text in r.decision.get("replaced_as_unfit", [])],
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

def _summary(row: dict[str, Any], events: list, records: list[DecisionRecord],
             receipts: dict[str, tuple[float | None, list[str]]], watermarks: dict[int, float]) -> dict[str, Any]:
    top = row["root_causes"][0] if row["root_causes"] else None
    confirmed = confirmed_cause(records)
    counts = signals_text(row["event_count"], row["signal_count"],
                          [receipts.get(e.id, (None, []))[1] for e in events])
    return {"id": row["id"], "status": row["status"], "severity": row["severity"], "opened_at": row["opened_at"],
            "updated_at": row["updated_at"], "entities": row["entities"], "detections": row["detections"],
            "event_count": row["event_count"], "stored_events": len(events), "signal_count": row["signal_count"],
            "events_text": counts["events"], "signals_text": counts["signals"], "by_detection": counts["by_detection"],
            "records": len(records), "resolution": row.get("resolution"), "mttr_s": row.get("mttr_s"),
            "root_cause": _top_cause(row, records) if top else None,
            "unlisted": unlisted_note(unlisted_in(records)) or "",  # what the latest ranking could not see
            "described": described_note(described_in(records)) or "",  # … or saw by the events' word alone
            "confirmed_cause": _confirmed(confirmed), "confirmed_seq": confirmed.seq if confirmed else None,
            "clocks": _clocks(events, records, watermarks),
            "actions": len(row["actions"]),
            "executed": sum(1 for a in row["actions"] if a.get("executed"))}


def _top_cause(row: dict[str, Any], records: list[DecisionRecord]) -> str:
    """`node-6 (cpu; 53% of the scored share, 2.0 nats (7.4×) ahead of cartservice-0)`."""
    hypotheses = _hypotheses(row, records)
    top = hypotheses[0]
    if len(hypotheses) < 2:
        return f"{top['entity']} ({top['fault_type']}; share {top['share']})"
    if top["margin"]:
        lead = f"{top['margin']} ahead of {hypotheses[1]['entity']}"
    else:
        lead = f"margin to {hypotheses[1]['entity']} unknown"
    return f"{top['entity']} ({top['fault_type']}; share {top['share']}, {lead})"


def _clocks(events: list, records: list[DecisionRecord], watermarks: dict[int, float]) -> str:
    """One sentence on how the incident's two clocks relate, from its first decision."""
    if not events or not records:
        return ""
    first = records[0]
    seen = watermarks.get(first.seq)
    wall = first.at.timestamp()
    if seen is None:
        return ("Event times are the producers' timestamps; decision times are rtem's wall clock. When each event "
                "was received is not recorded here, so the two cannot be lined up: compare times within one clock only.")
    offset = wall - seen
    ahead = "rtem's wall clock is" if offset >= 0 else "the events' timestamps are"
    return (f"Event times are the producers' timestamps; decision times are rtem's wall clock. rtem made its first "
            f"decision (seq {first.seq}, {first.kind}) at {_time(first.at)} on its clock, after reading events up to "
            f"{_time_ts(seen)} in event time: here {ahead} {_far(abs(offset))} ahead, so compare times within one "
            f"clock only. Each decision below also says how far in event time rtem had read.")


def _far(seconds: float) -> str:
    """A clock offset: a replay of an old recording puts the clocks years apart."""
    days = seconds / 86400
    return f"{days:,.0f} days" if days >= 2 else duration(seconds)


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


def _receipts(store: IncidentStore, ids: list[str]) -> dict[str, tuple[float | None, list[str]]]:
    """For each event: when rtem stored it (its wall clock) and the detections it raised."""
    found: dict[str, tuple[float | None, list[str]]] = {}
    for n in range(0, len(ids), RECEIPT_CHUNK):
        for row in store.events_by_id(ids[n:n + RECEIPT_CHUNK]):
            received = row.get("received_at")
            signals = json.loads(row["signals"]) if row.get("signals") else []
            found[row["id"]] = (datetime.fromisoformat(received).timestamp() if received else None, signals)
    return found


def _watermarks(events: list, receipts: dict[str, tuple[float | None, list[str]]],
                records: list[DecisionRecord]) -> dict[int, float]:
    """Decisions mapped onto event time: for each record, the latest event time among this incident's events
    that rtem had stored before it decided (by its own clock). A record before any stored event is left out."""
    arrived = sorted((receipts[e.id][0], e.ts) for e in events if receipts.get(e.id, (None,))[0] is not None)
    times, latest, seen = [], [], float("-inf")
    for received, ts in arrived:
        seen = max(seen, ts)
        times.append(received)
        latest.append(seen)
    marks = {}
    for r in records:
        n = bisect.bisect_right(times, r.at.timestamp())
        if n:
            marks[r.seq] = latest[n - 1]
    return marks


def _decision(r: DecisionRecord, watermark: float | None) -> dict[str, Any]:
    return {"seq": r.seq, "at": _time(r.at), "kind": r.kind, "node": r.node,
            "read_up_to": _time_ts(watermark) if watermark is not None else "-",
            "summary": _short(_said_once(r), 300) or _short(r.decision), "evidence": r.evidence, "hash": r.hash[:12]}


def _said_once(r: DecisionRecord) -> str:
    if r.kind == "action.verdict":
        return "; ".join(m.text for m in merge_reasons(r.decision.get("rules", []), r.reasons))
    if r.kind == "approval.requested":
        return "; ".join(split_reasons("; ".join(r.reasons)))
    return "; ".join(r.reasons)


def _hypotheses(row: dict[str, Any], records: list[DecisionRecord]) -> list[dict[str, Any]]:
    ranked = [r for r in records if r.kind == "causes.ranked"]
    seq = ranked[-1].seq if ranked else None
    causes = ranked[-1].decision.get("root_causes", []) if ranked else row["root_causes"]
    scores = score_causes(causes)
    return [{"rank": n, "entity": c.get("entity"), "fault_type": c.get("fault_type"),
             "confidence": c.get("confidence", 0.0), "share": score.share_text, "score": score.score,
             "margin": score.margin.text if score.margin else "", "evidence": c.get("evidence", []),
             "explanation": c.get("explanation", ""), "seq": seq}
            for n, (c, score) in enumerate(zip(causes, scores), 1)]


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
        rules = verdict.decision.get("rules", []) if verdict else a.get("rules", [])
        reasons = merge_reasons(rules, verdict.reasons) if verdict else merge_reasons([], split_reasons(a.get("reason", "")))
        outcome = verdict.decision.get("outcome") if verdict else a["verdict"]
        role = (verdict.decision.get("approver_role") if verdict else None) or a.get("approver_role")
        actions.append({
            "index": a["index"], "label": label, "type": a["type"], "target": a["target"], "params": a["params"],
            "proposed_by": a.get("proposed_by"), "verdict": outcome, "rules": rules,
            "reasons": [m.text + (f" ({', '.join(m.rules)})" if len(m.rules) > 1 else "") for m in reasons],
            "approver_role": role,
            "who_approves": approver_text(role) if outcome == "require_approval" else "",
            "status": a.get("status"), "executed": a.get("executed", False),
            "ruleset": verdict.versions.get("ruleset", "") if verdict else "",
            "proposed_seq": proposed[-1].seq if proposed else None,
            "verdict_seq": verdict.seq if verdict else None, "seqs": related})
    return actions


def _approval(r: DecisionRecord, actions: list[dict[str, Any]]) -> dict[str, Any]:
    if r.kind == "approval.requested":
        labels = r.inputs.get("actions", [])
        asked = [a for a in actions if a["label"] in labels]
        roles = r.decision.get("approver_roles", []) or [a["approver_role"] for a in asked if a["approver_role"]]
        reasons = [reason for a in asked for reason in a["reasons"]] or split_reasons("; ".join(r.reasons))
        return {"seq": r.seq, "at": _time(r.at), "kind": "requested", "action": ", ".join(labels),
                "status": "to be approved by " + (" or ".join(approver_text(role) for role in roles) or approver_text(None)),
                "by": "", "reason": "; ".join(dict.fromkeys(reasons))}
    status, by = r.decision.get("status", ""), r.decision.get("by", "")
    said = f"{status} by {by}: "  # the record's reason repeats who decided; the line says it already
    reasons = [reason.removeprefix(said) for reason in r.reasons if reason != said.removesuffix(": ")]
    return {"seq": r.seq, "at": _time(r.at), "kind": "decided", "action": r.inputs.get("action", ""),
            "status": status, "by": by, "reason": "; ".join(reasons)}


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
