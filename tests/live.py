"""Helpers for tests of the live service: a target that obeys commands, events in event time."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta

from agent.config import Settings
from tests.helpers import T0


def settings(tmp_path, nats_server, **extra) -> Settings:
    """`rtem run`'s settings for a test: its own data directory, the test's NATS server, short waits."""
    return Settings(**{"data_dir": tmp_path / "data", "nats_url": nats_server.url, "diagnose_after_s": 5,
                       "verify_quiet_s": 30, "verify_deadline_s": 300, **extra})


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def anomaly(event_id: str, subject: str, seconds: float, metric: str = "container_cpu_usage_seconds") -> dict:
    return {"specversion": "1.0", "id": event_id, "source": "/test", "type": "rtem.metric.anomaly", "time": at(seconds),
            "subject": subject, "data": {"severity": "error", "message": f"{metric} anomalous (up) on {subject}",
                                         "attributes": {"metric": metric, "direction": "up"}}}


def sample(event_id: str, subject: str, seconds: float) -> dict:
    return {"specversion": "1.0", "id": event_id, "source": "/test", "type": "rtem.metric.sample", "time": at(seconds),
            "subject": subject, "data": {"severity": "info", "message": "ok", "attributes": {"cpu": 0.2}}}


def change(event_id: str, subject: str, seconds: float) -> dict:
    return {"specversion": "1.0", "id": event_id, "source": "/test", "type": "rtem.change.config", "time": at(seconds),
            "subject": subject, "data": {"severity": "info", "message": f"{subject} config: pool size 10 -> 2",
                                         "attributes": {"key": "pool_size"}}}


def lag(event_id: str, subject: str, seconds: float) -> dict:
    return {"specversion": "1.0", "id": event_id, "source": "/test", "type": "rtem.metric.sample", "time": at(seconds),
            "subject": subject, "data": {"severity": "info", "message": "replica lag", "attributes": {"replica_lag_s": 120}}}


class Target:
    """Answers rtem's commands like a real system would: applies each idempotency key once."""

    def __init__(self, fail: set[str] | None = None, silent: set[str] | None = None):
        self.applied: list[tuple[str, str, str]] = []
        self.answers: dict[str, dict] = {}
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.fail = fail or set()
        self.silent = silent or set()

    async def attach(self, nc) -> None:
        await nc.subscribe("rtem.cmd.>", cb=self._on_command)

    async def _on_command(self, msg) -> None:
        request = json.loads(msg.data)
        if request["action"] == "notify_oncall":
            return  # the service's own pager answers those
        self.requests.append(request)
        self.headers.append(dict(msg.headers or {}))
        if request["action"] in self.silent:
            return
        key = request["idempotency_key"]
        if key not in self.answers:
            if request["action"] in self.fail:
                self.answers[key] = {"ok": False, "error": f"{request['action']} failed on {request['target']}"}
            else:
                self.applied.append((key, request["action"], request["target"]))
                self.answers[key] = {"ok": True, "result": {"applied": True}}
        await msg.respond(json.dumps(self.answers[key]).encode())


async def publish(bus, events: list[dict]) -> None:
    await bus.publish_lines([json.dumps(e).encode() for e in events])


async def wait_for(predicate, timeout: float = 20.0, interval: float = 0.1, message=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s" + (f": {message()}" if message else ""))


class ThreadedService:
    """`rtem run`'s Service on its own event loop in a thread, for tests that talk to it over HTTP
    synchronously; the target that obeys commands runs on the same loop."""

    def __init__(self, settings, topology, **kwargs):
        import threading

        from agent.run import Service

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="rtem-service", daemon=True)
        self.service = Service(settings, topology, http=True, poll_s=0.05, **kwargs)
        self.target = Target()

    def call(self, coro, timeout: float = 60.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> "ThreadedService":
        self.thread.start()
        self.call(self.service.start())
        self.call(self.target.attach(self.service.bus.nc))
        return self

    def stop(self) -> None:
        try:
            self.call(self.service.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)

    @property
    def url(self) -> str:
        return self.service.http_url

    def wait(self, predicate, timeout: float = 30.0, interval: float = 0.1):
        return wait_until(predicate, timeout, interval=interval)


def serving_with_a_cpu_incident(data, topology, tokens: dict[str, tuple[str, str, tuple[str, ...]]]) -> ThreadedService:
    """A live `rtem run` (HTTP on a free port, data in `data`) with the API tokens `tokens` (key: the token's
    name, its role and the services it is scoped to) in `.tokens` by key, and `.incident`: a CPU fault on
    node-6, ingested over HTTP by the first token, waiting for approval of its drain. The caller stops it."""
    from agent.tokens import TokenStore

    service = ThreadedService(Settings(data_dir=data, diagnose_after_s=5, verify_quiet_s=30, verify_deadline_s=300,
                                       http_port=0), topology).start()
    store = TokenStore(data / "rtem.db")
    service.tokens = {key: store.create(name, role, services=services)[0]
                      for key, (name, role, services) in tokens.items()}
    service.db = data / "rtem.db"
    events = [anomaly(f"h{i}", "node-6", i, metric="system.cpu.pct_usage") for i in range(10)]
    with api_client(service, next(iter(tokens))) as http:
        batch = http.post("/api/v1/events", content=json.dumps(events),
                          headers={"content-type": "application/cloudevents-batch+json"})
        assert batch.status_code == 202, batch.text
        service.incident = service.wait(lambda: next(
            (i for i in http.get("/api/v1/incidents").json()["incidents"] if i["status"] == "awaiting_approval"), None))
    return service


def api_client(live, who: str | None = None, **kwargs):
    """An httpx client of a live service's API, as the token `live.tokens[who]` (or none)."""
    import httpx

    headers = {"authorization": f"Bearer {live.tokens[who]}"} if who else {}
    return httpx.Client(base_url=live.url, headers=headers, timeout=30, **kwargs)


def drain_action(live) -> dict:
    """The drain_host action of the live service's incident (the CPU fault on node-6)."""
    return next(a for a in live.incident["actions"] if a["type"] == "drain_host")


def stop_process(proc, timeout: float = 20.0) -> None:
    """SIGTERM a test's `rtem run` process and wait for it; SIGKILL when it does not stop in time."""
    from bus import terminate

    if proc is not None:
        terminate(proc, timeout)


def wait_until(predicate, timeout: float, message=None, interval: float = 0.05):
    """Poll `predicate` (synchronously) until it returns something true; AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"not within {timeout:g}s" + (f": {message()}" if message else ""))
