"""The incident lifecycle as one typed, pure core: models, the plan's transitions, the decision checks.

No LangGraph and no I/O here: the graph's nodes, `rtem run`, the CLI and the API load state, call
these functions with the clock passed in, and write what they return.
"""

from ._confirm import (CONFIRMED, ConfirmedCause, ConfirmRefusal, ConfirmRefused, check_cause, confirmation,
                       confirmed_cause, confirmed_causes)
from ._decide import DecisionRefused, Refusal, check_decision, select
from ._model import (FINAL, PAGE, ActionStatus, AlertRecovery, AlertState, Approval, Incident, IncidentStatus,
                     PlannedAction, Policy, Recovery, StepOutcome)
from ._oncall import (AWAITS_PERSON, OnCallChange, OnCallRefusal, OnCallRefused, OnCallState, Page, PageSent, acknowledge, assign,
                      comment, due_pages, oncall_state, reopen, resolve)
from ._plan import (age_out, alert_states, alerts_recovered, apply_decisions, fail_plan, judge_recovery,
                    mark_compensated, next_runnable, plan, record_outcome, refuse, remedies_done, request_approval,
                    stale_approval, stand_down, waiting)

__all__ = [
    "FINAL", "PAGE", "ActionStatus", "AlertRecovery", "AlertState", "Approval", "DecisionRefused", "Incident",
    "IncidentStatus", "PlannedAction", "Policy", "Recovery", "Refusal", "StepOutcome", "age_out", "alert_states",
    "alerts_recovered", "apply_decisions", "check_decision", "fail_plan", "judge_recovery", "mark_compensated",
    "next_runnable", "plan", "record_outcome", "refuse", "remedies_done", "request_approval", "select",
    "stale_approval", "stand_down", "waiting",
    # on call (_oncall.py): a person's acknowledge/assign/comment/resolve/reopen, and due pages
    "OnCallChange", "OnCallRefusal", "OnCallRefused", "OnCallState", "Page", "PageSent", "acknowledge", "assign",
    "comment", "due_pages", "oncall_state", "reopen", "resolve", "AWAITS_PERSON",
    # confirmed causes (_confirm.py): a person's word on what really caused an incident, as of a time
    "CONFIRMED", "ConfirmedCause", "ConfirmRefusal", "ConfirmRefused", "check_cause", "confirmation",
    "confirmed_cause", "confirmed_causes",
]
