"""What becomes of a model's answer that arrives after its incident's deadline (docs/llm.md, "The deadline").

The step has moved on by then: the deterministic answer was recorded and stands. A late diagnosis is still
worth reading, so it becomes a `reasoner.late` record of its hypotheses, which changes nothing. Late
proposals are dropped: an action needs the graph's whole path (guard, approvals), never a side door. Both
are callbacks for the lane's future of the abandoned job (`Lane.run(on_late=...)`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from concurrent.futures import Future

from . import metrics
from ._lane import late_result

log = logging.getLogger("rtem.llm")


def late_diagnosis(incident_id: str, deadline_s: float, audit, versions: Mapping[str, str]) -> Callable[[Future], None]:
    """A `reasoner.late` record of the hypotheses in `audit` (logged only, without one)."""
    def landed(future: Future) -> None:
        answer, _notes = late_result(future) or (None, [])
        if answer is None:
            return
        metrics.LATE.labels("diagnose").inc()
        hypotheses = [{k: h.get(k) for k in ("entity", "fault_type", "confidence", "explanation")}
                      for h in answer["hypotheses"]]
        if audit is None:
            log.info("incident %s: late LLM diagnosis (after the deadline, changed nothing): %s", incident_id,
                     ", ".join(f"{h['entity']} ({h['fault_type']}, {h['confidence']})" for h in hypotheses))
            return
        reasons = [f"the LLM's diagnosis came after the incident's {deadline_s:g} s deadline: the "
                   "deterministic ranking stood and this changed nothing",
                   "recorded as a hypothesis for people to read; no action follows from it"]
        try:
            audit.append("reasoner.late", incident_id=incident_id, node="diagnose",
                         decision={"hypotheses": hypotheses}, reasons=reasons, versions=dict(versions))
        except Exception:  # the run may be over and its audit log closed: the answer was late anyway
            log.exception("incident %s: recording the late LLM diagnosis failed", incident_id)
    return landed


def late_proposals(incident_id: str) -> Callable[[Future], None]:
    """Dropped, logged and counted."""
    def landed(future: Future) -> None:
        answer, _notes = late_result(future) or (None, [])
        if answer is not None:
            metrics.LATE.labels("propose").inc()
            log.warning("incident %s: late LLM proposals dropped (after the deadline): %s", incident_id,
                        ", ".join(f"{a['type']} {a['target']}" for a in answer["actions"]))
    return landed
