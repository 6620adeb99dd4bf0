"""rtem's rules: detection, correlation, action contracts and the guard, over one durable-rules adapter."""

from ._correlation import Assignment, Correlator, OpenIncident, incident_id
from ._detection import Detection, DetectionSet, Detector, Signal, load_detections, parse_duration
from ._engine import CompiledRuleset, ConditionError
from ._files import RulesError, content_digest
from ._proposal import OUTCOME_PRECEDENCE, Proposal, RuleMatch, Verdict
from .topology import Entity, Relation, Topology, TopologyError

__all__ = [
    "OUTCOME_PRECEDENCE", "Assignment", "CompiledRuleset", "ConditionError", "Correlator", "Detection",
    "DetectionSet", "Detector", "Entity", "OpenIncident", "Proposal", "Relation", "RuleMatch", "RulesError",
    "Signal", "Topology", "TopologyError", "Verdict", "content_digest", "incident_id", "load_detections",
    "parse_duration",
]
