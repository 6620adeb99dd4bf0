"""Action contracts: what each remediation action type is, and what a proposal of it may say.

A contract is one file, `rules/contracts/<action>.json`: a JSON Schema (draft 2020-12) of the action's
`params`, with rtem's own terms under the top-level keyword `x-rtem` (risk, target types, approver,
compensation, executor, what it remedies). JSON Schema validators ignore `x-rtem`, so the file doubles as a plain schema
for editors and other tools. `schemas/contract.v1.json` is the schema of the file itself.

The guard refuses any proposal whose action type has no contract, or whose params or target break it
(DESIGN.md §4, points 1 and 2). Contracts therefore bound every parameter: a reasoner fed untrusted
event text must not be able to smuggle an unbounded string or number past them.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections.abc import Iterator, Mapping
from functools import cached_property, lru_cache
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import Annotated, Any, Literal

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, best_match
from pydantic import BaseModel, ConfigDict, Field

from rules._schema_errors import misspelt_required, missing_key, unknown_key_hint
from rules._fitness import Remedy
from rules._http_executor import HttpExecutor, is_template, template_problems
from rules._proposal import Proposal
from rules.topology import EntityType, Topology

Risk = Literal["low", "medium", "high"]
TEMPLATE_FIELDS = frozenset({"action", "target"})
_MAX_MESSAGE = 240  # violations echo proposal values, which may be long and come from untrusted text


class ContractError(ValueError):
    """A contract file rtem cannot use; `source` is the file, `reason` says what to fix.

    `path` is the JSON path of the offending part (`$.x-rtem.risk`), `position` its (line, column)
    when the file is not JSON at all; `rules check` turns either into file:line:column.
    """

    def __init__(self, source: str, reason: str, *, path: str | None = None,
                 position: tuple[int, int] | None = None, hint: str = "", kind: str = "contract"):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason
        self.path = path if path is not None else _leading_path(reason)
        self.position = position
        self.hint = hint
        self.kind = kind
        self.others: list[ContractError] = []  # the file's further problems, when this is its first


class ContractViolation(BaseModel):
    """One way a proposal breaks its contract. `path` is a JSON path into the proposal: `$.params.replicas`."""

    model_config = ConfigDict(frozen=True)

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class Compensation(BaseModel):
    model_config = ConfigDict(frozen=True)

    action: str | None = Field(description="action type that undoes this one; None when a person must")
    description: str


class NatsExecutor(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: Literal["nats"] = "nats"
    subject: str = Field(description="subject template; {action} and {target} are filled in")


class CommandExecutor(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: Literal["command"] = "command"
    argv: tuple[str, ...]


Executor = Annotated[NatsExecutor | HttpExecutor | CommandExecutor, Field(discriminator="kind")]


class ActionContract(BaseModel):
    """One action type's contract, as loaded from its file."""

    model_config = ConfigDict(frozen=True)

    action: str
    description: str
    target_types: tuple[EntityType, ...]
    risk: Risk
    compensation: Compensation
    approver_role: str | None
    executor: Executor
    idempotent: bool
    timeout_s: float
    remedies: Remedy | None = Field(default=None, description="what the action remedies (rules/_fitness.py); "
                                                              "None: fit for any diagnosis")
    params_schema: dict[str, Any] = Field(description="the file without x-rtem: a JSON Schema of params")
    digest: str = Field(description="sha256 of the file's bytes (16 hex digits); recorded with every verdict")
    source: str

    @property
    def needs_approval(self) -> bool:
        return self.approver_role is not None or self.risk == "high"

    @cached_property
    def _validator(self) -> Draft202012Validator:
        return Draft202012Validator(self.params_schema)

    def check(self, proposal: Proposal, topology: Topology) -> list[ContractViolation]:
        """Every way `proposal` breaks this contract; an empty list means it fits."""
        found: list[ContractViolation] = []
        if proposal.type != self.action:
            found.append(ContractViolation(
                path="$.type", message=f"is {_short(proposal.type)!r}, this contract is for {self.action!r}"))
        entity_type = topology.entity_type(proposal.target)
        if entity_type is None:
            found.append(ContractViolation(
                path="$.target", message=f"{_short(proposal.target)!r} is not an entity in the topology"))
        elif entity_type not in self.target_types:
            found.append(ContractViolation(
                path="$.target",
                message=f"{proposal.target!r} is a {entity_type}; "
                        f"{self.action} acts on {', '.join(self.target_types)}",
            ))
        found.extend(sorted(self._param_violations(proposal.params), key=lambda v: v.path))
        return found

    def _param_violations(self, params: Mapping[str, Any]) -> Iterator[ContractViolation]:
        # jsonschema reports `required` and `additionalProperties` at the enclosing object; point at the
        # parameter itself instead, so the reasoner (and a person) sees exactly which name is wrong.
        seen: set[tuple[str, str]] = set()
        errors = sorted(self._validator.iter_errors(params), key=lambda e: (_json_path(e.absolute_path), e.validator))
        for error in errors:
            base = list(error.absolute_path)
            if error.validator == "required":
                for name in error.validator_value:
                    if name not in error.instance:
                        yield from _once(seen, base + [name], "is required")
            elif error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
                allowed = sorted(error.schema.get("properties", {}))
                hint = f"allowed: {', '.join(allowed)}" if allowed else f"{self.action} takes no parameters"
                for name in error.instance:
                    if name not in allowed and not _pattern_allows(error.schema, name):
                        yield from _once(seen, base + [name], f"is not a parameter of {self.action}; {hint}")
            else:
                yield from _once(seen, base, _message(error))


def load_contracts(directory: str | Path | None = None) -> dict[str, ActionContract]:
    """Every `*.json` contract in `directory` (default: the packaged `rules/contracts/`), by action type.

    Raises ContractError naming the file on the first problem: not JSON, not a valid contract (see
    schemas/contract.v1.json), a params schema that is not valid JSON Schema, an unbounded parameter,
    or a compensation naming an action type that has no contract.
    """
    contracts, problems = check_contracts(directory)
    if problems:
        raise problems[0]
    return contracts


def check_contracts(directory: str | Path | None = None) -> tuple[dict[str, ActionContract], list[ContractError]]:
    """Every contract that loads, and every problem (all schema problems of a bad file, else its first
    other one; then bad compensations), for `rules check`: unlike load_contracts it does not stop at
    the first bad file."""
    if directory is None:
        root: Traversable | Path = resources.files("rules") / "contracts"
    else:
        root = Path(directory)
        if not root.is_dir():
            return {}, [ContractError(str(root), "not a directory of action contracts")]
    contracts: dict[str, ActionContract] = {}
    problems: list[ContractError] = []
    for file in sorted((f for f in root.iterdir() if f.name.endswith(".json")), key=lambda f: f.name):
        try:
            contract = _load_one(str(file), file.name.removesuffix(".json"), file.read_bytes())
        except ContractError as exc:
            problems.extend([exc, *exc.others])
            continue
        contracts[contract.action] = contract
    for contract in list(contracts.values()):
        undo = contract.compensation.action
        if undo is not None and undo not in contracts:
            problems.append(ContractError(contract.source, f"$.x-rtem.compensation.action: no contract for {undo!r}",
                                          hint=f"known actions: {', '.join(sorted(contracts))}",
                                          kind="unknown_action"))
    return contracts, problems


def _schema_problems(source: str, errors: list) -> list[ContractError]:
    """Every schema error of one contract file, each at its key: one per unknown key (with the key it
    probably meant), and a missing required key left out when an unknown key beside it misspells it."""
    typos = misspelt_required(errors)
    found = []
    other: dict[tuple, list] = {}  # path → the other errors there: one problem per place, the most specific
    for error in errors:
        where = _json_path(error.absolute_path, root="$")
        if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
            allowed = sorted(error.schema.get("properties", {}))
            required = [r for r in error.schema.get("required", []) if r not in error.instance]
            for extra in (k for k in error.instance if k not in allowed):
                found.append(ContractError(source, f"{where}.{extra}: unknown field {extra!r}", path=f"{where}.{extra}",
                                           hint=unknown_key_hint(extra, allowed, required), kind="unknown_field"))
            continue
        if error.validator == "required" and isinstance(error.instance, Mapping):
            name = missing_key(error)
            if (tuple(error.absolute_path), name) in typos:
                continue
            found.append(ContractError(source, f"{where}: {error.message}", path=where, hint=f"add {name!r} here"))
            continue
        if "then" in error.schema_path and any(tuple(error.absolute_path)[:len(at)] == at for at, _ in typos):
            continue  # an if/then judged without the misspelt key: a consequence of the typo, not a problem
        other.setdefault(tuple(error.absolute_path), []).append(error)
    for errors_here in other.values():
        error = best_match(errors_here)  # an anyOf: its most specific reason
        where = _json_path(error.absolute_path, root="$")
        found.append(ContractError(source, f"{where}: {error.message}", path=where))
    return found


def _leading_path(reason: str) -> str | None:
    head = reason.split(":", 1)[0].split(" ", 1)[0]
    return head if head.startswith("$") else None


def _load_one(source: str, stem: str, data: bytes) -> ActionContract:
    try:
        doc = json.loads(data)
    except UnicodeDecodeError:
        raise ContractError(source, "not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ContractError(source, f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                            position=(exc.lineno, exc.colno)) from None
    found = _schema_problems(source, list(_contract_validator().iter_errors(doc)))
    if found:
        found[0].others = found[1:]  # `check_contracts` reports them all; `load_contracts` the first
        raise found[0]
    terms = doc["x-rtem"]
    if terms["action"] != stem:
        raise ContractError(source, f"$.x-rtem.action: is {terms['action']!r}; "
                                    f"the file must be named {terms['action']}.json")
    if terms["risk"] == "high" and not terms["approver_role"]:
        raise ContractError(source, "$.x-rtem.approver_role: a high-risk action needs an approver role")
    params_schema = {k: v for k, v in doc.items() if k != "x-rtem"}
    try:
        Draft202012Validator.check_schema(params_schema)
    except SchemaError as exc:
        where = _json_path(exc.absolute_path, root="$")
        raise ContractError(source, f"params schema is not valid JSON Schema at {where}: {exc.message}") from None
    for where, problem in _unbounded(params_schema, "$"):
        raise ContractError(source, f"{where}: {problem}")
    if terms["executor"]["kind"] == "http":
        for where, problem in template_problems(terms["executor"]):
            raise ContractError(source, f"$.x-rtem.executor.{where}: {problem}", path=f"$.x-rtem.executor.{where}")
    for where, template in _templates(terms["executor"]):
        unknown = _template_fields(template) - TEMPLATE_FIELDS
        if unknown:
            raise ContractError(source, f"$.x-rtem.executor.{where}: unknown placeholder "
                                        f"{{{sorted(unknown)[0]}}}; use {{action}} or {{target}}")
    return ActionContract(
        **terms,
        params_schema=params_schema,
        digest=hashlib.sha256(data).hexdigest()[:16],  # as long as content_digest and Topology.digest
        source=source,
    )


@lru_cache(maxsize=1)
def _contract_validator() -> Draft202012Validator:
    text = (resources.files("rules") / "schemas" / "contract.v1.json").read_text("utf-8")
    return Draft202012Validator(json.loads(text))


_SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs")
_SUBSCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")


def _unbounded(schema: Any, where: str) -> Iterator[tuple[str, str]]:
    """Where a (sub)schema lets a value through without a size bound."""
    if not isinstance(schema, Mapping):
        return
    if "enum" not in schema and "const" not in schema:
        types = schema.get("type")
        types = [types] if isinstance(types, str) else list(types or [])
        if not types and "$ref" not in schema and where != "$" and not any(k in schema for k in _SUBSCHEMA_LISTS):
            yield where, "a parameter needs a type, enum or const"
        if "string" in types and "maxLength" not in schema:
            yield where, "a string parameter needs maxLength"
        if {"integer", "number"} & set(types):
            keys = schema.keys()
            if not ({"minimum", "exclusiveMinimum"} & keys and {"maximum", "exclusiveMaximum"} & keys):
                yield where, "a number parameter needs a minimum and a maximum"
        if "array" in types and "maxItems" not in schema:
            yield where, "an array parameter needs maxItems"
        if "object" in types and schema.get("additionalProperties") is not False:
            yield where, "an object parameter needs additionalProperties: false"
    for key in _SUBSCHEMA_MAPS:
        for name, sub in (schema.get(key) or {}).items():
            yield from _unbounded(sub, f"{where}.{key}.{name}")
    for key in _SUBSCHEMA_LISTS:
        for index, sub in enumerate(schema.get(key) or []):
            yield from _unbounded(sub, f"{where}.{key}[{index}]")
    if isinstance(schema.get("items"), Mapping):
        yield from _unbounded(schema["items"], f"{where}.items")


def _templates(executor: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    for key in ("subject", "url"):
        if key in executor and not is_template(executor[key]):
            yield key, executor[key]
    for index, arg in enumerate(executor.get("argv", [])):
        yield f"argv[{index}]", arg


def _template_fields(template: str) -> set[str]:
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError:
        return {"<unbalanced brace>"}


def _once(seen: set[tuple[str, str]], path: list, message: str) -> Iterator[ContractViolation]:
    key = (_json_path(path), message)
    if key not in seen:
        seen.add(key)
        yield ContractViolation(path=key[0], message=message)


_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def _json_path(parts, root: str = "$.params") -> str:
    path = root
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _NAME.match(str(part)):
            path += f".{part}"
        else:
            path += f"[{json.dumps(_short(str(part), 64))}]"
    return path


def _message(error) -> str:
    # jsonschema quotes the offending value whole; keep the verdict readable when it is long.
    shown = repr(error.instance)
    if len(shown) > 64:
        return _short(error.message.replace(shown, _short(shown, 48) + f" ({len(shown)} characters)"), _MAX_MESSAGE)
    return _short(error.message, _MAX_MESSAGE)


def _pattern_allows(schema: Mapping[str, Any], name: str) -> bool:
    return any(re.search(pattern, name) for pattern in schema.get("patternProperties", {}))


def _short(text: str, limit: int = 64) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"

