"""The `rtem` typer app: every command, registered in the order `rtem --help` lists them."""

from __future__ import annotations

import typer

from . import _approvals, _events, _report, _retention, _service
from ._cluster import cluster_app
from ._confirm import confirm
from ._db import db_app
from ._dlq import dlq_app
from ._incidents import audit_app, incidents_app
from ._learn import learn_app
from ._oncall import COMMANDS as ONCALL_COMMANDS
from ._rules import rules_app
from ._tokens import tokens_app
from ._topology import topology_app

app = typer.Typer(help="rtem, the real-time exception manager: events in, incidents out, safe "
                       "remediation in between, and an explanation for every step.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

for command in (_events.analyze, _events.ingest, _service.run, _approvals.approve, _approvals.reject,
                _service.pause, _service.resume, _service.demo, _report.report, _report.ask, _report.chat,
                _retention.purge):
    app.command()(command)
app.add_typer(incidents_app, name="incidents")
app.add_typer(audit_app, name="audit")
app.add_typer(rules_app, name="rules")
app.add_typer(tokens_app, name="tokens")
app.add_typer(db_app, name="db")
app.add_typer(cluster_app, name="cluster")
app.add_typer(dlq_app, name="dlq")
app.add_typer(topology_app, name="topology")
app.add_typer(learn_app, name="learn")
for command in (*ONCALL_COMMANDS, confirm):  # a person's on-call actions and confirmed causes join `rtem incidents`
    incidents_app.command()(command)


def main() -> None:
    app()
