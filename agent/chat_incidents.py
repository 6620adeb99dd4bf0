"""Chat intents about incidents: what changed, the root cause, what was confirmed, what happened, what
rtem did, what is open, how long one took. An incident is the one asked about (by id or `--incident`),
else the latest involving the entities the question names, else the latest of all.
"""

from __future__ import annotations

from typing import Any

from .chat import CHANGE_WINDOW_S, CLOSED, Answer, Context, proposal
from .chat_actions import action_types
from .deciders import described_in, unlisted_in
from .incident import CONFIRMED, confirmed_cause
from .models import share_text
from .reasoner import described_note, unlisted_note
from .report import duration

__all__ = ["cause", "changed", "confirmed", "did", "happened", "mttr", "still_open"]


def _latest(ctx: Context) -> dict[str, Any] | None:
    rows = ctx.incidents()
    if not rows and not ctx.groups:
        ctx.searched.append("store: incidents (none)")
    return rows[-1] if rows else None


def changed(ctx: Context) -> Answer:
    """Changes (deploys, config) to the incident's neighbourhood, from an hour before its first error to
    its last event: a change elsewhere in the shop is not an answer to "what changed?"."""
    if (stranger := ctx.stranger_unknown()) is not None:
        return stranger
    row = _latest(ctx)
    if row is None:
        return ctx.unknown("there is no incident" + (f" involving {ctx.named()}" if ctx.groups else "") + " to look at")
    first = ctx.store.store.first_error(row["id"])
    if first is None:
        ctx.searched.append(f"store: events of {row['id']} (none)")
        return ctx.unknown(f"{row['id']} has no recorded events")
    near = ctx.catalog.neighbourhood([*row["entities"], *(c["entity"] for c in row["root_causes"][:1])])
    until = max(float(row.get("last_ts") or first["ts"]), first["ts"])
    ctx.searched.append(f"store: rtem.change.* events from {duration(CHANGE_WINDOW_S)} before {first['time']} (first "
                        f"error of {row['id']}, event {first['id']}) to its last event, on the {len(near)} entities "
                        f"of its topology neighbourhood")
    # a change already attached to another incident was that incident's, not this one's
    every = [c for c in ctx.store.store.change_events(first["ts"] - CHANGE_WINDOW_S, until)
             if ctx.store.sees_event(c["incident_id"]) and c["incident_id"] in (None, row["id"])]
    changes = [c for c in every if c["subject"] in near]
    opened = [r.seq for r in ctx.audit.records(incident_id=row["id"], kind="incident.opened")[:1]]
    elsewhere = f" ({len(every) - len(changes)} change(s) elsewhere in the shop do not count)" if len(every) > len(changes) else ""
    if not changes:
        reply = ctx.done(f"Nothing: no change (deploy or config) to {row['id']}'s entities or their neighbours was "
                         f"recorded from {duration(CHANGE_WINDOW_S)} before its first error at {first['time']} "
                         f"(event {first['id']}) to its last event{elsewhere}.", [*opened, first["id"]])
        reply.empty = True
        return reply
    entities = set(row["entities"])
    lines = [f"Changes near {row['id']} (first error at {first['time']}, event {first['id']}){elsewhere}:"]
    for c in changes:
        mark = " (an entity of the incident)" if c["subject"] in entities else " (a neighbour in the topology)"
        lines.append(f"- {c['time']} {c['type']} on {c['subject']}{mark}: {c['message'] or '-'} (event {c['id']})")
    return ctx.done("\n".join(lines), [*opened, first["id"], *(c["id"] for c in changes)])


def still_open(ctx: Context) -> Answer:
    rows = [r for r in ctx.incidents() if r["status"] not in CLOSED]
    ctx.searched.append("store: incidents not resolved, escalated or merged")
    if not rows:
        return ctx.nothing("Nothing is open: every incident" + (f" involving {ctx.named()}" if ctx.groups else "")
                           + " is resolved, escalated or merged.")
    lines, cites = [f"{len(rows)} incident(s) still open:"], []
    for row in rows:
        opened = ctx.audit.records(incident_id=row["id"], kind="incident.opened")
        last = ctx.audit.records(incident_id=row["id"])
        waiting = [a for a in row["actions"] if a.get("status") == "awaiting_approval"]
        top = row["root_causes"][0]["entity"] if row["root_causes"] else "not diagnosed yet"
        line = f"- {row['id']}: {row['status']}, opened {row['opened_at']}, root cause {top}"
        if waiting:
            line += "; awaiting approval: " + ", ".join(f"#{a['index']} {a['type']} on {a['target']}" for a in waiting)
        if last:
            line += f" (last record seq {last[-1].seq} {last[-1].kind})"
            cites.append(last[-1].seq)
        cites += [r.seq for r in opened[:1]]
        lines.append(line)
    return ctx.done("\n".join(lines), cites)


def mttr(ctx: Context) -> Answer:
    if ctx.incident is None:
        rows = ctx.incidents() if ctx.groups else []
        rows = rows[-1:] if ctx.latest_asked() else rows
        if not ctx.groups and ctx.latest_asked():
            rows = ctx.incidents()[-1:]
        ctx.searched.append(f"store: incidents on {ctx.named()}")
        if len(rows) != 1:
            return ctx.unknown("the question names no incident I can find (give its id, e.g. `--incident ID`)")
        ctx.incident = rows[0]
    row = ctx.incident
    closing = ctx.records("incident.closed")
    opened = ctx.audit.records(incident_id=row["id"], kind="incident.opened")
    cites = [*(r.seq for r in opened[:1]), *(r.seq for r in closing[-1:])]
    if row.get("mttr_s") is None:
        return ctx.done(f"{row['id']} has no MTTR: it is {row['status']}"
                        + (f" ({row['resolution']})" if row.get("resolution") else "")
                        + "; MTTR is measured only when verification sees recovery.", cites)
    return ctx.done(f"{row['id']} took {duration(row['mttr_s'])} ({row['mttr_s']:.1f} s of event time) from opening "
                    f"at {row['opened_at']} to verified recovery; {row.get('resolution') or ''}".rstrip("; ")
                    + (f" (seq {closing[-1].seq})." if closing else "."), cites)


def cause(ctx: Context) -> Answer:
    """rtem's ranking and, beside it, the cause a person confirmed (the latest `cause.confirmed`)."""
    if (stranger := ctx.stranger_unknown()) is not None:
        return stranger
    if ctx.incident is None:
        ctx.incident = _latest(ctx)
        ctx.searched.append("store: the latest incident" + (f" involving {ctx.named()}" if ctx.groups else ""))
        if ctx.incident is None:
            return ctx.unknown("there is no incident whose cause I could name")
    row, ranked = ctx.incident, ctx.records("causes.ranked")
    confirmed = confirmed_cause(ctx.records(CONFIRMED))
    causes = ranked[-1].decision.get("root_causes", []) if ranked else []
    unseen = unlisted_note(unlisted_in(ranked))  # what that ranking could not see
    if not causes and unseen:
        return ctx.done(f"For {row['id']}, rtem could rank no root cause: {unseen} (seq {ranked[-1].seq}).",
                        [ranked[-1].seq])
    if not causes:
        return ctx.unknown(f"rtem ranked no root cause for {row['id']} yet")
    top = ", then ".join(f"{c.get('entity')} ({c.get('fault_type')}, share "
                         f"{share_text(float(c.get('confidence', 0)))})" for c in causes[:3])
    text = f"For {row['id']}, rtem ranked {top} (seq {ranked[-1].seq})."
    # a why explains the cause it names (the first ranked one it names), else the first; it cites that one
    why = ctx.q.startswith("why")
    place, asked = next(((i, c) for i, c in enumerate(causes) if why and ctx.groups and ctx.about(c.get("entity"))),
                        (0, causes[0]))
    if why and ctx.groups and not ctx.about(asked.get("entity")):
        text += f" {ctx.named()} is not among the {len(causes)} causes it ranked."
    elif why and asked.get("explanation"):
        ranked_as = f" (ranked #{place + 1})" if place else ""
        text += f" Why {asked.get('entity')}{ranked_as}: {asked['explanation']}"
    if told := described_note(described_in(ranked)):  # what it weighed by the events' word alone
        text += f" Described by their events: {told}."
    if unseen:
        text += f" Not weighed: {unseen}."
    if confirmed is None:
        text += f" Nobody has confirmed the cause yet (rtem incidents confirm {row['id']} --cause ENTITY)."
    else:
        text += (f" The confirmed cause is {confirmed.describe()} (seq {confirmed.seq})"
                 + (f": {confirmed.note}." if confirmed.note else "."))
    cites = [ranked[-1].seq, *asked.get("evidence", [])[:5]]
    return ctx.done(text, cites + ([confirmed.seq] if confirmed else []))


def confirmed(ctx: Context) -> Answer:
    """Causes people confirmed (`cause.confirmed`), per incident."""
    if (stranger := ctx.stranger_unknown()) is not None:
        return stranger
    records = [r for r in ctx.records(CONFIRMED) if ctx.incident is not None or not ctx.groups
               or (r.incident_id and any(ctx.members & _involved(ctx, r.incident_id) for _ in [0]))]
    if not records:
        return ctx.nothing("Nothing was confirmed: no cause of " + (ctx.incident["id"] if ctx.incident else
                           "any incident" + (f" involving {ctx.named()}" if ctx.groups else "")) + " has been confirmed.")
    lines, cites = [], []
    for incident_id in dict.fromkeys(r.incident_id for r in records):
        found = confirmed_cause([r for r in records if r.incident_id == incident_id])
        if found is not None:
            lines.append(f"{incident_id}: {found.describe()} (seq {found.seq})" + (f": {found.note}" if found.note else ""))
            cites.append(found.seq)
    return ctx.done("Confirmed causes:\n" + "\n".join(lines), cites)


def happened(ctx: Context) -> Answer:
    """An incident's story from its records: opened, ranked, each action's verdict and outcome, closed."""
    if (stranger := ctx.stranger_unknown()) is not None:
        return stranger
    row = ctx.incident or _latest(ctx)
    if row is None:
        return ctx.unknown("there is no incident" + (f" involving {ctx.named()}" if ctx.groups else ""))
    if ctx.incident is None and ctx.groups and not ctx.members & _central(row):
        return _affected_only(ctx)
    records = ctx.audit.records(incident_id=row["id"])
    ctx.searched.append(f"audit: records of {row['id']}")
    lines, cites = [], []
    for r in records:
        if r.kind == "incident.opened":
            lines.append(f"opened on {', '.join(r.decision.get('entities', [])[:6])} ({'; '.join(r.reasons)[:160]}; seq {r.seq})")
        elif r.kind == "causes.ranked" and r.decision.get("root_causes"):
            top = r.decision["root_causes"][0]
            share = share_text(float(top.get("confidence", 0)))
            lines.append(f"ranked {top.get('entity')} first ({top.get('fault_type')}, {share}; seq {r.seq})")
        elif r.kind == "action.verdict" and ctx.about(proposal(r).get("target")):
            p = proposal(r)
            lines.append(f"{p.get('type')} on {p.get('target')}: guard {r.decision.get('outcome')} (seq {r.seq})")
        elif r.kind in ("action.executed", "action.blocked", "approval.decided", "actions.stood_down", "incident.merged",
                        "incident.closed", "incident.diagnosed", "incident.reopened", CONFIRMED):
            if r.kind == "action.executed" and ctx.groups and not any(f" on {m}" in r.inputs.get("action", "") for m in ctx.members):
                continue
            lines.append(f"{r.kind}: {'; '.join(r.reasons)[:160] or '-'} (seq {r.seq})")
        else:
            continue
        cites.append(r.seq)
    if not lines:
        return ctx.unknown(f"{row['id']} has no decision records I may show")
    status = f"{row['status']}" + (f" ({row['resolution']})" if row.get("resolution") else "")
    if ctx.groups and not ctx.members & {*row["entities"], *(a["target"] for a in row["actions"])}:
        return ctx.unknown(f"{row['id']} does not involve {ctx.named()}")
    return ctx.done(f"{row['id']}, now {status}:\n" + "\n".join(f"- {line}" for line in lines), cites)


def did(ctx: Context) -> Answer:
    """What rtem ran (`action.executed`), or in a dry run what it proposed and the guard's verdicts."""
    if (stranger := ctx.stranger_unknown()) is not None:
        return stranger
    types = action_types(ctx.q)
    visible = {r["id"] for r in ctx.incidents()}
    executed = [x for x in ctx.records("action.executed") if x.incident_id in visible
                and (not types or any(f" {t} on " in x.inputs.get("action", "") for t in types))
                and (not ctx.groups or any(x.inputs.get("action", "").endswith(f" on {m}") for m in ctx.members))]
    if executed:
        lines = [f"- {x.incident_id}: {x.inputs.get('action')} {'succeeded' if x.decision.get('ok') else 'FAILED'} "
                 f"(seq {x.seq})" for x in executed[-12:]]
        return ctx.done("rtem ran:\n" + "\n".join(lines), [x.seq for x in executed[-12:]])
    verdicts = [v for v in ctx.records("action.verdict") if v.incident_id in visible and ctx.about(proposal(v).get("target"))
                and (not types or proposal(v).get("type") in types)]
    if not verdicts:
        return ctx.nothing("rtem did nothing" + (f" about {ctx.named()}" if ctx.groups else "")
                           + ": no action was executed or proposed.")
    lines = [f"- {v.incident_id}: proposed {proposal(v).get('type')} on {proposal(v).get('target')}, guard "
             f"{v.decision.get('outcome')} (seq {v.seq})" for v in verdicts[-12:]]
    return ctx.done("rtem executed nothing (a dry run or nothing allowed yet); it proposed:\n" + "\n".join(lines),
                    [v.seq for v in verdicts[-12:]])


def _affected_only(ctx: Context) -> Answer:
    """An entity that was neither a ranked cause nor acted on, only among an incident's affected entities."""
    rows = ctx.incidents()
    opened = [r for row in rows for r in ctx.audit.records(incident_id=row["id"], kind="incident.opened")[:1]]
    listed = ", ".join(f"{r.incident_id} (seq {r.seq})" for r in opened[-8:])
    return ctx.done(f"rtem neither ranked {ctx.named()} a root cause nor acted on it; it is among the affected "
                    f"entities of {len(rows)} incident(s): {listed}.", [r.seq for r in opened[-8:]])


def _central(row: dict[str, Any]) -> set[str]:
    return {*(a["target"] for a in row["actions"]), *(c["entity"] for c in row["root_causes"][:1])}


def _involved(ctx: Context, incident_id: str) -> set[str]:
    row = ctx.store.incident(incident_id)
    return set(row["entities"]) | {a["target"] for a in row["actions"]} if row else set()
