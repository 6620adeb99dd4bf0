"""The simulated distributed system `rtem demo` runs, disrupts and lets rtem remediate."""

from ._clock import SimClock
from ._models import FaultModel, malformed_lines
from ._nats import settle_subscriptions
from ._telemetry import Outgoing
from ._world import World
from .scenarios import (SCENARIOS, Emission, Fix, Scenario, bad_deploy, consumer_backlog, db_exhaustion, demo_plan,
                        host_failure, instance_crash, malformed_burst)
from .sim import TOPOLOGY_PATH, CommandFault, Fault, Simulation

__all__ = [
    "SCENARIOS", "TOPOLOGY_PATH", "CommandFault", "Emission", "Fault", "FaultModel", "Fix", "Outgoing", "Scenario",
    "SimClock", "Simulation", "World", "bad_deploy", "consumer_backlog", "db_exhaustion", "demo_plan",
    "host_failure", "instance_crash", "malformed_burst", "malformed_lines", "settle_subscriptions",
]
