"""`rtem demo`'s progress display: the live view in a terminal, plain lines when piped.

The fast tests build frames from the real simulation's faults and draw them with the real renderer. The
integration tests run `rtem demo` itself: once on a pseudo-terminal of 100x30 read through a terminal
emulator (pyte), which keeps the lines that scrolled away, so a stale copy of the display anywhere in
the session is seen; once with stdout and stderr piped.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import select
import sqlite3
import struct
import subprocess
import sys
import termios
import time
from datetime import datetime, timezone
from io import StringIO

import pytest
from rich.console import Console

from agent.demo._live import render
from agent.demo._status import Timeline, build_frame, progress_lines
from agent.demo.scenarios import SCENARIOS
from agent.demo.sim import Fault
from agent.logs import formatter, logs_through

START = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
TIMELINE = Timeline(speed=10.0, offset_s=2.0, start=START)
HEADER = "rtem demo · wall"
# Fast and short: two disruptions (one needs the demo operator's approval) at 40x speed.
DEMO = [sys.executable, "-m", "agent", "demo", "-s", "partial-outage", "-s", "db-connection-exhaustion",
        "--speed", "40", "--approve-after", "1", "--timeout", "90"]


def _fault(name: str, start_s: float, **state) -> Fault:
    fault = Fault(id=f"{name}#1", scenario=SCENARIOS[name], start_s=start_s)
    for key, value in state.items():
        setattr(fault, key, value)
    return fault


def _incident(id_: str, status: str, *actions: tuple[str, str, str, str], last_s: float = 100.0) -> dict:
    return {"id": id_, "status": status, "entities": ["auth-1"], "first_ts": START.timestamp() + last_s - 30,
            "last_ts": START.timestamp() + last_s,
            "root_causes": [{"entity": "auth-1", "fault_type": "process", "confidence": 0.91}],
            "actions": [{"type": t, "target": target, "verdict": verdict, "status": status_}
                        for t, target, verdict, status_ in actions]}


def _frame(incidents, faults, *, now_s: float = 200.0, asked=None):
    return build_frame(wall_s=TIMELINE.wall_s(now_s), sim_now_s=now_s, timeline=TIMELINE, incidents=incidents,
                       faults=faults, approvals=0, asked=asked or {}, approve_after_s=3.0, verify_quiet_s=60.0)


# -- fast: frames, waits, plain lines, the renderer, log routing ----------------------------------


def test_between_waves_the_frame_says_what_it_waits_for_and_until_when():
    done = _incident("inc-aaaaaaaaaaaa", "resolved", ("restart_instance", "auth-1", "allow", "done"))
    faults = [_fault("partial-outage", 45, began_s=45, fixed_s=80, clear_s=95, resolved_s=95),
              _fault("consumer-backlog", 600)]
    [wait] = _frame([done], faults).waits
    assert wait.what == "the next disruption: consumer-backlog on fulfillment"
    assert wait.until_wall_s == pytest.approx(2.0 + 600 / 10.0)  # wall second the wave is due
    assert wait.until_sim == datetime(2026, 1, 5, 9, 10, tzinfo=timezone.utc)
    assert "until ~62s wall, sim 09:10:00" in wait.text()


def test_an_approval_wait_names_the_action_and_when_the_operator_approves():
    row = _incident("inc-bbbbbbbbbbbb", "awaiting_approval",
                    ("failover_database", "orders-db", "require_approval", "awaiting_approval"),
                    ("notify_oncall", "orders-db", "allow", "done"))
    frame = _frame([row], [_fault("db-connection-exhaustion", 60, began_s=60)], asked={row["id"]: 10.0})
    assert frame.waits[0].what.startswith("the operator to approve failover_database orders-db")
    assert frame.waits[0].until_wall_s == 13.0
    assert [a.text() for a in frame.incidents[0].actions] == [
        "failover_database orders-db: needs approval → awaiting approval",
        "notify_oncall orders-db: allowed → done"]


def test_plain_progress_prints_a_line_per_change_and_nothing_when_nothing_changed():
    faults = [_fault("partial-outage", 45, began_s=45)]
    first = _frame([_incident("inc-cccccccccccc", "diagnosing")], faults)
    assert progress_lines(first, first) == []
    later = _frame([_incident("inc-cccccccccccc", "verifying", ("restart_instance", "auth-1", "allow", "done"))],
                   faults, now_s=210.0)
    lines = progress_lines(first, later)
    assert [line for line in lines if line.startswith("[  23.0s] inc-cccccccccccc")] == [
        "[  23.0s] inc-cccccccccccc verifying · cause auth-1 (process 91%) · actions: "
        "restart_instance auth-1: allowed → done"]
    assert "[  23.0s] waiting for inc-cccccccccccc to stay quiet for 60s of event time (verifying the fix) until " \
           "~18s wall, sim 09:02:40" in lines, lines  # its last signal at event second 100, + 60 s
    assert not any("\x1b" in line for line in lines)


@pytest.mark.parametrize("width,height", [(80, 24), (100, 30), (120, 40)])
def test_the_view_fits_the_terminal_without_cutting_ids_or_words(width, height):
    statuses = ["resolved", "awaiting_approval", "verifying", "diagnosing", "resolved", "resolved"]
    rows = [_incident(f"inc-{n:012x}", status, ("failover_database", "orders-db", "require_approval", "done"),
                      ("notify_oncall", "orders-db", "allow", "done")) for n, status in enumerate(statuses)]
    faults = [_fault(name, 0, began_s=0, resolved_s=50) for name in SCENARIOS]
    console = Console(width=width, height=height, force_terminal=False, soft_wrap=True)
    with console.capture() as captured:
        console.print(render(_frame(rows, faults), console, width, height))
    screen = [line.rstrip() for line in captured.get().splitlines()]
    assert len(screen) < height, "it fits the terminal, so the live display never scrolls"
    assert max(len(line) for line in screen) <= width
    text = " ".join(" ".join(screen).split())
    assert text.count(HEADER) == 1
    for row in rows:
        assert row["id"] in text, f"{row['id']} must be shown whole"
    words = {"resolved", "awaiting", "approval", "verifying", "diagnosing"}
    pieces = {token.strip("(),:") for token in text.split()} - words
    cut = [p for p in pieces if any(p and word.startswith(p) for word in words)]
    assert not cut, f"status words cut: {cut}\n" + "\n".join(screen)
    failover, notify = _outcomes(screen, "failover_database"), _outcomes(screen, "notify_oncall")
    assert len(failover) >= 3 and set(failover) == {"needs approval → done"}, "\n".join(screen)
    assert len(notify) >= 3 and set(notify) == {"allowed → done"}, "\n".join(screen)


_ACTION_TYPES = {"failover_database", "notify_oncall", "restart_instance", "rollback_deploy"}


def _outcomes(screen: list[str], action: str) -> list[str]:
    """The "verdict → status" cell of each row of `action`, its wrapped lines joined."""
    [header] = [line for line in screen if "verdict → status" in line]
    action_at, outcome_at = header.index("action"), header.index("verdict → status")
    cells = []
    for n, line in enumerate(screen):
        if line[action_at:outcome_at].split()[:1] == [action]:
            cell = [line[outcome_at:].strip()]
            for more in screen[n + 1:]:
                # a line that starts at the left edge is another incident's row, or no longer the table
                starts_a_row = more[:1] != " " or bool(set(more[action_at:outcome_at].split()[:1]) & _ACTION_TYPES)
                if starts_a_row or not more[outcome_at:].strip():
                    break
                cell.append(more[outcome_at:].strip())
            cells.append(" ".join(cell))
    return cells


def test_logs_go_through_the_console_in_the_format_they_had_and_come_back_after():
    root = logging.getLogger()
    before = list(root.handlers)
    sink = StringIO()
    console = Console(file=sink, width=200, force_terminal=False)
    with logs_through(console) as handler:
        handler.setFormatter(formatter("text"))
        logging.getLogger("rtem.test").warning("page for [auth-1]: restart it")
    assert root.handlers == before
    [line] = sink.getvalue().splitlines()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING rtem\.test: page for \[auth-1\]: restart it",
                        line), line


# -- integration: `rtem demo` itself --------------------------------------------------------------


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")}
    return {**env, "TERM": "xterm-256color", "PYTHONUNBUFFERED": "1"}


def _run_on_a_terminal(args: list[str], columns: int, rows: int, timeout_s: float = 120) -> tuple[int, bytes]:
    """Run `args` with stdin, stdout and stderr on a pseudo-terminal of `columns` x `rows`."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=_env(), cwd=os.getcwd(),
                            start_new_session=True)
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every writer closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        else:
            pytest.fail(f"`{' '.join(args)}` did not finish in {timeout_s}s; last output: {bytes(out[-2000:])!r}")
        return proc.wait(timeout=30), bytes(out)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)


def _transcript(output: bytes, columns: int, rows: int) -> list[str]:
    """Every line the terminal showed, scrolled-away ones first, as an emulator renders the bytes."""
    pyte = pytest.importorskip("pyte")
    screen = pyte.HistoryScreen(columns, rows, history=10_000, ratio=0.5)
    screen.set_mode(pyte.modes.LNM)  # the pty turns \n into \r\n on output (onlcr); keep that behaviour
    pyte.ByteStream(screen).feed(output)
    scrolled = ["".join(line[x].data for x in range(columns)) for line in screen.history.top]
    return [line.rstrip() for line in scrolled + screen.display]


@pytest.mark.integration
def test_the_live_view_at_100x30_shows_one_header_whole_statuses_and_verdicts(tmp_path):
    columns, rows = 100, 30
    code, output = _run_on_a_terminal(DEMO + ["--data-dir", str(tmp_path / "demo")], columns, rows)
    lines = _transcript(output, columns, rows)
    text = "\n".join(lines)
    assert code == 0, text[-3000:]
    assert b"\x1b[" in output, "a terminal gets the live display"
    headers = [n for n, line in enumerate(lines) if line.startswith(HEADER)]
    assert len(headers) == 1, f"the header must be drawn once, not left behind on every redraw:\n{text}"
    frame = lines[headers[0]:lines.index("rtem demo: summary") if "rtem demo: summary" in lines else None]
    flat = " ".join(" ".join(frame).split())
    assert "faults: partial-outage resolved db-connection-exhaustion resolved" in flat, \
        "the fault line wraps between words, never cut or split inside one:\n" + "\n".join(frame)
    shown = "\n".join(frame)
    assert _outcomes(frame, "restart_instance") == ["allowed → done"], shown
    assert _outcomes(frame, "failover_database") == ["needs approval → done"], shown
    assert _outcomes(frame, "notify_oncall") == ["allowed → done"] * 2, shown
    with sqlite3.connect(tmp_path / "demo" / "rtem.db") as db:
        ids = [r[0] for r in db.execute("SELECT id FROM incidents WHERE status != 'merged'")]
    assert len(ids) == 2 and all(id_ in flat for id_ in ids), (ids, frame)
    assert not any(re.search(r"\[\d\d:\d\d:\d\d\]", line) for line in lines), "one log format, no console.log"


@pytest.mark.integration
def test_a_piped_demo_prints_plain_progress_lines(tmp_path):
    proc = subprocess.run(DEMO + ["--data-dir", str(tmp_path / "demo")], capture_output=True, env=_env(),
                          timeout=150)
    both = proc.stdout + proc.stderr
    assert proc.returncode == 0, both.decode()[-3000:]
    assert b"\x1b" not in both, "no escape codes in a file or a pipe"
    progress = [line for line in proc.stderr.decode().splitlines() if re.match(r"\[\s*\d+\.\d+s\] ", line)]
    assert any(re.search(r"inc-[0-9a-f]{12} resolved · cause auth-1 .* restart_instance auth-1: allowed → done", line)
               for line in progress), progress
    assert any("waiting for the operator to approve failover_database orders-db" in line for line in progress), progress
    for fault in ("partial-outage on auth-1: resolved", "db-connection-exhaustion on orders-db: resolved"):
        assert sum(line.endswith(fault) for line in progress) == 1, f"one line per change: {fault}\n{progress}"
    bodies = [line.split("] ", 1)[1] for line in progress]
    assert all(a != b for a, b in zip(bodies, bodies[1:])), "a line only when something changed"
