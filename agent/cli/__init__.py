"""The `rtem` command line (typer + rich): `app` for tests and embedding, `main` for the console script.

Human output uses rich; `--json` prints exactly the documented shapes. The commands live in private
modules by topic: `_events` (analyze, ingest), `_incidents` (incidents, audit), `_service` (run, demo,
pause, resume), `_approvals`, `_report` (report, ask, chat), `_rules`, `_tokens`; `_common` holds what
they share.
"""

from ._app import app, main

__all__ = ["app", "main"]
