"""The simulated distributed system `rtem demo` runs, disrupts and lets rtem remediate."""

from .scenarios import (SCENARIOS, Emission, FaultModel, Fix, Scenario, bad_deploy, consumer_backlog, db_exhaustion,
                        demo_plan, host_failure, instance_crash, malformed_burst, malformed_lines)
from .sim import TOPOLOGY_PATH, CommandFault, Fault, Outgoing, SimClock, Simulation, World, settle_subscriptions

__all__ = [
    "SCENARIOS", "TOPOLOGY_PATH", "CommandFault", "Emission", "Fault", "FaultModel", "Fix", "Outgoing", "Scenario",
    "SimClock", "Simulation", "World", "bad_deploy", "consumer_backlog", "db_exhaustion", "demo_plan",
    "host_failure", "instance_crash", "malformed_burst", "malformed_lines", "settle_subscriptions",
]
