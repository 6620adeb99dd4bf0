"""Logging setup: readable text for a terminal, or one JSON object per line (`--log-format json`).

`logs_through(console)` sends the same lines through a rich console for a while: under a `Live`
display, a line written straight to stderr lands inside the display and leaves stale copies of it
behind; printed through `live.console` it goes above the display, which is redrawn below it.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone

from rich.console import Console
from rich.text import Text

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
               "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def formatter(fmt: str = "text") -> logging.Formatter:
    """The one format of rtem's log lines: `text` or `json`."""
    return JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)


def setup_logging(fmt: str = "text", level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class ConsoleHandler(logging.Handler):
    """Writes each record through a rich console, as plain text (a message's brackets are not markup)."""

    def __init__(self, console: Console, fmt: logging.Formatter | None = None):
        super().__init__()
        self.console = console
        self.setFormatter(fmt or formatter())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            # soft_wrap=False: rich wraps the line at the terminal's width itself, so a live display
            # below it knows how many rows it took.
            self.console.print(Text(line), soft_wrap=False, highlight=False, markup=False)
        except Exception:  # a log line must never take the program down (logging's own rule)
            self.handleError(record)


@contextmanager
def logs_through(console: Console) -> Iterator[ConsoleHandler]:
    """Route the root logger's lines through `console` while the block runs, in the format they had."""
    root = logging.getLogger()
    previous = list(root.handlers)
    fmt = next((h.formatter for h in previous if h.formatter is not None), None)
    handler = ConsoleHandler(console, fmt)
    root.handlers[:] = [handler]
    try:
        yield handler
    finally:
        root.handlers[:] = previous
