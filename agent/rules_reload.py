"""Hot reload of the rule set for `rtem run`: check a changed rules directory, swap it in atomically.

    reloader = RulesReloader.for_components(parts)     # checks and loads the rules, audits `rules.loaded`
    reloader.attach(parts)                             # the graph judges with reloader.guard from now on
    task = asyncio.create_task(reloader.watch(1.0))    # polls the files; or call reloader.check_now()

A change is picked up when a file under the rules directory (guardrails/, contracts/, detect/) is
added, removed or rewritten. The whole set is then checked exactly as `rtem rules check` does
(rules/_check.py); only a set without errors is swapped in, as one new `RuleSnapshot` (guard,
detections, digest) replacing the old one in a single assignment, so a verdict is always judged by
one complete rule set. An invalid change is refused: the errors go to the log and to the audit log
(`rules.refused`), and the previous rules stay active until the files are fixed. Every load is
audited (`rules.loaded`): who/what loaded which version, when, from which files, and what changed
(rule ids added, removed, changed), also across restarts (the diff is against the last load on record).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, NamedTuple

from rules import CheckReport, DetectionSet, Detector, Finding, Guard, RulesError, Topology, packaged_rules_dir

from .audit import AuditLog
from .rules_files import (WATCHED, RulesDiff, changed_files as _changed, check_for_run as _check,
                          content_digest as _content_digest, default_actor, definitions, diff_definitions,
                          rule_files as _files)

log = logging.getLogger("rtem.rules")

# A replaced rule set is freed this long after the swap: a guard evaluation that picked it up just
# before (on a worker thread) finishes with it first. durable-rules would otherwise keep it forever.
RETIRE_GRACE_S = 60.0
_MAX_AUDITED_ERRORS = 20


class RuleSnapshot(NamedTuple):
    """The rule set in force: what `current()` returns and `attach` wires in."""

    guard: Guard
    detections: DetectionSet
    digest: str


@dataclass(frozen=True)
class ReloadResult:
    """What one `check_now()` did. `digest` is the version in force afterwards."""

    status: Literal["unchanged", "loaded", "refused"]
    digest: str
    previous: str | None = None
    attempted: str | None = None
    diff: RulesDiff | None = None
    errors: tuple[Finding, ...] = ()
    warnings: tuple[Finding, ...] = ()
    at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    @property
    def ok(self) -> bool:
        return self.status != "refused"

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "digest": self.digest, "previous": self.previous, "attempted": self.attempted,
                "diff": asdict(self.diff) if self.diff else None, "errors": [e.to_dict() for e in self.errors],
                "warnings": [w.to_dict() for w in self.warnings], "at": self.at.isoformat()}


class RulesInvalid(RulesError):
    """The rule set cannot be loaded at all (at start-up); `findings` holds every error."""

    def __init__(self, findings: list[Finding]):
        first = findings[0]
        more = f" (and {len(findings) - 1} more; run `rtem rules check`)" if len(findings) > 1 else ""
        super().__init__(first.file, first.line, first.column, first.message + more, first.hint)
        self.findings = findings


class LiveGuard:
    """A guard that always judges with the reloader's current rule set (the graph holds this one)."""

    def __init__(self, reloader: RulesReloader):
        self._reloader = reloader

    def evaluate(self, proposal, **context):
        return self._reloader.current().guard.evaluate(proposal, **context)

    def __getattr__(self, name: str):  # history, state, guardrails, contracts: the current guard's
        return getattr(self._reloader.current().guard, name)


class RulesReloader:
    """Owns the rule set in force; see the module docstring for the life of a change."""

    def __init__(self, rules_dir: str | Path | None, *, topology: Topology | None = None,
                 audit: AuditLog | None = None, history=None, state=None, actor: str | None = None,
                 grace_s: float = RETIRE_GRACE_S):
        self.rules_dir = Path(rules_dir) if rules_dir else None
        self.topology = topology or Topology()
        self.audit = audit
        self.history = history
        self.state = state
        self.actor = actor or default_actor()
        self.guard = LiveGuard(self)
        self._listeners: list[Callable[[RuleSnapshot, ReloadResult], None]] = []
        self.grace_s = grace_s
        self._retired: list[tuple[float, Callable[[], None]]] = []
        self._fingerprint = self._stat()
        self._refused: str | None = None
        self.last_result: ReloadResult | None = None
        self.last_refusal: ReloadResult | None = None
        report = _check(self._root)
        if not report.ok:
            raise RulesInvalid(report.errors)
        self._snapshot = self._snapshot_of(report)
        self._definitions = definitions(report)
        self._files = _files(self._root)
        previous = self._last_loaded()
        diff = diff_definitions(previous.get("definitions", {}), self._definitions) if previous else None
        self._audit_loaded(report, "start", diff, previous.get("digest") if previous else None, self._files)
        self.last_result = ReloadResult("loaded", report.digest, previous.get("digest") if previous else None,
                                        diff=diff, warnings=tuple(report.warnings))

    @classmethod
    def for_components(cls, components, actor: str | None = None) -> RulesReloader:
        """A reloader for `build()`'s components: their rules directory, topology, audit log, and the
        action history and state the guard they were built with reads."""
        guard = components.graph.deps.guard
        return cls(components.settings.rules_dir, topology=components.topology, audit=components.audit,
                   history=getattr(guard, "history", None), state=getattr(guard, "state", None), actor=actor)

    # -- what run.py calls ----------------------------------------------------------------------------

    def current(self) -> RuleSnapshot:
        return self._snapshot

    def subscribe(self, listener: Callable[[RuleSnapshot, ReloadResult], None]) -> None:
        """Call `listener(snapshot, result)` after each swap (on the thread that swapped)."""
        self._listeners.append(listener)

    def attach(self, components) -> None:
        """Wire into `build()`'s components: the graph judges with `self.guard`, and each swap replaces
        the triage detector (keeping its window state) and the versions recorded with decisions.
        Call `check_now` on the thread that runs triage (the event loop), so a swap lands between batches."""
        replaced = components.graph.deps.guard
        components.graph.deps.guard = self.guard
        if isinstance(replaced, Guard):
            self._retire(replaced.close)  # build()'s own guard, judged with until now
        self._sync(components, self._snapshot)

        def swap(snapshot: RuleSnapshot, result: ReloadResult) -> None:
            self._sync(components, snapshot)
        self.subscribe(swap)

    async def reload(self, actor: str, via: str = "api") -> ReloadResult:
        """Check the files now on a worker thread and swap them in on the caller's (the event loop's)
        thread, in the name of `actor`; unlike the watcher, a refused set is judged (and refused) again."""
        files = _files(self._root)
        content = _content_digest(files)
        report = await asyncio.to_thread(_check, self._root)
        if report.ok and content == _content_digest(self._files):
            return ReloadResult("unchanged", self._snapshot.digest, warnings=tuple(report.warnings))
        self._fingerprint = self._stat()
        return self._apply(report, files, content, via, actor)

    def status(self) -> dict[str, Any]:
        """The rule set in force, its files, and what the last reload attempt did."""
        return {"digest": self._snapshot.digest, "dir": str(self._root), "files": self._files,
                "ruleset": self._snapshot.guard.guardrails.digest, "detections": self._snapshot.detections.digest,
                "last_result": self.last_result.to_dict() if self.last_result else None,
                "last_refusal": self.last_refusal.to_dict() if self.last_refusal else None}

    def check_now(self, via: str = "check_now") -> ReloadResult:
        """Read the files now; when their content changed, check them and swap them in, or refuse them."""
        self._fingerprint = self._stat()
        return self._consider(_files(self._root), via)

    async def watch(self, interval: float = 1.0, stop: asyncio.Event | None = None) -> None:
        """Poll the files every `interval` seconds until `stop` is set (or the task is cancelled).

        A change is considered once the files have stood still for one interval, so an editor's
        half-written save is not judged. The check and compile run in a worker thread; the swap
        happens on the event loop, between two triage batches."""
        pending: tuple | None = None
        while stop is None or not stop.is_set():
            try:
                if stop is None:
                    await asyncio.sleep(interval)
                else:
                    await asyncio.wait_for(stop.wait(), timeout=interval)
                    break
            except asyncio.TimeoutError:
                pass
            self._free_retired()
            fingerprint = self._stat()
            if fingerprint == self._fingerprint:
                pending = None
                continue
            if fingerprint != pending:  # still changing: look again next time
                pending = fingerprint
                continue
            self._fingerprint, pending = fingerprint, None
            try:
                files = _files(self._root)
                content = _content_digest(files)
                if content in (_content_digest(self._files), self._refused):
                    continue
                report = await asyncio.to_thread(_check, self._root)
                self._apply(report, files, content, "watch")
            except Exception:  # a reload must never take the service down
                log.exception("rules reload failed; the previous rules stay active")

    # -- internals ------------------------------------------------------------------------------------

    @property
    def _root(self) -> Path:
        return self.rules_dir or packaged_rules_dir()

    def _consider(self, files: list[dict[str, Any]], via: str) -> ReloadResult:
        content = _content_digest(files)
        if content in (_content_digest(self._files), self._refused):
            return ReloadResult("unchanged", self._snapshot.digest)
        return self._apply(_check(self._root), files, content, via)

    def _apply(self, report: CheckReport, files: list[dict[str, Any]], content: str, via: str,
               actor: str | None = None) -> ReloadResult:
        result = self._judge(report, files, content, via, actor or self.actor)
        self.last_result = result
        if result.status == "refused":
            self.last_refusal = result
        return result

    def _judge(self, report: CheckReport, files: list[dict[str, Any]], content: str, via: str,
               actor: str) -> ReloadResult:
        previous = self._snapshot.digest
        self._free_retired()
        if not report.ok:
            self._refused = content
            if report.guard is not None:
                report.guard.close()  # compiled to be checked, never judged with
            for error in report.errors:
                log.error("rules change refused: %s", error)
            if self.audit is not None:
                self.audit.append(
                    "rules.refused", node="rules", inputs={"actor": actor, "via": via, "dir": str(self._root),
                                                           "files": _changed(self._files, files)},
                    decision={"active": previous, "refused_content": content},
                    reasons=[str(e) for e in report.errors[:_MAX_AUDITED_ERRORS]], versions={"ruleset": previous})
            return ReloadResult("refused", previous, previous, content, errors=tuple(report.errors),
                                warnings=tuple(report.warnings))
        snapshot = self._snapshot_of(report)
        self._retire(self._snapshot.guard.close)
        new_definitions = definitions(report)
        diff = diff_definitions(self._definitions, new_definitions)
        changed = _changed(self._files, files)
        self._snapshot, self._definitions, self._files, self._refused = snapshot, new_definitions, files, None
        self._audit_loaded(report, via, diff, previous, changed, actor)
        log.info("rules %s loaded (was %s): %s", snapshot.digest, previous, diff.summary())
        result = ReloadResult("loaded", snapshot.digest, previous, content, diff, warnings=tuple(report.warnings))
        for listener in list(self._listeners):
            try:
                listener(snapshot, result)
            except Exception:
                log.exception("rules reload listener %r failed", listener)
        return result

    def _retire(self, close: Callable[[], None]) -> None:
        self._retired.append((time.monotonic() + self.grace_s, close))
        self._free_retired()

    def _free_retired(self) -> None:
        """Free the replaced rule sets whose grace period is over."""
        now = time.monotonic()
        due = [close for at, close in self._retired if at <= now]
        self._retired = [(at, close) for at, close in self._retired if at > now]
        for close in due:
            try:
                close()
            except Exception:
                log.exception("freeing a replaced rule set failed")

    def _snapshot_of(self, report: CheckReport) -> RuleSnapshot:
        guard = report.guard.bind(history=self.history, state=self.state)
        detections = report.detections or DetectionSet([], "", [])
        return RuleSnapshot(guard, detections, report.digest)

    def _sync(self, components, snapshot: RuleSnapshot) -> None:
        triage = components.triage
        if triage.detector.detections.digest != snapshot.detections.digest:
            detector = Detector(snapshot.detections, components.topology)
            detector.restore(triage.detector.state())
            self._retire(triage.detector.close)
            triage.detector = detector
        components.versions.update({"ruleset": snapshot.guard.guardrails.digest,
                                    "detections": snapshot.detections.digest, "rules": snapshot.digest})

    def _audit_loaded(self, report: CheckReport, via: str, diff: RulesDiff | None, previous: str | None,
                      files: list[dict[str, Any]], actor: str | None = None) -> None:
        actor = actor or self.actor
        if self.audit is None:
            return
        summary = diff.summary() if diff is not None else "first load on record"
        self.audit.append(
            "rules.loaded", node="rules",
            inputs={"actor": actor, "via": via, "dir": str(self._root), "files": files},
            decision={"digest": report.digest, "previous": previous,
                      "diff": asdict(diff) if diff is not None else None, "counts": report.counts(),
                      "definitions": self._definitions},
            reasons=[f"{actor} loaded rules {report.digest} via {via}: {summary}"],
            versions={"ruleset": report.guardrails.digest if report.guardrails else "",
                      "detections": report.detections.digest if report.detections else "", "rules": report.digest})

    def _last_loaded(self) -> dict[str, Any]:
        if self.audit is None:
            return {}
        records = self.audit.records(kind="rules.loaded")
        return records[-1].decision if records else {}

    def _stat(self) -> tuple:
        found = []
        for kind in WATCHED:
            directory = self._root / kind
            if directory.is_dir():
                for path in sorted(directory.iterdir()):
                    try:
                        info = path.stat()
                    except OSError:
                        continue
                    found.append((kind, path.name, info.st_mtime_ns, info.st_size))
        return tuple(found)
