"""Chat intents about actions: why one ran, why it was skipped, what needed approval, who approved it,
what is waiting for approval, which rule blocked one. Each reads the store and the audit log through
the question's `chat.Context` and cites the records it rests on.

Actions are named by verb ("restart" names restart_instance) or by type; entities through the
question's resolved groups (`Context.groups`): a record about another entity is never used.
"""

from __future__ import annotations

import re
from typing import Any

from .chat import CLOSED, Answer, Context, proposal
from .models import DecisionRecord, share_text
from .report_wording import merge_reasons

__all__ = ["action_types", "approval_needed", "approved_by", "blocked", "skipped", "waiting", "why"]

VERBS = {  # how people name an action type
    "restart_instance": r"restart|reboot|bounce",
    "drain_host": r"drain",
    "failover_database": r"fail(ed|ing)?[ -]?over",
    "rollback_deploy": r"roll(ed|ing)?[ -]?back|revert",
    "scale_out": r"scal(e|ed|ing)(?: out| up)?",
    "notify_oncall": r"notif|\bpage|paged|on-?call",
    "open_circuit": r"circuit",
    "shed_load": r"\bshed",
}
HELD = ("deny", "require_approval")
NOT_RUN = ("skipped", "denied", "rejected", "expired", "blocked", "failed", "awaiting_approval", "proposed")


def action_types(q: str) -> list[str]:
    """Action types the question names, by type name or by verb."""
    return [t for t, verb in VERBS.items() if t in q or re.search(verb, q)]


def unnamed(ctx: Context, types: list[str]) -> Answer | None:
    """"I don't know" for a question about an entity nobody knows ("restart frontend" where there is none)."""
    stranger = ctx.stranger_unknown()
    if stranger is not None:
        return stranger
    word = ctx.catalog.unresolved_object(ctx.q, [VERBS[t] for t in types])
    if word is None:
        return None
    ctx.searched.append(f"entities named: {word!r} (not in the topology or the store)")
    return ctx.unknown(f"no incident {ctx.store.where} involves {word!r}")


def _verdicts(ctx: Context, types: list[str], outcomes: tuple[str, ...] | None = None) -> list[DecisionRecord]:
    return [v for v in ctx.records("action.verdict") if ctx.about(proposal(v).get("target"))
            and (not types or proposal(v).get("type") in types)
            and (outcomes is None or v.decision.get("outcome") in outcomes)]


def _what(ctx: Context, types: list[str]) -> str:
    what = ", ".join(types) or "any action"
    return what + (f" on {ctx.named()}" if ctx.groups else "") + (f" in {ctx.incident['id']}" if ctx.incident else "")


def _describe(p: dict[str, Any]) -> str:
    return f"{p.get('type')} on {p.get('target')}"


# -- why an action ran, was skipped, needed approval, was blocked -----------------------------------------

def _asked_about(ctx: Context) -> tuple[list[str], list[DecisionRecord], Answer | None]:
    """The action types the question names, the verdicts on them (and on what it names), and the "I don't
    know" for a name rtem does not know, if it names one; what was searched is noted either way."""
    types = action_types(ctx.q)
    if (stranger := unnamed(ctx, types)) is not None:
        return types, [], stranger
    verdicts = _verdicts(ctx, types)
    ctx.searched.append(f"entities named: {ctx.named()}; actions named: {', '.join(types) or 'none'}")
    return types, verdicts, None


def why(ctx: Context) -> Answer:
    types, verdicts, stranger = _asked_about(ctx)
    if stranger is not None:
        return stranger
    if not types:
        return ctx.unknown("the question names no action I know (restart, drain, fail over, roll back, scale "
                           "out, shed load, open a circuit, page)")
    if not verdicts:
        return ctx.unknown(f"no recorded action matches {_what(ctx, types)}")
    executed = ctx.records("action.executed")
    lines, cites = [], []
    for verdict in verdicts[-3:]:
        p = _proposal_of(verdict)
        label = re.compile(rf"#\d+ {re.escape(p['type'])} on {re.escape(p['target'])}$")
        ran = [x for x in executed if x.incident_id == verdict.incident_id and label.match(x.inputs.get("action", ""))]
        causes = ctx.audit.records(incident_id=verdict.incident_id, kind="causes.ranked")
        proposed = ctx.audit.records(incident_id=verdict.incident_id, kind="actions.proposed")
        top = (causes[-1].decision.get("root_causes") or [{}])[0] if causes else {}
        reason = next((pp.get("reason") for pp in (proposed[-1].decision.get("proposals", []) if proposed else [])
                       if pp.get("type") == p["type"] and pp.get("target") == p["target"]), "")
        text = f"In {verdict.incident_id}, {_describe(p)} was proposed"
        if top:
            text += (f" because the diagnosis ranked {top.get('entity')} first ({top.get('fault_type')}, share "
                     f"{share_text(float(top.get('confidence', 0)))}; seq {causes[-1].seq})")
            cites += [causes[-1].seq, *top.get("evidence", [])[:5]]
        if reason:
            text += f": {reason}"
        if proposed:
            text += f" (seq {proposed[-1].seq})"
            cites.append(proposed[-1].seq)
        rules = ", ".join(verdict.decision.get("rules", []))
        text += f". The guard said {verdict.decision.get('outcome')} by {rules or 'no guardrail matching'} (seq {verdict.seq})"
        cites.append(verdict.seq)
        if ran:
            x = ran[-1]
            text += (f"; it ran {'successfully' if x.decision.get('ok') else 'and FAILED'} with idempotency key "
                     f"{x.inputs.get('idempotency_key')} (seq {x.seq}).")
            cites.append(x.seq)
        else:
            text += "; it was not executed."
        lines.append(text)
    return ctx.done("\n".join(lines), cites)


def skipped(ctx: Context) -> Answer:
    """What happened to the named actions that did not run, with the recorded reason."""
    types, verdicts, stranger = _asked_about(ctx)
    if stranger is not None:
        return stranger
    if not verdicts:
        return ctx.unknown(f"no recorded action matches {_what(ctx, types)}")
    lines, cites = [], []
    for verdict in verdicts[-5:]:
        p = _proposal_of(verdict)
        row = ctx.store.incident(verdict.incident_id) or {"actions": []}
        planned = next((a for a in row["actions"] if a["type"] == p["type"] and a["target"] == p["target"]), {})
        status = planned.get("status", "unknown")
        why = planned.get("status_reason") or ""
        related = [r for r in ctx.audit.records(incident_id=verdict.incident_id)
                   if r.kind in ("actions.stood_down", "action.blocked", "action.approval", "action.executed")
                   and _describe(p) in (" ".join(map(str, [r.inputs.get("action", ""), *r.decision.get("skipped", [])])))]
        cites += [verdict.seq, *(r.seq for r in related[-2:])]
        if status in ("done", "compensated") and not why:
            ran = next((r.seq for r in related if r.kind == "action.executed"), verdict.seq)
            lines.append(f"{_describe(p)} in {verdict.incident_id} was not skipped: it ran (status {status}, seq {ran}).")
            continue
        if status == "proposed":  # a dry run, or not its turn yet: the incident's last record says which
            last = [r for r in ctx.audit.records(incident_id=verdict.incident_id)
                    if r.kind in ("incident.diagnosed", "incident.closed")][-1:]
            related += last
            why = "; ".join(x for x in [why, *(last[0].reasons if last else [])] if x)
        why = why or "; ".join(related[-1].reasons if related else verdict.reasons) or "no reason was recorded"
        lines.append(f"{_describe(p)} in {verdict.incident_id} is {status}: {why} (guard: "
                     f"{verdict.decision.get('outcome')}, seq {verdict.seq}"
                     + "".join(f"; {r.kind} seq {r.seq}" for r in related[-2:]) + ").")
    return ctx.done("\n".join(lines), cites)


def approval_needed(ctx: Context) -> Answer:
    types = action_types(ctx.q)
    if (stranger := unnamed(ctx, types)) is not None:
        return stranger
    if (types or ctx.groups) and not _verdicts(ctx, types):
        return ctx.unknown(f"no recorded action matches {_what(ctx, types)}")
    held = _verdicts(ctx, types, ("require_approval",))
    if not held:
        return ctx.nothing(f"Nothing needed approval: no guard verdict held {_what(ctx, types)} for approval "
                           f"(searched: {'; '.join(ctx.searched)}).")
    decided = ctx.records("approval.decided")
    lines, cites = [], []
    for v in held:
        p = _proposal_of(v)
        role = v.decision.get("approver_role") or "an approver"
        rules = v.decision.get("rules", [])
        reasons = "; ".join(r.text for r in merge_reasons(rules, v.reasons))  # each ground once, as reports say it
        line = (f"{_describe(p)} ({v.incident_id}) needed approval by the {role} role: "
                f"{reasons} (rules {', '.join(rules) or '-'}; seq {v.seq})")
        cites.append(v.seq)
        decision = _decision_on(decided, v.incident_id, p)
        if decision is not None:
            line += f"; {decision.decision.get('decision')}d by {decision.decision.get('by')} (seq {decision.seq})"
            cites.append(decision.seq)
        else:
            line += "; nobody has decided yet"
        lines.append(line + ".")
    return ctx.done("\n".join(lines), cites)


def approved_by(ctx: Context) -> Answer:
    types = action_types(ctx.q)
    if (stranger := unnamed(ctx, types)) is not None:
        return stranger
    decided = [d for d in ctx.records("approval.decided") if ctx.about((d.inputs.get("action") or {}).get("target"))
               and (not types or (d.inputs.get("action") or {}).get("type") in types)]
    ctx.searched.append(f"entities named: {ctx.named()}; actions named: {', '.join(types) or 'none'}")
    if re.search(r"\breject", ctx.q):  # "who rejected …" asks about rejections only
        decided = [d for d in decided if d.decision.get("decision") == "reject"]
        if not decided and not (types or ctx.groups):
            return ctx.nothing("Nobody rejected an action: every recorded approval decision was an approval.")
    if not decided:
        waiting = _verdicts(ctx, types, ("require_approval",))
        if waiting:
            return ctx.done("Nobody has decided yet on " + ", ".join(f"{_describe(_proposal_of(v))} ({v.incident_id}, "
                                                                     f"seq {v.seq})" for v in waiting) + ".",
                            [v.seq for v in waiting])
        return ctx.unknown(f"no recorded approval decision on {_what(ctx, types)}")
    lines = [f"{_describe(d.inputs.get('action') or {})} ({d.incident_id}): {d.decision.get('decision')}d by "
             f"{d.decision.get('by')}" + (f" as {d.inputs['role']}" if d.inputs.get("role") else "")
             + f" via {d.inputs.get('via') or '-'}: {'; '.join(d.reasons) or 'no reason given'} (seq {d.seq})."
             for d in decided]
    return ctx.done("\n".join(lines), [d.seq for d in decided])


def waiting(ctx: Context) -> Answer:
    rows = [r for r in ctx.incidents() if r["status"] not in CLOSED]
    ctx.searched.append("store: actions awaiting approval in open incidents")
    lines, cites = [], []
    for row in rows:
        for a in (a for a in row["actions"] if a.get("status") == "awaiting_approval" and ctx.about(a["target"])):
            requested = ctx.audit.records(incident_id=row["id"], kind="approval.requested")
            lines.append(f"- {row['id']}: #{a['index']} {a['type']} on {a['target']} awaits approval by the "
                         f"{a.get('approver_role') or 'approver'} role: {a.get('reason') or '-'}"
                         + (f" (seq {requested[-1].seq})" if requested else ""))
            cites += [r.seq for r in requested[-1:]]
    if not lines:
        return ctx.nothing("Nothing is waiting for you: no action of an open incident awaits approval.")
    return ctx.done("Waiting for approval (rtem incidents approve ID --action N):\n" + "\n".join(lines), cites)


def blocked(ctx: Context) -> Answer:
    types = action_types(ctx.q)
    if (stranger := unnamed(ctx, types)) is not None:
        return stranger
    ctx.searched.append(f"actions named: {', '.join(types) or 'none'}; entities named: {ctx.named()}")
    named = re.search(r"\b(?:block(?:ed|s)?|den(?:y|ied)|refused?|stopp?(?:ed)?|prevent(?:ed)?|held)\s+"
                      r"(?:the\s+|a\s+|an\s+|any\s+)?([a-z][\w-]*)", ctx.q)
    if named and not types and not ctx.groups and named.group(1) not in GENERIC:
        return ctx.unknown(f"no recorded action is called {named.group(1)!r}")
    if (types or ctx.groups) and not _verdicts(ctx, types):
        return ctx.unknown(f"no recorded action matches {_what(ctx, types)}")
    held = _verdicts(ctx, types, HELD)
    late = [b for b in ctx.records("action.blocked") if (not types or any(t in b.inputs.get("action", "") for t in types))
            and (not ctx.groups or any(f" on {m}" in b.inputs.get("action", "") for m in ctx.members))]
    if not held and not late:
        return ctx.nothing(f"No rule blocked {_what(ctx, types)}: no verdict denied or held one for approval, and "
                           f"nothing was blocked before running (searched: {'; '.join(ctx.searched)}).")
    lines, cites = [], []
    for v in held:
        kind = "denied" if v.decision["outcome"] == "deny" else "held for approval"
        lines.append(f"{_describe(_proposal_of(v))} ({v.incident_id}) was {kind} by "
                     f"{', '.join(v.decision.get('rules', [])) or 'no named rule'}: "
                     f"{'; '.join(dict.fromkeys(v.reasons))} (seq {v.seq})")
        cites.append(v.seq)
    for b in late:
        lines.append(f"{b.inputs.get('action')} ({b.incident_id}) was blocked before running: "
                     f"{'; '.join(b.reasons)} (seq {b.seq})")
        cites.append(b.seq)
    return ctx.done("\n".join(lines), cites)


GENERIC = {"action", "actions", "anything", "it", "that", "this", "remediation", "me", "us", "execution", "something",
           "one", "any", "an", "a", "by", "for", "in", "on", "because", "from", "at", "when", "with", "anyone", "what"}


def _proposal_of(record: DecisionRecord) -> dict[str, Any]:
    return proposal(record)


def _decision_on(decided: list[DecisionRecord], incident_id: str | None, p: dict[str, Any]) -> DecisionRecord | None:
    return next((d for d in reversed(decided) if d.incident_id == incident_id
                 and (d.inputs.get("action") or {}).get("type") == p.get("type")
                 and (d.inputs.get("action") or {}).get("target") == p.get("target")), None)
