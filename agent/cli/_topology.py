"""`rtem topology check | discover`: a topology file judged before `rtem run` loads it, and what
discovery from Prometheus would add to it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from ._common import JsonOpt, TopologyOpt, err, fail, out, settings

topology_app = typer.Typer(help="Check topology files, and discover entities and relations from Prometheus.",
                           no_args_is_help=True)

FileArg = Annotated[Path, typer.Argument(help="Topology file (JSON if it ends in .json, else YAML).")]


EventsOpt = Annotated[Optional[list[Path]], typer.Option(
    "--events", help="Recorded events (CloudEvents JSON lines, or a directory of *.events.jsonl; repeatable): "
    "also say which entities they name that the topology does not hold (diagnosis cannot rank those) and "
    "which calls their traces show that it does not list, and where their `host.name` places entities "
    "that the topology places nowhere or elsewhere.", show_default=False)]


@topology_app.command("check")
def check(path: FileArg, json_out: JsonOpt = False, events: EventsOpt = None) -> None:
    """Load a topology file as `rtem run` would: entity and relation counts by type, warnings (an entity
    with no relation, a relation that does not fit the types it joins) and the error at file:line:column.
    With --events, how well it covers those recordings. Exit 0: it loads; 1: it does not."""
    from rules.topology_check import check_topology_file, events_coverage

    from ._events import read_recordings

    result = check_topology_file(path)
    coverage = events_coverage(result.topology, read_recordings(events)) if events and result.ok else None
    if json_out:
        print(json.dumps({**result.to_dict(), **({"events": coverage.to_dict()} if coverage else {})}, indent=2))
    else:
        if result.ok:
            counts = result.counts()
            for what in ("entities", "relations"):
                by_type = ", ".join(f"{n} {kind}" for kind, n in counts[what].items()) or "none"
                out.print(f"{what}: {sum(counts[what].values())} ({by_type})")
            out.print(f"topology {result.topology.digest}: [green]ok[/]")
        for warning in result.warnings:
            err.print(f"[yellow]warning:[/] {escape(str(warning))}")
        if result.error is not None:
            err.print(f"[bold red]error:[/] {escape(str(result.error))}")
        if coverage is not None:
            _print_coverage(coverage)
    if not result.ok:
        raise typer.Exit(1)


def _print_coverage(coverage) -> None:
    out.print(f"events: {coverage.events} read, naming {len(coverage.named)} entities, "
              f"{len(coverage.unlisted) + len(coverage.described)} of them not in the topology")
    # (a warning or a note, what it is about, what it says of them: "{}" is where they are listed)
    said = (
        (True, [f"{name} ({n})" for name, n in coverage.unlisted.items()],
         "{}: named by events (how many in brackets) but not in the topology, so their events are not weighed "
         "and diagnosis cannot rank them as a cause; add them"),
        (False, [f"{e} ({s})" for e, s in coverage.described.items()],
         "not in the topology, but their events name the service each is an instance of (in brackets, from "
         "service.name or the Kubernetes workload): {}; diagnosis weighs them as such, listing them is better"),
        (False, [f"{a} -> {b} ({n})" for (a, b), n in coverage.unlisted_calls.items()],
         "the traces show calls the topology does not list: {}; diagnosis reads who calls whom from the traces "
         "too (docs/reasoning.md), listing them is optional"),
        (False, [f"{e} on {h}" for e, h in coverage.placed.items()],
         "the events say where entities run that the topology places on no host: {}; diagnosis reads that from "
         "the events too (docs/reasoning.md), listing `runs_on` is better: only anomalous entities have events"),
        (True, [f"{e} on {said}, not {listed}" for e, (listed, said) in coverage.misplaced.items()],
         "the events place entities elsewhere than the topology does: {}; diagnosis follows the topology, so "
         "correct its `runs_on` if they moved"),
    )
    for warning, items, text in said:
        if items:
            (err if warning else out).print(("[yellow]warning:[/] " if warning else "note: ")
                                            + escape(text.format(_listed(items))))


def _listed(items: list[str], shown: int = 10) -> str:
    """The first `shown` of `items`, and how many more."""
    return ", ".join(items[:shown]) + (f" and {len(items) - shown} more" if len(items) > shown else "")


@topology_app.command("discover")
def discover(
    prometheus: Annotated[Optional[str], typer.Option(
        "--prometheus", help="Prometheus base URL (default: RTEM_PROMETHEUS_URL).")] = None,
    mapping: Annotated[Optional[Path], typer.Option(
        "--mapping", help="Mapping file: which target and series labels make which entities and relations "
                          "(default: RTEM_TOPOLOGY_MAPPING; docs/integrations.md).")] = None,
    topology: TopologyOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Ask Prometheus once and print what discovery would add to the topology file (--topology, else
    RTEM_TOPOLOGY, else an empty one): entities and relations added, the file winning every conflict.
    Changes nothing. Exit 1 when Prometheus cannot be asked."""
    from rules import Topology, TopologyError
    from rules.topology_check import diff_topologies

    from ..discovery import Discovery, Mapping, describe
    from ..topology_reload import merge_topologies

    cfg = settings()
    url = prometheus or getattr(cfg, "prometheus_url", None)
    mapping = mapping or cfg.topology_mapping
    if not url or not mapping:
        fail("discovery needs --prometheus URL (or RTEM_PROMETHEUS_URL) and --mapping FILE (or RTEM_TOPOLOGY_MAPPING)")
    try:
        rules = Mapping.load(mapping)
        base = Topology.load(topology or cfg.topology) if (topology or cfg.topology) else Topology()
    except TopologyError as exc:
        fail(str(exc))
    try:
        found = Discovery(url, rules).discover()
    except Exception as exc:  # connection refused, a timeout, an answer that is not Prometheus's
        fail(f"asking Prometheus at {url} failed: {exc} (is the URL right, and Prometheus up?)", 1)
    diff = diff_topologies(base, merge_topologies(base, found))
    if json_out:
        print(json.dumps({"prometheus": url, "discovered": describe(found), "diff": diff.to_dict()}, indent=2))
        return
    out.print(f"discovered {len(found.entities)} entities and {len(found.relations)} relations from {url}")
    for entity in diff.entities_added:
        out.print(f"  + entity {escape(entity)} ({found.entity_type(entity)})")
    for relation in diff.relations_added:
        out.print(f"  + {escape(relation)}")
    out.print(f"would add: {diff.summary()}")
