"""How `rtem demo` shows its progress: a live display on a terminal, plain lines anywhere else.

On a terminal, a rich `Live` redraws one `Frame` (`_status.py`) in place, and every log line (the
service's and the demo's own) goes through the display's console so it prints above the display
instead of into it. The display fits the terminal: text columns wrap, incident ids never shrink, and
incidents that are over fold into one line of ids when the table would not fit the height.

Anywhere else (stdout or stderr piped, CI), `Live` would write cursor movements into a file; instead
each change is one plain line (`progress_lines`), with no escape codes.
"""

from __future__ import annotations

import logging
import sys
from contextlib import ExitStack
from typing import Literal

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..logs import logs_through
from ._status import Frame, IncidentLine, progress_lines

Mode = Literal["live", "plain", "quiet"]

log = logging.getLogger("rtem.demo.operator")
# The demo's own notes (an approval) are part of what it shows, whatever level the service logs at.
log.setLevel(logging.INFO)

STATUS_STYLE = {"open": "cyan", "diagnosing": "cyan", "awaiting_approval": "yellow", "paused": "magenta",
                "verifying": "blue", "resolved": "green", "escalated": "red", "diagnosed": "white",
                "failed": "red"}
FAULT_STYLE = {"scheduled": "dim", "active": "red", "recovering": "yellow", "resolved": "green"}


def choose_mode(console: Console, wanted: bool) -> Mode:
    """`live` only when both the display's stream and stdout are terminals: with either one piped the
    output is being kept (a file, CI, `| tee`), and a redrawn display would be noise in it."""
    if not wanted:
        return "quiet"
    return "live" if console.is_terminal and sys.stdout.isatty() else "plain"


class DemoView:
    """A context manager the demo loop `update()`s with each new frame."""

    def __init__(self, console: Console, mode: Mode):
        self.console = console
        self.mode = mode
        self._stack = ExitStack()
        self._live: Live | None = None
        self._last: Frame | None = None

    def __enter__(self) -> DemoView:
        if self.mode == "live":
            self._live = Live(console=self.console, refresh_per_second=4, transient=False,
                              vertical_overflow="crop", get_renderable=self._renderable)
            self._stack.enter_context(self._live)
            self._stack.enter_context(logs_through(self._live.console))
        return self

    def __exit__(self, *exc) -> bool:
        if self._live is not None and self._last is not None:
            self._live.update(self._renderable(), refresh=True)
        self._stack.close()
        return False

    def update(self, frame: Frame) -> None:
        before, self._last = self._last, frame
        if self.mode == "plain":
            for line in progress_lines(before, frame):
                self.console.file.write(line + "\n")
            self.console.file.flush()
        elif self._live is not None:
            self._live.refresh()  # draws `_renderable()`, sized to the terminal as it is now

    def _renderable(self) -> RenderableType:
        if self._last is None:
            return Text("rtem demo: starting the service and the simulated shop…")
        size = self.console.size
        return render(self._last, self.console, size.width, size.height)


def render(frame: Frame, console: Console, width: int, height: int) -> RenderableType:
    """The frame in `width` columns and fewer than `height` rows (one is kept for the cursor): finished
    incidents fold into a line of their ids first, then the per-fault line goes (the header counts them).
    What still does not fit is cropped by `Live`, which never scrolls the header away."""
    shown = list(frame.incidents)
    folded: list[IncidentLine] = []
    options = console.options.update(width=width, height=None)
    while True:
        group = _group(frame, shown, folded, width=width, faults_line=True)
        if len(console.render_lines(group, options, pad=False)) < height:
            return group
        finished = [i for i in shown if i.final]
        if not finished:
            return _group(frame, shown, folded, width=width, faults_line=False)
        shown.remove(finished[0])
        folded.append(finished[0])


def _group(frame: Frame, shown: list[IncidentLine], folded: list[IncidentLine], *, width: int,
           faults_line: bool) -> Group:
    parts: list[RenderableType] = [_wrapping(frame.header(), "bold")]
    if frame.waits:  # the most immediate one; the rest follow when it is over
        more = f" (and {len(frame.waits) - 1} more)" if len(frame.waits) > 1 else ""
        parts.append(_wrapping(f"⏳ {frame.waits[0].text()}{more}", "yellow"))
    if shown:
        parts.append(_table(shown, width=width))
    if folded:
        parts.append(_wrapping(f"also over: {', '.join(f'{i.id} ({i.status_text()})' for i in folded)}", "dim"))
    if not frame.incidents:
        parts.append(_wrapping("no incident yet", "dim"))
    if faults_line:
        faults = Text(no_wrap=False, overflow="fold")
        for n, fault in enumerate(frame.faults):
            faults.append(("  " if n else "faults: "))
            faults.append(f"{fault.name} {fault.status}", style=FAULT_STYLE.get(fault.status, ""))
        parts.append(faults)
    return Group(*parts)


def _wrapping(text: str, style: str) -> Text:
    # Explicit: the CLI's console soft-wraps, which inside a Live display means cut at the edge.
    return Text(text, style=style, no_wrap=False, overflow="fold")


def _table(incidents: list[IncidentLine], *, width: int) -> Table:
    """One row per action, so each action's verdict and status sit in a column of their own.

    Under 100 columns the root cause is its entity alone. Widths are computed here rather than left to
    rich's ratios, which shrink every column alike when space runs out, incident ids included."""
    narrow = width < 100
    causes = [(i.cause_entity if narrow else i.cause) or "…" for i in incidents]
    actions = [a for i in incidents for a in i.actions]
    id_width = max(len(i.id) for i in incidents)
    # Statuses, action names and targets wrap between words but are never cut inside one.
    status_width = max(len(word) for i in incidents for word in i.status_text().split() + ["status"])
    columns = {  # name: (narrowest without cutting a word, wide enough for one line)
        "verdict → status": (16, max([len(a.outcome()) for a in actions] + [16])),
        "action": (max([len(w) for a in actions for w in (a.type, a.target)] + [6]),
                   max([len(f"{a.type} {a.target}") for a in actions] + [6])),
        "root cause": (max([len(w) for c in causes for w in c.split()] + [5]), max(len(c) for c in causes + ["root cause"])),
    }
    widths = {name: low for name, (low, _) in columns.items()}
    spare = width - id_width - status_width - 2 * 4 - sum(widths.values())  # 2 columns between cells
    while spare > 0:  # a column at a time, until each fits on one line (the verdict first: it is the point)
        short = [name for name, (_, high) in columns.items() if widths[name] < high]
        if not short:
            break
        for name in short[:spare]:
            widths[name] += 1
        spare -= len(short[:spare])
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1), collapse_padding=True,
                  expand=True)
    table.add_column("incident", no_wrap=True, width=id_width)
    table.add_column("status", overflow="fold", width=status_width)
    table.add_column("root cause", overflow="fold", width=widths["root cause"])
    table.add_column("action", overflow="fold", width=widths["action"])
    table.add_column("verdict → status", overflow="fold", width=widths["verdict → status"])
    for incident, cause in zip(incidents, causes):
        first = [incident.id, Text(incident.status_text(), style=STATUS_STYLE.get(incident.status, "")), Text(cause)]
        if not incident.actions:
            table.add_row(*first, "-", "")
        for n, action in enumerate(incident.actions):
            table.add_row(*(first if n == 0 else ["", "", ""]), Text(f"{action.type} {action.target}"),
                          Text(action.outcome()))
    return table
