"""Is the chat right or does it say it does not know? The questions of benchmarks/chat_questions.yaml over
the incidents of recordings, scored: answered correctly, correctly unknown, unanswered, wrong (target 0).

    python benchmarks/chat_eval.py [--demo-dir DIR] [--cases 0-5] [--llm openai|local] [--json]

Recordings:
- demo: `rtem demo` run headless (a subprocess, stdout not a terminal) into a temp data dir, or the data
  dir of an earlier run (`--demo-dir`, reused as is when it holds rtem.db).
- analysis: `rtem analyze` (in process, `agent.analyze.analyze_files`, as benchmarks/rca_accuracy.py calls
  it) of `--cases` of the shared Online-Boutique-cloudbed-2 data set into a temp dir.
Each question is asked through the deterministic path (`agent.chat.answer`) and, with `--llm`, through the
LLM path (`agent.llm.LlmChat`, configured as for `rtem ask --llm`: RTEM_LLM_* variables).

Scoring (`score`): an expected "I don't know" must get one; an expected grounded "nothing" must not cite
records; an expected answer must cite a record of an expected kind, only records of the expected incident
(if given), and no record about an action or cause on another entity than the expected ones (a service
stands for its instances), and name one of them. A reply that fails those is wrong; an "I don't know" to
an answerable question is unanswered (not wrong). The answered share is correct / answerable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.audit import AuditLog  # noqa: E402
from agent.chat import Answer, answer  # noqa: E402
from agent.chat_entities import Catalog  # noqa: E402
from agent.models import DecisionRecord  # noqa: E402
from agent.store import IncidentStore  # noqa: E402
from rules.topology import Topology  # noqa: E402

QUESTIONS = REPO / "benchmarks" / "chat_questions.yaml"
DATA = REPO.parent / "shared" / "data" / "Online-Boutique-cloudbed-2"
DEMO_TOPOLOGY = REPO / "agent" / "demo" / "topology.yaml"
VERBS = {"restart_instance": "restart", "drain_host": "drain", "failover_database": "fail over",
         "rollback_deploy": "roll back", "scale_out": "scale out", "shed_load": "shed load on",
         "open_circuit": "open the circuit of", "notify_oncall": "page about"}
CLOSED = ("resolved", "escalated", "merged")
OUTCOMES = ("correct", "correctly_unknown", "unanswered", "wrong")
Asker = Callable[[str, IncidentStore, AuditLog], Answer]


@dataclass(frozen=True)
class Expect:
    """What a right reply looks like: "unknown", "nothing", or "answer" with its constraints."""

    kind: str
    kinds: tuple[str, ...] = ()
    entities: tuple[str, ...] = ()
    incident: str | None = None


@dataclass
class Recording:
    """A store to ask about, and what the questions' conditions and placeholders read from it."""

    name: str
    db: Path
    topology: Topology | None
    facts: dict[str, bool] = field(default_factory=dict)
    values: dict[str, str] = field(default_factory=dict)
    # (what, action type, target) for every verdict (what: proposed, held), approval decision (decided) and
    # run (executed); (what, entity) for incidents (central: top cause or action target; involves) and changes
    actions: set[tuple[str, str, str]] = field(default_factory=set)
    entities: set[tuple[str, str]] = field(default_factory=set)

    def holds(self, condition: str) -> bool:
        """A fact (`held`), or `WHAT:TYPE:ENTITY` over actions (`proposed:drain_host:node-3`; an empty TYPE
        or ENTITY is any; ENTITY may list names `a|b`, each standing for itself and its instances), or
        `WHAT:ENTITY` over incidents and changes (`central:auth`, `involves:payments|paymentservice`)."""
        if ":" not in condition:
            return self.facts.get(condition, False)
        what, *rest = condition.split(":")
        names = self.members(rest[-1]) if rest[-1] else None
        if len(rest) == 2:
            return any(w == what and (not rest[0] or t == rest[0]) and (names is None or target in names)
                       for w, t, target in self.actions)
        return any(w == what and (names is None or e in names) for w, e in self.entities)

    def members(self, names: str) -> set[str]:
        catalog = Catalog([], self.topology)
        return {m for name in names.split("|") for m in catalog.group(name).members}


@dataclass
class Scored:
    question: str
    expected: str  # unknown, nothing or answer
    outcome: str
    why: str = ""
    reply: str = ""


@dataclass
class Tally:
    recording: str
    path: str
    scored: list[Scored] = field(default_factory=list)

    def count(self, outcome: str) -> int:
        return sum(s.outcome == outcome for s in self.scored)

    @property
    def answerable(self) -> int:
        return sum(s.expected != "unknown" for s in self.scored)

    @property
    def answered_share(self) -> float:
        """Correct answers to the answerable questions (a right "nothing" counts: it was answered)."""
        right = sum(s.outcome == "correct" for s in self.scored if s.expected != "unknown")
        return right / self.answerable if self.answerable else 1.0

    def summary(self) -> dict[str, Any]:
        return {"recording": self.recording, "path": self.path, "questions": len(self.scored),
                **{o: self.count(o) for o in OUTCOMES}, "answerable": self.answerable,
                "answered_share": round(self.answered_share, 3),
                "wrong_answers": [asdict(s) for s in self.scored if s.outcome == "wrong"]}


# -- the question file ------------------------------------------------------------------------------------

def load_questions(path: Path = QUESTIONS) -> list[dict[str, Any]]:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    questions = doc["questions"]
    for i, q in enumerate(questions):
        if "q" not in q or "expect" not in q:
            raise SystemExit(f"{path}: question {i + 1} needs `q` and `expect`")
    return questions


def expectation(raw: Any, recording: Recording) -> Expect:
    """The expectation that applies to this recording, placeholders filled."""
    if isinstance(raw, dict) and not {"kinds", "entities", "incident"} & set(raw):
        for condition, spec in raw.items():
            if condition == "otherwise" or recording.holds(fill_in(condition, recording.values)):
                return expectation(spec, recording)
        raise ValueError(f"no condition of {sorted(raw)} holds and there is no `otherwise`")
    if raw in ("unknown", "nothing"):
        return Expect(raw)
    fill = lambda s: fill_in(s, recording.values)  # noqa: E731
    return Expect("answer", tuple(raw.get("kinds", ())), tuple(fill(e) for e in raw.get("entities", ())),
                  fill(raw["incident"]) if raw.get("incident") else None)


def fill_in(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), text)


# -- scoring ----------------------------------------------------------------------------------------------

def score(reply: Answer, expect: Expect, records: dict[int, DecisionRecord], catalog: Catalog) -> tuple[str, str]:
    unknown = reply.text.lstrip().lower().startswith("i don't know")
    if expect.kind == "unknown":
        return ("correctly_unknown", "") if unknown else ("wrong", "expected I don't know")
    if unknown:
        return "unanswered", "answered I don't know"
    cited = [records.get(s) for s in reply.seqs]
    if None in cited:
        return "wrong", f"cites seqs the log does not hold: {[s for s in reply.seqs if s not in records]}"
    if expect.kind == "nothing":
        return ("wrong", "expected a grounded nothing, got cited records") if _substantive(cited) else ("correct", "")
    if not cited:
        return "wrong", "an answer citing no decision record"
    if expect.kinds and not any(r.kind in expect.kinds for r in cited):
        return "wrong", f"cites {sorted({r.kind for r in cited})}, expected one of {list(expect.kinds)}"
    if expect.incident and any(r.incident_id not in (None, expect.incident) for r in cited):
        return "wrong", f"cites records of {sorted({r.incident_id for r in cited} - {expect.incident})}"
    if expect.entities:
        allowed = {m for e in expect.entities for m in catalog.group(e).members}
        others = sorted({t for r in cited for t in subjects(r)} - allowed)
        if others:
            return "wrong", f"cites records about {others}, not {list(expect.entities)}"
        if not any(re.search(rf"(?<![\w-]){re.escape(m)}(?![\w-])", reply.text) for m in allowed):
            return "wrong", f"the text names none of {list(expect.entities)}"
    return "correct", ""


def subjects(record: DecisionRecord) -> set[str]:
    """The entities an action or cause record is about (none for records about a whole incident)."""
    p = record.inputs.get("proposal") or {}
    if p.get("target"):
        return {p["target"]}
    action = record.inputs.get("action")
    if isinstance(action, dict) and action.get("target"):
        return {action["target"]}
    if isinstance(action, str) and " on " in action:
        return {action.rsplit(" on ", 1)[1]}
    if record.kind == "causes.ranked":
        return {c["entity"] for c in record.decision.get("root_causes", [])[:1]}
    return set()


def _substantive(cited: Iterable[DecisionRecord | None]) -> bool:
    """A "nothing" may cite the incident it looked at (its opening), not records that would be an answer."""
    return any(r is not None and r.kind not in ("incident.opened",) for r in cited)


# -- recordings -------------------------------------------------------------------------------------------

def facts(db: Path, name: str, topology: Topology | None) -> Recording:
    """What the questions' conditions and placeholders need, read from the store and the log directly."""
    store = IncidentStore(db, readonly=True)
    with AuditLog(db) as audit:
        records = audit.records()
    rows = store.incidents()
    verdicts = [r for r in records if r.kind == "action.verdict"]
    held = [v for v in verdicts if v.decision.get("outcome") == "require_approval"]
    decided = [r for r in records if r.kind == "approval.decided"]
    last = rows[-1] if rows else None
    catalog = Catalog({e for r in rows for e in r["entities"]}, topology)
    rec = Recording(name, db, topology)
    rec.facts = {
        name: True, "held": bool(held), "approved": bool(decided),
        "executed": any(r.kind == "action.executed" for r in records),
        "confirmed": any(r.kind == "cause.confirmed" for r in records),
        "open": any(r["status"] not in CLOSED for r in rows),
        "waiting": any(a.get("status") == "awaiting_approval" for r in rows for a in r["actions"]),
        "held_in_last": bool(last) and any(v.incident_id == last["id"] for v in held),
    }
    acted = next((v.inputs["proposal"] for v in verdicts if v.inputs["proposal"]["type"] != "notify_oncall"), {})
    first_held = held[0].inputs["proposal"] if held else {}
    top = last["root_causes"][0]["entity"] if last and last["root_causes"] else ""
    rec.values = {
        "last_incident": last["id"] if last else "inc-none", "first_incident": rows[0]["id"] if rows else "inc-none",
        "missing_incident": "inc-000000000000", "top_cause": top, "top_cause_service": catalog.service_of(top),
        "acted_target": acted.get("target", ""), "acted_service": catalog.service_of(acted.get("target", "")),
        "acted_verb": VERBS.get(acted.get("type", ""), "act on"),
        "held_target": first_held.get("target", "orders-db"), "held_verb": VERBS.get(first_held.get("type", ""), "fail over"),
    }
    for v in verdicts:
        p = v.inputs["proposal"]
        rec.actions.add(("proposed", p["type"], p["target"]))
        if v.decision.get("outcome") == "require_approval":
            rec.actions.add(("held", p["type"], p["target"]))
    rec.actions |= {("decided", (d.inputs.get("action") or {}).get("type", ""), (d.inputs.get("action") or {}).get("target", ""))
                    for d in decided}
    for x in (r for r in records if r.kind == "action.executed"):
        label = re.match(r"#\d+ (\S+) on (\S+)$", x.inputs.get("action", ""))
        if label:
            rec.actions.add(("executed", label[1], label[2]))
    for row in rows:
        rec.entities |= {("involves", e) for e in row["entities"]}
        rec.entities |= {("central", e) for e in [*(a["target"] for a in row["actions"]),
                                                  *(c["entity"] for c in row["root_causes"][:1])]}
    rec.entities |= {("change", c["subject"]) for c in store.change_events(0, 1e13)}
    store.close()
    return rec


def demo_recording(workdir: Path, demo_dir: Path | None = None, timeout_s: float = 300) -> Recording:
    """A headless `rtem demo` run's store (or an earlier run's, if `demo_dir` holds one)."""
    data = demo_dir or workdir / "demo"
    if not (data / "rtem.db").exists():
        env = {**os.environ, "RTEM_LLM": "none"}
        done = subprocess.run([sys.executable, "-m", "agent", "demo", "--data-dir", str(data), "--json"], cwd=REPO,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout_s)
        if not (data / "rtem.db").exists():
            raise SystemExit(f"rtem demo wrote no store in {data} (exit {done.returncode}): {done.stderr[-800:]}")
    topology = Topology.load(DEMO_TOPOLOGY)
    return facts(data / "rtem.db", "demo", topology)


def analysis_recording(workdir: Path, cases: list[int], data: Path = DATA) -> Recording:
    """`rtem analyze` of these cases of the data set, in process, as one stream."""
    from agent.analyze import analyze_files
    from agent.config import Settings

    topology = Topology.load(data / "topology.json")
    files = [data / "cases" / f"{n}.events.jsonl" for n in cases]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise SystemExit(f"no such case file: {', '.join(missing[:3])}; see --cases and --data "
                         f"({len(list((data / 'cases').glob('*.events.jsonl')))} cases in {data / 'cases'})")
    settings = Settings(data_dir=workdir / "data", llm="none")
    [result] = asyncio.run(analyze_files(files, topology, settings, workdir=workdir / "analysis"))
    return facts(Path(result.db_path), "analysis", topology)


# -- running ----------------------------------------------------------------------------------------------

def evaluate(recording: Recording, questions: list[dict[str, Any]], ask: Asker, path: str) -> Tally:
    tally = Tally(recording.name, path)
    store = IncidentStore(recording.db, readonly=True)
    with AuditLog(recording.db) as audit:
        records = {r.seq: r for r in audit.records()}
        catalog = Catalog({e for r in store.incidents(include_merged=True) for e in r["entities"]}, recording.topology)
        for item in questions:
            question = fill_in(item["q"], recording.values)
            expect = expectation(item["expect"], recording)
            reply = ask(question, store, audit)
            outcome, why = score(reply, expect, records, catalog)
            tally.scored.append(Scored(question, expect.kind, outcome, why, reply.text[:300]))
    store.close()
    return tally


def deterministic(topology: Topology | None) -> Asker:
    return lambda q, store, audit: answer(q, store, audit, topology=topology)


def with_llm(chat) -> Asker:
    return lambda q, store, audit: chat.answer(q, store, audit)


def parse_cases(text: str) -> list[int]:
    cases: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cases += list(range(int(lo), int(hi or lo) + 1))
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo-dir", type=Path, help="reuse (or keep) a demo run's data dir")
    parser.add_argument("--no-demo", action="store_true", help="skip the demo recording")
    parser.add_argument("--cases", default="0-5", help="cases of the data set to analyze (e.g. 0-5 or 0,3,7)")
    parser.add_argument("--data", type=Path, default=DATA, help="the data set (cases/ and topology.json)")
    parser.add_argument("--questions", type=Path, default=QUESTIONS)
    parser.add_argument("--llm", choices=["openai", "local"], help="also score the LLM path (RTEM_LLM_* settings)")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args(argv)
    questions = load_questions(args.questions)
    tallies: list[Tally] = []
    with tempfile.TemporaryDirectory(prefix="rtem-chat-eval-") as scratch:
        workdir = Path(scratch)
        recordings = [] if args.no_demo else [demo_recording(workdir, args.demo_dir)]
        recordings.append(analysis_recording(workdir, parse_cases(args.cases), args.data))
        chat = None
        if args.llm:
            from agent.config import Settings
            from agent.llm import LlmChat

            chat = LlmChat(Settings(llm=args.llm))
        try:
            for rec in recordings:
                tallies.append(evaluate(rec, questions, deterministic(rec.topology), "deterministic"))
                if chat is not None:
                    tallies.append(evaluate(rec, questions, with_llm(chat), f"llm ({args.llm})"))
        finally:
            if chat is not None:
                chat.close()
    report(tallies, args.json, version=yaml.safe_load(args.questions.read_text())["version"])
    return 1 if any(t.count("wrong") for t in tallies) else 0


def report(tallies: list[Tally], as_json: bool, version: int) -> None:
    if as_json:
        print(json.dumps({"questions_version": version, "results": [t.summary() for t in tallies]}, indent=2))
        return
    print(f"chat evaluation, questions version {version}")
    print(f"{'recording':<10} {'path':<16} {'asked':>5} {'correct':>8} {'unknown ok':>10} {'unanswered':>10} "
          f"{'wrong':>6} {'answered':>9}")
    for t in tallies:
        print(f"{t.recording:<10} {t.path:<16} {len(t.scored):>5} {t.count('correct'):>8} "
              f"{t.count('correctly_unknown'):>10} {t.count('unanswered'):>10} {t.count('wrong'):>6} "
              f"{t.answered_share:>8.0%}")
    for t in tallies:
        for s in t.scored:
            if s.outcome in ("wrong", "unanswered"):
                print(f"  {t.recording}/{t.path} {s.outcome}: {s.question!r}: {s.why}\n      -> {s.reply[:200]!r}")


if __name__ == "__main__":
    sys.exit(main())
