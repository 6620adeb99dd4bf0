"""The disruptions `rtem demo` injects into the simulated system, and what each one looks like.

A `Scenario` is data: what it injects, on which entity, when, and which remediation fixes it. How a
fault shows up in telemetry is a `FaultModel`, one per kind: which entities report failing health or
go silent, which gauges move, and which anomaly, log and trace events the system emits while the fault
lasts. The symptoms are written for rtem's detection rules and its deterministic reasoner: metric names
use the words the reasoner's catalog knows (error_rate, cpu, latency, process_restarts, network), the
faulty entity is the only one whose health fails, and its callers only report trace anomalies, so the
evidence points at the cause the scenario names.

`Scenario.expected_outcome` is the guard verdict the fix meets under the default guardrails:
"allow" (the agent acts on its own) or "require_approval" (a person must approve).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # the world is the simulation's state; only its read API is used here
    from .sim import World

Kind = Literal["bad_deploy", "db_exhaustion", "instance_crash", "consumer_backlog", "host_failure",
               "malformed_burst"]
Outcome = Literal["allow", "require_approval"]

MALFORMED_SUBJECT = "rtem.events.demo"


@dataclass(frozen=True)
class Fix:
    """A remediation that clears a scenario: `action` (an action contract) on `target`."""

    action: str
    target: str

    def __str__(self) -> str:
        return f"{self.action} {self.target}"


@dataclass(frozen=True)
class Scenario:
    """One disruption: `kind` injected on `target`, `at_s` seconds of event time after `inject()`."""

    name: str
    kind: Kind
    target: str
    description: str
    fixes: tuple[Fix, ...] = ()
    expected_outcome: Outcome | None = None
    at_s: float = 0.0
    params: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def at(self, seconds: float) -> Scenario:
        """The same scenario, starting `seconds` of event time after it is injected."""
        return dataclasses.replace(self, at_s=float(seconds))

    def fixed_by(self, action: str, target: str) -> bool:
        return any(fix.action == action and fix.target == target for fix in self.fixes)


@dataclass(frozen=True)
class Emission:
    """One event the simulation will stamp with an id and the sim-clock time, then publish."""

    type: str
    subject: str
    severity: str
    message: str
    attributes: Mapping[str, Any]


# -- the scenarios --------------------------------------------------------------------------------


def bad_deploy(service: str = "catalog", version: str = "2.4.1", previous: str = "2.4.0",
               errors_after_s: float = 20.0) -> Scenario:
    return Scenario(
        name="bad-deploy", kind="bad_deploy", target=service,
        description=f"{service} {version} is deployed over {previous}; {errors_after_s:.0f} s later its "
                    "instances start failing requests (HTTP 500s, error logs, failing health).",
        fixes=(Fix("rollback_deploy", service),), expected_outcome="allow",
        params={"version": version, "previous": previous, "errors_after_s": errors_after_s},
    )


def db_exhaustion(database: str = "orders-db", owner: str = "orders", max_connections: int = 100) -> Scenario:
    # Fixed by failing over to the replica (fresh connection pool), not by restarting the pool's owner:
    # the demo needs at least one action that a person approves, and failover_database is high risk.
    return Scenario(
        name="db-connection-exhaustion", kind="db_exhaustion", target=database,
        description=f"{database} runs out of connections ({max_connections}/{max_connections} in use); "
                    f"{owner} cannot get one and fails its writes.",
        fixes=(Fix("failover_database", database),), expected_outcome="require_approval",
        params={"owner": owner, "max_connections": max_connections},
    )


def instance_crash(instance: str = "auth-1") -> Scenario:
    return Scenario(
        name="partial-outage", kind="instance_crash", target=instance,
        description=f"{instance} crash-loops (exit 137); its callers see 503s from it while the other "
                    "instances of its service stay healthy.",
        fixes=(Fix("restart_instance", instance),), expected_outcome="allow",
    )


def consumer_backlog(service: str = "fulfillment", queue: str = "orders-queue", replicas: int = 2) -> Scenario:
    return Scenario(
        name="consumer-backlog", kind="consumer_backlog", target=service,
        description=f"{service} cannot keep up with {queue}: its instances saturate their CPU, processing "
                    f"latency drifts upward and the queue depth grows until it has more than {replicas} replicas.",
        fixes=(Fix("scale_out", service),), expected_outcome="allow",
        params={"queue": queue, "replicas": replicas},
    )


def host_failure(host: str = "node-3", precursor_s: float = 10.0) -> Scenario:
    return Scenario(
        name="host-failure", kind="host_failure", target=host,
        description=f"{host}'s network interface fails: receive errors for {precursor_s:.0f} s, then the "
                    "host and every workload on it stop sending anything, heartbeats included.",
        fixes=(Fix("drain_host", host),), expected_outcome="require_approval",
        params={"precursor_s": precursor_s},
    )


def malformed_burst(count: int = 12) -> Scenario:
    return Scenario(
        name="malformed-records", kind="malformed_burst", target=MALFORMED_SUBJECT,
        description=f"A misconfigured producer publishes {count} malformed records to {MALFORMED_SUBJECT}; "
                    "it is resolved when rtem has dead-lettered every one of them (no remediation).",
        params={"count": count},
    )


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    bad_deploy(), db_exhaustion(), instance_crash(), consumer_backlog(), host_failure(), malformed_burst(),
)}


def demo_plan(second_wave_s: float = 600.0) -> list[Scenario]:
    """The default demo, with start times in event seconds after injection: two waves of disruptions.

    Within a wave the disruptions are apart in the topology, so each becomes its own incident. The
    waves must be apart in time instead: correlation joins signals of neighbouring entities less than
    300 s of event time apart, and the host failure on node-3 neighbours auth-1 and catalog-1 from the
    first wave. So the second wave should begin 300 s or more after the first wave's last symptom
    (its fixes plus `recovery_s`)."""
    first = [SCENARIOS["bad-deploy"].at(30), SCENARIOS["partial-outage"].at(45),
             SCENARIOS["db-connection-exhaustion"].at(60)]
    second = [SCENARIOS["consumer-backlog"].at(second_wave_s), SCENARIOS["host-failure"].at(second_wave_s + 20),
              SCENARIOS["malformed-records"].at(second_wave_s + 40)]
    return first + second


# -- what each kind of fault looks like -----------------------------------------------------------


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
