"""Pulling batches from a durable JetStream consumer without nats-py's per-message machinery.

nats-py's `PullSubscription.fetch(n)` sends a pull request for each batch and then awaits every message
of it on its own (`next_msg`: a task and a timer per message), and the server waits for that request
before it sends the next batch. Measured on the ingest benchmark's stream, that loop alone costs 2-4
times what consuming and acknowledging does when the messages are taken as they are queued.

`Puller` keeps pull requests for up to two batches outstanding on the server (so the next batch is on its
way while this one is handled), and takes what has arrived from its subscription's queue in one go:
one awaited wait per batch, none per message. What it asks for is bounded (two batches, each request
expiring after `expires_s`), so messages delivered and not yet taken stay few; a consumer that stops
gives them back (`Puller.close` returns them).

The pull protocol (JetStream's `$JS.API.CONSUMER.MSG.NEXT`): the server serves waiting requests in the
order they came, one message at a time; a request that expires before it was served in full ends with a
`408` status message whose `Nats-Pending-Messages` header says how many it still owed; other ends (`409`:
the consumer was deleted, a leadership change, too many waiting requests) say so the same way, or owe
nothing more. Any other status (`503`: no consumer answers) is an error, raised by `take` as nats-py's
`fetch` raised it, rather than asked again in a loop. Requests made before the connection dropped are forgotten at once when it is back (the
server may have dropped them with the connection), and any other whose end never arrived once its expiry
has passed by `GRACE_S`, so the puller always asks again.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import APIError

STATUS = "Status"
PENDING_MESSAGES = "Nats-Pending-Messages"
HEARTBEAT = "100"
REQUEST_ENDS = frozenset({"404", "408", "409"})  # no messages, expired, ended by the server (nats-py: temporary)
EXPIRES_S = 5.0
GRACE_S = 1.0


@dataclass
class _Request:
    expires_at: float
    owed: int


class Puller:
    """Batches of up to `batch` messages from `consumer` of `stream`; `await take(timeout)`."""

    def __init__(self, nc: Client, sub, stream: str, consumer: str, batch: int, *,
                 expires_s: float = EXPIRES_S, clock: Callable[[], float] = time.monotonic):
        self._nc = nc
        self._sub = sub
        # nats-py keeps what a subscription without a callback receives in this queue, and the byte count
        # of it in `_pending_size` (past its limit it drops messages as a slow consumer): what is taken
        # here is taken off both, as its own `next_msg` does.
        self._queue: asyncio.Queue[Msg] = sub._pending_queue
        self._next = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self.batch = batch
        self._expires_s = expires_s
        self._clock = clock
        self._requests: deque[_Request] = deque()
        self._reconnects = nc.stats["reconnects"]
        self._failed: Msg | None = None  # an error status not raised yet (messages taken with it came first)

    @classmethod
    async def open(cls, nc: Client, stream: str, consumer: str, batch: int, **kwargs) -> Puller:
        sub = await nc.subscribe(nc.new_inbox())
        return cls(nc, sub, stream, consumer, batch, **kwargs)

    @property
    def owed(self) -> int:
        """Messages asked for that the server has not delivered (nor said it never will)."""
        return sum(request.owed for request in self._requests)

    async def take(self, timeout: float) -> list[Msg]:
        """The messages that have arrived, up to a batch; if none has, waits up to `timeout` for the first
        (then takes what came with it). An empty list when nothing came in time. A status that is an error
        (`503`: no consumer answers) raises nats-py's `APIError` for it, after the messages before it."""
        self._raise_failure()
        await self._ask()
        msgs = self._drain()
        if not msgs and self._failed is None:
            try:
                first = await asyncio.wait_for(self._queue.get(), timeout)
            except asyncio.TimeoutError:
                return []
            msgs = [first] if self._accept(first) else []
            msgs += self._drain(self.batch - len(msgs))
        if not msgs:
            self._raise_failure()
        return msgs

    def _raise_failure(self) -> None:
        failed, self._failed = self._failed, None
        if failed is not None:
            APIError.from_msg(failed)  # raises

    def take_queued(self) -> list[Msg]:
        """Whatever has been delivered and not taken, without asking for more or waiting (a consumer holding
        a batch keeps these in progress too: `bus._hold`)."""
        return self._drain(None)

    async def close(self) -> list[Msg]:
        """Unsubscribe; the messages delivered that no `take` returned, for the caller to give back. (Once
        unsubscribed nothing more comes: the server drops a pull request whose inbox has no subscriber.)"""
        await self._sub.unsubscribe()
        self._requests.clear()
        self._failed = None  # moot now: what was delivered before it still goes back
        return self._drain(None)

    async def _ask(self) -> None:
        """Keep two batches asked for: forget requests long expired, then ask for what is missing."""
        now = self._clock()
        if self._nc.stats["reconnects"] != self._reconnects:
            self._reconnects = self._nc.stats["reconnects"]
            self._requests.clear()
        while self._requests and self._requests[0].expires_at + GRACE_S < now:
            self._requests.popleft()
        missing = 2 * self.batch - self.owed
        if missing < self.batch:  # a request per batch at most: fewer, larger requests
            return
        request = {"batch": missing, "expires": int(self._expires_s * 1e9)}
        await self._nc.publish(self._next, json.dumps(request).encode(), reply=self._sub.subject)
        self._requests.append(_Request(now + self._expires_s, missing))

    def _drain(self, limit: int | None = None) -> list[Msg]:
        """What is queued, up to `limit` messages (status messages are read and not counted)."""
        msgs: list[Msg] = []
        queue = self._queue
        while (limit is None or len(msgs) < limit) and not queue.empty() and self._failed is None:
            msg = queue.get_nowait()
            if self._accept(msg):
                msgs.append(msg)
        return msgs

    def _accept(self, msg: Msg) -> bool:
        """Account for one delivery; False for a status message (a request's end), which is no event."""
        self._sub._pending_size -= len(msg.data)
        headers = msg.headers
        if headers is None or STATUS not in headers:
            if self._requests:
                oldest = self._requests[0]
                oldest.owed -= 1
                if oldest.owed <= 0:
                    self._requests.popleft()
            return True
        status = headers[STATUS]
        if status == HEARTBEAT:  # no request ends
            return False
        if status not in REQUEST_ENDS:
            self._requests.clear()
            self._failed = msg
            return False
        if PENDING_MESSAGES in headers and self._requests:
            self._requests.popleft()  # the oldest request ended, owing what the header says
        else:
            self._requests.clear()  # ended with no count: ask anew rather than wait on what may be gone
        return False


def deliveries(msg: Msg) -> int:
    """How many times the server delivered `msg`, read from its ack subject as nats-py's `metadata` does,
    without building the rest of the metadata (a parse per event on the hot path)."""
    tokens = msg.reply.split(".")
    if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>
        return int(tokens[4])
    return msg.metadata.num_delivered  # the longer form (a domain and an account hash): nats-py knows it
