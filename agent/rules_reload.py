"""Hot reload of the rule set for `rtem run`: check a changed rules directory, swap it in atomically.

    reloader = RulesReloader(rules_dir, audit=audit, history=history, state=state, actor="rtem run")
    parts = build(..., rules=reloader)               # the graph and triage read reloader.current()
    task = asyncio.create_task(reloader.watch(1.0))  # polls the files; or call reloader.check_now()

A change is picked up when a file under the rules directory (guardrails/, contracts/, detect/) is
added, removed or rewritten. The whole set is then checked exactly as `rtem rules check` does
(rules/_check.py); only a set without errors is swapped in, as one new `RuleSnapshot` (guard,
detections, digest; agent/ruleset.py) replacing the old one in a single assignment, so a verdict is
always judged by one complete rule set. Nothing else is rewired: the graph reads `current()` for
each verdict, and triage replaces its own detector between two batches when the detections changed. An invalid change is refused: the errors go to the log and to the audit log
(`rules.refused`), and the previous rules stay active until the files are fixed. Every load is
audited (`rules.loaded`): who/what loaded which version, when, from which files, and what changed
(rule ids added, removed, changed), also across restarts (the diff is against the last load on record).

With `shared` (several workers on one database) the rules are the cluster's: a set this worker loads
from its own files is published, and the watcher also loads, checked the same way, each version another
worker published (agent/rules_shared.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from rules import CheckReport, DetectionSet, Finding, RulesError, packaged_rules_dir

from .audit import AuditLog
from .ruleset import RuleSnapshot
from .rules_shared import ClusterRules, RulesVersion, SharedRules
from .rules_files import (WATCHED, RulesDiff, changed_files as _changed, check_for_run as _check,
                          content_digest as _content_digest, default_actor, definitions, diff_definitions,
                          rule_files as _files)

log = logging.getLogger("rtem.rules")

# A replaced rule set is freed this long after the swap: a guard evaluation that picked it up just
# before (on a worker thread) finishes with it first. durable-rules would otherwise keep it forever.
RETIRE_GRACE_S = 60.0
_MAX_AUDITED_ERRORS = 20


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


class RulesReloader:
    """Owns the rule set in force; see the module docstring for the life of a change."""

    def __init__(self, rules_dir: str | Path | None, *, audit: AuditLog | None = None, history=None, state=None,
                 actor: str | None = None, grace_s: float = RETIRE_GRACE_S, shared: SharedRules | None = None,
                 worker_id: str | None = None):
        """`history` and `state` are what every loaded guard reads (the action history its limits
        count, the system state its preconditions check). With `shared`, this worker (`worker_id`) joins
        the cluster's rules: it adopts the latest published version, or publishes its own set."""
        self.rules_dir = Path(rules_dir) if rules_dir else None
        self.audit = audit
        self.history = history
        self.state = state
        self.actor = actor or default_actor()
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
        self._local = _content_digest(self._files)  # what the directory held when last read
        previous = self._last_loaded()
        diff = diff_definitions(previous.get("definitions", {}), self._definitions) if previous else None
        self._audit_loaded(report, "start", diff, previous.get("digest") if previous else None, self._files)
        self.last_result = ReloadResult("loaded", report.digest, previous.get("digest") if previous else None,
                                        diff=diff, warnings=tuple(report.warnings))
        self.cluster = ClusterRules(shared, worker_id or default_actor()) if shared is not None else None
        self._cluster_failing = False  # following the cluster failed at the last look (logged once per outage)
        if self.cluster is not None:
            joined = self.cluster.join(self._root, report.digest, self._local, self.actor)
            if joined is not None:
                self._adopt(joined, *self._checked(joined))

    # -- what run.py calls ----------------------------------------------------------------------------

    def current(self) -> RuleSnapshot:
        return self._snapshot

    def subscribe(self, listener: Callable[[RuleSnapshot, ReloadResult], None]) -> None:
        """Call `listener(snapshot, result)` after each swap (on the thread that swapped)."""
        self._listeners.append(listener)

    async def reload(self, actor: str, via: str = "api") -> ReloadResult:
        """Check the files now on a worker thread and swap them in on the caller's (the event loop's)
        thread, in the name of `actor`; unlike the watcher, a refused set is judged (and refused) again."""
        files = _files(self._root)
        content = _content_digest(files)
        report = await asyncio.to_thread(_check, self._root)
        news = self._news(content)
        if report.ok and not news:
            return ReloadResult("unchanged", self._snapshot.digest, warnings=tuple(report.warnings))
        self._fingerprint = self._stat()
        return self._apply(report, files, content, via, actor)

    def status(self) -> dict[str, Any]:
        """The rule set in force, its files, and what the last reload attempt did."""
        return {"digest": self._snapshot.digest, "dir": str(self._root), "files": self._files,
                "cluster": self.cluster.status() if self.cluster is not None else None,
                "ruleset": self._snapshot.guard.guardrails.digest, "detections": self._snapshot.detections.digest,
                "last_result": self.last_result.to_dict() if self.last_result else None,
                "last_refusal": self.last_refusal.to_dict() if self.last_refusal else None}

    def close(self) -> None:
        """Free the rule set in force and every replaced one (at shutdown, once nothing judges)."""
        self._retired, retired = [], self._retired
        for _, close in retired:
            close()
        self._snapshot.guard.close()
        if self.cluster is not None:
            self.cluster.close()

    def check_now(self, via: str = "check_now") -> ReloadResult:
        """Read the files now; when their content changed, check them and swap them in, or refuse them."""
        self._fingerprint = self._stat()
        return self._consider(_files(self._root), via)

    def check_cluster(self) -> ReloadResult | None:
        """Load the cluster's latest version now if another worker published one since (what each watch
        tick does); None when there is nothing new, or no cluster."""
        version = self.cluster.news(self._snapshot.digest, self._local) if self.cluster is not None else None
        return self._adopt(version, *self._checked(version)) if version is not None else None

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
            if self.cluster is not None:
                await self._follow_cluster()
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
                if not self._news(content):
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
        if not self._news(content):
            return ReloadResult("unchanged", self._snapshot.digest)
        return self._apply(_check(self._root), files, content, via)

    def _news(self, content: str) -> bool:
        """Whether the directory's `content`, just read, is a change to judge: not what it held when last
        read, nor the set in force, nor a set already refused. (A worker that adopted the cluster's
        version keeps its own, older files: they are no news, and an API reload on it publishes nothing.)"""
        news = content not in (self._local, _content_digest(self._files), self._refused)
        self._local = content
        return news

    async def _follow_cluster(self) -> None:
        """One watch tick's look at the cluster: a version another worker published is checked in a
        worker thread and swapped in here, on the event loop, as a change to the files is."""
        try:
            version = await asyncio.to_thread(self.cluster.news, self._snapshot.digest, self._local)
            if version is not None:
                self._adopt(version, *await asyncio.to_thread(self._checked, version))
        except Exception as exc:  # the database may be down for a while: the rules in force stay
            if not self._cluster_failing:  # once per outage, not once a second
                log.exception("following the cluster's rules failed; the rules in force stay")
            else:
                log.debug("following the cluster's rules still fails: %s", exc)
            self._cluster_failing = True
        else:
            if self._cluster_failing:
                log.info("following the cluster's rules works again")
            self._cluster_failing = False

    def _checked(self, version: RulesVersion) -> tuple[Path, CheckReport]:
        root = self.cluster.materialise(version)
        return root, _check(root)

    def _adopt(self, version: RulesVersion, root: Path, report: CheckReport) -> ReloadResult | None:
        """Load (or refuse) the version another worker published, written to `root` and checked there."""
        if not self.cluster.wanted(version.id, version.digest, self._snapshot.digest):  # a newer one came meanwhile
            if report.guard is not None:
                report.guard.close()
            return None
        files = _files(root)
        result = self._apply(report, files, _content_digest(files), "cluster", self.actor, version)
        self.cluster.adopted(version, self._snapshot.digest, self._local)
        return result

    def _apply(self, report: CheckReport, files: list[dict[str, Any]], content: str, via: str,
               actor: str | None = None, version: RulesVersion | None = None) -> ReloadResult:
        """Judge a set; a set of this worker's own files that loads is published to the cluster."""
        result = self._judge(report, files, content, via, actor or self.actor, version)
        self.last_result = result
        if result.status == "refused":
            self.last_refusal = result
        elif result.status == "loaded" and version is None and self.cluster is not None:
            try:
                self.cluster.publish(self._root, result.digest, content, via=via, actor=actor or self.actor)
            except Exception:  # loaded here all the same; the next change publishes again
                log.exception("rules %s loaded but not published to the cluster", result.digest)
        return result

    def _judge(self, report: CheckReport, files: list[dict[str, Any]], content: str, via: str,
               actor: str, version: RulesVersion | None = None) -> ReloadResult:
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
                    "rules.refused", node="rules", inputs={"actor": actor, "via": via, **self._source(version),
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
        self._audit_loaded(report, via, diff, previous, changed, actor, version)
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

    def _audit_loaded(self, report: CheckReport, via: str, diff: RulesDiff | None, previous: str | None,
                      files: list[dict[str, Any]], actor: str | None = None, version: RulesVersion | None = None) -> None:
        actor = actor or self.actor
        if self.audit is None:
            return
        summary = diff.summary() if diff is not None else "first load on record"
        self.audit.append(
            "rules.loaded", node="rules",
            inputs={"actor": actor, "via": via, **self._source(version), "files": files},
            decision={"digest": report.digest, "previous": previous,
                      "diff": asdict(diff) if diff is not None else None, "counts": report.counts(),
                      "definitions": self._definitions},
            reasons=[f"{actor} loaded rules {report.digest} via {via}: {summary}"],
            versions={"ruleset": report.guardrails.digest if report.guardrails else "",
                      "detections": report.detections.digest if report.detections else "", "rules": report.digest})

    def _source(self, version: RulesVersion | None) -> dict[str, Any]:
        """Where a judged set came from, for its audit record: this worker's directory, or the version
        another worker published (`cluster`: its id, who published it, when)."""
        if version is None:
            return {"dir": str(self._root)}
        return {"dir": str(self.cluster.directory_of(version)), "cluster": version.origin()}

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
