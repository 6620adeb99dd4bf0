"""EVENTS at its bound: recognising JetStream's refusal of a publish, wording it for the producer, and
nats-py's JetStream context fixed so that a refused `publish_async` fails instead of hanging.

EVENTS refuses new events when full (DiscardPolicy.NEW, `_streams.py`) rather than dropping unread ones;
`Bus.publish_lines` reports such lines as refused, with `full_reason`, and the API and `rtem ingest` pass
it on (docs/retention.md).
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.errors import APIError

from ._streams import BusSettings


# JetStream's answer to a publish that would take a stream with DiscardPolicy.NEW past max_msgs or max_bytes:
# code 503, err_code 10077 (the store's refusal), with the store's words as the description.
_STREAM_FULL = {"maximum messages exceeded", "maximum bytes exceeded"}


def stream_full(exc: BaseException) -> bool:
    """A publish refused because the stream is at its bound (found on a real server: tests/test_events_bound.py)."""
    return isinstance(exc, APIError) and exc.err_code == 10077 and (exc.description or "") in _STREAM_FULL


class JetStream(JetStreamContext):
    """nats-py's JetStream context, with a refused `publish_async` failing its future. nats-py 2.16 raises
    the server's error inside its reply handler instead (`APIError.from_error` raises rather than returns;
    nats-io/nats.py#985, open), so the future never completes: each refused event would cost a publish
    timeout, a warning from the connection's error callback, and a slot of the pending-publish limit."""

    async def _handle_async_reply(self, msg) -> None:
        try:
            await super()._handle_async_reply(msg)
        except APIError as exc:
            future = self._publish_async_futures.get(msg.subject[len(self._async_reply_prefix):])
            if future is not None and not future.done():
                future.set_exception(exc)


def full_reason(exc: APIError, settings: BusSettings) -> str:
    """What a producer is told of an event EVENTS refused: which bound, as this client's settings give them
    (a producer may not read the stream's configuration)."""
    msgs, size = settings.events_max_msgs, settings.events_max_bytes
    bounds = " / ".join([f"max_msgs {msgs:,}" if msgs > 0 else "max_msgs none",
                         f"max_bytes {size / (1 << 30):.1f} GiB" if size > 0 else "max_bytes none"])
    return f"the event stream is full ({exc.description}; {bounds}): rtem is behind (or stopped); retry later"
