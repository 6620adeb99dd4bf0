"""What the simulated shop reports: routine health and metric samples, stamped as CloudEvents.

Every entity that runs (instances, hosts, databases, queues; services do not) reports its health and
a metric sample each tick; gauges vary by ±10% around a baseline drawn once per entity. `Reporter.event`
turns any `Emission`, a fault's symptoms included, into the message published to JetStream.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bus import format_time
from bus._streams import event_subject
from rules import Topology

from ._clock import SimClock
from ._world import World
from .scenarios import Emission

TELEMETRY_TYPES = ("instance", "host", "database", "queue")  # entities that run and report; services don't
_FIXED_GAUGES = frozenset({"connections_max", "consumers"})  # configuration, not measurements: no noise


@dataclass(frozen=True)
class Outgoing:
    """One message for JetStream; `event` is the CloudEvent it carries (None for malformed lines)."""

    subject: str
    data: bytes
    headers: dict[str, str]
    event: dict[str, Any] | None = None


class Reporter:
    """Makes the routine telemetry of the world's entities and stamps events with ids and sim-clock times.

    `run` is in every event id, so ids stay unique across runs on one server."""

    def __init__(self, topology: Topology, world: World, clock: SimClock, run: str):
        self.topology = topology
        self.world = world
        self.clock = clock
        self.run = run
        self.entities = [e.id for e in topology.entities if e.type in TELEMETRY_TYPES]
        self._baseline = {e: _baseline(topology.entity_type(e), world.rng) for e in self.entities}
        self._seq = 0

    def health(self, entity: str, failing: bool) -> Emission:
        status = "failing" if failing else "ok"
        attributes = {"status": status, **self._place(entity)}
        if entity in self.world.drained:
            attributes["cordoned"] = True  # a drained host is back, but takes no new workloads
        return Emission("rtem.health", entity, "error" if failing else "info",
                        f"health check {status} on {entity}", attributes)

    def sample(self, entity: str, faulty: Mapping[str, float]) -> Emission:
        """A metric sample: the baseline with noise, then the gauges active faults set (`faulty`)."""
        rng = self.world.rng
        gauges = {name: value if name in _FIXED_GAUGES else round(value * rng.uniform(0.9, 1.1), 3)
                  for name, value in self._baseline[entity].items()}
        gauges.update(faulty)
        if entity in self.world.primary:
            gauges["primary"] = self.world.primary[entity]
        if self.topology.entity_type(entity) == "instance":
            gauges["replicas"] = self.world.replicas[self.topology.service_of(entity)]
        return Emission("rtem.metric.sample", entity, "info", f"metrics of {entity}", {**self._place(entity), **gauges})

    def event(self, t: float, emission: Emission) -> Outgoing:
        """`emission` as a CloudEvent at `t` event seconds, with the next event id."""
        self._seq += 1
        event_id = f"demo-{self.run}-{self._seq:07d}"
        origin = emission.attributes.get("caller") if emission.type == "rtem.trace.anomaly" else emission.subject
        event = {
            "specversion": "1.0", "id": event_id, "source": f"/demo/{self.topology.service_of(str(origin))}",
            "type": emission.type, "time": format_time(self.clock.at(t)), "subject": emission.subject,
            "datacontenttype": "application/json",
            "data": {"severity": emission.severity, "message": emission.message,
                     "attributes": dict(emission.attributes)},
        }
        return Outgoing(event_subject(emission.type), json.dumps(event).encode(), {"Nats-Msg-Id": event_id}, event)

    def _place(self, entity: str) -> dict[str, str]:
        place = {"host.name": self.world.host_of(entity) or entity}
        if self.topology.entity_type(entity) == "instance":
            place.update({"service.name": self.topology.service_of(entity), "service.instance.id": entity})
        return place


def _baseline(entity_type: str | None, rng: random.Random) -> dict[str, float]:
    """An entity's normal gauges; each sample varies them by ±10%."""
    if entity_type == "instance":
        return {"cpu_pct": rng.uniform(15, 35), "mem_pct": rng.uniform(35, 55),
                "error_rate": rng.uniform(0.001, 0.004), "latency_ms": rng.uniform(20, 60)}
    if entity_type == "host":
        return {"cpu_pct": rng.uniform(20, 40), "mem_pct": rng.uniform(40, 60), "load1": rng.uniform(0.5, 2.0)}
    if entity_type == "database":
        return {"connections_in_use": rng.uniform(20, 35), "connections_max": 100,
                "replica_lag_s": rng.uniform(0.1, 0.5), "query_latency_ms": rng.uniform(2, 6)}
    if entity_type == "queue":
        return {"depth": rng.uniform(5, 30), "consumers": 2}
    return {}
