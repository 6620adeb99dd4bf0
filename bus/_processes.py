"""The embedded server's process lifetime: it dies with its parent where the OS allows it, a server
left on a data directory by a dead rtem is found and stopped, and a child is stopped gently first."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

log = logging.getLogger("rtem.bus")


class NatsServerError(RuntimeError):
    pass


def servers_for(data_dir: str | Path) -> list[psutil.Process]:
    """The nats-server processes running on `data_dir`: the one its pid file names, and any other whose
    command line (`-sd`) says it stores there; a pid file alone proves nothing, the pid may be reused."""
    store = _store_dir(Path(data_dir))
    candidates = {proc.pid: proc for proc in psutil.process_iter(["name"])
                  if (proc.info["name"] or "").startswith("nats-server")}
    try:
        named = int((Path(data_dir) / "nats-server.pid").read_text().strip())
        candidates.setdefault(named, psutil.Process(named))
    except (OSError, ValueError, psutil.Error):
        pass
    found = []
    for proc in candidates.values():
        try:
            cmdline, cwd = proc.cmdline(), proc.cwd()
        except psutil.Error:  # gone meanwhile, or another user's: not ours to stop
            continue
        sd = _flag(cmdline, "-sd")
        if cmdline and Path(cmdline[0]).name.startswith("nats-server") and sd and (Path(cwd) / sd).resolve() == store:
            found.append(proc)
    return found


def stop_orphans(data_dir: str | Path, timeout: float = 10.0) -> None:
    """Stop the servers left running on `data_dir` by a process that died: SIGTERM, then SIGKILL."""
    orphans = servers_for(data_dir)
    for proc in orphans:
        log.warning("stopping nats-server pid %d, left running on %s by an earlier rtem", proc.pid, data_dir)
        _signal(proc, signal.SIGTERM)
    for sig in (signal.SIGKILL, None):
        deadline = time.monotonic() + timeout
        while orphans and time.monotonic() < deadline:
            orphans = [proc for proc in orphans if not _gone(proc)]
            time.sleep(0.05)
        if not orphans:
            return
        if sig is None:
            raise NatsServerError(f"nats-server pid {orphans[0].pid} on {data_dir} does not stop; stop it by hand")
        for proc in orphans:
            log.warning("nats-server pid %d did not stop within %.0fs; killing it", proc.pid, timeout)
            _signal(proc, sig)


def _store_dir(data_dir: Path) -> Path:
    return data_dir.resolve() / "jetstream"


def _flag(cmdline: list[str], name: str) -> str | None:
    return next((cmdline[i + 1] for i, word in enumerate(cmdline[:-1]) if word == name), None)


def _signal(proc: psutil.Process, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except psutil.NoSuchProcess:
        pass


def _gone(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _exit_with_parent():
    """A `preexec_fn` that asks Linux to send the server SIGTERM when the thread starting it exits.

    Only from the main thread: Linux signals when the starting *thread* ends, and a worker thread may
    end long before the process. Elsewhere the lock and `stop_orphans` clean up after a crash.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child should only call it
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def set_death_signal() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)
    return set_death_signal


def terminate(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM a child process and wait for it; SIGKILL it when it does not stop within `timeout`."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
