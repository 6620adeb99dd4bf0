"""The disruptions `rtem demo` injects into the simulated system, and what each one looks like.

A `Scenario` is data: what it injects, on which entity, when, and which remediation fixes it. How a
fault shows up in telemetry is a `FaultModel`, one per kind (`_models.py`).

`Scenario.expected_outcome` is the guard verdict the fix meets under the default guardrails:
"allow" (the agent acts on its own) or "require_approval" (a person must approve).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

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

