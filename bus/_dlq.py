"""Reading and removing dead letters: the DLQ stream's messages with the reason rtem gave in their headers.

Writing them stays with the consumer (`Bus.dead_letter` in `_client.py`); this module is what a person's
tools (`agent/dlq.py`: `rtem dlq`, `/api/v1/dlq`) need from the stream: read by sequence, oldest or newest
first, delete one message, purge by subject below a sequence.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime

from nats.js.errors import NotFoundError

from ._streams import DLQ, DLQ_SUBJECTS, EVENTS, event_subject

HEADER_REASON = "Rtem-Reason"
HEADER_EVENT_ID = "Rtem-Event-Id"
HEADER_SUBJECT = "Rtem-Original-Subject"
HEADER_DELIVERIES = "Rtem-Deliveries"
HEADER_SIZE = "Rtem-Original-Size"
DLQ_PREFIX = "rtem.dlq."

# The JetStream API subject for a purge: nats-py's purge_stream drops the server's count of purged
# messages, and an audit record must say how many went.
_PURGE_API = "$JS.API.STREAM.PURGE."


@dataclass
class DeadLetter:
    seq: int
    subject: str
    reason: str
    event_id: str | None
    deliveries: int
    data: bytes
    received: datetime | None = None  # when it was dead-lettered (the DLQ message's time)
    original_size: int | None = None  # the bytes rtem was given; more than len(data) when truncated
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """invalid, future or failed: the part of the subject after `rtem.dlq.`."""
        return self.subject.removeprefix(DLQ_PREFIX)

    @property
    def truncated(self) -> bool:
        return self.original_size is not None and self.original_size > len(self.data)


def dlq_subject(kind: str | None) -> str:
    """The DLQ subject of one kind of dead letter, or all of them."""
    return f"{DLQ_PREFIX}{kind}" if kind else DLQ_SUBJECTS


class DeadLetterStore:
    """The DLQ operations of `Bus` (which inherits them); they use its JetStream context `js` and connection `nc`."""

    js: object
    nc: object

    async def dead_letters(self, limit: int = 1000) -> list[DeadLetter]:
        """The first `limit` dead letters, oldest first."""
        letters = []
        async for letter in self.dead_letters_from(0):
            if len(letters) >= limit:
                break
            letters.append(letter)
        return letters

    async def dead_letters_from(self, seq: int, kind: str | None = None) -> AsyncIterator[DeadLetter]:
        """Every dead letter (of `kind`) at or after stream sequence `seq`, oldest first: the server skips
        deleted messages and other kinds (`next_by_subj`), so a sparse stream costs one request per letter."""
        subject = dlq_subject(kind)
        seq = max(seq, 1)
        while True:
            try:
                msg = await self.js.get_msg(DLQ, seq, subject=subject, next=True)
            except NotFoundError:
                return
            yield _letter(msg)
            seq = msg.seq + 1

    async def dead_letters_newest(self, kind: str | None = None) -> AsyncIterator[DeadLetter]:
        """Every dead letter (of `kind`), newest first, read one sequence at a time downwards."""
        info = await self.js.stream_info(DLQ)
        if not info.state.messages:
            return
        wanted = dlq_subject(kind)
        for seq in range(info.state.last_seq, info.state.first_seq - 1, -1):
            letter = await self.dead_letter_at(seq)
            if letter is not None and (wanted == DLQ_SUBJECTS or letter.subject == wanted):
                yield letter

    async def dead_letter_at(self, seq: int) -> DeadLetter | None:
        """The dead letter at stream sequence `seq`, or None (never there, deleted, or expired)."""
        try:
            return _letter(await self.js.get_msg(DLQ, seq))
        except NotFoundError:
            return None

    async def dead_letter_stats(self) -> tuple[int, int]:
        """(messages in the DLQ, its last sequence)."""
        info = await self.js.stream_info(DLQ)
        return info.state.messages, info.state.last_seq

    async def delete_dead_letter(self, seq: int) -> bool:
        """Delete one dead letter; False when it was not there (already deleted or expired)."""
        try:
            return await self.js.delete_msg(DLQ, seq)
        except NotFoundError:
            return False
        except Exception as exc:  # the server answers "no message found" as a generic API error (10057)
            if getattr(exc, "err_code", None) == 10057:
                return False
            raise

    async def return_to_events(self, letter: DeadLetter, event_type: str, msg_id: str) -> bool:
        """Publish a dead letter's bytes to EVENTS with `msg_id` as `Nats-Msg-Id`, then delete it from the DLQ
        (in that order: a failure between the two leaves a copy that the id deduplicates); True when EVENTS
        already had that id."""
        ack = await self.js.publish(event_subject(event_type), letter.data, stream=EVENTS, timeout=5,
                                    headers={"Nats-Msg-Id": msg_id})
        await self.delete_dead_letter(letter.seq)
        return bool(ack.duplicate)

    async def purge_dead_letters(self, *, kind: str | None = None, below_seq: int | None = None) -> int:
        """Purge the dead letters (of `kind`) with a sequence below `below_seq` (all when None); returns how
        many the server removed. The bound keeps letters that arrive after a person looked."""
        request: dict[str, object] = {}
        if kind:
            request["filter"] = dlq_subject(kind)
        if below_seq:
            request["seq"] = below_seq
        answer = await self.nc.request(_PURGE_API + DLQ, json.dumps(request).encode(), timeout=10)
        doc = json.loads(answer.data)
        if "error" in doc:
            error = doc["error"]
            raise OSError(f"JetStream refused to purge stream {DLQ}: {error.get('description', error)}")
        return int(doc.get("purged", 0))


def _letter(msg) -> DeadLetter:
    headers = {k: v for k, v in (msg.headers or {}).items() if not k.startswith("Nats-")}
    size = headers.get(HEADER_SIZE, "")
    return DeadLetter(seq=msg.seq, subject=msg.subject, reason=headers.get(HEADER_REASON, ""),
                      event_id=headers.get(HEADER_EVENT_ID), deliveries=int(headers.get(HEADER_DELIVERIES, 0) or 0),
                      data=msg.data or b"", received=msg.time, original_size=int(size) if size.isdigit() else None,
                      headers=headers)
