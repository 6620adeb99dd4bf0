"""What every `rtem` command shares: the consoles, the error exit, settings, common options, the store.

Human output goes to `out` (stdout) and progress and problems to `err` (stderr); `--json` output is
printed with `print`, so it is exactly the documented shape, never wrapped or styled.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape

from ..config import Settings

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

VERDICT_COLOUR = {"allow": "green", "deny": "red", "require_approval": "yellow"}


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
