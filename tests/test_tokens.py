"""`rtem tokens` and the token store: secrets shown once and kept hashed, roles, scopes, revocation. The
store's own tests run on SQLite and PostgreSQL (the `backend` fixture); the CLI's on SQLite."""

from __future__ import annotations

import json
import sqlite3

import pytest
from typer.testing import CliRunner

from agent.cli import app
from agent.db import open_database, versions
from agent.tokens import TOKENS_SCHEMA, Principal, TokenError, TokenStore
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


@pytest.fixture
def tokens(backend):
    store = TokenStore(backend)
    yield store
    store.close()


def test_the_store_keeps_a_token_hashed_until_it_is_revoked(tokens):
    token, described = tokens.create("alice", "approver", services=["cart", "cart"], labels={"team": "shop"}, by="ops")
    assert described["name"] == "alice" and described["services"] == ["cart"] and described["created_by"] == "ops"
    stored = tokens.db.connection().execute("SELECT * FROM api_tokens").fetchall()
    assert token not in json.dumps(stored), "only the hash is kept"
    assert tokens.authenticate(token) == Principal("alice", "approver", ("cart",), {"team": "shop"})
    assert tokens.revoke("alice") and not tokens.revoke("alice"), "a token is revoked once"
    assert tokens.authenticate(token) is None
    assert tokens.list() == [] and tokens.list(include_revoked=True)[0]["revoked_at"]


def test_the_store_refuses_a_taken_name_a_bad_name_and_an_unknown_role(tokens):
    token, _ = tokens.create("bob", "viewer")
    with pytest.raises(TokenError, match="a token named 'bob' exists"):
        tokens.create("bob", "admin")
    assert tokens.authenticate(token).role == "viewer", "the refused one changed nothing"
    with pytest.raises(TokenError, match="token name"):
        tokens.create("bob smith", "viewer")
    with pytest.raises(TokenError, match="role 'root'"):
        tokens.create("carol", "root")
    assert [t["name"] for t in tokens.list()] == ["bob"]
    for forged in ("rtem_" + "x" * 43, "not-a-token", "", None, "rtem_" + "x" * 200):
        assert tokens.authenticate(forged) is None


def test_a_token_created_by_one_store_authenticates_in_another_on_a_shared_database(backend):
    """What `rtem tokens create` beside a running service relies on: no cache between the two."""
    db = open_database(backend)
    try:
        served, cli = TokenStore(db), TokenStore(backend)
        token, _ = cli.create("ci-bot", "operator")
        cli.close()
        assert served.authenticate(token) == Principal("ci-bot", "operator")
        served.close()
        assert versions(db)["tokens"] == TOKENS_SCHEMA.version == 1
        assert TokenStore(db).authenticate(token), "closing a store did not close the database it shares"
    finally:
        db.close()
