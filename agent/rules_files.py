"""The rule files `rtem run` loads, as the hot reloader (agent/rules_reload.py) sees them.

The check a load must pass (`rtem rules check`, plus guardrails to judge with); the files, with their
hashes, owners and modification times; and what changed between two loads: files added, modified and
removed, and rule ids added, removed and changed per kind. Rules are compared by a short hash of each
one's definition (`definitions`), which the audit log keeps, so a diff also spans a restart.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .identity import operator

from rules import CheckReport, Finding, check_rules

WATCHED = ("guardrails", "contracts", "detect")


@dataclass(frozen=True)
class RulesDiff:
    """Rule ids added, removed and changed, per kind (guardrails, detections, contracts)."""

    added: dict[str, list[str]] = field(default_factory=dict)
    removed: dict[str, list[str]] = field(default_factory=dict)
    changed: dict[str, list[str]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not any(self.added.values()) and not any(self.removed.values()) and not any(self.changed.values())

    def summary(self) -> str:
        parts = []
        for label, table in (("added", self.added), ("removed", self.removed), ("changed", self.changed)):
            for kind, ids in table.items():
                if ids:
                    shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
                    parts.append(f"{kind} {label}: {shown}")
        return "; ".join(parts) or "no rule changed"


def check_for_run(root: Path) -> CheckReport:
    """`rules check`, plus what a running service needs on top: guardrails to judge with."""
    report = check_rules(root)
    if report.guardrails is None:
        report.findings.append(Finding("error", "invalid", str(root / "guardrails"), 1, 1,
                                       "no guardrails: a rules directory for rtem run needs guardrails/*.yaml"))
    return report


def definitions(report: CheckReport) -> dict[str, dict[str, str]]:
    """A short hash of each rule's definition, per kind: what a diff between two loads compares."""
    def short(value: Any) -> str:
        return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]

    guardrails = {r.id: short(r.definition()) for r in report.guardrails.rules} if report.guardrails else {}
    detections = {d.id: short({k: v for k, v in asdict(d).items() if k not in ("source", "line")})
                  for d in report.detections.detections} if report.detections else {}
    contracts = {name: c.digest for name, c in report.contracts.items()}
    return {"guardrails": guardrails, "detections": detections, "contracts": contracts}


def diff_definitions(before: dict[str, dict[str, str]], after: dict[str, dict[str, str]]) -> RulesDiff:
    """Rule ids added, removed and changed from `before` to `after` (both from `definitions`)."""
    added, removed, changed = {}, {}, {}
    for kind in ("guardrails", "detections", "contracts"):
        old, new = before.get(kind, {}), after.get(kind, {})
        added[kind] = [k for k in new if k not in old]
        removed[kind] = [k for k in old if k not in new]
        changed[kind] = [k for k in new if k in old and old[k] != new[k]]
    return RulesDiff(added, removed, changed)


def default_actor() -> str:
    """Who loads: the OS user, host and process (rtem cannot know who edited a file; the audited file
    list names each file's owner and modification time)."""
    return f"{operator()} pid {os.getpid()}"


def rule_files(root: Path) -> list[dict[str, Any]]:
    """Every file under the watched directories: name, SHA-256 (short), modification time and owner."""
    found = []
    for kind in WATCHED:
        directory = root / kind
        if not directory.is_dir():
            continue
        for path in sorted(directory.iterdir()):
            if not path.is_file():
                continue
            try:
                data = path.read_bytes()
                info = path.stat()
            except OSError:
                continue
            found.append({"file": f"{kind}/{path.name}", "sha256": hashlib.sha256(data).hexdigest()[:16],
                          "modified": datetime.fromtimestamp(info.st_mtime, timezone.utc).isoformat(),
                          "owner": _owner(info.st_uid)})
    return found


def changed_files(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The files of `after` added or modified since `before`, and those removed."""
    old = {f["file"]: f["sha256"] for f in before}
    new = {f["file"]: f for f in after}
    changed = [{**f, "change": "added" if name not in old else "modified"} for name, f in new.items()
               if old.get(name) != f["sha256"]]
    changed += [{"file": name, "change": "removed"} for name in old if name not in new]
    return changed


def content_digest(files: list[dict[str, Any]]) -> str:
    """One short hash of a file list's names and contents: equal when no file changed."""
    return hashlib.sha256("\n".join(f"{f['file']}={f['sha256']}" for f in files).encode()).hexdigest()[:16]


def _owner(uid: int) -> str:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return str(uid)
