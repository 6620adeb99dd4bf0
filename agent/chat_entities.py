"""Which topology entities a question names: "payments", "payment service", "paymentservice" and
"payments-0" all resolve, the service to itself and its instances (its `Group`).

Names come from the topology when one is known (the file of the log's last `topology.loaded`, or the one
the caller passes) and from what the store holds (incident entities, action targets, ranked causes);
without a topology an instance `svc-N` or `svc2-N` is taken to belong to service `svc`. A name that
looks like an entity (`paymentservice-9`, "billing service") and matches nothing is a `stranger`: the
question is then answered "I don't know", never about some other entity.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from rules.topology import Topology

__all__ = ["Catalog", "Group", "load_topology"]

SUFFIXES = ("service", "svc", "server", "s")  # dropped when comparing names: "payment service" ~ "payments"
ALIASES = {"database": "db", "databases": "db", "host": "node"}
NOT_NAMES = {"the", "a", "an", "rtem", "it", "this", "that", "service", "services", "incident", "action", "what",
             "why", "who", "which", "did", "you", "was", "is", "of", "on", "to", "for", "me", "last", "root", "cause"}
INCIDENT_WORDS = {"last", "latest", "first", "current", "previous", "same", "whole", "recent", "open", "big", "other",
                  "next", "earlier", "new", "newest", "oldest", "one"}
OBJECT_FILLERS = {"the", "a", "an", "of", "on", "to", "for", "out", "up", "back", "over", "its", "their", "our"}
GENERIC_OBJECTS = {"it", "that", "this", "them", "anything", "something", "everything", "all", "any", "again", "one",
                   "ones", "now", "was", "were", "is", "did", "you", "rtem", "because", "so", "in", "at", "when",
                   "and", "or", "someone", "somebody", "anyone", "people", "us", "me", "oncall", "on-call", "executed", "skipped", "run", "happen", "approved", "needed", "by", "load", "circuit"}
INSTANCE = re.compile(r"^(?P<service>[a-z][a-z0-9-]*?)2?-\d+$")


@dataclass(frozen=True)
class Group:
    """One entity a question named and what answers about it may rest on (itself and its instances)."""

    name: str
    members: frozenset[str] = field(default_factory=frozenset)

    def label(self) -> str:
        others = sorted(self.members - {self.name})
        return self.name + (f" (and its instances {', '.join(others)})" if others else "")


class Catalog:
    """Entity names, their normalized keys, and each service's instances."""

    def __init__(self, names: Iterable[str], topology: Topology | None = None):
        self.topology = topology
        self.names: set[str] = {n for n in names if n}
        self.instances: dict[str, set[str]] = {}
        if topology is not None:
            self.names.update(e.id for e in topology.entities)
            for entity in topology.entities:
                if entity.type == "service":
                    self.instances[entity.id] = set(topology.instances(entity.id))
        for name in list(self.names):
            match = INSTANCE.match(name)
            if match and match["service"] not in ("node", "host") and not self._owned(name):
                self.instances.setdefault(match["service"], set()).add(name)
                self.names.add(match["service"])
        self._keys: dict[str, set[str]] = {}
        for name in self.names:
            for key in _keys(name):
                self._keys.setdefault(key, set()).add(name)

    def group(self, name: str) -> Group:
        return Group(name, frozenset({name, *self.instances.get(name, ())}))

    def service_of(self, name: str) -> str:
        return next((s for s, members in self.instances.items() if name in members), name)

    def resolve(self, question: str) -> tuple[list[Group], list[str]]:
        """The entities the question names (longest phrase first, each once) and the entity-like names in
        it that match nothing known (strangers)."""
        words = [ALIASES.get(w, w) for w in re.findall(r"[a-z0-9]+", question.lower())]
        found: list[Group] = []
        used: set[int] = set()
        for size in (3, 2, 1):
            for start in range(len(words) - size + 1):
                span = set(range(start, start + size))
                if span & used or (size == 1 and words[start] in NOT_NAMES):
                    continue
                names = self._match("".join(words[start:start + size]))
                if names:
                    used |= span
                    found += [self.group(n) for n in sorted(names) if all(g.name != n for g in found)]
        return found, self._strangers(question, words, used)

    def neighbourhood(self, entities: Iterable[str]) -> set[str]:
        """The entities and everything one topology relation away (an instance's service, a service's
        instances, a host's instances, callers and callees); without a topology, services and instances."""
        near = set(entities)
        if self.topology is not None:
            return near | self.topology.blast_radius([n for n in near if n in self.topology])
        for name in list(near):
            service = self.service_of(name)
            near |= {service, *self.instances.get(service, ())}
        return near

    def _match(self, phrase: str) -> set[str]:
        if len(phrase) < 3 or phrase.isdigit():
            return set()
        for key in _keys(phrase):
            if key in self._keys:
                return self._keys[key]
        return set()

    def _owned(self, name: str) -> bool:
        return any(name in members for members in self.instances.values())

    def _strangers(self, question: str, words: list[str], used: set[int]) -> list[str]:
        q = question.lower()
        named = {m for m in re.findall(r"\b[a-z][a-z0-9]*(?:-[a-z0-9]+)*-\d+\b", q) if not m.startswith("inc-")}
        named |= set(re.findall(r"\b([a-z][a-z0-9]*service[0-9]*)\b(?!-)", q))
        named |= {f"{a} service" for a, b in zip(words, words[1:]) if b in ("service", "svc", "db", "queue", "cache", "cluster")
                  and a not in NOT_NAMES and a not in ("every", "each", "any", "one", "that")}
        # "the auth incident": the word before incident/outage names an entity, or nothing known
        named |= {m for m in re.findall(r"\b(?:the|that) ([a-z][a-z0-9-]*) (?:incident|outage|problem|issue)", q)
                  if m not in INCIDENT_WORDS}
        return sorted(n for n in named if not self._match(re.sub(r"[^a-z0-9]", "", n)))

    def unresolved_object(self, q: str, verbs: Iterable[str]) -> str | None:
        """The word right after an action verb ("restart frontend") when it names no known entity."""
        for verb in verbs:
            for m in re.finditer(rf"(?:{verb})\w*\s+(?P<object>(?:[a-z0-9-]+\s*){{1,4}})", q):
                words = [ALIASES.get(w, w) for w in re.findall(r"[a-z0-9]+(?:-[a-z0-9]+)*", m["object"])]
                words = [w for w in words if w not in OBJECT_FILLERS]
                if not words or words[0] in GENERIC_OBJECTS or words[0].startswith("inc-"):
                    continue
                plain = [re.sub(r"[^a-z0-9]", "", w) for w in words]
                if not (self._match(plain[0]) or (len(plain) > 1 and self._match(plain[0] + plain[1]))):
                    return words[0]
        return None


def _keys(name: str) -> list[str]:
    """The exact key, then the key without a service-ish suffix: payments, paymentservice -> payment."""
    key = re.sub(r"[^a-z0-9]", "", ALIASES.get(name.lower(), name.lower()))
    keys = [key]
    for suffix in SUFFIXES:
        if key.endswith(suffix) and len(key) - len(suffix) >= 3:
            keys.append(key[: -len(suffix)])
            stem = key[: -len(suffix)]
            if stem.endswith("s") and len(stem) > 4:
                keys.append(stem[:-1])
    return list(dict.fromkeys(keys))


def load_topology(path: str | Path | None) -> Topology | None:
    """The topology in a file, or None when there is none or it cannot be read (names then come from the
    store alone)."""
    if not path or not Path(path).is_file():
        return None
    try:
        return Topology.load(path)
    except Exception:  # a topology that does not load only costs instance lookups, not the answer
        return None
