"""Root-cause accuracy on recorded cases: how often the true root cause is ranked first, and in the top 3.

    python benchmarks/rca_accuracy.py [CASES_DIR] [--topology T] [--json] [--llm none]

CASES_DIR holds `N.events.jsonl` (CloudEvents JSON lines) with `N.truth.json` ({"root_cause_entity",
"level", "fault_type"}), either directly or in a `cases/` subdirectory; the topology defaults to
`topology.json` beside them. The default is the shared Online-Boutique data set next to the repository.

A prediction is right when `Topology.matches(candidate, truth)`: the entity itself or, for a
service-level truth, one of its instances. The reasoner is compared with the baseline "rank entities by
their number of metric anomalies". Even- and odd-numbered cases are also scored apart, as a check that
the method was not fitted to particular cases.

`run_case` is the one piece that decides how a case is analysed; swap it (for instance for one that runs
`rtem analyze --each` and scores the incident with the most events) without touching the scoring.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.reasoner import DeterministicReasoner  # noqa: E402
from bus._envelope import Event, InvalidEvent, parse_event  # noqa: E402
from rules.topology import Topology  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "Online-Boutique-cloudbed-2"

# A case runner: the events file and topology in, ranked candidate entity ids (best first) and the
# reasoner's fault type for the first one out.
CaseRunner = Callable[[Path, Topology], tuple[list[str], str]]


@dataclass
class Case:
    number: int
    events: Path
    truth: dict


@dataclass
class Tally:
    cases: int = 0
    top1: int = 0
    top3: int = 0
    reciprocal: float = 0.0

    def add(self, rank: int | None) -> None:
        self.cases += 1
        self.top1 += rank == 0
        self.top3 += rank is not None and rank < 3
        self.reciprocal += 1 / (rank + 1) if rank is not None else 0.0

    def as_dict(self) -> dict:
        n = self.cases or 1
        return {"cases": self.cases, "top1": self.top1, "top3": self.top3, "top1_rate": round(self.top1 / n, 4),
                "top3_rate": round(self.top3 / n, 4), "mrr": round(self.reciprocal / n, 4)}


@dataclass
class Report:
    runner: str
    overall: Tally = field(default_factory=Tally)
    even: Tally = field(default_factory=Tally)
    odd: Tally = field(default_factory=Tally)
    by_fault: dict[str, Tally] = field(default_factory=lambda: defaultdict(Tally))
    by_level: dict[str, Tally] = field(default_factory=lambda: defaultdict(Tally))
    fault_type_agreement: int = 0
    seconds: float = 0.0
    ranks: dict[int, int | None] = field(default_factory=dict)


# -- the replaceable pieces ------------------------------------------------------------------------


def read_events(path: Path) -> list[Event]:
    events = []
    for line in path.read_text("utf-8").splitlines():
        if line.strip():
            try:
                events.append(parse_event(line))
            except InvalidEvent:
                continue
    return events


def run_case(path: Path, topology: Topology) -> tuple[list[str], str]:
    """Every event of the case through the deterministic reasoner, all candidates ranked."""
    causes = DeterministicReasoner().diagnose(read_events(path), topology, limit=len(topology.entities))
    return [c.entity for c in causes], causes[0].fault_type if causes else "unknown"


def run_baseline(path: Path, topology: Topology) -> tuple[list[str], str]:
    """Entities ranked by how many metric anomalies they have (ties: earliest first, then id)."""
    counts: Counter[str] = Counter()
    first: dict[str, float] = {}
    for event in read_events(path):
        if event.type == "rtem.metric.anomaly" and event.subject in topology:
            counts[event.subject] += 1
            first.setdefault(event.subject, event.ts)
    return sorted(counts, key=lambda e: (-counts[e], first[e], e)), "unknown"


# -- scoring ---------------------------------------------------------------------------------------


def load_cases(directory: Path) -> list[Case]:
    cases = []
    for events in directory.glob("*.events.jsonl"):
        number = events.name.split(".", 1)[0]
        truth = directory / f"{number}.truth.json"
        if number.isdigit() and truth.exists():
            cases.append(Case(int(number), events, json.loads(truth.read_text("utf-8"))))
    return sorted(cases, key=lambda c: c.number)


def evaluate(name: str, runner: CaseRunner, cases: Sequence[Case], topology: Topology) -> Report:
    report = Report(name)
    started = time.perf_counter()
    for case in cases:
        ranked, fault_type = runner(case.events, topology)
        truth = case.truth["root_cause_entity"]
        label = case.truth.get("fault_type", "?")
        rank = next((i for i, entity in enumerate(ranked) if topology.matches(entity, truth)), None)
        report.ranks[case.number] = rank
        parity = report.even if case.number % 2 == 0 else report.odd
        for tally in (report.overall, parity, report.by_fault[label], report.by_level[case.truth.get("level", "?")]):
            tally.add(rank)
        report.fault_type_agreement += rank == 0 and fault_type == expected_fault_type(label)
    report.seconds = time.perf_counter() - started
    return report


def expected_fault_type(label: str) -> str:
    """A rough reading of the data set's fault labels in rtem's fault-type vocabulary, for reporting."""
    label = label.lower()
    for pattern, fault in ((r"disk space", "disk_space"), (r"i/o", "disk_io"), (r"network|packet", "network"),
                           (r"memory", "memory"), (r"cpu", "cpu"), (r"process", "process")):
        if re.search(pattern, label):
            return fault
    return "unknown"


# -- output ----------------------------------------------------------------------------------------


def as_json(reports: Sequence[Report], cases: Sequence[Case]) -> dict:
    return {
        "cases": len(cases),
        "runners": {r.runner: {
            "overall": r.overall.as_dict(), "even": r.even.as_dict(), "odd": r.odd.as_dict(),
            "by_level": {k: v.as_dict() for k, v in sorted(r.by_level.items())},
            "by_fault_type": {k: v.as_dict() for k, v in sorted(r.by_fault.items())},
            "fault_type_agreement_on_top1": r.fault_type_agreement,
            "seconds": round(r.seconds, 3),
            "ranks": {str(k): v for k, v in r.ranks.items()},
        } for r in reports},
    }


def print_text(reports: Sequence[Report], cases: Sequence[Case]) -> None:
    reasoner, baseline = reports
    print(f"{len(cases)} cases\n")
    print(f"{'':28s} {'top-1':>14s} {'top-3':>14s} {'MRR':>6s} {'time':>8s}")
    for r in reports:
        for label, tally in (("all", r.overall), ("even cases", r.even), ("odd cases", r.odd)):
            t = tally.as_dict()
            took = f"{r.seconds:7.2f}s" if label == "all" else ""
            print(f"{r.runner + ' ' + label:28s} {t['top1']:>3d} = {t['top1_rate']:6.1%} {t['top3']:>3d} = "
                  f"{t['top3_rate']:6.1%} {t['mrr']:6.3f} {took}")
    print("(time: reading and analysing every case, in this process)")
    print(f"\nfault type of a correct top-1 matches the case label (roughly mapped): "
          f"{reasoner.fault_type_agreement} of {reasoner.overall.top1}")
    for title, mine, theirs in (("level", reasoner.by_level, baseline.by_level),
                                ("fault type", reasoner.by_fault, baseline.by_fault)):
        print(f"\n{title:42s} {'n':>3s} {'top-1':>6s} {'top-3':>6s}   baseline {'top-1':>6s} {'top-3':>6s}")
        for key in sorted(mine, key=lambda k: (-mine[k].cases, k)):
            m, b = mine[key], theirs[key]
            print(f"{key:42s} {m.cases:3d} {m.top1:6d} {m.top3:6d}   {'':8s} {b.top1:6d} {b.top3:6d}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases_dir", nargs="?", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--topology", type=Path, help="topology file (default: topology.json beside the cases)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--llm", choices=["none"], default="none",
                        help="reasoner to benchmark; only the deterministic one (none) exists so far")
    args = parser.parse_args(argv)

    directory = args.cases_dir / "cases" if (args.cases_dir / "cases").is_dir() else args.cases_dir
    topology_path = args.topology or next(
        (p for p in (directory / "topology.json", directory.parent / "topology.json") if p.exists()), None)
    if topology_path is None:
        parser.error(f"no topology.json in {directory} or its parent; pass --topology")
    cases = load_cases(directory)
    if not cases:
        parser.error(f"no N.events.jsonl with N.truth.json in {directory}")
    topology = Topology.load(topology_path)
    reports = [evaluate("reasoner", run_case, cases, topology), evaluate("baseline", run_baseline, cases, topology)]
    if args.json:
        print(json.dumps(as_json(reports, cases), indent=2))
    else:
        print_text(reports, cases)
    return 0


if __name__ == "__main__":
    sys.exit(main())
