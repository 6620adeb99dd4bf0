"""Learning from confirmed causes, at the edge: which confirmations an incident may learn from, the
model fitted on them (`agent.reasoner.LearnedModel`), what `rtem learn status` shows, and `learn.reset`.

Leak-free by construction: the examples for incident X are collected here, and only
- confirmations whose audit record precedes X's first `causes.ranked` record (while X has none, all so
  far: it is being diagnosed now), so a confirmation made after X was diagnosed never changes X's ranking,
  not even when X is diagnosed again (propose, a restart);
- confirmations after the latest `learn.reset` that also precedes that point;
- of incidents other than X whose last event came before X's first event (they ended before X opened).
The audit log's order is the clock here, not wall time: a recording replayed by `rtem analyze` has event
times in the past while its confirmations are made now.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from rules import Topology

from .audit import AuditLog
from .incident import CONFIRMED, ConfirmedCause, confirmed_causes
from .reasoner import (HISTORY_WINDOW, Example, History, LearnedModel, SignalKind, example_of, fit, history_of,
                       kinds_by_incident)

RESET = "learn.reset"
RANKED = "causes.ranked"
# Fitted models and per-incident examples kept in memory: a model is refitted only when the set of
# examples changes (a new confirmation), an example only when its incident or the topology changes.
CACHED_MODELS = 8
CACHED_EXAMPLES = 2000
# What history read of each earlier incident (its signal kinds before a diagnosed incident's start): every
# diagnosis reads the HISTORY_WINDOW incidents before it, mostly the same ones again, and reading their
# events (a log line's redaction and template) is the dear part. Remembered by incident, not by event
# shape, so a system whose every log line is distinct (request ids, timestamps) costs no more to remember:
# about 20 KB an incident measured on the 78 shared cases written as chatty logs (217 kinds each on average,
# each kind kept once however many incidents show it), so at most some 20 MB.
CACHED_INCIDENTS = 1000


@dataclass(frozen=True)
class Cutoff:
    """What incident X may learn from: audit records before `seq` (None: all), after `reset_seq`, of
    incidents that ended before `before_ts` (X's first event)."""

    seq: int | None
    reset_seq: int
    before_ts: float


class LearningCache:
    """Examples and fitted models by what they were computed from; bounded, least recently used out.
    Thread-safe: the graph's nodes run on worker threads, several incidents at once."""

    def __init__(self, models: int = CACHED_MODELS, examples: int = CACHED_EXAMPLES,
                 incidents: int = CACHED_INCIDENTS):
        self._models: OrderedDict[Hashable, LearnedModel] = OrderedDict()
        self._examples: OrderedDict[Hashable, Example | None] = OrderedDict()
        self._incidents: OrderedDict[Hashable, frozenset[SignalKind]] = OrderedDict()
        self._kinds: dict[SignalKind, SignalKind] = {}  # one copy of each kind, shared by the incidents showing it
        self._kinds_kept = 0  # how many kinds the remembered incidents showed when `_kinds` was last rebuilt
        self._limits = (models, examples, incidents)
        self._lock = threading.Lock()

    def model(self, key: Hashable, make) -> LearnedModel:
        return self._cached(self._models, key, make, self._limits[0])

    def example(self, key: Hashable, make) -> Example | None:
        return self._cached(self._examples, key, make, self._limits[1])

    def history(self, store, topology: Topology, before_ts: float, exclude: str | None) -> History:
        """The background of an incident that began at `before_ts`: what the HISTORY_WINDOW incidents
        opened before it showed before it began (`reasoner.learn_history` over `store.past_event_shapes`).
        Each earlier incident's signal kinds are remembered by its id, the count and latest time of its
        events read, and the topology; only incidents not read that way before are read from the store."""
        past = store.past_incidents(before_ts, limit=HISTORY_WINDOW, exclude=exclude)
        keys = {incident: (incident, count, last, topology.digest) for incident, count, last in past}
        with self._lock:
            known = {key: self._incidents[key] for key in keys.values() if key in self._incidents}
            for key in known:
                self._incidents.move_to_end(key)
        missing = [incident for incident, key in keys.items() if key not in known]
        if missing:
            read = kinds_by_incident(missing, store.event_shapes(missing, before_ts), topology)
            with self._lock:
                for incident in missing:
                    kinds = frozenset(self._kinds.setdefault(kind, kind) for kind in read[incident])
                    known[keys[incident]] = self._incidents[keys[incident]] = kinds
                forgotten = max(0, len(self._incidents) - self._limits[2])
                for _ in range(forgotten):
                    self._incidents.popitem(last=False)
                if forgotten:
                    self._forget_kinds()
        return history_of({incident: known[key] for incident, key in keys.items()})

    @property
    def kinds_held(self) -> int:
        """How many distinct signal kinds are interned for the remembered incidents (for diagnostics)."""
        with self._lock:
            return len(self._kinds)

    def _forget_kinds(self) -> None:
        """After incidents are forgotten: once the intern table holds twice the kinds it held when last
        rebuilt, rebuild it from the incidents still remembered, so kinds that only forgotten incidents
        showed go too (the lock is held). Amortised, a rebuild costs next to nothing per incident; without
        it a system whose log lines keep changing would intern every template it ever logged."""
        if len(self._kinds) <= 2 * self._kinds_kept:
            return
        self._kinds = {kind: kind for kinds in self._incidents.values() for kind in kinds}
        self._kinds_kept = len(self._kinds)

    def _cached(self, table: OrderedDict, key: Hashable, make, limit: int):
        with self._lock:
            if key in table:
                table.move_to_end(key)
                return table[key]
        value = make()  # outside the lock: a fit takes a while; two threads may both make it, one is kept
        with self._lock:
            table[key] = value
            table.move_to_end(key)
            if len(table) > limit:
                table.popitem(last=False)
        return value


def cutoff_for(audit: AuditLog, incident_id: str | None, first_ts: float | None) -> Cutoff:
    """Where learning for `incident_id` (None: for the status of now) stops, from the audit log."""
    seq = None
    if incident_id is not None:
        first = audit.records(incident_id=incident_id, kind=RANKED, limit=1)
        seq = first[0].seq if first else None
    resets = [r.seq for r in audit.records(kind=RESET) if seq is None or r.seq < seq]
    return Cutoff(seq, max(resets, default=0), first_ts if first_ts is not None else float("inf"))


def confirmations(audit: AuditLog, cutoff: Cutoff, exclude: str | None = None) -> dict[str, ConfirmedCause]:
    """The confirmed causes as they stood at the cutoff, by incident (never `exclude`)."""
    kept = [r for r in audit.records(kind=CONFIRMED, since_seq=cutoff.reset_seq)
            if cutoff.seq is None or r.seq < cutoff.seq]
    return {i: c for i, c in confirmed_causes(kept).items() if i != exclude}


def examples(store, audit: AuditLog, topology: Topology, cutoff: Cutoff, exclude: str | None = None,
             cache: LearningCache | None = None) -> list[Example]:
    """One example per confirmed incident that ended before the cutoff's time, oldest first."""
    cache = cache or LearningCache()
    found = []
    for incident_id, cause in confirmations(audit, cutoff, exclude).items():
        row = store.incident(incident_id)
        if row is None or row["status"] == "merged" or row["last_ts"] is None or row["last_ts"] >= cutoff.before_ts:
            continue
        key = (incident_id, cause.entity, topology.digest, row["event_count"], row["last_ts"])
        made = cache.example(key, lambda i=incident_id, c=cause.entity, t=row["first_ts"]:
                             _example(store, topology, i, c, t, cache))
        if made is not None:
            found.append((row["first_ts"], incident_id, made))
    return [e for _, _, e in sorted(found, key=lambda t: (t[0], t[1]))]


def _example(store, topology: Topology, incident_id: str, cause: str, first_ts: float,
             cache: LearningCache) -> Example | None:
    """The incident ranked as its diagnosis ranked it: with the history of the incidents before it (as
    `Deps.view` builds it), so the learned weights correct the ranking they will be blended with."""
    history = cache.history(store, topology, first_ts, incident_id)
    return example_of(incident_id, store.events(incident_id), topology, cause, history)


def learned_model(store, audit: AuditLog, topology: Topology, incident_id: str | None, first_ts: float | None,
                  cache: LearningCache | None = None) -> LearnedModel:
    """The model incident `incident_id` may use (see the module's docstring); empty with nothing to learn."""
    cache = cache or LearningCache()
    cutoff = cutoff_for(audit, incident_id, first_ts)
    found = examples(store, audit, topology, cutoff, exclude=incident_id, cache=cache)
    key = (topology.digest, tuple((e.incident_id, e.cause) for e in found))
    return cache.model(key, lambda: fit(found))


def status(store, audit: AuditLog, topology: Topology, limit: int = 10,
           cache: LearningCache | None = None) -> dict[str, Any]:
    """What has been learned as of now: confirmations, the incidents used, the top features in words, and
    how often rtem's ranking had the confirmed cause first (`agreement`). With the service's `cache`, asking
    again refits nothing until a confirmation is added."""
    cutoff = cutoff_for(audit, None, None)
    model = learned_model(store, audit, topology, None, None, cache)
    confirmed = confirmations(audit, cutoff)
    return {"confirmed": len(confirmed), "learned_from": model.incidents, "blend": round(model.blend, 4),
            "k": model.k, "reset_seq": cutoff.reset_seq or None, "summary": model.summary(limit) if model.incidents else
            "nothing learned yet: no confirmed cause that rtem ranked among its candidates",
            "features": [{"feature": name, "weight": round(weight, 4), "caused": model.support[name].caused,
                          "seen": model.support[name].seen, "says": model.sentence(name)}
                         for name, weight in model.top(limit)],
            "ranked": agreement(audit, confirmed)}


def agreement(audit: AuditLog, confirmed: dict[str, ConfirmedCause]) -> dict[str, Any]:
    """How often rtem's ranking (its latest diagnosis when the cause was confirmed) had the confirmed cause
    first and in its top 3: over every confirmed incident, and over those diagnosed with a learned model
    (the `causes.ranked` record's versions name one). Counts of different incidents, so a comparison of the
    two says how rtem did, not what learning changed."""
    def tally(causes: list[ConfirmedCause]) -> dict[str, int]:
        return {"confirmed": len(causes), "first": sum(c.rank == 1 for c in causes),
                "top3": sum(c.rank is not None and c.rank <= 3 for c in causes)}

    learned = []
    for incident_id, cause in confirmed.items():
        ranked = [r for r in audit.records(incident_id=incident_id, kind=RANKED) if r.seq < cause.seq]
        if ranked and "learned" in ranked[-1].versions:
            learned.append(cause)
    return {**tally(list(confirmed.values())), "with_learning": tally(learned)}


def reset(audit: AuditLog, *, by: str, via: str, note: str = "", now: datetime | None = None):
    """Forget every confirmation so far for learning (they stay in the log, and in reports): a `learn.reset`
    record; incidents diagnosed from now on learn only from confirmations made after it."""
    before = len(confirmations(audit, cutoff_for(audit, None, None)))
    return audit.append(RESET, node=via, inputs={"by": by, "via": via, "note": note},
                        decision={"forgotten": before, "by": by},
                        reasons=[f"{by} reset learning: {before} confirmed causes are no longer learned from"],
                        at=now or datetime.now(timezone.utc))
