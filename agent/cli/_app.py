"""The `rtem` typer app: every command, registered in the order `rtem --help` lists them."""

from __future__ import annotations

import typer

from . import _approvals, _events, _report, _retention, _service
from ._cluster import cluster_app
from ._db import db_app
from ._incidents import audit_app, incidents_app
from ._rules import rules_app
from ._tokens import tokens_app

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
from ._dlq import dlq_app  # noqa: E402 - registered in the order `rtem --help` lists them
app.add_typer(dlq_app, name="dlq")
from ._topology import topology_app  # noqa: E402 - registered in the order `rtem --help` lists them
app.add_typer(topology_app, name="topology")
from ._oncall import COMMANDS as _ONCALL  # noqa: E402 - on-call commands join `rtem incidents`
for command in _ONCALL:
    incidents_app.command()(command)
from ._confirm import confirm as _confirm  # noqa: E402 - a confirmed cause joins `rtem incidents`
incidents_app.command("confirm")(_confirm)
from ._learn import learn_app  # noqa: E402 - registered in the order `rtem --help` lists them
app.add_typer(learn_app, name="learn")
# [issue13:cli] helpers B, C and D each add their import and add_typer/command lines above this comment


def main() -> None:
    app()
