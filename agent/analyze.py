"""`rtem analyze`: replay recorded events through the same bus, rules and graph as `rtem run`.

The replay always uses an embedded NATS server (never a configured one: it resets its streams) and
dry-run execution. Each analysis gets fresh streams and a fresh store, so the same recording gives
the same incidents every time.

With `keep`, analyses add to one store (`workdir/run`) instead: earlier analyses' incidents, events and
decision records (confirmed causes among them) stay, so the reasoner's history counts them for later
ones, and `rtem incidents confirm --db` works on it. Each analysis still starts with fresh detection
windows and correlation state (a recording is its own stream, never continued into an earlier one's
incident); events already in the store are duplicates and add nothing, so incident ids, made from an
incident's first new event, never collide across analyses.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bus import Bus, EmbeddedNats
from rules import Topology

from .config import Settings
from .deciders import topology_gaps
from .service import build, publish_audit
from .store import IncidentStore
from .triage import CORRELATOR_STATE, DETECTOR_STATE, WATERMARK

# The state key under which an analysis store keeps the topology its latest analysis diagnosed with (the one
# `--topology` named): the store's commands use it when none is given (`cli._common.topology_or_analyzed`).
ANALYZED_TOPOLOGY = "analysis.topology"


@dataclass
class Progress:
    """What a long replay reports while it runs."""

    file: str
    stage: str
    published: int = 0
    processed: int = 0
    incidents: int = 0


@dataclass
class Analysis:
    file: str
    report: dict[str, Any]
    db_path: Path
    audit_records: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


async def analyze_files(files: list[Path], topology: Topology, settings: Settings, *, workdir: Path,
                        each: bool = False, keep: bool = False,
                        progress: Callable[[Progress], None] | None = None) -> list[Analysis]:
    """Analyze recordings: all files as one stream, or with `each` every file on its own, in the order
    given. With `keep`, every analysis adds to the store in `workdir/run` (see the module's docstring)."""
    groups = [[f] for f in files] if each else [files]
    results = []
    with EmbeddedNats(workdir / "nats") as server:
        # A recording is published whole before it is consumed, on a server of its own: EVENTS unbounded,
        # or a large recording would be refused part way (the service's bound is for a live backlog).
        unbounded = replace(settings.bus_settings(), events_max_bytes=-1, events_max_msgs=-1)
        bus = await Bus.connect(server.url, unbounded, name="rtem-analyze")
        try:
            for index, group in enumerate(groups):
                run_dir = workdir / (f"run-{index}" if each and not keep else "run")
                if keep:
                    _fresh_pipeline(run_dir / "rtem.db")
                elif run_dir.exists():
                    shutil.rmtree(run_dir)
                results.append(await _analyze(bus, group, topology, settings, run_dir, progress))
        finally:
            await bus.close()
    return results


async def _analyze(bus: Bus, files: list[Path], topology: Topology, settings: Settings, run_dir: Path,
                   progress: Callable[[Progress], None] | None) -> Analysis:
    name = ", ".join(str(f) for f in files)
    await bus.reset_streams()
    parts = await build(settings, topology, run_dir, database=run_dir / "rtem.db").open()
    try:
        # what later commands on this store default to (`rtem learn status`, `incidents confirm`, `rules replay`)
        parts.store.save_state(ANALYZED_TOPOLOGY, topology.model_dump(mode="json"))
        earlier = {row["id"] for row in parts.store.incidents(include_merged=True)}  # kept from analyses before
        state = Progress(file=name, stage="publishing")
        published = rejected = duplicates = 0
        for path in files:
            with open(path, "rb") as handle:
                report = await bus.publish_lines(handle, progress=_publish_progress(state, progress))
            published += report.published
            rejected += report.rejected
            duplicates += report.duplicates

        def consumed(stats):
            state.stage, state.processed = "triage", stats.processed
            state.incidents = parts.triage.stats.incidents_opened - parts.triage.stats.incidents_merged
            if progress:
                progress(state)

        stats = await bus.consume(parts.triage, batch=settings.batch_size, until_drained=True,
                                  max_event_bytes=settings.max_event_bytes, on_batch=consumed)
        incidents = [row for row in parts.store.incidents(status="open") if row["id"] not in earlier]
        for number, row in enumerate(incidents, 1):
            state.stage = f"diagnosing {number}/{len(incidents)}"
            if progress:
                progress(state)
            await parts.graph.run(row["id"])
        audit_records = await publish_audit(bus, parts.audit)
        report = {
            "incidents": [incident_report(r) for r in parts.store.incidents() if r["id"] not in earlier],
            "stats": {"events": parts.triage.stats.events, "invalid": stats.invalid + rejected,
                      "duplicates": duplicates + parts.triage.stats.duplicates},
        }
        # What each incident's latest ranking could not weigh, or weighed by the events' word alone, as its
        # record says (the terminal's notes).
        gaps = {r["id"]: topology_gaps(parts.audit, r["id"]) for r in report["incidents"]}
        return Analysis(file=name, report=report, db_path=parts.store.path, audit_records=audit_records,
                        extra={"failed": stats.failed, "published": published,
                               "unlisted": {i: unlisted for i, (unlisted, _) in gaps.items()},
                               "described": {i: described for i, (_, described) in gaps.items()}})
    finally:
        await parts.close()


def _fresh_pipeline(db: Path) -> None:
    """Forget the detection windows and correlation state a kept store holds from the analysis before,
    so this one neither continues its windows nor correlates into its incidents."""
    if not db.is_file():
        return
    store = IncidentStore(db)
    try:
        with store.transaction():
            for key, empty in ((DETECTOR_STATE, {}), (CORRELATOR_STATE, []), (WATERMARK, 0.0)):
                store.save_state(key, empty)
    finally:
        store.close()


def incident_report(row: dict[str, Any]) -> dict[str, Any]:
    """One incident in the documented `rtem analyze --json` shape (DESIGN.md §3)."""
    return {
        "id": row["id"], "opened_at": row["opened_at"], "event_count": row["event_count"],
        "entities": row["entities"],
        "root_causes": [{k: c[k] for k in ("entity", "fault_type", "confidence", "evidence", "explanation")}
                        for c in row["root_causes"]],
        "actions": [{k: a[k] for k in ("type", "target", "params", "verdict", "rules", "reason", "executed")}
                    for a in row["actions"]],
    }


def _publish_progress(state: Progress, progress: Callable[[Progress], None] | None):
    def report(publish_report) -> None:
        state.published = publish_report.published
        if progress:
            progress(state)
    return report
