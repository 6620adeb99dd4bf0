"""Dead letters a person can read, send back and remove: what `rtem dlq` and `/api/v1/dlq` do.

A redrive re-checks every message with the consumer's own door (`parse_event`, then the future-skew
check against now): only what passes now goes back to EVENTS and leaves the DLQ; what still fails stays,
and the report says why. Every redrive and purge is an audit record naming who did it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum

from pydantic import BaseModel, computed_field

from bus import Bus, DeadLetter, Event, InvalidEvent, dated_ahead, full_reason, parse_event, stream_full

from .audit import AuditLog

__all__ = ["DeadLetterDetail", "DeadLetterKind", "DeadLetterQueue", "DeadLetterSummary", "DlqError", "DlqFilter",
           "Outcome", "PurgeReport", "RedriveReport", "RedriveResult", "recheck", "redrive_id"]

PREVIEW_CHARS = 80
MAX_AUDITED = 1000  # seqs listed in one audit record; the counts are always whole


class DeadLetterKind(str, Enum):
    """Why the consumer set a message aside: not an event, dated too far ahead, or failed by the handler."""

    invalid = "invalid"
    future = "future"
    failed = "failed"


class DlqError(ValueError):
    """A request the DLQ cannot answer (no such message, nothing selected); the message says what to do."""


@dataclass(frozen=True)
class DlqFilter:
    """Which dead letters: of one kind, with `reason` in the reason (any case), dead-lettered at or after `since`."""

    kind: DeadLetterKind | None = None
    reason: str | None = None
    since: datetime | None = None

    @property
    def empty(self) -> bool:
        return self.kind is None and not self.reason and self.since is None

    def matches(self, letter: DeadLetter) -> bool:
        if self.kind is not None and letter.kind != self.kind.value:
            return False
        if self.reason and self.reason.casefold() not in letter.reason.casefold():
            return False
        return self.since is None or (letter.received is not None and letter.received >= self.since)

    def described(self) -> dict[str, str | None]:
        return {"kind": self.kind.value if self.kind else None, "reason": self.reason or None,
                "since": self.since.isoformat() if self.since else None}


class DeadLetterSummary(BaseModel):
    seq: int
    kind: str
    reason: str
    event_id: str | None
    received: datetime | None
    size: int  # the bytes rtem was given
    deliveries: int
    preview: str

    @classmethod
    def of(cls, letter: DeadLetter) -> DeadLetterSummary:
        text = " ".join(letter.data[:PREVIEW_CHARS * 4].decode("utf-8", "replace").split())
        return cls(seq=letter.seq, kind=letter.kind, reason=letter.reason, event_id=letter.event_id,
                   received=letter.received, size=letter.original_size or len(letter.data),
                   deliveries=letter.deliveries,
                   preview=text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS - 1] + "…")


class DeadLetterDetail(DeadLetterSummary):
    subject: str
    original_subject: str | None
    headers: dict[str, str]
    data: str  # the bytes as UTF-8; bytes that are not UTF-8 shown as \xNN escapes
    utf8: bool
    truncated: bool  # only the first part was kept (the event was too large for the bus)

    @classmethod
    def of(cls, letter: DeadLetter) -> DeadLetterDetail:
        try:
            text, utf8 = letter.data.decode("utf-8"), True
        except UnicodeDecodeError:
            text, utf8 = letter.data.decode("utf-8", "backslashreplace"), False
        return cls(**DeadLetterSummary.of(letter).model_dump(), subject=letter.subject,
                   original_subject=letter.headers.get("Rtem-Original-Subject") or None,
                   headers=letter.headers, data=text, utf8=utf8, truncated=letter.truncated)


class Outcome(str, Enum):
    redriven = "redriven"  # back on EVENTS, gone from the DLQ
    already_on_events = "already_on_events"  # EVENTS had it (an earlier redrive): gone from the DLQ
    would_redrive = "would_redrive"  # --dry-run: passes the check now, nothing was changed
    still_failing = "still_failing"  # fails the check now: stays in the DLQ
    missing = "missing"  # no dead letter with that seq


class RedriveResult(BaseModel):
    seq: int
    event_id: str | None = None
    outcome: Outcome
    reason: str | None = None  # why it still fails, or why it is missing


class RedriveReport(BaseModel):
    dry_run: bool
    results: list[RedriveResult]

    @computed_field
    @property
    def counts(self) -> dict[str, int]:
        return {o.value: sum(r.outcome is o for r in self.results) for o in Outcome}


class PurgeReport(BaseModel):
    purged: int
    seqs: list[int]  # the seqs deleted one by one; empty for a stream purge (all, or one kind)
    missing: list[int]


def recheck(letter: DeadLetter, now: datetime, max_skew_s: float, max_bytes: int) -> Event | str:
    """The event a dead letter holds if the consumer would take it now, else why not (pure: `now` is given)."""
    if letter.truncated:
        return (f"only {len(letter.data)} of its {letter.original_size} bytes were kept in the DLQ (too large "
                "for the bus): it cannot be redriven; have the producer send it again, smaller")
    try:
        event = parse_event(letter.data, max_bytes)
    except InvalidEvent as bad:
        return bad.reason
    return dated_ahead(event, now, max_skew_s) or event


def redrive_id(event: Event) -> str:
    """`Nats-Msg-Id` of a redriven event: its id, marked, so JetStream does not take it for the original
    publish (still in EVENTS' duplicate window minutes after it was dead-lettered) and drop it, while a
    second redrive of the same event within the window is one message (and triage dedupes ids after it)."""
    return f"redrive:{event.id}"


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


class DeadLetterQueue:
    """The DLQ over one bus connection; audits into `audit`. `max_event_bytes` is the consumer's limit."""

    def __init__(self, bus: Bus, audit: AuditLog, *, max_event_bytes: int,
                 clock: Callable[[], datetime] = _utc_now):
        self.bus, self.audit, self.max_event_bytes, self.clock = bus, audit, max_event_bytes, clock

    async def count(self) -> int:
        return (await self.bus.dead_letter_stats())[0]

    async def find(self, where: DlqFilter = DlqFilter(), limit: int = 100) -> list[DeadLetterSummary]:
        """Newest first, at most `limit`; the scan stops at the first letter older than `where.since`."""
        found: list[DeadLetterSummary] = []
        if limit <= 0:
            return found
        kind = where.kind.value if where.kind else None
        async for letter in self.bus.dead_letters_newest(kind):
            if where.since is not None and letter.received is not None and letter.received < where.since:
                break
            if where.matches(letter):
                found.append(DeadLetterSummary.of(letter))
                if len(found) >= limit:
                    break
        return found

    async def show(self, seq: int) -> DeadLetterDetail:
        letter = await self.bus.dead_letter_at(seq)
        if letter is None:
            raise DlqError(f"no dead letter with seq {seq} in the DLQ (redriven, purged or expired?): "
                           "`rtem dlq list` shows what is there")
        return DeadLetterDetail.of(letter)

    async def redrive(self, seqs: Collection[int] | None = None, where: DlqFilter = DlqFilter(), *,
                      by: str, via: str, dry_run: bool = False) -> RedriveReport:
        """Re-check the letters `seqs` (else every one `where` matches, oldest first); send those that pass
        back to EVENTS and delete them from the DLQ, unless `dry_run`. Audited as `dlq.redriven`."""
        letters, missing = await self._select(seqs, where)
        results = [RedriveResult(seq=s, outcome=Outcome.missing, reason="no dead letter with this seq") for s in missing]
        now, skew = self.clock(), self.bus.settings.max_future_skew_s
        full: str | None = None  # why EVENTS refused a letter: it is full, and the rest are not tried
        try:
            for letter in letters:
                checked = recheck(letter, now, skew, self.max_event_bytes)
                if full is not None:
                    results.append(RedriveResult(seq=letter.seq, event_id=letter.event_id,
                                                 outcome=Outcome.still_failing, reason=full))
                elif isinstance(checked, str):
                    results.append(RedriveResult(seq=letter.seq, event_id=letter.event_id,
                                                 outcome=Outcome.still_failing, reason=checked))
                elif dry_run:
                    results.append(RedriveResult(seq=letter.seq, event_id=checked.id, outcome=Outcome.would_redrive))
                else:
                    try:
                        duplicate = await self.bus.return_to_events(letter, checked.type, redrive_id(checked))
                    except Exception as exc:
                        if not stream_full(exc):
                            raise
                        full = full_reason(exc, self.bus.settings)  # the letter stays in the DLQ
                        results.append(RedriveResult(seq=letter.seq, event_id=checked.id,
                                                     outcome=Outcome.still_failing, reason=full))
                        continue
                    results.append(RedriveResult(seq=letter.seq, event_id=checked.id,
                                                 outcome=Outcome.already_on_events if duplicate else Outcome.redriven))
        finally:  # what was done is recorded even when the bus failed half way
            report = RedriveReport(dry_run=dry_run, results=results)
            if not dry_run:
                await self._record_redrive(report, seqs, where, by, via)
        return report

    async def purge(self, seqs: Collection[int] | None = None, where: DlqFilter = DlqFilter(), *,
                    everything: bool = False, by: str, via: str) -> PurgeReport:
        """Delete the letters `seqs`, or those `where` matches, or (`everything`) all: letters that arrive
        while this runs are kept. A filter of only a kind is one stream purge. Audited as `dlq.purged`."""
        if not seqs and where.empty and not everything:
            raise DlqError("nothing selected to purge: give seqs, a filter (kind, reason, since), or all")
        _, last_seq = await self.bus.dead_letter_stats()
        report = PurgeReport(purged=0, seqs=[], missing=[])
        try:
            if not seqs and (everything or (where.kind and not where.reason and where.since is None)):
                kind = None if everything else where.kind.value
                report.purged = await self.bus.purge_dead_letters(kind=kind, below_seq=last_seq + 1)
            else:
                letters, report.missing = await self._select(seqs, where)
                for letter in letters:
                    if letter.seq > last_seq:
                        continue
                    if await self.bus.delete_dead_letter(letter.seq):
                        report.seqs.append(letter.seq)
                    else:
                        report.missing.append(letter.seq)
                report.purged = len(report.seqs)
        finally:
            await asyncio.to_thread(
                self.audit.append, "dlq.purged", node=via,
                inputs={"by": by, "via": via, **_selection(seqs, where, everything)},
                decision={"purged": report.purged, "seqs": report.seqs[:MAX_AUDITED],
                          "missing": report.missing[:MAX_AUDITED]},
                reasons=[f"{by} purged {report.purged} dead letter(s) via {via}"])
        return report

    async def _select(self, seqs: Collection[int] | None, where: DlqFilter) -> tuple[list[DeadLetter], list[int]]:
        """(the letters chosen, the seqs asked for that are not in the DLQ)."""
        if seqs:
            letters, missing = [], []
            for seq in sorted(set(seqs)):
                letter = await self.bus.dead_letter_at(seq)
                if letter is None:
                    missing.append(seq)
                else:
                    letters.append(letter)
            return letters, missing
        kind = where.kind.value if where.kind else None
        return [letter async for letter in self.bus.dead_letters_from(0, kind) if where.matches(letter)], []

    async def _record_redrive(self, report: RedriveReport, seqs, where: DlqFilter, by: str, via: str) -> None:
        def seqs_of(*outcomes: Outcome) -> list[int]:
            return [r.seq for r in report.results if r.outcome in outcomes][:MAX_AUDITED]

        failing = [{"seq": r.seq, "reason": r.reason} for r in report.results if r.outcome is Outcome.still_failing]
        await asyncio.to_thread(
            self.audit.append, "dlq.redriven", node=via,
            inputs={"by": by, "via": via, **_selection(seqs, where, False)},
            decision={"counts": report.counts, "redriven": seqs_of(Outcome.redriven, Outcome.already_on_events),
                      "still_failing": failing[:MAX_AUDITED], "missing": seqs_of(Outcome.missing)},
            reasons=[f"{by} redrove {report.counts['redriven']} dead letter(s) via {via}; "
                     f"{report.counts['still_failing']} still fail and stay"])


def _selection(seqs, where: DlqFilter, everything: bool) -> dict:
    if seqs:
        chosen = sorted(set(seqs))
        return {"seqs": chosen[:MAX_AUDITED], "selected": len(chosen)}
    return {"all": True} if everything else {"filter": where.described()}
