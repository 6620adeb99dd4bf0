"""`rtem tokens create | list | revoke`: API tokens for the HTTP API and console (docs/api.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from ..files import DIR_MODE, private_dir, private_file
from ..tokens import ROLES, TokenError, TokenStore
from ._common import Column, DbOpt, JsonOpt, database_target, err, fail, out, print_table

tokens_app = typer.Typer(help="API tokens for the HTTP API and the web console: create, list, revoke.",
                         no_args_is_help=True)


def _tokens(db: str | None) -> TokenStore:
    """The token store in rtem's database, which this may create: a SQLite file is 0600 in a 0700 data
    directory (token hashes)."""
    target = database_target(db)
    if isinstance(target, Path):
        if db is None:
            private_dir(target.parent)
        else:  # someone else's directory is not ours to chmod; one made here is private
            target.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        private_file(target)
    return TokenStore(target)


def _record(db: str | None, kind: str, name: str, who: str, reason: str, **inputs) -> None:
    """The audit record of a token's creation or revocation (never the token or its hash)."""
    from ..audit import AuditLog

    with AuditLog(database_target(db)) as audit:
        audit.append(kind, node="cli", inputs={"name": name, **inputs, "operator": who},
                     decision={"token": name, "by": who}, reasons=[reason])


@tokens_app.command("create")
def create(name: Annotated[str, typer.Argument(help="Who or what uses the token; recorded with its every decision.")],
           role: Annotated[str, typer.Option("--role", "-r", help=f"One of: {', '.join(ROLES)}.")],
           service: Annotated[Optional[list[str]], typer.Option(
               "--service", "-s", help="Limit to these services or entities (repeatable).")] = None,
           label: Annotated[Optional[list[str]], typer.Option(
               "--label", "-l", help="Limit to entities with this topology label, KEY=VALUE (repeatable).")] = None,
           json_out: JsonOpt = False, db: DbOpt = None) -> None:
    """Create a token and print it once; only its hash is kept."""
    from ..identity import operator

    who = operator()
    labels = {}
    for item in label or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--label {item!r}: write KEY=VALUE")
        labels[key] = value
    try:
        token, info = _tokens(db).create(name, role, services=service or [], labels=labels, by=who)
    except TokenError as exc:
        fail(str(exc))
    _record(db, "token.created", name, who, f"token {name!r} ({role}) created by {who}", role=role,
            services=info["services"], labels=info["labels"])
    if json_out:
        print(json.dumps({"token": token, **info}))
        return
    out.print(token)
    scope = ", ".join([*info["services"], *(f"{k}={v}" for k, v in info["labels"].items())]) or "everything"
    err.print(f"token {name!r} ({role}, scope: {scope}) created; it is shown only now. "
              "Send it as `Authorization: Bearer …`, or paste it into the console's login page.")


@tokens_app.command("list")
def list_tokens(all_: Annotated[bool, typer.Option("--all", help="Include revoked tokens.")] = False,
                json_out: JsonOpt = False, db: DbOpt = None) -> None:
    """Tokens by name, role and scope (never the secrets)."""
    rows = _tokens(db).list(include_revoked=all_)
    if json_out:
        print(json.dumps({"tokens": rows}, indent=2))
        return
    if not rows:
        out.print("no tokens (rtem tokens create NAME --role ROLE)")
        return
    print_table([Column("name", ident=True), Column("role"), Column("scope"), Column("created"), Column("by"),
                 Column("revoked")],
                [[escape(t["name"]), t["role"],
                  escape(", ".join([*t["services"], *(f"{k}={v}" for k, v in t["labels"].items())]) or "everything"),
                  t["created_at"], escape(t["created_by"] or "-"), t["revoked_at"] or "-"] for t in rows])


@tokens_app.command("revoke")
def revoke(name: Annotated[str, typer.Argument(help="The token's name.")], db: DbOpt = None) -> None:
    """Revoke a token: its next request gets 401. Recorded in the audit log with the OS user and host."""
    from ..identity import operator

    if not _tokens(db).revoke(name):
        fail(f"no live token named {name!r} (rtem tokens list)", 1)
    who = operator()
    _record(db, "token.revoked", name, who, f"token {name!r} revoked by {who}")
    out.print(f"token {name!r} revoked")
