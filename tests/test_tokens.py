"""`rtem tokens` and the token store: secrets shown once and kept hashed, roles, scopes, revocation."""

from __future__ import annotations

import json
import sqlite3

from typer.testing import CliRunner

from agent.cli import app
from agent.tokens import Principal, TokenStore
from rules import Topology

runner = CliRunner()


def test_a_token_is_shown_once_stored_hashed_and_revocable(tmp_path):
    db = tmp_path / "rtem.db"
    created = runner.invoke(app, ["tokens", "create", "alice", "--role", "approver", "--service", "cartservice",
                                  "--label", "team=shop", "--json", "--db", str(db)])
    assert created.exit_code == 0, created.output
    doc = json.loads(created.stdout)
    token = doc["token"]
    assert token.startswith("rtem_") and len(token) > 40
    assert doc["role"] == "approver" and doc["services"] == ["cartservice"] and doc["labels"] == {"team": "shop"}
    stored = sqlite3.connect(db).execute("SELECT * FROM api_tokens").fetchall()
    assert token not in json.dumps(stored), "only the hash is kept"
    who = TokenStore(db).authenticate(token)
    assert who == Principal("alice", "approver", ("cartservice",), {"team": "shop"})

    listed = json.loads(runner.invoke(app, ["tokens", "list", "--json", "--db", str(db)]).stdout)["tokens"]
    assert [t["name"] for t in listed] == ["alice"] and "token" not in listed[0]
    assert runner.invoke(app, ["tokens", "revoke", "alice", "--db", str(db)]).exit_code == 0
    assert TokenStore(db).authenticate(token) is None
    assert runner.invoke(app, ["tokens", "revoke", "alice", "--db", str(db)]).exit_code == 1
    assert json.loads(runner.invoke(app, ["tokens", "list", "--json", "--db", str(db)]).stdout)["tokens"] == []


def test_bad_token_requests_are_refused_with_the_reason(tmp_path):
    db = str(tmp_path / "rtem.db")
    role = runner.invoke(app, ["tokens", "create", "bob", "--role", "root", "--db", db])
    assert role.exit_code == 2 and "role 'root' is not one of viewer, operator, approver, rule_author, admin" in role.output
    label = runner.invoke(app, ["tokens", "create", "bob", "--role", "viewer", "--label", "team", "--db", db])
    assert label.exit_code == 2 and "KEY=VALUE" in label.output
    assert runner.invoke(app, ["tokens", "create", "bob", "--role", "viewer", "--db", db]).exit_code == 0
    again = runner.invoke(app, ["tokens", "create", "bob", "--role", "admin", "--db", db])
    assert again.exit_code == 2 and "exists" in again.output
    assert TokenStore(db).authenticate("rtem_" + "x" * 43) is None
    assert TokenStore(db).authenticate("not-a-token") is None


def test_a_scope_covers_named_services_their_instances_and_matching_labels():
    topology = Topology.from_dict({
        "entities": [{"id": "cart", "type": "service", "labels": {"team": "shop"}},
                     {"id": "cart-0", "type": "instance"}, {"id": "db", "type": "database", "labels": {"team": "data"}}],
        "relations": [{"source": "cart-0", "target": "cart", "type": "instance_of"}]})
    by_service = Principal("a", "approver", ("cart",))
    assert by_service.covers("cart", topology) and by_service.covers("cart-0", topology)
    assert not by_service.covers("db", topology)
    by_label = Principal("b", "approver", labels={"team": "data"})
    assert by_label.covers("db", topology) and not by_label.covers("cart", topology)
    assert Principal("c", "viewer").covers("anything", topology), "no scope: everything"
    assert by_service.sees({"entities": ["db", "cart-0"]}, topology)
    assert not by_service.sees({"entities": ["db"]}, topology)
