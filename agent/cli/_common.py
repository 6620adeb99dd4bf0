"""What every `rtem` command shares: the consoles, the error exit, settings, common options, the store.

Human output goes to `out` (stdout) and progress and problems to `err` (stderr); `--json` output is
printed with `print`, so it is exactly the documented shape, never wrapped or styled. Tables go through
`print_table`: on a terminal they fit its width without cutting an id; into a pipe or file they are plain
aligned lines, never wrapped (docs/cli.md, "Output").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..config import Settings

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

VERDICT_COLOUR = {"allow": "green", "deny": "red", "require_approval": "yellow"}
# How long a command a person waits on tries to reach the NATS server before it says why it cannot.
CONNECT_WAIT_S = 5.0


class LlmChoice(str, Enum):
    none = "none"
    openai = "openai"
    local = "local"


JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON only.")]
DbOpt = Annotated[Optional[str], typer.Option(
    "--db", help="rtem's database: a SQLite file or a postgresql:// URL (default: RTEM_DATABASE_URL, else "
                 "RTEM_DATA_DIR/rtem.db).")]
IncidentArg = Annotated[str, typer.Argument(help="Incident id (a unique prefix is enough).")]
TopologyOpt = Annotated[Optional[Path], typer.Option("--topology", "-t", help="Topology file (JSON or YAML; "
                        "default: RTEM_TOPOLOGY).")]
LlmOpt = Annotated[Optional[LlmChoice], typer.Option(
    "--llm", help="Reasoner: none (deterministic), openai (any OpenAI-compatible endpoint: RTEM_LLM_BASE_URL, "
                  "RTEM_LLM_API_KEY, RTEM_LLM_MODEL) or local (llama.cpp, from the optional extra `local`). Default: RTEM_LLM, "
                  "else none. See docs/llm.md.")]


@dataclass(frozen=True)
class Column:
    """A table column. An `ident` column (incident ids, event ids, names) is never wrapped or cut: people
    copy it into `rtem approve`, `rtem incidents show`. A `keep` column (a status, a count) is kept whole
    when the terminal has room for it; the other columns wrap to make room."""

    header: str
    ident: bool = False
    keep: bool = False


MIN_WRAPPED = 10  # the narrowest a wrapped column gets before a `keep` column gives up its room


def print_table(columns: Sequence[Column], rows: Iterable[Sequence[str]], *, title: str | None = None) -> None:
    """Print rows (cells may hold rich markup) as a table on stdout.

    On a terminal: a rich table as wide as the terminal, ident columns at their full width, the others
    wrapped at word boundaries (a word longer than its column folds rather than being cut with "…").
    Otherwise (a pipe, a file): plain text, one line per row, columns aligned with two spaces and no
    markup or wrapping, so `grep` and `awk '{print $1}'` see whole tokens."""
    rows = [[str(cell) for cell in row] for row in rows]
    if out.is_terminal:
        widths = _widths(columns, rows)
        whole = _whole(columns, widths, out.width)
        table = Table(show_edge=False, title=title, title_justify="left")
        for i, (col, width) in enumerate(zip(columns, widths)):
            if i in whole:
                table.add_column(col.header, no_wrap=True, min_width=width)
            else:
                table.add_column(col.header, overflow="fold")
        for row in rows:
            table.add_row(*row)
        out.print(table)
        return
    plain = [[col.header for col in columns]] + [[_plain(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in plain) for i in range(len(columns))]
    if title:
        print(title)
    for row in plain:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def _whole(columns: Sequence[Column], widths: list[int], room: int) -> set[int]:
    """The columns printed whole: every ident column, then `keep` columns, narrowest first, while the
    columns left to wrap keep at least MIN_WRAPPED characters each."""
    whole = {i for i, col in enumerate(columns) if col.ident}
    overhead = 3 * len(columns)  # a space either side of each cell, and the rule between columns

    def fits(chosen: set[int]) -> bool:
        return sum(widths[i] for i in chosen) + MIN_WRAPPED * (len(columns) - len(chosen)) + overhead <= room

    for i in sorted((i for i, col in enumerate(columns) if col.keep and not col.ident), key=lambda i: widths[i]):
        if fits(whole | {i}):
            whole.add(i)
    return whole


def _widths(columns: Sequence[Column], rows: list[list[str]]) -> list[int]:
    return [max([len(col.header)] + [len(_plain(row[i])) for row in rows]) for i, col in enumerate(columns)]


def _plain(cell: str) -> str:
    """A cell's text without rich markup, on one line."""
    return " ".join(Text.from_markup(cell).plain.split())


def fail(message: str, code: int = 2) -> NoReturn:
    """Print `error: message` on stderr and exit with `code` (2: a usage error; 1: the command failed)."""
    err.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(code)


def settings(llm: LlmChoice | None = None) -> Settings:
    """The settings from RTEM_* variables and RTEM_CONFIG, with `--llm` over RTEM_LLM when given."""
    try:
        cfg = Settings()
    except Exception as exc:  # pydantic's message names the variable and the problem
        fail(f"configuration: {exc}")
    return cfg if llm is None else cfg.model_copy(update={"llm": llm.value})


def topology_of(cfg: Settings, path: Path | None):
    """The topology file `path` (else the configured one, else none); exits with its error when invalid."""
    from rules import TopologyError

    try:
        return cfg.load_topology(path)
    except TopologyError as exc:
        fail(str(exc))


def topology_or_analyzed(cfg: Settings, path: Path | None, target: str | Path, *, quiet: bool = False,
                         required: bool = False):
    """`--topology`, else RTEM_TOPOLOGY (as `topology_of` reads them), else the topology the latest `rtem
    analyze` into the store at `target` diagnosed with (it keeps it: `agent.analyze.ANALYZED_TOPOLOGY`), said
    on stderr unless `quiet`; else None, or, when `required`, exits saying how to name one."""
    if path is not None or cfg.topology:
        return topology_of(cfg, path)
    from rules import Topology, TopologyError

    from ..analyze import ANALYZED_TOPOLOGY
    from ..db import versions
    from ..store import STORE_SCHEMA, IncidentStore

    store = IncidentStore(target, readonly=True)
    try:  # a database with an audit log but no incident store (yet) keeps no topology either
        doc = store.load_state(ANALYZED_TOPOLOGY) if STORE_SCHEMA.component in versions(store.db) else None
    finally:
        store.close()
    if doc is None and required:
        fail("no topology: pass --topology FILE or set RTEM_TOPOLOGY (a store `rtem analyze` made keeps its own)")
    if doc is None:
        return None
    try:
        topology = Topology.from_dict(doc, origin=f"{target} (the topology its last analysis used)")
    except TopologyError as exc:
        fail(str(exc))
    if not quiet:
        err.print(escape(f"topology: the one the latest `rtem analyze` into {target} used ({len(topology.entities)} "
                         f"entities, digest {topology.digest}); --topology names another"), style="dim")
    return topology


def db_file(db: str | None, missing: str) -> str | Path:
    """`database_target(db)`; exits with `<path>: <missing>` when it is a SQLite file that does not exist."""
    target = database_target(db)
    if isinstance(target, Path) and not target.is_file():
        fail(f"{target}: {missing}")
    return target


def database_target(db: str | None) -> str | Path:
    """`--db`, else RTEM_DATABASE_URL, else RTEM_DATA_DIR/rtem.db: a `postgresql://` URL as it is, else a path."""
    from ..db import is_postgres_url

    target = db if db is not None else settings().database
    return target if is_postgres_url(target) else Path(target)


def open_store(db: str | None):
    """The incident store, read-only."""
    from ..store import IncidentStore

    return IncidentStore(db_file(db, "no store here yet (run `rtem analyze` or `rtem run`, or pass --db)"),
                         readonly=True)


def open_ledger(db: str | None):
    """The execution ledger `rtem run` reads approvals and the kill switch from."""
    from ..ledger import Ledger

    return Ledger(db_file(db, "no store here (is `rtem run` using another RTEM_DATA_DIR?)"))
