"""Root-cause accuracy on varied copies of the recorded cases: does the ranking generalise?

    python benchmarks/variants.py [CASES_DIR] [--topology T] [--variant NAME ...] [--mode direct ...] [--json]

The shared cases come from one system with three or four instances per service whose faults show as
metric anomalies and traces. The systems rtem meets elsewhere differ: one or two instances per service,
faults that show mainly in logs and traces. Each variant rewrites the same cases (events, topology and
truth) into such a system and scores them with `rca_accuracy`'s modes:

- original: the cases as recorded.
- one-instance: every service's instances collapsed into one instance (`<service>-pod`, running on the
  host of the service's first instance by id); subjects and trace callers/callees rewritten. A pod-level
  truth becomes its service (with one instance the two cannot be told apart, and a service-level truth is
  matched by its instance too).
- two-instances: every service's instances dealt (by id, round-robin) into two, `<service>-pod0` and
  `-pod1`, each on the host of its first member; a pod-level truth becomes the instance it was dealt into.
  Two instances is the other common shape: rarity among a service's instances has one peer to go by.
- no-metrics: metric anomalies dropped; only traces remain (the recorded cases have no logs or health
  events).
- no-service-signals: every event whose subject is a service or another component (a database, a cache)
  dropped: only instances and hosts speak, as in a system whose anomaly detection watches containers and
  machines but not per-service request rates and latencies (the recorded cases have them: `grpc-mrt`,
  `grpc-sr` … on each service). Traces to instances stay.
- no-calls: the topology without its `calls` and `uses` relations: services, instances and hosts only, as
  an inventory from the cluster gives them. Who calls whom is then only what the traces show.
- no-hosts: the topology without its `runs_on` relations; the events still say where they come from (a
  metric anomaly's `host.name` attribute, as the recorded cases have it), as where an inventory lists
  services and instances and the collectors label what they measure.
- no-hosts-unsaid: `no-hosts` with the events' host attributes removed too: nobody says which instance
  runs on which host.
- new-pods: each service's last instance (by id) left out of the topology, as a pod scaled out or renamed by
  a rollout after the topology was written; its events (other than traces) say which service it belongs to
  in OpenTelemetry's `service.name`, as collectors with resource attributes do.
- new-pods-unsaid: the same pods left out, and nothing says what they are.
- logs: synthesised, since the cases have no logs: every metric anomaly in a bad direction (on every
  entity, not only the true cause; a success rate going up is logged by nobody) becomes an error log on
  the same subject at the same time, "<metric> anomaly" as its message; traces kept. Evidence is then logs
  and traces only, spread exactly as the metrics were.
- one-instance-logs: both of the above: the shape of the systems the issue measures on.
- raw-logs: `logs` as a program writes them: each line opens with a header (timestamp, level, address, the
  name of the instance and service that wrote it, a request id) and is logged at warning level. The same
  evidence as `logs` in another format: the two should score alike.
- one-instance-raw-logs, two-instances-raw-logs: `raw-logs` with one or two instances per service.
- json-logs, logfmt-logs: the `raw-logs` lines as structured logging writes them, one JSON object a line
  (`{"ts": …, "level": "warn", "caller": …, "instance": …, "request_id": …, "msg": …}`, as zap, logrus or
  pino do) or logfmt (`ts=… level=warn caller=… msg="…"`, as Go services and Prometheus do). The same
  evidence once more: both should score as `raw-logs` does.
- call-logs: the cases as a system without tracing logs them: every trace anomaly becomes a warning its
  caller logs, naming the callee's service and the method ("call to paymentservice Charge took too long",
  "… failed with status 500"); a span of the caller's own says the method alone ("GetQuote took too long").
  Metrics kept. The same evidence as `original`, written by the other end of each call and naming a
  service rather than an instance.
- noisy-raw-logs: `raw-logs` plus the chatter a real system logs beside its faults, on every instance: a
  routine warning ("slow query took N ms", twice in the case's first minutes) and an info line ("request
  served in N ms"); an instance picked by the case number also logs a failure unrelated to the fault
  ("retrying upstream call: connection reset"). The fault's evidence is the same; it must stand out of the
  chatter.

A change to the reasoner that raises `original` but lowers a variant fits this data set, not systems.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rca_accuracy import MODES, Case, add_case_arguments, case_paths, evaluate, load_cases  # noqa: E402

from agent.reasoner._catalog import is_bad_direction, metric_domain  # noqa: E402
from rules.topology import HOST_ATTRIBUTES, SERVICE_ATTRIBUTES, Topology  # noqa: E402

Doc = dict
Rewrite = Callable[[list[Doc], Doc, Doc], tuple[list[Doc], Doc, Doc]]  # events, topology, truth


def _services(topology: Doc) -> dict[str, str]:
    """Instance → its service, from a topology document's `instance_of` relations."""
    return {r["source"]: r["target"] for r in topology["relations"] if r["type"] == "instance_of"}


def original(events: list[Doc], topology: Doc, truth: Doc) -> tuple[list[Doc], Doc, Doc]:
    return events, topology, truth


def one_instance(events: list[Doc], topology: Doc, truth: Doc) -> tuple[list[Doc], Doc, Doc]:
    """Instances of a service merged into one; see the module doc."""
    return _collapse(events, topology, truth, 1)


def two_instances(events: list[Doc], topology: Doc, truth: Doc) -> tuple[list[Doc], Doc, Doc]:
    """Instances of a service merged into two; see the module doc."""
    return _collapse(events, topology, truth, 2)


def _collapse(events: list[Doc], topology: Doc, truth: Doc, per_service: int) -> tuple[list[Doc], Doc, Doc]:
    """Each service's instances (by id) dealt round-robin into `per_service` instances, each on the host of
    its first member; subjects, trace callers and callees and a pod-level truth renamed."""
    service_of = _services(topology)
    host_of = {r["source"]: r["target"] for r in topology["relations"] if r["type"] == "runs_on"}
    merged: dict[str, str] = {}
    for service in sorted(set(service_of.values())):
        members = sorted(i for i, s in service_of.items() if s == service)
        for n, instance in enumerate(members):
            merged[instance] = f"{service}-pod" if per_service == 1 else f"{service}-pod{n % per_service}"
    entities = [e for e in topology["entities"] if e["id"] not in merged]
    relations = [r for r in topology["relations"] if r["source"] not in merged]
    for instance in sorted(merged):  # by id: the first member of each new instance comes first
        pod = merged[instance]
        if pod in {e["id"] for e in entities}:
            continue
        entities.append({"id": pod, "type": "instance"})
        relations.append({"source": pod, "target": service_of[instance], "type": "instance_of"})
        if instance in host_of:
            relations.append({"source": pod, "target": host_of[instance], "type": "runs_on"})

    def rename(name):
        return merged.get(name, name)

    rewritten = []
    for doc in events:
        doc = json.loads(json.dumps(doc))
        doc["subject"] = rename(doc.get("subject"))
        attributes = doc.get("data", {}).get("attributes", {})
        for key in ("caller", "callee"):
            if key in attributes:
                attributes[key] = rename(attributes[key])
        rewritten.append(doc)
    cause = truth["root_cause_entity"]
    if cause in service_of and per_service == 1:  # one instance is its service: either name is right
        truth = {**truth, "root_cause_entity": service_of[cause], "level": "service"}
    elif cause in service_of:
        truth = {**truth, "root_cause_entity": merged[cause]}
    return rewritten, {"entities": entities, "relations": relations}, truth


def no_metrics(events: list[Doc], topology: Doc, truth: Doc) -> tuple[list[Doc], Doc, Doc]:
    return [d for d in events if d["type"] != "rtem.metric.anomaly"], topology, truth


def no_service_signals(events: list[Doc], topology: Doc, truth: Doc) -> tuple[list[Doc], Doc, Doc]:
    """Events about a service or other component dropped; see the module doc."""
    units = {e["id"] for e in topology["entities"] if e["type"] not in ("instance", "host")}
    return [d for d in events if d.get("subject") not in units], topology, truth


def _without(relations: set[str]) -> Rewrite:
    def rewrite(events: list[Doc], topology: Doc, truth: Doc) -> tuple[list[Doc], Doc, Doc]:
        kept = [r for r in topology["relations"] if r["type"] not in relations]
        return events, {**topology, "relations": kept}, truth
    return rewrite


no_calls = _without({"calls", "uses"})
no_hosts = _without({"runs_on"})


def _newest_pods(topology: Doc) -> dict[str, str]:
    """Each service's last instance by id → its service."""
    owners = {r["source"]: r["target"] for r in topology["relations"] if r["type"] == "instance_of"}
    last: dict[str, str] = {}
    for pod, service in sorted(owners.items()):
        last[service] = pod
    return {pod: service for service, pod in last.items()}


def new_pods_unsaid(events: list[Doc], topology: Doc, truth: Doc) -> tuple[list[Doc], Doc, Doc]:
    """Each service's last instance left out of the topology; see the module doc."""
    new = _newest_pods(topology)
    return events, {"entities": [e for e in topology["entities"] if e["id"] not in new],
                    "relations": [r for r in topology["relations"] if r["source"] not in new and r["target"] not in new]
                    }, truth


def new_pods(events: list[Doc], topology: Doc, truth: Doc) -> tuple[list[Doc], Doc, Doc]:
    """`new-pods-unsaid`, but the new pods' events say their service; see the module doc."""
    new = _newest_pods(topology)

    def said(doc: Doc) -> Doc:
        if doc.get("subject") not in new or doc["type"] == "rtem.trace.anomaly":
            return doc
        attributes = {**doc.get("data", {}).get("attributes", {}), SERVICE_ATTRIBUTES[0]: new[doc["subject"]]}
        return {**doc, "data": {**doc.get("data", {}), "attributes": attributes}}
    return new_pods_unsaid([said(d) for d in events], topology, truth)


def no_hosts_unsaid(events: list[Doc], topology: Doc, truth: Doc) -> tuple[list[Doc], Doc, Doc]:
    """`no-hosts`, and no event says where its subject runs; see the module doc."""
    def unsaid(doc: Doc) -> Doc:
        attributes = doc.get("data", {}).get("attributes")
        if not attributes or not any(a in attributes for a in HOST_ATTRIBUTES):
            return doc
        kept = {k: v for k, v in attributes.items() if k not in HOST_ATTRIBUTES}
        return {**doc, "data": {**doc["data"], "attributes": kept}}
    kept, topology, truth = no_hosts(events, topology, truth)
    return [unsaid(d) for d in kept], topology, truth


def logs(events: list[Doc], topology: Doc, truth: Doc) -> tuple[list[Doc], Doc, Doc]:
    """Every metric anomaly as an error log of the same subject; see the module doc."""
    rewritten = []
    for doc in events:
        if doc["type"] == "rtem.metric.anomaly":
            attributes = doc.get("data", {}).get("attributes", {})
            metric = attributes.get("metric") or "metric"
            if not is_bad_direction(metric, metric_domain(metric), attributes.get("direction")):
                continue  # a success rate going up is logged by nobody
            doc = {**doc, "type": "rtem.log", "source": doc["source"] + "/logs",
                   "data": {"severity": "error", "message": f"{metric} anomaly", "attributes": {}}}
        rewritten.append(doc)
    return rewritten, topology, truth


def _written(events: list[Doc], topology: Doc, truth: Doc, line: Callable[[dict], str]) -> tuple[list[Doc], Doc, Doc]:
    """`logs` at warning level, each line written by `line` from its parts: time, address, the writer's
    service and instance, a request id, and the statement."""
    service_of = _services(topology)
    rewritten, topology, truth = logs(events, topology, truth)
    for n, doc in enumerate(rewritten):
        if doc["type"] == "rtem.log":
            subject = doc["subject"]
            parts = {"time": doc["time"], "address": f"10.0.{n % 7}.{n % 251}", "n": n,
                     "service": service_of.get(subject, subject), "instance": subject,
                     "request": f"{n * 2654435761 % 2**32:08x}", "statement": doc["data"]["message"]}
            doc["data"] = {**doc["data"], "severity": "warning", "message": line(parts)}
    return rewritten, topology, truth


def raw_logs(events: list[Doc], topology: Doc, truth: Doc) -> tuple[list[Doc], Doc, Doc]:
    """`logs` with a header on every line, at warning level; see the module doc."""
    return _written(events, topology, truth, lambda p: (
        f"{p['time'].replace('T', ' ').rstrip('Z')} | WARN | {p['address']} | {p['service']} | {p['instance']} | "
        f"{p['request']} | {p['statement']}"))


def json_logs(events: list[Doc], topology: Doc, truth: Doc) -> tuple[list[Doc], Doc, Doc]:
    """`logs` as one JSON object a line, at warning level; see the module doc."""
    return _written(events, topology, truth, lambda p: json.dumps({
        "ts": p["time"], "level": "warn", "caller": f"{p['service']}/handler.go:{40 + p['n'] % 60}",
        "instance": p["instance"], "remote": p["address"], "request_id": p["request"], "msg": p["statement"]}))


def logfmt_logs(events: list[Doc], topology: Doc, truth: Doc) -> tuple[list[Doc], Doc, Doc]:
    """`logs` in logfmt, at warning level; see the module doc."""
    return _written(events, topology, truth, lambda p: (
        f"ts={p['time']} level=warn caller={p['service']}/handler.go:{40 + p['n'] % 60} instance={p['instance']} "
        f"remote={p['address']} request_id={p['request']} msg=\"{p['statement']}\""))


def call_logs(events: list[Doc], topology: Doc, truth: Doc) -> tuple[list[Doc], Doc, Doc]:
    """Every trace anomaly as a warning its caller logs, naming the callee's service; see the module doc."""
    service_of = _services(topology)
    rewritten = []
    for doc in events:
        if doc["type"] == "rtem.trace.anomaly":
            attributes = doc.get("data", {}).get("attributes", {})
            callee = attributes.get("callee") or doc["subject"]
            caller = attributes.get("caller") or callee
            code = str(attributes.get("anomaly", ""))
            problem = "took too long" if code.upper() == "PD" else f"failed with status {code}"
            operation = str(attributes.get("operation") or "request").split("/")[-1].split(" ")[0]
            target = "" if caller == callee else f"call to {service_of.get(callee, callee)} "
            doc = {**doc, "type": "rtem.log", "source": doc["source"] + "/logs", "subject": caller,
                   "data": {"severity": "warning", "message": f"{target}{operation} {problem}", "attributes": {}}}
        rewritten.append(doc)
    return rewritten, topology, truth


def one_instance_logs(events: list[Doc], topology: Doc, truth: Doc) -> tuple[list[Doc], Doc, Doc]:
    return one_instance(*logs(events, topology, truth))


def noisy_raw_logs(events: list[Doc], topology: Doc, truth: Doc) -> tuple[list[Doc], Doc, Doc]:
    """`raw-logs` with chatter on every instance; see the module doc."""
    rewritten, topology, truth = raw_logs(events, topology, truth)
    if not rewritten:
        return rewritten, topology, truth
    first = min(rewritten, key=lambda d: d["time"])["time"]
    start = datetime.fromisoformat(first.replace("Z", "+00:00"))
    instances = sorted(r["source"] for r in topology["relations"] if r["type"] == "instance_of")
    service_of = _services(topology)
    seed = int(hashlib.sha256(first.encode()).hexdigest(), 16)
    odd_one = instances[seed % len(instances)]
    chatter = []
    for n, instance in enumerate(instances):
        lines = [(30 + n, "warning", "WARN", f"slow query took {120 + n} ms"),
                 (150 + n, "warning", "WARN", f"slow query took {90 + 2 * n} ms"),
                 (60 + n, "info", "INFO", f"request served in {n + 3} ms")]
        if instance == odd_one:
            lines.append((200, "warning", "WARN", "retrying upstream call: connection reset by peer"))
        for offset, severity, level, text in lines:
            at = (start + timedelta(seconds=offset)).isoformat().replace("+00:00", "Z")
            header = f"{at.replace('T', ' ').rstrip('Z')} | {level} | {service_of[instance]} | {instance} |"
            event_id = hashlib.sha256(f"{first}{instance}{offset}".encode()).hexdigest()[:24]
            chatter.append({"specversion": "1.0", "id": event_id, "source": "/chatter/logs", "type": "rtem.log",
                            "time": at, "subject": instance,
                            "data": {"severity": severity, "message": f"{header} {text}", "attributes": {}}})
    return sorted(rewritten + chatter, key=lambda d: d["time"]), topology, truth


def one_instance_raw_logs(events: list[Doc], topology: Doc, truth: Doc) -> tuple[list[Doc], Doc, Doc]:
    return raw_logs(*one_instance(events, topology, truth))


def two_instances_raw_logs(events: list[Doc], topology: Doc, truth: Doc) -> tuple[list[Doc], Doc, Doc]:
    return raw_logs(*two_instances(events, topology, truth))


VARIANTS: dict[str, Rewrite] = {"original": original, "one-instance": one_instance, "no-metrics": no_metrics,
                                "logs": logs, "one-instance-logs": one_instance_logs, "raw-logs": raw_logs,
                                "one-instance-raw-logs": one_instance_raw_logs, "noisy-raw-logs": noisy_raw_logs,
                                "json-logs": json_logs, "logfmt-logs": logfmt_logs, "two-instances": two_instances,
                                "two-instances-raw-logs": two_instances_raw_logs, "call-logs": call_logs,
                                "no-service-signals": no_service_signals, "no-calls": no_calls,
                                "no-hosts": no_hosts, "no-hosts-unsaid": no_hosts_unsaid, "new-pods": new_pods,
                                "new-pods-unsaid": new_pods_unsaid}


def rewrite_cases(cases: Sequence[Case], topology_doc: Doc, rewrite: Rewrite,
                  into: Path) -> tuple[list[Case], Topology]:
    """The cases rewritten into `into` (events files), with the rewritten topology."""
    out: list[Case] = []
    topology = topology_doc
    for case in cases:
        docs = [json.loads(line) for line in case.events.read_text("utf-8").splitlines() if line.strip()]
        docs, topology, truth = rewrite(docs, topology_doc, case.truth)
        path = into / f"{case.number}.events.jsonl"
        path.write_text("".join(json.dumps(d) + "\n" for d in docs), "utf-8")
        out.append(Case(case.number, path, truth, case.start))
    return out, Topology.from_dict(topology)


def run(cases_dir: Path, topology_path: Path, variants: Sequence[str], modes: Sequence[str]) -> dict:
    cases = load_cases(cases_dir)
    topology_doc = json.loads(topology_path.read_text("utf-8"))
    results: dict[str, dict] = {}
    for name in variants:
        with tempfile.TemporaryDirectory(prefix=f"rtem-variant-{name}-") as scratch:
            varied, topology = rewrite_cases(cases, topology_doc, VARIANTS[name], Path(scratch))
            for mode in modes:
                report = evaluate(mode, MODES[mode], varied, topology)
                results[f"{name}/{mode}"] = {"overall": report.overall.as_dict(), "even": report.even.as_dict(),
                                             "odd": report.odd.as_dict()}
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_case_arguments(parser)
    parser.add_argument("--variant", action="append", choices=list(VARIANTS),
                        help="which variants (repeatable; default: all)")
    parser.add_argument("--mode", action="append", choices=sorted(MODES),
                        help="how cases are analysed (repeatable; default: direct)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    directory, topology_path = case_paths(parser, args)
    results = run(directory, topology_path, args.variant or list(VARIANTS), args.mode or ["direct"])
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{'variant/mode':28s} {'top-1':>8s} {'top-3':>8s} {'MRR':>6s}   even top-1/top-3   odd top-1/top-3")
    for name, r in results.items():
        o, e, d = r["overall"], r["even"], r["odd"]
        print(f"{name:28s} {o['top1_rate']:8.1%} {o['top3_rate']:8.1%} {o['mrr']:6.3f}   "
              f"{e['top1_rate']:6.1%} / {e['top3_rate']:6.1%}    {d['top1_rate']:6.1%} / {d['top3_rate']:6.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
