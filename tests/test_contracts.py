"""Action contracts: the shipped files, refusal of bad ones, and violations with exact JSON paths."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from rules import Proposal, Topology
from rules._contracts import ContractError, load_contracts

ACTIONS = {"restart_instance", "rollback_deploy", "scale_out", "failover_database", "open_circuit", "shed_load",
           "drain_host", "notify_oncall"}
CONTRACTS_DIR = Path(str(resources.files("rules") / "contracts"))


@pytest.fixture(scope="module")
def contracts():
    return load_contracts()


@pytest.fixture(scope="module")
def topology() -> Topology:
    return Topology.from_dict({
        "entities": [{"id": "cart", "type": "service"}, {"id": "cart-0", "type": "instance"},
                     {"id": "node-1", "type": "host"}],
        "relations": [{"source": "cart-0", "target": "cart", "type": "instance_of"},
                      {"source": "cart-0", "target": "node-1", "type": "runs_on"}],
    })


def check(contracts, topology, action: str, target: str, params: dict) -> list[tuple[str, str]]:
    proposal = Proposal(type=action, target=target, params=params)
    return [(v.path, v.message) for v in contracts[action].check(proposal, topology)]


# -- the shipped contracts ---------------------------------------------------------------------------

def test_every_action_type_has_a_contract(contracts):
    assert set(contracts) == ACTIONS


@pytest.mark.parametrize("path", sorted(CONTRACTS_DIR.glob("*.json")), ids=lambda p: p.stem)
def test_shipped_contract_meta_validates(path: Path):
    meta = json.loads((resources.files("rules") / "schemas" / "contract.v1.json").read_text("utf-8"))
    Draft202012Validator.check_schema(meta)
    doc = json.loads(path.read_text("utf-8"))
    assert list(Draft202012Validator(meta).iter_errors(doc)) == []
    Draft202012Validator.check_schema({k: v for k, v in doc.items() if k != "x-rtem"})
    assert doc["x-rtem"]["action"] == path.stem


def test_contract_fields_are_loaded(contracts):
    scale_out = contracts["scale_out"]
    assert scale_out.target_types == ("service",)
    assert scale_out.executor.kind == "nats" and "{target}" in scale_out.executor.subject
    assert len(scale_out.digest) == 16 and scale_out.source.endswith("scale_out.json")
    assert "x-rtem" not in scale_out.params_schema
    assert set(contracts["notify_oncall"].target_types) == {"service", "instance", "host", "database", "cache",
                                                            "queue", "external"}


def test_high_risk_contracts_need_approval(contracts):
    high = {name for name, c in contracts.items() if c.risk == "high"}
    assert high == {"failover_database", "drain_host"}
    assert all(contracts[name].approver_role == "approver" and contracts[name].needs_approval for name in high)
    assert not contracts["restart_instance"].needs_approval


# -- refusing bad contract files ---------------------------------------------------------------------

def _scale_out() -> dict:
    return json.loads((CONTRACTS_DIR / "scale_out.json").read_text("utf-8"))


def _without(doc: dict, key: str) -> dict:
    doc["x-rtem"].pop(key)
    return doc


def _with(doc: dict, path: tuple, value) -> dict:
    node = doc
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return doc


BAD_CONTRACTS = {
    "missing term": (lambda: _without(_scale_out(), "risk"), "'risk' is a required property"),
    "unknown term": (lambda: _with(_scale_out(), ("x-rtem", "priority"), 1), "priority"),
    "bad risk": (lambda: _with(_scale_out(), ("x-rtem", "risk"), "extreme"), "$.x-rtem.risk"),
    "open params": (lambda: _with(_scale_out(), ("additionalProperties",), True), "$.additionalProperties"),
    "wrong file name": (lambda: _with(_scale_out(), ("x-rtem", "action"), "scale_up"), "scale_up.json"),
    "invalid params schema": (lambda: _with(_scale_out(), ("properties", "replicas", "type"), "integr"),
                              "not valid JSON Schema"),
    "unbounded number": (lambda: _with(_scale_out(), ("properties", "replicas"), {"type": "integer", "minimum": 1}),
                         "$.properties.replicas: a number parameter needs a minimum and a maximum"),
    "unbounded string": (lambda: _with(_scale_out(), ("properties", "note"), {"type": "string"}),
                         "$.properties.note: a string parameter needs maxLength"),
    "high risk without approver": (lambda: _with(_scale_out(), ("x-rtem", "risk"), "high"), "approver"),
    "unknown placeholder": (lambda: _with(_scale_out(), ("x-rtem", "executor", "subject"), "rtem.cmd.{host}"),
                            "unknown placeholder {host}"),
    "unknown compensation": (lambda: _with(_scale_out(), ("x-rtem", "compensation", "action"), "scale_in"),
                             "no contract for 'scale_in'"),
}


@pytest.mark.parametrize("name", BAD_CONTRACTS)
def test_bad_contract_is_refused_with_its_path(tmp_path: Path, name: str):
    make, expected = BAD_CONTRACTS[name]
    path = tmp_path / "scale_out.json"
    path.write_text(json.dumps(make()), "utf-8")
    with pytest.raises(ContractError) as caught:
        load_contracts(tmp_path)
    assert caught.value.source == str(path)
    assert expected in caught.value.reason
    assert str(caught.value).startswith(f"{path}: ")


def test_contract_that_is_not_json_names_line(tmp_path: Path):
    path = tmp_path / "scale_out.json"
    path.write_text('{\n  "type": "object",\n  oops\n}', "utf-8")
    with pytest.raises(ContractError, match=r"not JSON: .* line 3 column 3") as caught:
        load_contracts(tmp_path)
    assert caught.value.source == str(path)


def test_missing_contract_directory_is_an_error(tmp_path: Path):
    with pytest.raises(ContractError, match="not a directory"):
        load_contracts(tmp_path / "nowhere")


# -- checking proposals ------------------------------------------------------------------------------

def test_valid_proposal_has_no_violations(contracts, topology):
    assert check(contracts, topology, "scale_out", "cart", {"replicas": 3}) == []
    assert check(contracts, topology, "restart_instance", "cart-0", {}) == []
    assert check(contracts, topology, "notify_oncall", "node-1", {"summary": "disk full", "severity": "error"}) == []


def test_bad_param_reports_exact_json_path(contracts, topology):
    assert check(contracts, topology, "scale_out", "cart", {"replicas": 30}) == [
        ("$.params.replicas", "30 is greater than the maximum of 20")]
    assert check(contracts, topology, "scale_out", "cart", {"replicas": "3"}) == [
        ("$.params.replicas", "'3' is not of type 'integer'")]


def test_missing_and_unexpected_params_point_at_the_parameter(contracts, topology):
    violations = check(contracts, topology, "scale_out", "cart", {"replica": 3})
    assert [path for path, _ in violations] == ["$.params.replica", "$.params.replicas"]
    assert "allowed: replicas" in violations[0][1]
    assert violations[1][1] == "is required"
    assert check(contracts, topology, "drain_host", "node-1", {"force": True}) == [
        ("$.params.force", "is not a parameter of drain_host; drain_host takes no parameters")]


def test_every_param_error_is_reported(contracts, topology):
    violations = check(contracts, topology, "notify_oncall", "cart",
                       {"summary": "x" * 5000, "severity": "panic", "to": "everyone"})
    assert [path for path, _ in violations] == ["$.params.severity", "$.params.summary", "$.params.to"]
    assert "(5002 characters) is too long" in violations[1][1]
    assert all(len(message) < 300 for _, message in violations)  # untrusted values are not echoed whole


def test_wrong_target_type(contracts, topology):
    assert check(contracts, topology, "restart_instance", "cart", {}) == [
        ("$.target", "'cart' is a service; restart_instance acts on instance")]


def test_unknown_target(contracts, topology):
    assert check(contracts, topology, "scale_out", "checkout", {"replicas": 2}) == [
        ("$.target", "'checkout' is not an entity in the topology")]


def test_check_contracts_collects_a_problem_per_file_with_its_json_path(tmp_path: Path):
    from rules._contracts import check_contracts

    for name in ("scale_out", "shed_load", "notify_oncall"):
        (tmp_path / f"{name}.json").write_text((CONTRACTS_DIR / f"{name}.json").read_text("utf-8"), "utf-8")
    (tmp_path / "scale_out.json").write_text(json.dumps(_with(_scale_out(), ("x-rtem", "colour"), "red")), "utf-8")
    shed = json.loads((tmp_path / "shed_load.json").read_text("utf-8"))
    shed["x-rtem"]["compensation"]["action"] = "unshed_load"
    (tmp_path / "shed_load.json").write_text(json.dumps(shed), "utf-8")
    contracts, problems = check_contracts(tmp_path)
    assert set(contracts) == {"shed_load", "notify_oncall"}
    assert [(Path(p.source).name, p.path, p.kind) for p in problems] == [
        ("scale_out.json", "$.x-rtem.colour", "unknown_field"),
        ("shed_load.json", "$.x-rtem.compensation.action", "unknown_action")]
    assert "allowed here:" in problems[0].hint
