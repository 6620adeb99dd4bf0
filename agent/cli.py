"""The `rtem` command line. Human output uses rich; `--json` prints exactly the documented shapes."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from bus import Bus, NatsServerError
from rules import RulesError, TopologyError

from .config import Settings

app = typer.Typer(help="rtem, the real-time exception manager: events in, incidents out, safe "
                       "remediation in between, and an explanation for every step.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
incidents_app = typer.Typer(help="List incidents, or show one with `rtem incidents show ID`.",
                            invoke_without_command=True)
audit_app = typer.Typer(help="The append-only, hash-chained audit log.", no_args_is_help=True)
app.add_typer(incidents_app, name="incidents")
app.add_typer(audit_app, name="audit")

out = Console()
err = Console(stderr=True, soft_wrap=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON only.")]
DbOpt = Annotated[Optional[Path], typer.Option("--db", help="The store to read (default: RTEM_DATA_DIR/rtem.db).")]


class LlmChoice(str, Enum):
    none = "none"
    openai = "openai"
    local = "local"


LlmOpt = Annotated[Optional[LlmChoice], typer.Option(
    "--llm", help="Reasoner: none (deterministic), openai (any OpenAI-compatible endpoint: RTEM_LLM_BASE_URL, "
                  "RTEM_LLM_API_KEY, RTEM_LLM_MODEL) or local (llama.cpp, from the optional extra `local`). Default: RTEM_LLM, "
                  "else none. See docs/llm.md.")]


def main() -> None:
    app()


def fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def settings() -> Settings:
    try:
        return Settings()
    except Exception as exc:  # pydantic's message names the variable and the problem
        fail(f"configuration: {exc}")
        raise


# -- analyze --------------------------------------------------------------------------------------

@app.command()
def analyze(
    files: Annotated[list[Path], typer.Argument(help="Recorded events: CloudEvents JSON lines.", show_default=False)],
    topology: Annotated[Optional[Path], typer.Option("--topology", "-t", help="Topology file (JSON or YAML; "
                        "default: RTEM_TOPOLOGY).")] = None,
    json_out: JsonOpt = False,
    each: Annotated[bool, typer.Option("--each", help="Analyze every file on its own; one JSON object per line.")] = False,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Keep the store and audit log here "
                       "(default: RTEM_DATA_DIR/analyze, replaced on each run).")] = None,
    llm: LlmOpt = None,
) -> None:
    """Replay recorded events through the same bus, rules and graph as `rtem run` (dry run) and report the incidents."""
    from .analyze import analyze_files
    from .llm import LLMSetupError

    cfg = settings()
    if llm is not None:
        cfg = cfg.model_copy(update={"llm": llm.value})
    for path in files:
        if not path.is_file():
            fail(f"{path}: no such file")
    try:
        topo = cfg.load_topology(topology)
    except TopologyError as exc:
        fail(str(exc))
    workdir = out_dir or cfg.data_dir / "analyze"
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    with err.status("starting", spinner="dots") as status:
        def progress(p):
            status.update(f"{p.file}: {p.stage} · published {p.published} · triaged {p.processed} · "
                          f"incidents {p.incidents}")
        try:
            results = asyncio.run(analyze_files(files, topo, cfg, workdir=workdir, each=each, progress=progress))
        except RulesError as exc:
            fail(str(exc))
        except NatsServerError as exc:
            fail(str(exc), 1)
        except LLMSetupError as exc:
            fail(str(exc))
    if json_out:
        for result in results:
            doc = {"file": result.file, **result.report} if each else result.report
            print(json.dumps(doc, separators=(",", ":") if each else (", ", ": "), indent=None if each else 2))
        return
    for result in results:
        _print_analysis(result)
    err.print(f"[dim]store and audit log: {results[-1].db_path} — try `rtem incidents --db {results[-1].db_path}`[/]")


def _print_analysis(result) -> None:
    stats = result.report["stats"]
    incidents = result.report["incidents"]
    out.rule(f"[bold]{result.file}")
    out.print(f"{stats['events']} events · {stats['invalid']} invalid (in the DLQ) · {stats['duplicates']} "
              f"duplicates · {len(incidents)} incident{'s' if len(incidents) != 1 else ''}")
    for inc in incidents:
        _print_incident(inc)


def _print_incident(inc: dict) -> None:
    out.print(f"\n[bold]{inc['id']}[/]  opened {inc['opened_at']}  ·  {inc['event_count']} events  ·  "
              f"{len(inc['entities'])} entities")
    causes = Table(title="ranked root causes", title_justify="left", show_edge=False)
    for col in ("#", "entity", "fault", "confidence", "evidence"):
        causes.add_column(col)
    for rank, cause in enumerate(inc["root_causes"], 1):
        causes.add_row(str(rank), cause["entity"], cause["fault_type"], f"{cause['confidence']:.2f}",
                       str(len(cause["evidence"])))
    out.print(causes)
    if inc["root_causes"]:
        out.print(f"[dim]{inc['root_causes'][0]['explanation']}[/]")
    actions = Table(title="proposed actions (dry run)", title_justify="left", show_edge=False)
    for col in ("action", "target", "verdict", "rules", "reason"):
        actions.add_column(col, overflow="fold")
    colour = {"allow": "green", "deny": "red", "require_approval": "yellow"}
    for action in inc["actions"]:
        actions.add_row(action["type"], action["target"], f"[{colour[action['verdict']]}]{action['verdict']}[/]",
                        ", ".join(action["rules"]) or "-", action["reason"])
    out.print(actions)


# -- ingest ---------------------------------------------------------------------------------------

@app.command()
def ingest(
    files: Annotated[list[Path], typer.Argument(help="CloudEvents JSON lines ('-' for standard input).")],
    nats_url: Annotated[Optional[str], typer.Option("--nats-url", help="Server to publish to (default: RTEM_NATS_URL, "
                        "else the embedded server of a running `rtem run`).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Publish events to the bus. Invalid lines are published too: the consumer dead-letters them with the reason."""
    cfg = settings()
    url = nats_url or cfg.nats_url or _running_server_url(cfg)
    if not url:
        fail("no NATS server: set RTEM_NATS_URL, pass --nats-url, or start `rtem run` first")

    async def publish():
        bus = await Bus.connect(url, cfg.bus_settings(), name="rtem-ingest")
        try:
            await bus.ensure_streams()
            totals = {"lines": 0, "published": 0, "duplicates": 0, "rejected": 0}
            for path in files:
                handle = sys.stdin.buffer if str(path) == "-" else open(path, "rb")
                with handle:
                    report = await bus.publish_lines(handle)
                for key in totals:
                    totals[key] += getattr(report, key)
            return totals
        finally:
            await bus.close()

    for path in files:
        if str(path) != "-" and not path.is_file():
            fail(f"{path}: no such file")
    try:
        totals = asyncio.run(publish())
    except (OSError, asyncio.TimeoutError) as exc:
        fail(f"cannot publish to {url}: {exc}", 1)
    if json_out:
        print(json.dumps(totals))
    else:
        out.print(f"{totals['published']} published · {totals['duplicates']} duplicates (already on the bus) · "
                  f"{totals['rejected']} rejected (too large, sent to the DLQ) · from {totals['lines']} lines")


def _running_server_url(cfg: Settings) -> str | None:
    marker = cfg.data_dir / "nats.url"
    return marker.read_text().strip() if marker.is_file() else None


# -- incidents ------------------------------------------------------------------------------------

def _store(db: Path | None):
    from .store import IncidentStore

    cfg = settings()
    path = db or cfg.db_path
    if not path.is_file():
        fail(f"{path}: no store here yet (run `rtem analyze` or `rtem run`, or pass --db)")
    return IncidentStore(path, readonly=True)


@incidents_app.callback()
def incidents(ctx: typer.Context, json_out: JsonOpt = False, db: DbOpt = None,
              status: Annotated[Optional[str], typer.Option(help="Only incidents with this status.")] = None) -> None:
    """List incidents, newest last."""
    if ctx.invoked_subcommand:
        return
    from .analyze import incident_report

    store = _store(db)
    rows = store.incidents(status=status)
    decided = _deciders(store.path)
    if json_out:
        print(json.dumps({"incidents": [{**incident_report(r), "status": r["status"],
                                         "reasoner": decided.get(r["id"])} for r in rows]}, indent=2))
        return
    table = Table(show_edge=False)
    for col in ("id", "opened", "status", "severity", "events", "root cause", "actions", "decided by"):
        table.add_column(col)
    for r in rows:
        top = r["root_causes"][0] if r["root_causes"] else None
        table.add_row(r["id"], r["opened_at"], r["status"], r["severity"], str(r["event_count"]),
                      f"{top['entity']} ({top['fault_type']}, {top['confidence']:.2f})" if top else "-",
                      ", ".join(f"{a['type']}:{a['verdict']}" for a in r["actions"]) or "-",
                      _decider_label(decided.get(r["id"])))
    out.print(table if rows else "no incidents")


def _deciders(path: Path) -> dict[str, dict]:
    """Which reasoner ranked each incident's causes, from the audit log: `llm`, `deterministic`, or the
    deterministic fallback with its reason (`degraded` while the LLM provider's breaker was open)."""
    from .audit import AuditLog

    found: dict[str, dict] = {}
    with AuditLog(path) as audit:
        for record in audit.records(kind="causes.ranked"):
            run = record.decision.get("reasoner") or {}
            fallback = run.get("fallback")
            found[record.incident_id] = {"reasoner": run.get("reasoner", "?"), "fallback": fallback,
                                         "degraded": bool(fallback and fallback.startswith("degraded mode")),
                                         "model": record.versions.get("model", "none")}
    return found


def _decider_label(decided: dict | None) -> str:
    if not decided:
        return "-"
    if decided["degraded"]:
        return "[yellow]deterministic (degraded: LLM breaker open)[/]"
    if decided["fallback"]:
        return "[yellow]deterministic (LLM fallback)[/]"
    return decided["reasoner"] + (f" ({decided['model']})" if decided["reasoner"] == "llm" else "")


@incidents_app.command("show")
def incidents_show(incident_id: Annotated[str, typer.Argument(help="Incident id (a unique prefix is enough).")],
                   json_out: JsonOpt = False, db: DbOpt = None) -> None:
    """One incident: its entities, ranked root causes and the verdict on each proposed action."""
    from .analyze import incident_report

    row = _store(db).incident(incident_id)
    if row is None:
        fail(f"no incident {incident_id!r} (see `rtem incidents`)", 1)
    report = {**incident_report(row), "status": row["status"], "severity": row["severity"],
              "detections": row["detections"], "versions": row["versions"]}
    if json_out:
        print(json.dumps(report, indent=2))
        return
    _print_incident(report)
    out.print(f"status {row['status']} · severity {row['severity']} · detections {', '.join(row['detections'])}")


# -- audit ----------------------------------------------------------------------------------------

@audit_app.command("verify")
def audit_verify(json_out: JsonOpt = False, db: DbOpt = None) -> None:
    """Check the hash chain: exits 1 and names each changed or deleted record if the log was tampered with."""
    from .audit import verify_file

    cfg = settings()
    path = db or cfg.db_path
    if not path.is_file():
        fail(f"{path}: no audit log here")
    report = verify_file(path)
    if json_out:
        print(report.model_dump_json(indent=2) if hasattr(report, "model_dump_json") else json.dumps(report.__dict__))
    else:
        (out if report.ok else err).print(report.summary())
        for problem in report.problems:
            err.print(f"  seq {problem.seq}: {problem.kind}: {problem.detail}")
    raise typer.Exit(0 if report.ok else 1)


@audit_app.command("list")
def audit_list(incident: Annotated[Optional[str], typer.Option(help="Only this incident's records.")] = None,
               json_out: JsonOpt = False, db: DbOpt = None) -> None:
    """Decision records, oldest first: what was decided, on what inputs, by which rule and model versions."""
    from .audit import AuditLog

    cfg = settings()
    path = db or cfg.db_path
    if not path.is_file():
        fail(f"{path}: no audit log here")
    records = AuditLog(path).records(incident_id=incident)
    if json_out:
        print(json.dumps([r.model_dump(mode="json") for r in records], indent=2))
        return
    table = Table(show_edge=False)
    for col in ("seq", "at", "incident", "kind", "node", "reasons"):
        table.add_column(col, overflow="fold")
    for r in records:
        table.add_row(str(r.seq), r.at.isoformat(timespec="seconds"), r.incident_id or "-", r.kind, r.node,
                      "; ".join(r.reasons)[:200])
    out.print(table)


# -- the service ----------------------------------------------------------------------------------

@app.command()
def run(
    topology: Annotated[Optional[Path], typer.Option("--topology", "-t", help="Topology file (default: RTEM_TOPOLOGY).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Decide and record, but execute nothing.")] = False,
    metrics_port: Annotated[int, typer.Option(help="Serve Prometheus metrics on this port (0: off).")] = 9464,
    log_format: Annotated[str, typer.Option(help="text or json")] = "text",
    llm: LlmOpt = None,
    http_host: Annotated[Optional[str], typer.Option(help="Serve the HTTP API and console here (default: RTEM_HTTP_HOST, else 127.0.0.1).")] = None,
    http_port: Annotated[Optional[int], typer.Option(help="Their port (default: RTEM_HTTP_PORT, else 8080; 0: any free port).")] = None,
    no_http: Annotated[bool, typer.Option("--no-http", help="Serve no HTTP API or console.")] = False,
) -> None:
    """Run the service: consume the bus, detect, diagnose, guard, execute, verify; serve the HTTP API and
    web console (docs/api.md; create a token with `rtem tokens create`). Stops on Ctrl-C."""
    from .llm import LLMSetupError
    from .logs import setup_logging
    from .run import Service

    cfg = settings()
    if llm is not None:
        cfg = cfg.model_copy(update={"llm": llm.value})
    cfg = cfg.model_copy(update={k: v for k, v in (("http_host", http_host), ("http_port", http_port)) if v is not None})
    setup_logging(log_format)
    try:
        topo = cfg.load_topology(topology)
    except TopologyError as exc:
        fail(str(exc))

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
            err.print(f"rtem run: bus {service.url} · store {service.parts.store.path}"
                      + (f" · metrics http://127.0.0.1:{metrics_port}/metrics" if metrics_port else "")
                      + (f" · console {service.http_url}" if service.http_url else "")
                      + (" · DRY RUN" if dry_run else ""))
            await service.run_forever()
        finally:
            await service.stop()  # also after a failed start: the embedded NATS server must not outlive us
        err.print("stopped")

    try:
        asyncio.run(serve())
    except (RulesError, LLMSetupError, OSError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        err.print("stopped")


def ledger_path(db: Path | None) -> Path:
    return db or settings().db_path


def _ledger(db: Path | None):
    from .ledger import Ledger

    path = ledger_path(db)
    if not path.is_file():
        fail(f"{path}: no store here (is `rtem run` using another RTEM_DATA_DIR?)")
    return Ledger(path)


def _decide(incident_id: str, action: str, approve: bool, by: str | None, reason: str, db: Path | None,
            json_out: bool) -> None:
    from .run import operator

    row = _store(db).incident(incident_id)
    if row is None:
        fail(f"no incident {incident_id!r} (see `rtem incidents`)", 1)
    actions = row["actions"]
    matches = [a for a in actions if str(a.get("index")) == action or a["type"] == action]
    pending = [a for a in matches if a["verdict"] == "require_approval"]
    if not pending:
        needing = ", ".join(f"{a['index']} ({a['type']} on {a['target']})" for a in actions
                            if a["verdict"] == "require_approval") or "none"
        fail(f"incident {row['id']} has no action {action!r} that needs approval; those that do: {needing}", 1)
    ledger = _ledger(db)
    who = by or operator()
    from .audit import AuditLog

    with AuditLog(ledger_path(db)) as audit:
        for a in pending:
            ledger.decide(row["id"], a["index"], approve, who, reason)
            # The same record the API writes, so every human decision is in the log when it is made.
            audit.append("approval.decided", incident_id=row["id"], node="cli",
                         inputs={"user": who, "via": "rtem approve" if approve else "rtem reject",
                                 "action": {"index": a["index"], "type": a["type"], "target": a["target"]}},
                         decision={"decision": "approve" if approve else "reject", "by": who},
                         reasons=[reason or f"{who} gave no reason"])
    result = {"incident": row["id"], "actions": [a["index"] for a in pending],
              "decision": "approve" if approve else "reject", "by": who}
    if json_out:
        print(json.dumps(result))
    else:
        labels = ", ".join(f"#{a['index']} {a['type']} on {a['target']}" for a in pending)
        out.print(f"{result['decision']}d {labels} of {row['id']} as {who}; "
                  "the service picks it up within a second")


@app.command()
def approve(incident_id: Annotated[str, typer.Argument(help="Incident id (a unique prefix is enough).")],
            action: Annotated[str, typer.Argument(help="The action's index or type, as `rtem incidents show` lists.")],
            by: Annotated[Optional[str], typer.Option(help="Who approves (default: your user name).")] = None,
            reason: Annotated[str, typer.Option(help="Why, for the audit log.")] = "",
            json_out: JsonOpt = False, db: DbOpt = None) -> None:
    """Approve an action that waits for a person. Kept in the store: it survives a service restart."""
    _decide(incident_id, action, True, by, reason, db, json_out)


@app.command()
def reject(incident_id: Annotated[str, typer.Argument(help="Incident id (a unique prefix is enough).")],
           action: Annotated[str, typer.Argument(help="The action's index or type.")],
           by: Annotated[Optional[str], typer.Option(help="Who rejects (default: your user name).")] = None,
           reason: Annotated[str, typer.Option(help="Why, for the audit log.")] = "",
           json_out: JsonOpt = False, db: DbOpt = None) -> None:
    """Reject an action that waits for a person; it will not run."""
    _decide(incident_id, action, False, by, reason, db, json_out)


@app.command()
def pause(by: Annotated[Optional[str], typer.Option(help="Who pulls the switch.")] = None, db: DbOpt = None) -> None:
    """Kill switch: stop all execution. Detection and diagnosis go on; actions wait."""
    from .run import operator

    _ledger(db).set_paused(True, by or operator())
    out.print("execution paused: no action will run until `rtem resume`")


@app.command()
def resume(by: Annotated[Optional[str], typer.Option(help="Who releases the switch.")] = None, db: DbOpt = None) -> None:
    """Release the kill switch: waiting actions run again (their approvals are checked again)."""
    from .run import operator

    _ledger(db).set_paused(False, by or operator())
    out.print("execution resumed")


from .cli_rules import rules_app  # noqa: E402  (rtem rules check/test/replay)

app.add_typer(rules_app, name="rules")

from .cli_tokens import tokens_app  # noqa: E402  (rtem tokens create/list/revoke)

app.add_typer(tokens_app, name="tokens")


@app.command()
def demo(
    speed: Annotated[float, typer.Option(help="Simulated seconds per wall second (event time runs this much faster).")] = 10.0,
    scenario: Annotated[Optional[list[str]], typer.Option("--scenario", "-s", help="Inject only these scenarios "
                        "(repeatable): bad-deploy, partial-outage, db-connection-exhaustion, consumer-backlog, "
                        "host-failure, malformed-records. Default: all six, in two waves.")] = None,
    timeout: Annotated[float, typer.Option(help="Give up after this many wall seconds.")] = 170.0,
    approve_after: Annotated[float, typer.Option(help="Wall seconds the demo operator waits before approving.")] = 3.0,
    data_dir: Annotated[Optional[Path], typer.Option(help="Keep the store and audit log here (default: a temp dir).")] = None,
    llm: LlmOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """The main job: rtem remediates a simulated shop (six services, a database, a queue, three hosts)
    while disruptions are injected; exits 0 only if every incident was resolved and the shop is healthy."""
    from .demo.runner import run_demo
    from .logs import setup_logging

    from .llm import LLMSetupError

    setup_logging("json" if json_out else "text", level=30)
    cfg = settings()
    if llm is not None:
        cfg = cfg.model_copy(update={"llm": llm.value})
    try:
        result = asyncio.run(run_demo(speed=speed, scenarios=scenario, data_dir=data_dir, approve_after_s=approve_after,
                                      timeout_s=timeout, settings=cfg, console=err, live=not json_out))
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
        table = Table(title="rtem demo: summary", show_edge=False)
        for col in ("incident", "root cause", "actions", "status", "MTTR (event time)"):
            table.add_column(col, overflow="fold")
        for r in result.incidents:
            top = r["root_causes"][0] if r["root_causes"] else None
            table.add_row(r["id"], f"{top['entity']} ({top['fault_type']})" if top else "-",
                          ", ".join(f"{a['type']} {a['target']} [{a.get('status')}]" for a in r["actions"]
                                    if a.get("status") in ("done", "compensated", "failed")) or "-",
                          r["status"], f"{r['mttr_s']:.0f}s" if r.get("mttr_s") else "-")
        out.print(table)
        out.print(f"{result.dead_letters} malformed records in the DLQ · approvals: {', '.join(result.approvals) or 'none'}"
                  f" · {result.wall_s:.0f}s wall")
        out.print(f"audit log: {result.data_dir / 'rtem.db'} (rtem audit verify --db …; rtem incidents --db …)")
        out.print(f"rationale reports: {result.data_dir / 'reports'} (one .md and one .html per incident)")
        if result.ok:
            out.print("[bold green]every incident resolved; the shop is healthy[/]")
        else:
            for problem in result.reasons:
                err.print(f"[red]✗[/] {problem}")
    raise typer.Exit(0 if result.ok else 1)


# -- reports and questions (agent/report.py, agent/chat.py) ------------------------------------------

class ReportFormat(str, Enum):
    md = "md"
    html = "html"


@app.command()
def report(incident_id: Annotated[str, typer.Argument(help="Incident id (a unique prefix is enough).")],
           format: Annotated[ReportFormat, typer.Option("--format", help="Markdown or self-contained HTML.")] = ReportFormat.md,
           out_file: Annotated[Optional[Path], typer.Option("--out", help="Write here instead of stdout.")] = None,
           db: DbOpt = None) -> None:
    """The rationale report of one incident, rebuilt from the store and the audit log (see docs/operators.md)."""
    from .audit import AuditLog
    from .report import build_report

    store = _store(db)
    with AuditLog(store.path) as audit:
        try:
            text = build_report(store, audit, incident_id).render(format.value)
        except LookupError as exc:
            fail(str(exc), 1)
    if out_file:
        out_file.write_text(text, encoding="utf-8")
        err.print(f"wrote {out_file}")
    else:
        sys.stdout.write(text)


IncidentOpt = Annotated[Optional[str], typer.Option("--incident", help="Ask about this incident.")]


@app.command()
def ask(question: Annotated[str, typer.Argument(help="A question about incidents, e.g. \"what is still open?\"")],
        incident: IncidentOpt = None, json_out: JsonOpt = False, db: DbOpt = None, llm: LlmOpt = None) -> None:
    """Answer one question from the store and the audit log, citing decision records and event ids."""
    from .audit import AuditLog

    store = _store(db)
    reply_to, close = _answerer(llm)
    try:
        with AuditLog(store.path) as audit:
            reply = reply_to(question, store, audit, incident)
    finally:
        close()
    if json_out:
        print(json.dumps(reply.to_dict(), indent=2))
    else:
        _print_answer(reply)


@app.command()
def chat(incident: IncidentOpt = None, db: DbOpt = None, llm: LlmOpt = None) -> None:
    """Ask questions one per line until EOF or `quit`; answers are grounded in the store and audit log."""
    from .audit import AuditLog

    store = _store(db)
    reply_to, close = _answerer(llm)
    try:
        with AuditLog(store.path) as audit:
            for line in sys.stdin:
                question = line.strip()
                if question.lower() in ("quit", "exit"):
                    break
                if question:
                    _print_answer(reply_to(question, store, audit, incident))
    finally:
        close()


def _answerer(llm: Optional[LlmChoice]):
    """The answering function for --llm (default RTEM_LLM): `chat.answer`, or an LLM's with retrieval
    (agent.llm.LlmChat); and what to call when done with it."""
    from .chat import answer

    cfg = settings()
    if llm is not None:
        cfg = cfg.model_copy(update={"llm": llm.value})
    if cfg.llm == "none":
        return answer, lambda: None
    from .llm import LLMSetupError, LlmChat

    try:
        with_llm = LlmChat(cfg)
    except LLMSetupError as exc:
        fail(str(exc))
    return with_llm.answer, with_llm.close


def _print_answer(reply) -> None:
    out.print(reply.text, markup=False, highlight=False)
    if reply.citations:
        out.print("cites: " + ", ".join(f"seq {c}" if isinstance(c, int) else f"event {c}" for c in reply.citations),
                  markup=False, highlight=False)
    if reply.reasoner == "llm":
        err.print(f"answered by the LLM: model {reply.versions.get('model')}, prompt {reply.versions.get('prompt')}",
                  style="dim", markup=False, highlight=False)
    elif reply.fallback:
        err.print(f"answered without the LLM: {reply.fallback}", style="dim", markup=False, highlight=False)
