"""`rtem demo`: the whole service against a simulated shop, with disruptions injected.

Embedded NATS, SQLite, the deterministic reasoner (or the configured LLM), the real guard and
executors: nothing is mocked. The simulation publishes telemetry on the simulated clock and obeys
commands over NATS. An operator's approvals are granted by the demo itself, visibly, after a pause.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from bus import RTEM_USER
from rules import Topology

from ..config import Settings
from ..approvals import awaiting, decide
from ..incident import DecisionRefused
from ..driving import FINAL
from ..report_wording import split_reasons
from ..run import Service
from ._live import DemoView, choose_mode, log
from ._prometheus import ShopExporter
from ._status import Timeline, build_frame
from .scenarios import SCENARIOS, demo_plan
from .sim import Simulation

OPERATOR = "demo-operator"
_metrics_log = logging.getLogger("rtem.demo.prometheus")
_metrics_log.setLevel(logging.INFO)  # the address is what the option is for: shown whatever the log level


@dataclass
class DemoResult:
    ok: bool
    incidents: list[dict[str, Any]]
    faults: list[dict[str, Any]]
    dead_letters: int
    approvals: list[str]
    data_dir: Path
    wall_s: float
    reasons: list[str] = field(default_factory=list)
    applied: list[tuple] = field(default_factory=list)
    sim_start: float = 0.0
    commands: int = 0
    audit: list[dict[str, Any]] = field(default_factory=list)


async def run_demo(*, speed: float = 10.0, scenarios: list[str] | None = None, data_dir: Path | None = None,
                   approve_after_s: float = 3.0, timeout_s: float = 170.0, settings: Settings | None = None,
                   console: Console | None = None, live: bool = True, plan: list | None = None,
                   prometheus_port: int | None = None) -> DemoResult:
    """Run the demo; `live` shows its progress on `console` (a live display on a terminal, plain lines
    otherwise; see `_live.py`), False shows nothing."""
    console = console or Console(stderr=True)
    data_dir = Path(data_dir or tempfile.mkdtemp(prefix="rtem-demo-"))
    sim = Simulation(speed=speed)
    topology_file = sim.topology_path
    base = settings or Settings()
    settings = base.model_copy(update={
        "data_dir": data_dir, "nats_url": None, "topology": topology_file,
        "diagnose_after_s": 20.0, "verify_quiet_s": 60.0, "verify_deadline_s": 900.0,
        # The simulation's event time runs `speed` times faster than the wall clock, so its events are
        # dated ahead of the moment they are consumed by design; only a clock beyond that is refused.
        "max_clock_skew_s": max(base.max_clock_skew_s, timeout_s * speed)})
    service = Service(settings, Topology.load(topology_file), poll_s=0.2)
    started = time.monotonic()
    approvals: list[str] = []
    asked: dict[str, float] = {}
    exporter = ShopExporter(sim.topology) if prometheus_port is not None else None
    await service.start()
    try:
        await sim.start(_shop_url(service))
        if exporter is not None:  # the shop's telemetry for a Prometheus to scrape (docs/integrations.md)
            await exporter.follow(_shop_url(service))
            _metrics_log.info("the shop's metrics: http://127.0.0.1:%s/metrics", exporter.serve(prometheus_port))
        if plan is None:
            plan = demo_plan() if not scenarios else [SCENARIOS[name].at(30 + 20 * i) for i, name in enumerate(scenarios)]
        faults = [sim.inject(scenario) for scenario in plan]
        timeline = Timeline(speed=sim.clock.speed, offset_s=time.monotonic() - started - sim.clock.elapsed() / speed,
                            start=sim.clock.start)
        with DemoView(console, choose_mode(console, live)) as view:
            while (elapsed := time.monotonic() - started) < timeout_s:
                incidents = service.parts.store.incidents()
                _approve(service, incidents, asked, elapsed, approve_after_s, approvals)
                view.update(build_frame(wall_s=elapsed, sim_now_s=sim.clock.elapsed(), timeline=timeline,
                                        incidents=incidents, faults=faults, approvals=len(approvals), asked=asked,
                                        approve_after_s=approve_after_s, verify_quiet_s=settings.verify_quiet_s,
                                        diagnose_after_s=settings.diagnose_after_s))
                if _finished(sim, faults, incidents):
                    break
                await asyncio.sleep(0.25)
        letters = len(await service.bus.dead_letters())
        incidents = service.parts.store.incidents()
        reasons = _problems(sim, faults, incidents)
        return DemoResult(ok=not reasons, incidents=incidents, faults=[_fault_row(f) for f in faults],
                          dead_letters=letters, approvals=approvals, data_dir=data_dir,
                          wall_s=time.monotonic() - started, reasons=reasons, applied=list(sim.applied),
                          sim_start=sim.clock.start.timestamp(), commands=len(sim.commands),
                          audit=[r.model_dump(mode="json") for r in service.parts.audit.records()])
    finally:
        if exporter is not None:
            await exporter.stop()
        await sim.stop()
        await service.stop()


def _shop_url(service: Service) -> str:
    """Where the simulated shop connects, with its credentials in the URL (the simulation takes a URL).

    It connects as rtem's own user: it stands in for every producer and target at once and reads the
    DLQ, which no single restricted user may (docs/nats.md)."""
    auth = service.server.credentials(RTEM_USER) if service.server else None
    if auth is None:
        return service.url
    return service.url.replace("://", f"://{auth.user}:{auth.password}@", 1)


def _approve(service: Service, incidents, asked: dict[str, float], elapsed: float, after_s: float,
             approvals: list[str]) -> None:
    """Do what an on-call operator would: read the request, wait a moment, approve it.

    `asked` maps an incident to the wall second (of the demo) the operator first saw its request."""
    for row in incidents:
        if row["status"] != "awaiting_approval":
            continue
        first_seen = asked.setdefault(row["id"], elapsed)
        if elapsed - first_seen < after_s:
            continue
        for action in awaiting(row):
            try:  # the same decide() as `rtem approve` and the console
                decide(service.parts.store, service.parts.ledger, service.parts.audit, row["id"], action.index,
                       approve=True, by=OPERATOR, reason="demo: the operator read the rationale and agreed",
                       via="demo", policy=service.parts.graph.deps.policy)
            except DecisionRefused:
                continue  # decided already, or it stopped waiting meanwhile
            label = f"{action.type} on {action.target} ({row['id']})"
            if label not in approvals:
                approvals.append(label)
                log.info("approves %s: %s", label, "; ".join(split_reasons(action.reason)))


def _finished(sim: Simulation, faults, incidents) -> bool:
    return (all(f.resolved for f in faults) and bool(incidents)
            and all(row["status"] in FINAL for row in incidents))


def _problems(sim: Simulation, faults, incidents) -> list[str]:
    problems = [f"{f.id} is {f.status}" for f in faults if not f.resolved]
    problems += [f"{row['id']} ended {row['status']}: {row.get('resolution') or ''}".strip()
                 for row in incidents if row["status"] not in ("resolved",)]
    if not incidents:
        problems.append("no incident was detected")
    if not sim.healthy():
        problems.append("the simulated system is not healthy")
    return problems


def _fault_row(fault) -> dict[str, Any]:
    return {"id": fault.id, "scenario": fault.scenario.name, "target": fault.scenario.target,
            "status": fault.status, "fixed_by": list(fault.fixed_by) if fault.fixed_by else None,
            "began_s": fault.began_s, "fixed_s": fault.fixed_s, "resolved_s": fault.resolved_s}
