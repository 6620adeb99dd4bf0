"""A real Alertmanager (Debian's `prometheus-alertmanager`) for tests, and the small HTTP receiver its webhook
(and rtem's direct notifiers) post to.

    with Receiver() as hook, Alertmanager(tmp_path, hook.url) as am:   # skips when the binary is missing
        ... post alerts to am.url ...
        hook.wait_for(lambda posts: any(p["status"] == "resolved" for p in posts))
        am.silence({"incident": "inc-1"})

Alertmanager runs on a free port with clustering off (`--cluster.listen-address=`), its own storage dir and a
config with short timers (group_wait 1 s, group_interval 2 s, repeat_interval 1 h: a firing group is
notified once, its resolution once), routing everything to one webhook receiver with `send_resolved: true`.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

ALERTMANAGER = "/usr/bin/prometheus-alertmanager"

# What a receiver answers: (HTTP status, body). Given the path, headers and raw body of one POST.
Answer = Callable[[str, dict[str, str], bytes], tuple[int, bytes]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def binary() -> str:
    """The Alertmanager binary, or the test is skipped saying how to get it."""
    found = shutil.which(ALERTMANAGER) or shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if not found:
        pytest.skip("prometheus-alertmanager is not installed (apt-get install prometheus-alertmanager)")
    return found


class Receiver:
    """An HTTP server on a free port that records every POST (path, headers, raw body, JSON) and answers
    with `answer` (default 200 `{"ok": true}`): a webhook receiver, a stand-in PagerDuty or Slack."""

    def __init__(self, answer: Answer | None = None):
        self.answer = answer or (lambda path, headers, body: (200, b'{"ok": true}'))
        self.requests: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = dict(self.headers.items())
                status, reply = receiver.answer(self.path, headers, body)
                with receiver._cond:
                    receiver.requests.append({"path": self.path, "headers": headers, "body": body,
                                              "json": _json(body), "status": status})
                    receiver._cond.notify_all()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def posts(self) -> list[Any]:
        """The JSON bodies received so far, in order."""
        with self._cond:
            return [r["json"] for r in self.requests]

    def wait_for(self, predicate: Callable[[list[Any]], bool], timeout: float = 10.0, what: str = "") -> list[Any]:
        """Wait until `predicate(posts)` holds; AssertionError with what was received if it never does."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate([r["json"] for r in self.requests]):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"receiver at {self.url}: {what or 'expected posts'} did not arrive within "
                                         f"{timeout} s; received {[r['json'] for r in self.requests]}")
                self._cond.wait(left)
            return [r["json"] for r in self.requests]

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def config(webhook_url: str, group_by: tuple[str, ...] = ("alertname", "service")) -> str:
    """An alertmanager.yml with short timers and one webhook receiver that is also told of resolutions."""
    return json.dumps({  # JSON is YAML
        "route": {"receiver": "rtem-test", "group_by": list(group_by), "group_wait": "1s",
                  "group_interval": "2s", "repeat_interval": "1h"},
        "receivers": [{"name": "rtem-test",
                       "webhook_configs": [{"url": webhook_url, "send_resolved": True, "max_alerts": 0}]}],
    }, indent=2)


class Alertmanager:
    """A real Alertmanager process; `url` is its base URL. Use as a context manager: it stops cleanly."""

    def __init__(self, directory: Path, webhook_url: str, group_by: tuple[str, ...] = ("alertname", "service")):
        self.directory = Path(directory) / "alertmanager"
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "alertmanager.yml").write_text(config(webhook_url, group_by))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self, timeout: float = 15.0) -> Alertmanager:
        self._log = open(self.directory / "alertmanager.log", "wb")
        self.proc = subprocess.Popen(
            [binary(), f"--config.file={self.directory / 'alertmanager.yml'}",
             f"--storage.path={self.directory / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
             "--cluster.listen-address=", "--log.level=warn"],
            stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"alertmanager exited {self.proc.returncode}: {self.log_text()}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"alertmanager did not get ready within {timeout} s: {self.log_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_text(self) -> str:
        path = self.directory / "alertmanager.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def silence(self, labels: dict[str, str], minutes: float = 10, comment: str = "test") -> str:
        """A silence through the v2 API matching `labels` exactly, from now on; its id."""
        now = datetime.now(timezone.utc)
        response = httpx.post(f"{self.url}/api/v2/silences", timeout=5.0, json={
            "matchers": [{"name": k, "value": v, "isRegex": False, "isEqual": True} for k, v in labels.items()],
            "startsAt": now.isoformat(), "endsAt": (now + timedelta(minutes=minutes)).isoformat(),
            "createdBy": "rtem tests", "comment": comment})
        response.raise_for_status()
        return response.json()["silenceID"]

    def alerts(self, **filters: str) -> list[dict[str, Any]]:
        """The alerts Alertmanager holds (v2 API), with their `status.state` (active, suppressed)."""
        params = [("filter", f'{k}="{v}"') for k, v in filters.items()]
        response = httpx.get(f"{self.url}/api/v2/alerts", params=params, timeout=5.0)
        response.raise_for_status()
        return response.json()

    def __enter__(self) -> Alertmanager:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def incident_row(incident_id: str, *, status: str = "awaiting_approval", severity: str = "critical",
                 entity: str = "cart-0", fault_type: str = "cpu_saturation",
                 opened_at: str = "2026-01-05T10:00:00Z") -> dict[str, Any]:
    """An incident as `IncidentStore.incident` returns it (decoded), diagnosed, with one action done and one
    awaiting approval: what the notifiers are given."""
    return {"id": incident_id, "opened_at": opened_at, "updated_at": opened_at, "first_ts": 0.0, "last_ts": 60.0,
            "status": status, "severity": severity, "entities": [entity], "detections": ["cpu-high"],
            "signal_count": 2, "event_count": 5, "merged_into": None, "versions": {}, "diagnosed_at": opened_at,
            "mttr_s": None, "resolution": None,
            "root_causes": [{"entity": entity, "fault_type": fault_type, "confidence": 0.9, "evidence": ["e1"],
                             "explanation": "CPU at 98% for 5 minutes"}],
            "actions": [
                {"index": 0, "type": "notify_oncall", "target": incident_id, "verdict": "allow", "status": "done"},
                {"index": 1, "type": "restart_pod", "target": entity, "verdict": "require_approval",
                 "status": "awaiting_approval", "approver_role": "sre"}]}
