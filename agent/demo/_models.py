"""What each kind of fault looks like in the simulated shop's telemetry: one `FaultModel` per kind.

A model says which entities report failing health or go silent, which gauges move, and which anomaly,
log and trace events the system emits while the fault lasts. The symptoms are written for rtem's
detection rules and its deterministic reasoner: metric names use the words the reasoner's catalog
knows (error_rate, cpu, latency, process_restarts, network), the faulty entity is the only one whose
health fails, and its callers only report trace anomalies, so the evidence points at the cause the
scenario names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .scenarios import Emission, Scenario

if TYPE_CHECKING:  # the world is the simulation's state; only its read API is used here
    from ._world import World


class FaultModel:
    """The telemetry of one kind of fault. `elapsed` is event time since the fault began."""

    def begin(self, scenario: Scenario, world: World) -> list[Emission]:
        """Events published once when the fault begins (a deployment announcement, say)."""
        return []

    def symptoms(self, scenario: Scenario, world: World, elapsed: float) -> list[Emission]:
        """Anomaly, log and trace events for one tick while the fault lasts."""
        return []

    def failing(self, scenario: Scenario, world: World, elapsed: float) -> set[str]:
        """Entities whose health check fails."""
        return set()

    def silent(self, scenario: Scenario, world: World, elapsed: float) -> set[str]:
        """Entities that send nothing at all, not even heartbeats."""
        return set()

    def gauges(self, scenario: Scenario, world: World, entity: str, elapsed: float) -> dict[str, float]:
        """Metric sample values that differ from the entity's normal ones."""
        return {}


def anomaly(entity: str, metric: str, host: str | None, *, severity: str = "warning",
            direction: str = "up", value: float | None = None) -> Emission:
    detail = f" = {value:g}" if value is not None else ""
    return Emission("rtem.metric.anomaly", entity, severity, f"{metric} anomalous ({direction}) on {entity}{detail}",
                    {"metric": metric, "direction": direction, "host.name": host or ""})


def error_log(entity: str, message: str, host: str | None, service: str) -> Emission:
    return Emission("rtem.log", entity, "error", message,
                    {"host.name": host or "", "service.name": service, "log.level": "ERROR"})


def trace_anomaly(caller: str, callee: str, operation: str, code: str) -> Emission:
    what = "latency degradation" if code == "PD" else f"status {code}"
    return Emission("rtem.trace.anomaly", callee, "warning", f"{caller} -> {callee} {operation}: {what}",
                    {"caller": caller, "callee": callee, "operation": operation, "anomaly": code})


def caller_traces(world: World, service: str, callees: list[str], operation: str, code: str) -> list[Emission]:
    """Every live instance of every caller of `service` sees the trouble on every callee."""
    return [trace_anomaly(caller, callee, operation, code)
            for caller in world.caller_instances(service) for callee in callees]


class BadDeploy(FaultModel):
    def begin(self, scenario, world):
        service, version, previous = scenario.target, scenario.params["version"], scenario.params["previous"]
        world.deploy(service, version, previous)
        return [Emission("rtem.change.deploy", service, "info", f"{service} deployed {version} (was {previous})",
                         {"version": version, "previous_version": previous, "service.name": service,
                          "deployment.id": f"{service}-{version}"})]

    def _erroring(self, scenario, elapsed) -> bool:
        return elapsed >= scenario.params["errors_after_s"]

    def symptoms(self, scenario, world, elapsed):
        if not self._erroring(scenario, elapsed):
            return []
        service, version = scenario.target, scenario.params["version"]
        instances = world.live_instances(service)
        found = [anomaly(i, "error_rate", world.host_of(i), severity="error") for i in instances]
        found += [error_log(i, f"GET /products/{world.rng.randint(1, 999)} failed: TypeError: 'NoneType' object "
                               f"is not subscriptable (release {version})", world.host_of(i), service)
                  for i in instances]
        return found + caller_traces(world, service, instances, f"GET /{service}/products", "500")

    def failing(self, scenario, world, elapsed):
        return set(world.live_instances(scenario.target)) if self._erroring(scenario, elapsed) else set()

    def gauges(self, scenario, world, entity, elapsed):
        erroring = self._erroring(scenario, elapsed) and world.service_of(entity) == scenario.target
        return {"error_rate": 0.42} if erroring and entity != scenario.target else {}


class DbExhaustion(FaultModel):
    def symptoms(self, scenario, world, elapsed):
        db, owner, limit = scenario.target, scenario.params["owner"], scenario.params["max_connections"]
        host = world.host_of(db)
        found = [anomaly(db, "connections_in_use", host, severity="error", value=limit),
                 anomaly(db, "query_latency_ms", host, value=850)]
        owners = world.live_instances(owner)
        found += [error_log(i, f"could not acquire a connection to {db}: pool exhausted ({limit}/{limit} in use)",
                            world.host_of(i), owner) for i in owners]
        found += [trace_anomaly(i, db, "SQL INSERT orders", "500") for i in owners]
        return found + caller_traces(world, owner, owners, f"POST /{owner}", "500")

    def failing(self, scenario, world, elapsed):
        return {scenario.target}

    def gauges(self, scenario, world, entity, elapsed):
        if entity != scenario.target:
            return {}
        return {"connections_in_use": scenario.params["max_connections"], "query_latency_ms": 850.0}


class InstanceCrash(FaultModel):
    def symptoms(self, scenario, world, elapsed):
        instance = scenario.target
        service, host = world.service_of(instance), world.host_of(instance)
        found = [anomaly(instance, "process_restarts", host, severity="error"),
                 error_log(instance, f"{service} worker exited with code 137; restarted by supervisor", host, service)]
        return found + caller_traces(world, service, [instance], f"POST /{service}/verify", "503")

    def failing(self, scenario, world, elapsed):
        return {scenario.target}

    def gauges(self, scenario, world, entity, elapsed):
        return {"error_rate": 0.65, "cpu_pct": 4.0} if entity == scenario.target else {}


class ConsumerBacklog(FaultModel):
    """Depth grows by `DEPTH_RATE` messages per second; processing latency drifts up 2% per second."""

    DEPTH_RATE = 40.0

    def symptoms(self, scenario, world, elapsed):
        service, queue = scenario.target, scenario.params["queue"]
        depth = self._depth(elapsed)
        found = [anomaly(queue, "queue_depth", world.host_of(queue),
                         severity="error" if depth > 2000 else "warning", value=depth)]
        for i in world.live_instances(service):
            found.append(anomaly(i, "cpu_pct", world.host_of(i), severity="error", value=97))
            found.append(anomaly(i, "processing_latency_ms", world.host_of(i), value=round(self._latency(elapsed))))
        return found

    def failing(self, scenario, world, elapsed):
        return set(world.live_instances(scenario.target))

    def gauges(self, scenario, world, entity, elapsed):
        if entity == scenario.params["queue"]:
            return {"depth": self._depth(elapsed)}
        if world.service_of(entity) == scenario.target and entity != scenario.target:
            return {"cpu_pct": 97.0, "latency_ms": round(self._latency(elapsed), 1)}
        return {}

    def _depth(self, elapsed: float) -> float:
        return round(50 + self.DEPTH_RATE * elapsed)

    @staticmethod
    def _latency(elapsed: float) -> float:
        return 120.0 * (1 + 0.02 * elapsed)


class HostFailure(FaultModel):
    def _dark(self, scenario, elapsed) -> bool:
        return elapsed >= scenario.params["precursor_s"]

    def symptoms(self, scenario, world, elapsed):
        host = scenario.target
        if not self._dark(scenario, elapsed):
            return [anomaly(host, "node_network_receive_errs", host, severity="error", value=1800)]
        found = []
        for service, instances in world.residents_by_service(host).items():
            found += caller_traces(world, service, instances, f"GET /{service}", "503")
        return found

    def silent(self, scenario, world, elapsed):
        if not self._dark(scenario, elapsed):
            return set()
        return {scenario.target, *world.residents(scenario.target)}

    def gauges(self, scenario, world, entity, elapsed):
        return {"net_rx_errors_per_s": 1800.0} if entity == scenario.target else {}


class MalformedBurst(FaultModel):
    """Published as raw lines by the simulation (see `malformed_lines`); no telemetry of its own."""


MODELS: dict[str, FaultModel] = {
    "bad_deploy": BadDeploy(), "db_exhaustion": DbExhaustion(), "instance_crash": InstanceCrash(),
    "consumer_backlog": ConsumerBacklog(), "host_failure": HostFailure(), "malformed_burst": MalformedBurst(),
}


def malformed_lines(token: str, count: int) -> list[bytes]:
    """`count` records rtem must refuse, each carrying `token` and its index so its dead letter can be
    matched to it: not JSON, not an object, fields missing, a bad severity, a bad time, bad UTF-8."""
    makers = (
        lambda tag: f"ERROR {tag} payment gateway said: <html>502 Bad Gateway</html>".encode(),
        lambda tag: f'["{tag}", "an array, not an object"]'.encode(),
        lambda tag: (f'{{"specversion": "1.0", "id": "{tag}", "source": "/demo/legacy-exporter", '
                     f'"type": "rtem.log", "data": {{"severity": "error", "message": "no subject or time"}}}}'
                     ).encode(),
        lambda tag: (f'{{"specversion": "1.0", "id": "{tag}", "source": "/demo/legacy-exporter", "type": "rtem.log", '
                     f'"time": "2024-01-01T00:00:00Z", "subject": "orders-0", '
                     f'"data": {{"severity": "LOUD", "message": "bad severity"}}}}').encode(),
        lambda tag: (f'{{"specversion": "1.0", "id": "{tag}", "source": "/demo/legacy-exporter", "type": "rtem.log", '
                     f'"time": "yesterday at noon", "subject": "orders-0", '
                     f'"data": {{"severity": "error", "message": "bad time"}}}}').encode(),
        lambda tag: f'{{"id": "{tag}", "truncated": "record cut off mid-wri'.encode(),
        lambda tag: b"\xc3\x28 " + tag.encode() + b" latin-1 bytes \xe9t\xe9",
    )
    return [makers[i % len(makers)](f"{token}-{i}") for i in range(count)]
