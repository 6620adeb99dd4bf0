"""The questions `chat.answer` answers without an LLM: (name, pattern, handler), tried in order over the
lower-cased question; the first whose pattern matches answers. More specific intents come first
("who approved" before "approval", "why was X skipped" before "why")."""

from __future__ import annotations

import re
from collections.abc import Callable

from . import chat_actions as actions
from . import chat_incidents as incidents
from .chat import Answer, Context

__all__ = ["INTENTS", "NO_INTENT", "why"]

NO_INTENT = ("the question matches none of the questions I can answer without an LLM (why an action ran or was "
             "skipped, what needed approval, who approved it, which rule blocked an action, what changed, the root "
             "cause, what was confirmed, what happened to an incident, what rtem did, what is open or waiting, "
             "how long an incident took)")


# "why node-6?", "why is the payments service first?", "why did you pick cartservice-0?": a why that says
# nothing but an entity's name asks where the diagnosis put it. Anything more ("why is payments down?", "why
# did you teleport the cart?") is another question, answered (or not) as one.
ABOUT_ENTITY = re.compile(r"why\s+(?:(?:did|do|does|would)\s+(?:you|rtem|it)\s+(?:pick|choose|suspect|blame)\s+|"
                          r"(?:is|was)\s+)?(?:the\s+)?(?P<name>[a-z0-9][a-z0-9._-]*)"
                          r"(?:\s+(?:service|svc|host|node|pod|instance|database|db))?"
                          r"(?:\s+(?:first|on top|at the top|(?:the )?top suspect))?\s*\??")


def why(ctx: Context) -> Answer:
    """A why that names an action is about that action; one that names only an entity (`ABOUT_ENTITY`) is
    about where the diagnosis put it and why (the cause intent, explaining that entity)."""
    about = ABOUT_ENTITY.fullmatch(ctx.q.strip())
    if about is not None and ctx.groups and not actions.action_types(ctx.q) and ctx.catalog.resolve(about["name"])[0]:
        return incidents.cause(ctx)
    return actions.why(ctx)


INTENTS: list[tuple[str, str, Callable[[Context], Answer]]] = [
    ("waiting", r"waiting (for|on) (me|us|my|approval)|(for|need) me to|my approval|anything to approve|"
                r"awaiting (my )?approval|pending approvals?|need(s)? (my|our) (attention|approval)|"
                r"(i|we) (need|have) to approve", actions.waiting),
    ("approved_by", r"\bwho\b.*\b(approv|reject|sign(ed)? off|decided)|\b(approved|rejected) by\b", actions.approved_by),
    ("approval", r"approv|sign[- ]off", actions.approval_needed),
    ("mttr", r"how long|\bmttr\b|time to (resolve|recover)", incidents.mttr),
    ("skipped", r"\bskip|\bnot (run|executed|done)\b|did ?n[o']t (you )?(run|execute)|never ran|stood down",
     actions.skipped),
    ("blocked", r"\b(block(ed|s|ing)?|den(y|ied)|refus(e|ed)|prevent(ed)?|stopp?(ed)?|held|guardrail)\b", actions.blocked),
    ("changed", r"^(?!why\b).*(\bchang(e|ed|es)\b|\bdeploy(s|ed|ment|ments)?\b|\brolled out\b)", incidents.changed),
    ("confirmed", r"\bconfirm", incidents.confirmed),
    ("cause", r"\broot[- ]?causes?\b|\bcaused?\b|\bculprit\b|\bto blame\b|\brank(ed|ing|s)?\b|\bdiagnos(e|ed|is)\b|"
              r"\bsuspects?\b|what('?s| is) wrong", incidents.cause),
    ("happened", r"what happened|going on|\bsummar|tell me about|status of|\bstory\b", incidents.happened),
    ("did", r"what (did|has|have) (rtem|you|the agent|it|we) (do|done)|what actions?\b|what was done|what ran\b|"
            r"actions? (taken|ran|executed)|did (rtem|you) do|remediat", incidents.did),
    ("why", r"\bwhy\b|reason (for|behind)|how come|what (made|led) (you|rtem)", why),
    ("open", r"\b(still )?open\b|unresolved|outstanding|\bactive\b|ongoing", incidents.still_open),
]
