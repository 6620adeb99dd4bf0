"""`rtem run` (the service), `rtem demo` (the simulated shop), and the kill switch: `rtem pause | resume`."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from bus import NatsServerError
from rules import RulesError, TopologyError

from ._common import (Column, DbOpt, JsonOpt, LlmOpt, TopologyOpt, database_target, err, fail, open_ledger, out,
                      print_table, settings, topology_of)


def run(
    topology: TopologyOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Decide and record, but execute nothing.")] = False,
    metrics_port: Annotated[int, typer.Option(help="Serve Prometheus metrics on this port (0: off).")] = 9464,
    log_format: Annotated[str, typer.Option(help="Log lines as text or json (one object per line).")] = "text",
    llm: LlmOpt = None,
    http_host: Annotated[Optional[str], typer.Option(help="Serve the HTTP API and console here (default: RTEM_HTTP_HOST, else 127.0.0.1).")] = None,
    http_port: Annotated[Optional[int], typer.Option(help="Their port (default: RTEM_HTTP_PORT, else 8080; 0: any free port).")] = None,
    no_http: Annotated[bool, typer.Option("--no-http", help="Serve no HTTP API or console.")] = False,
) -> None:
    """Run the service: consume the bus, detect, diagnose, guard, execute, verify; serve the HTTP API and
    web console (docs/api.md; create a token with `rtem tokens create`). Stops on Ctrl-C.

    Integrations, set in the environment or the RTEM_CONFIG file (docs/integrations.md): paging through
    Alertmanager (RTEM_ALERTMANAGER_URL), a signed webhook (RTEM_WEBHOOK_URL, RTEM_WEBHOOK_SECRET_FILE),
    PagerDuty (RTEM_PAGERDUTY_ROUTING_KEY), Slack (RTEM_SLACK_WEBHOOK_URL), console links (RTEM_PUBLIC_URL);
    an escalation policy (RTEM_ESCALATION_POLICY); investigation through Prometheus (RTEM_PROMETHEUS_URL,
    RTEM_PROMETHEUS_QUERIES); topology reload and discovery (RTEM_TOPOLOGY_RELOAD, RTEM_TOPOLOGY_MAPPING);
    spans over OTLP (OTEL_EXPORTER_OTLP_ENDPOINT). Every setting: docs/configuration.md."""
    from ..db import SchemaTooNew
    from ..llm import LLMSetupError
    from ..logs import setup_logging
    from ..run import Service

    cfg = settings(llm)
    cfg = cfg.model_copy(update={k: v for k, v in (("http_host", http_host), ("http_port", http_port)) if v is not None})
    setup_logging(log_format)
    topo = topology_of(cfg, topology)
    if topology is not None:  # the file given is the one watched (RTEM_TOPOLOGY_RELOAD), as RTEM_TOPOLOGY would be
        cfg = cfg.model_copy(update={"topology": topology})

    async def serve():
        service = Service(cfg, topo, dry_run=dry_run, http=not no_http)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):  # systemd and Kubernetes stop with SIGTERM: drain
            loop.add_signal_handler(signum, service.stop_event.set)
        try:
            await service.start()
            if metrics_port:
                from prometheus_client import start_http_server
                start_http_server(metrics_port, addr="127.0.0.1")
            err.print(f"rtem run: bus {service.url} · store {service.parts.store.where}"
                      + (f" · metrics http://127.0.0.1:{metrics_port}/metrics" if metrics_port else "")
                      + (f" · console {service.http_url}" if service.http_url else "")
                      + (" · DRY RUN" if dry_run else ""))
            await service.run_forever()
        finally:
            await service.stop()  # also after a failed start: the embedded NATS server must not outlive us
        err.print("stopped")

    try:
        asyncio.run(serve())
    except (RulesError, TopologyError, LLMSetupError, OSError) as exc:
        fail(str(exc))
    except (NatsServerError, SchemaTooNew) as exc:  # another rtem on this data directory, no nats-server to
        fail(str(exc), 1)                            # run, or a database a newer rtem migrated
    except KeyboardInterrupt:
        err.print("stopped")


def pause(by: Annotated[Optional[str], typer.Option(help="Who pulls the switch (default: user@host).")] = None,
          db: DbOpt = None) -> None:
    """Kill switch: stop all execution. Detection and diagnosis go on; actions wait. Recorded in the audit
    log as `execution.paused`, with the OS user and host."""
    from ..audit import AuditLog
    from ..identity import operator

    who = operator()
    open_ledger(db).set_paused(True, by or who)  # first: the switch holds even if the record below fails
    with AuditLog(database_target(db)) as audit:
        record = audit.append("execution.paused", node="cli", inputs={"operator": who, "command": "rtem pause"},
                              decision={"paused": True, "by": by or who},
                              reasons=[f"kill switch pulled by {by or who}" + (f" (as {who})" if by else "")])
    out.print(f"execution paused by {by or who}: no action will run until `rtem resume` (audit seq {record.seq})")


def resume(by: Annotated[Optional[str], typer.Option(help="Who releases the switch (default: user@host).")] = None,
           db: DbOpt = None) -> None:
    """Release the kill switch: waiting actions run again (their approvals are checked again). Recorded in
    the audit log as `execution.resumed`, with the OS user and host."""
    from ..audit import AuditLog
    from ..identity import operator

    who = operator()
    open_ledger(db).set_paused(False, by or who)
    with AuditLog(database_target(db)) as audit:
        record = audit.append("execution.resumed", node="cli", inputs={"operator": who, "command": "rtem resume"},
                              decision={"paused": False, "by": by or who},
                              reasons=[f"kill switch released by {by or who}" + (f" (as {who})" if by else "")])
    out.print(f"execution resumed by {by or who} (audit seq {record.seq})")


def demo(
    speed: Annotated[float, typer.Option(help="Simulated seconds per wall second (event time runs this much faster).")] = 10.0,
    scenario: Annotated[Optional[list[str]], typer.Option("--scenario", "-s", help="Inject only these scenarios "
                        "(repeatable): bad-deploy, partial-outage, db-connection-exhaustion, consumer-backlog, "
                        "host-failure, malformed-records. Default: all six, in two waves.")] = None,
    timeout: Annotated[float, typer.Option(help="Give up after this many wall seconds.")] = 170.0,
    approve_after: Annotated[float, typer.Option(help="Wall seconds the demo operator waits before approving.")] = 3.0,
    data_dir: Annotated[Optional[Path], typer.Option(help="Keep the store and audit log here (default: a temp dir).")] = None,
    llm: LlmOpt = None,
    prometheus_port: Annotated[Optional[int], typer.Option(help="Also serve the shop's telemetry as Prometheus "
                               "metrics on this port (0: a free one, printed) for a Prometheus to scrape; with "
                               "RTEM_PROMETHEUS_URL rtem queries them (docs/integrations.md). Use --speed 1: "
                               "Prometheus stamps samples with the wall clock.", min=0, max=65535)] = None,
    json_out: JsonOpt = False,
) -> None:
    """The main job: rtem remediates a simulated shop (eight services, a database and its replica, a queue,
    three hosts: agent/demo/topology.yaml) while disruptions are injected; exits 0 only if every incident
    was resolved and the shop is healthy, else 1.

    Progress goes to stderr: a live view on a terminal, plain lines otherwise, nothing with --json (which
    prints only the summary)."""
    from ..demo.runner import run_demo
    from ..llm import LLMSetupError
    from ..logs import setup_logging

    setup_logging("json" if json_out else "text", level=30)
    cfg = settings(llm)
    try:
        result = asyncio.run(run_demo(speed=speed, scenarios=scenario, data_dir=data_dir, approve_after_s=approve_after,
                                      timeout_s=timeout, settings=cfg, console=err, live=not json_out,
                                      prometheus_port=prometheus_port))
    except LLMSetupError as exc:
        fail(str(exc))
    if json_out:
        print(json.dumps({"ok": result.ok, "wall_s": round(result.wall_s, 1), "dead_letters": result.dead_letters,
                          "approvals": result.approvals, "faults": result.faults, "problems": result.reasons,
                          "incidents": [{"id": r["id"], "status": r["status"], "mttr_s": r.get("mttr_s"),
                                         "root_cause": (r["root_causes"] or [{}])[0].get("entity"),
                                         "actions": [[a["type"], a["target"], a["verdict"], a.get("status")]
                                                     for a in r["actions"]]} for r in result.incidents],
                          "audit_db": str(result.data_dir / "rtem.db"),
                          "reports_dir": str(result.data_dir / "reports")}, indent=2))
    else:
        _print_demo(result)
    raise typer.Exit(0 if result.ok else 1)


def _print_demo(result) -> None:
    rows = []
    for r in result.incidents:
        top = r["root_causes"][0] if r["root_causes"] else None
        rows.append([escape(r["id"]), escape(f"{top['entity']} ({top['fault_type']})") if top else "-",
                     escape(", ".join(f"{a['type']} {a['target']} [{a.get('status')}]" for a in r["actions"]
                                      if a.get("status") in ("done", "compensated", "failed"))) or "-",
                     r["status"], f"{r['mttr_s']:.0f}s" if r.get("mttr_s") else "-"])
    print_table([Column("incident", ident=True), Column("root cause"), Column("actions"), Column("status"),
                 Column("MTTR (event time)")], rows, title="rtem demo: summary")
    out.print(f"{result.dead_letters} malformed records in the DLQ · approvals: {', '.join(result.approvals) or 'none'}"
              f" · {result.wall_s:.0f}s wall")
    out.print(f"audit log: {result.data_dir / 'rtem.db'} (rtem audit verify --db …; rtem incidents --db …)")
    out.print(f"rationale reports: {result.data_dir / 'reports'} (one .md and one .html per incident)")
    if result.ok:
        out.print("[bold green]every incident resolved; the shop is healthy[/]")
    else:
        for problem in result.reasons:
            err.print(f"[red]✗[/] {problem}")
