"""Checking an LLM's answer: JSON, the answer schema, then what the schema cannot know.

An answer is *invalid* (and re-asked with these errors) when it is not one JSON object, breaks the answer
schema, names an entity that is not in the topology, or proposes an action with no contract, on a target
that is not a diagnosed cause or next to one, on a target its contract does not accept, or with
parameters its contract does not allow. The blast radius and the guardrails are the guard's to judge. Problems that do not make
the answer wrong are *notes*: evidence ids that are not in the incident are dropped, and hypotheses about
entities without evidence are left to the combining rule (which ignores them).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from jsonschema import Draft202012Validator

from rules import ActionContract, Proposal, Topology

MAX_ERRORS = 6
_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.S)


@dataclass
class Checked:
    value: dict[str, Any] | None = None
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.value is not None and not self.errors


def check_diagnosis(text: str, schema: dict[str, Any], topology: Topology, admissible: set[str],
                    event_ids: set[str]) -> Checked:
    checked = _parse(text, schema)
    if checked.errors:
        return checked
    for index, hyp in enumerate(checked.value["hypotheses"]):
        where = f"$.hypotheses[{index}]"
        if hyp["entity"] not in topology:
            checked.errors.append(f"{where}.entity: {_q(hyp['entity'])} is not an entity in the topology; "
                                  f"name one of the candidates: {', '.join(sorted(admissible)[:20])}")
        elif hyp["entity"] not in admissible:
            checked.notes.append(f"{where}: {hyp['entity']} has no evidence in this incident; ignored")
        unknown = [e for e in hyp["evidence"] if e not in event_ids]
        if unknown:
            hyp["evidence"] = [e for e in hyp["evidence"] if e in event_ids]
            checked.notes.append(f"{where}.evidence: dropped {len(unknown)} id(s) that are not events of this incident")
    if checked.errors:
        checked.value = None
    return checked


def check_proposals(text: str, schema: dict[str, Any], topology: Topology,
                    contracts: Mapping[str, ActionContract], related: set[str], causes: list[str]) -> Checked:
    """`related`: the diagnosed causes and the entities one relation away from them. An action elsewhere
    would not answer the diagnosis (the deterministic catalog keeps to the same rule)."""
    checked = _parse(text, schema)
    if checked.errors:
        return checked
    for index, action in enumerate(checked.value["actions"]):
        where = f"$.actions[{index}]"
        contract = contracts.get(action["type"])
        if contract is None:
            checked.errors.append(f"{where}.type: {_q(action['type'])} has no action contract; "
                                  f"known actions: {', '.join(sorted(contracts))}")
            continue
        if action["target"] not in topology:
            checked.errors.append(f"{where}.target: {_q(action['target'])} is not an entity in the topology")
            continue
        if action["target"] not in related:
            checked.errors.append(f"{where}.target: {action['target']} is neither a diagnosed root cause "
                                  f"({', '.join(causes)}) nor one relation away from one")
            continue
        proposal = Proposal(type=action["type"], target=action["target"], params=action["params"])
        for violation in contract.check(proposal, topology):
            checked.errors.append(f"{where}{violation.path.removeprefix('$')}: {violation.message}")
    if checked.errors:
        checked.value = None
    checked.errors = checked.errors[:MAX_ERRORS]
    return checked


def reask_message(errors: list[str]) -> str:
    listed = "\n".join(f"- {e}" for e in errors[:MAX_ERRORS])
    return ("Your previous answer was rejected:\n" + listed + "\nAnswer again with one JSON object that matches "
            "the answer schema. Use only the entity ids, action types and parameters given above.")


def _parse(text: str, schema: dict[str, Any]) -> Checked:
    fenced = _FENCE.match(text or "")
    body = fenced.group(1) if fenced else (text or "").strip()
    if not body:
        return Checked(errors=["the answer was empty; expected one JSON object"])
    try:
        value = json.loads(body)
    except json.JSONDecodeError as exc:
        return Checked(errors=[f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"])
    if not isinstance(value, dict):
        return Checked(errors=[f"expected one JSON object, got {type(value).__name__}"])
    errors = sorted(_validator(json.dumps(schema, sort_keys=True)).iter_errors(value),
                    key=lambda e: (list(map(str, e.absolute_path)), e.validator))
    if errors:
        return Checked(errors=[_schema_error(e) for e in errors[:MAX_ERRORS]])
    return Checked(value=value)


@lru_cache(maxsize=16)
def _validator(schema_json: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads(schema_json))


def _schema_error(error) -> str:
    path = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    message = error.message if len(error.message) <= 200 else error.message[:199] + "…"
    return f"{path}: {message}"


def _q(value: object) -> str:
    text = str(value)
    return repr(text if len(text) <= 64 else text[:63] + "…")
