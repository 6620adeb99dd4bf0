"""Answer schemas in two forms: the one rtem validates with, and the tighter one it sends.

Validation uses the packaged schema (prompts/*.schema.json), with the proposal's `params` widened to the
union of the loaded contracts' parameters, followed by checks that give readable errors (validate.py).

The schema sent to the provider says more, so a grammar-constrained model (llama.cpp) cannot even write
most wrong answers: a hypothesis's `entity` is one of the candidates shown, and each action is one of
the contracts, with that contract's own parameters and (when the list is of modest size) a target among
the allowed targets of a type it accepts, where the action remedies the diagnosed cause (remedy fitness,
rules/_fitness.py): the model chooses among fit remedies. Such a schema narrows what a model can say; it decides
nothing: whatever comes back is validated again, and every proposal is judged by the guard.
With `compact`, strings and lists are shortened so that a small local model's whole answer fits in its
token limit instead of being cut off mid-string.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rules import ActionContract, Topology

MAX_TARGET_ENUM = 250  # above this many target names in all, targets are plain strings
# A small model's answer must fit its token limit even when it fills every string with noise (about 1.5
# characters a token): 3 hypotheses of 2 evidence ids and 120-character texts stay under ~900 tokens.
COMPACT_STRING = 120
COMPACT_ITEMS = 3
COMPACT_IDS = 2


def validation_proposal_schema(base: dict[str, Any], contracts: Mapping[str, ActionContract]) -> dict[str, Any]:
    """The packaged propose schema with `params` as the union of the contracts' (bounded) parameters."""
    schema = copy.deepcopy(base)
    params: dict[str, Any] = {}
    for name in sorted(contracts):
        for key, spec in contracts[name].params_schema.get("properties", {}).items():
            params.setdefault(key, {k: v for k, v in spec.items() if k != "default"})
    if contracts:
        schema["properties"]["actions"]["items"]["properties"]["params"] = {
            "type": "object", "additionalProperties": False, "properties": params}
    return schema


def sent_diagnosis_schema(base: dict[str, Any], entities: Sequence[str], compact: bool) -> dict[str, Any]:
    schema = copy.deepcopy(base)
    hypothesis = schema["properties"]["hypotheses"]["items"]["properties"]
    if entities:
        hypothesis["entity"] = {"type": "string", "enum": list(entities)}
    if not compact:
        return schema
    hypothesis["evidence"]["maxItems"] = min(hypothesis["evidence"].get("maxItems", COMPACT_IDS), COMPACT_IDS)
    return tighten(schema)


def sent_proposal_schema(base: dict[str, Any], contracts: Mapping[str, ActionContract], topology: Topology,
                         targets: set[str], compact: bool,
                         fits: Callable[[str, str], bool] | None = None) -> dict[str, Any]:
    """Each action one of the contracts, with its own parameters and a target among `targets` of a type
    it accepts and, with `fits` (action, target), one where the action remedies the diagnosed cause;
    contracts with no such target are left out."""
    schema = copy.deepcopy(base)
    item = schema["properties"]["actions"]["items"]
    by_contract = {name: sorted(t for t in targets if topology.entity_type(t) in contracts[name].target_types
                                and (fits is None or fits(name, t)))
                   for name in contracts}
    enumerate_targets = 0 < sum(len(t) for t in by_contract.values()) <= MAX_TARGET_ENUM
    variants = []
    for name in sorted(contracts):
        if enumerate_targets and not by_contract[name]:
            continue
        params = copy.deepcopy(contracts[name].params_schema)
        params = {k: v for k, v in params.items() if k in ("type", "properties", "required", "additionalProperties")}
        params.setdefault("type", "object")
        params["properties"] = {k: {kk: vv for kk, vv in spec.items() if kk != "default"}
                                for k, spec in params.get("properties", {}).items()}
        target = {"type": "string", "enum": by_contract[name]} if enumerate_targets else item["properties"]["target"]
        variants.append({"type": "object", "additionalProperties": False,
                         "required": ["type", "target", "params", "reason"],
                         "properties": {"type": {"type": "string", "const": name}, "target": target,
                                        "params": params, "reason": item["properties"]["reason"]}})
    if variants:
        schema["properties"]["actions"]["items"] = {"anyOf": variants}
    return tighten(schema) if compact else schema


def tighten(schema: Any, max_string: int = COMPACT_STRING, max_items: int = COMPACT_ITEMS) -> Any:
    """A copy with every string's maxLength and every list's maxItems capped."""
    if isinstance(schema, list):
        return [tighten(s, max_string, max_items) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: tighten(v, max_string, max_items) for k, v in schema.items()}
    if "maxLength" in out:
        out["maxLength"] = min(out["maxLength"], max_string)
    if "maxItems" in out:
        out["maxItems"] = min(out["maxItems"], max_items)
    return out
