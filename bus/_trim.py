"""Trimming EVENTS: what the `triage` consumer has acknowledged, once older than `events_keep_s`, is purged.

EVENTS has LIMITS retention, so JetStream keeps a consumed event until a limit removes it; bounded and
discarding new events (`_streams.py`), it would fill with events rtem has long recorded and then refuse
new ones. `rtem run` calls `Bus.trim_events` regularly (RTEM_EVENTS_TRIM_EVERY_S).

Why it never loses an event: it purges only below the consumer's ack floor, the highest stream sequence
at and below which every event has been acknowledged, and triage acknowledges an event only after the
database transaction that records it committed (`bus/_consume.py`). The floor is read before anything
else and only rises, so a purge a moment later is still below it. An event delivered but not yet
acknowledged, nak'd for redelivery, or never delivered lies above the floor and stays.

Acknowledged events younger than `events_keep_s` stay too, so that a recent stretch can be read again (a
consumer made anew, someone looking with `nats stream view`). The boundary is found by bisecting the
stream's sequences between its first message and the floor, reading each probe's stored time with a
message get (`next_by_subj`, so deleted sequences are skipped): some 20 requests for 10^6 events, on any
server version. Times are the server's clock when it stored each message, which rises with the sequence;
a clock stepped back only makes the kept stretch approximate, never the floor. The keep window gives way
when EVENTS is half full (by messages or bytes): then every acknowledged event goes, since a full stream
would refuse producers while rtem is not behind at all.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone

from nats.js.errors import NotFoundError

from ._dlq import _PURGE_API
from ._streams import EVENTS, EVENTS_SUBJECTS, TRIAGE

log = logging.getLogger("rtem.bus")

# The share of a bound past which the keep window gives way and every acknowledged event is trimmed.
KEEP_YIELDS_AT = 0.5


class Trimming:
    """EVENTS' trimming, a part of `Bus` (it uses its JetStream context `js`, connection `nc` and settings)."""

    async def trim_events(self, *, keep_s: float | None = None, consumer: str = TRIAGE,
                          now: datetime | None = None) -> int:
        """Purge from EVENTS the events `consumer` has acknowledged (below its ack floor) that are older
        than `keep_s` (default: `settings.events_keep_s`); returns how many were removed. Nothing when
        the consumer does not exist yet."""
        keep_s = self.settings.events_keep_s if keep_s is None else keep_s
        try:
            floor = (await self.js.consumer_info(EVENTS, consumer)).ack_floor.stream_seq
        except NotFoundError:
            return 0
        info = await self.js.stream_info(EVENTS)
        first = info.state.first_seq
        if not info.state.messages or floor < first:
            return 0
        below = floor + 1
        if keep_s > 0 and not _half_full(info):
            cutoff = (now or datetime.now(timezone.utc)) - timedelta(seconds=keep_s)
            below = await self._first_at_or_after(cutoff, first, below)
        if below <= first:
            return 0
        removed = await self._purge_events_below(below)
        log.debug("trimmed %d event(s) below seq %d from %s (ack floor %d)", removed, below, EVENTS, floor)
        return removed

    async def _first_at_or_after(self, cutoff: datetime, lo: int, hi: int) -> int:
        """The lowest sequence in [lo, hi) of a message stored at or after `cutoff`, else `hi`. Every message
        below the answer is older than the cutoff (or gone)."""
        while lo < hi:
            mid = (lo + hi) // 2
            try:
                msg = await self.js.get_msg(EVENTS, mid, subject=EVENTS_SUBJECTS, next=True)
            except NotFoundError:
                hi = mid
                continue
            if msg.seq >= hi or msg.time >= cutoff:
                hi = mid  # nothing in [mid, msg.seq) exists, and msg is young or beyond the range
            else:
                lo = msg.seq + 1  # msg is old, and so is everything stored before it
        return lo

    async def _purge_events_below(self, seq: int) -> int:
        """Purge EVENTS below `seq`; how many the server removed (nats-py's purge_stream drops the count)."""
        answer = await self.nc.request(_PURGE_API + EVENTS, json.dumps({"seq": seq}).encode(), timeout=10)
        doc = json.loads(answer.data)
        if "error" in doc:
            error = doc["error"]
            raise OSError(f"JetStream refused to purge stream {EVENTS} below seq {seq}: "
                          f"{error.get('description', error)}")
        return int(doc.get("purged", 0))


def _half_full(info) -> bool:
    """EVENTS holds at least KEEP_YIELDS_AT of its message or byte bound."""
    config, state = info.config, info.state
    return any(bound and bound > 0 and held >= bound * KEEP_YIELDS_AT
               for bound, held in ((config.max_msgs, state.messages), (config.max_bytes, state.bytes)))
