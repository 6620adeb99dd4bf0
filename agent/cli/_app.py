"""The `rtem` typer app: every command, registered in the order `rtem --help` lists them.

Help output is tidied once, globally, for every command (ours and the sub-apps'): see `RtemGroup`.
"""

from __future__ import annotations

import inspect
import re

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

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


class _Option(TyperOption):
    """An option as help shows it: a flag takes no value, so it shows no type (typer prints `--json <bool>`,
    which reads as if `--json true` were expected); a repeatable option shows its element's type."""

    def display_type_rich(self, ctx: typer.Context) -> str | None:
        if self.is_flag or self.count:
            return None
        shown = super().display_type_rich(ctx)
        return _element_type(shown) if self.multiple and shown else shown


class _Argument(TyperArgument):
    """An argument as help shows it: `FILES...` in the usage line, click's convention, where typer prints
    `{files}...` (braces read as shell brace expansion); and a list's element type, `<path>`."""

    def get_usage_pieces(self, ctx: typer.Context) -> list[str]:
        name = self.display_name_raw.upper()
        name = name if self.required else f"[{name}]"
        return [name + ("..." if self.nargs != 1 else "")]

    def display_type_rich(self, ctx: typer.Context) -> str | None:
        shown = super().display_type_rich(ctx)
        return _element_type(shown) if self.nargs != 1 and shown else shown


def _element_type(shown: str) -> str:
    """`<list[Path]>` → `<path>`: the type of one value, which is what a person types."""
    match = re.fullmatch(r"<list\[(.+)\]>", shown)
    return f"<{match.group(1).lower()}>" if match else shown


def _tidy(command: TyperCommand | TyperGroup) -> None:
    """Tidy a command's help and its parameters', then its subcommands'.

    Docstrings and help strings are wrapped in the source at ~110 columns. In typer's rich markup mode a
    single newline stays a line break (in the command list and in every paragraph after the first), so
    sentences came out broken mid-line at any terminal width. Joining the lines of each paragraph lets rich
    wrap to the terminal; a blank line still separates paragraphs, and a `\\b` paragraph keeps its lines."""
    command.help = _unwrap(command.help)
    command.short_help = _unwrap(command.short_help)
    for param in command.params:
        if isinstance(param, TyperOption) and type(param) is TyperOption:
            param.__class__ = _Option  # same fields; only how help renders it differs
        elif isinstance(param, TyperArgument) and type(param) is TyperArgument:
            param.__class__ = _Argument
        if getattr(param, "help", None):
            param.help = _unwrap(param.help)
    command.get_help_option = _shown_as_flag(command.get_help_option)  # `--help` is made on demand
    for sub in getattr(command, "commands", {}).values():
        _tidy(sub)


def _shown_as_flag(get_help_option):
    """Wraps a command's `get_help_option`: the `--help` option is built when help is asked for, after
    `_tidy` ran, and is a flag like any other."""

    def wrapped(ctx: typer.Context):
        option = get_help_option(ctx)
        if option is not None and type(option) is TyperOption:
            option.__class__ = _Option
        return option
    return wrapped


def _unwrap(text: str | None) -> str | None:
    if not text:
        return text
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(p if p.startswith("\b") else " ".join(line.strip() for line in p.splitlines())
                       for p in paragraphs)


class RtemGroup(TyperGroup):
    """The root command: every command below it is tidied once, when typer builds the click tree."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _tidy(self)


app = typer.Typer(cls=RtemGroup,
                  help="rtem, the real-time exception manager: events in, incidents out, safe remediation in "
                       "between, and an explanation for every step. Every time shown is UTC. docs/cli.md "
                       "describes the commands, their output (terminal, pipe, --json) and exit codes.",
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
