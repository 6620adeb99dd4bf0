"""A real Prometheus for tests: Debian's /usr/bin/prometheus on a free port, scraping the given targets
every second, with its own storage in a temporary directory.

    with running_prometheus(["127.0.0.1:9101"], tmp_path) as prom:
        prom.url          # http://127.0.0.1:PORT
        prom.wait_for_series('rtem_shop_up')

Tests that use it skip, with the reason, where the binary is missing (`requires_prometheus`).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

PROMETHEUS = shutil.which("prometheus") or (p if Path(p := "/usr/bin/prometheus").exists() else None)
requires_prometheus = pytest.mark.skipif(
    PROMETHEUS is None, reason="Prometheus is not installed (Debian: apt-get install prometheus)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrometheusProcess:
    def __init__(self, proc: subprocess.Popen, url: str, log: Path):
        self.proc = proc
        self.url = url
        self.log = log

    def get(self, path: str, **params: str) -> dict:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=5) as response:
            return json.loads(response.read())

    def targets_up(self) -> bool:
        active = self.get("/api/v1/targets")["data"]["activeTargets"]
        return bool(active) and all(t["health"] == "up" for t in active)

    def wait_for_series(self, query: str, timeout: float = 15.0) -> list[dict]:
        """Wait until an instant `query` returns something (a scrape has landed); its result."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.get("/api/v1/query", query=query)["data"]["result"]
            if result:
                return result
            time.sleep(0.2)
        raise AssertionError(f"Prometheus at {self.url} has no {query!r} after {timeout:g}s; its log:\n{self.tail()}")

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""


@contextmanager
def running_prometheus(targets: Sequence[str], tmp_path: Path, *, interval: str = "1s", timeout: float = 20.0,
                       static_configs: Sequence[dict] | None = None, job: str = "test") -> Iterator[PrometheusProcess]:
    """Prometheus scraping `targets` (host:port, /metrics) every `interval` as job `job` — or, with
    `static_configs`, those (targets with labels of their own) — ready and with every target up; stopped
    (SIGTERM, then SIGKILL) on the way out."""
    if PROMETHEUS is None:
        pytest.skip("Prometheus is not installed (Debian: apt-get install prometheus)")
    home = tmp_path / f"prometheus-{free_port()}"
    home.mkdir()
    config = home / "prometheus.yml"
    config.write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [{"job_name": job,
                            "static_configs": list(static_configs or [{"targets": list(targets)}])}]}))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = home / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={home / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=out, stderr=subprocess.STDOUT)
    prom = PrometheusProcess(proc, url, log)
    try:
        _wait(prom, timeout)
        yield prom
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _wait(prom: PrometheusProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if prom.proc.poll() is not None:
            raise AssertionError(f"Prometheus exited with {prom.proc.returncode}:\n{prom.tail()}")
        try:
            if prom.targets_up():
                return
        except OSError:
            pass  # not listening yet
        time.sleep(0.2)
    raise AssertionError(f"Prometheus at {prom.url} was not ready with its targets up within {timeout:g}s:\n"
                         f"{prom.tail()}")
