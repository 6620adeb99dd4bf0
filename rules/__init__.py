"""rtem's rules: detection, correlation, action contracts and the guard, over one durable-rules adapter."""

from ._check import CheckReport, Finding, check_rules, find_layout, packaged_rules_dir, rules_digest
from ._contracts import ActionContract, ContractError, ContractViolation, check_contracts, load_contracts
from ._correlation import Assignment, Correlator, OpenIncident, incident_id
from ._escalation import (POLICY_FILE, EscalationLevel, EscalationPolicy, EscalationRoute, QuietHours,
                          load_escalation, packaged_policy)
from ._detection import Detection, DetectionSet, Signal, load_detections, parse_duration
from ._detector import Detector
from ._engine import MAX_BRANCHES, CompiledRuleset, ConditionError
from ._files import RulesError, content_digest
from ._fitness import FAULT_TYPES, TARGET_ROLES, Diagnosis, Remedy
from ._gates import ActionHistory, MemoryHistory, RecordedAction, StaticState, SystemState
from ._guard import DEFAULT_APPROVER_ROLE, Guard, context_fact
from ._guardrail_schema import RuleProblem
from ._guardrails import CONTEXT_FIELDS, Guardrail, Ruleset, collect_guardrails, load_guardrails, parse_guardrails
from ._logline import LogLine, read_line
from ._proposal import OUTCOME_PRECEDENCE, Proposal, RuleMatch, Verdict
from ._ruletest import RuleTestReport, find_test_files, run_tests
from ._words import says_failure
from .topology import Entity, Relation, Topology, TopologyError

__all__ = [
    "CONTEXT_FIELDS", "DEFAULT_APPROVER_ROLE", "MAX_BRANCHES", "OUTCOME_PRECEDENCE", "ActionContract",
    "Assignment", "CompiledRuleset", "ConditionError", "ContractError", "ContractViolation", "Correlator",
    "Detection", "DetectionSet", "Detector", "Entity", "Guard", "Guardrail", "OpenIncident", "Proposal",
    "Relation", "RuleMatch", "RulesError", "Ruleset", "Signal", "Topology", "TopologyError", "Verdict",
    "content_digest", "context_fact", "incident_id", "load_contracts", "load_detections", "load_guardrails",
    "parse_duration", "parse_guardrails", "says_failure",
    # what a log line says (rules/_logline.py, rules/_words.py): detection and the reasoner read it alike
    "LogLine", "read_line",
    # remedy fitness (rules/_fitness.py)
    "FAULT_TYPES", "TARGET_ROLES", "Diagnosis", "Remedy",
    # rule authoring: gates' inputs, `rules check`, `rules test`
    "ActionHistory", "CheckReport", "Finding", "MemoryHistory", "RecordedAction", "RuleProblem", "RuleTestReport",
    "StaticState", "SystemState", "check_contracts", "check_rules", "collect_guardrails", "find_layout",
    "find_test_files", "packaged_rules_dir", "rules_digest", "run_tests",
    # escalation policy (agent/incident/_oncall.py decides with it)
    "POLICY_FILE", "EscalationLevel", "EscalationPolicy", "EscalationRoute", "QuietHours", "load_escalation",
    "packaged_policy",
]
