"""HMAC-SHA256 signatures on what rtem sends over HTTP (webhook notifications, HTTP executor steps), so a
receiver can check that a request came from rtem and was not replayed.

The scheme (docs/integrations.md): the sender puts the Unix time in `X-Rtem-Timestamp` and
`v1=<hex HMAC-SHA256(secret, "<timestamp>." + body)>` in `X-Rtem-Signature`. The receiver recomputes it
over the raw body, compares in constant time, and refuses a timestamp older than its tolerance.
"""

from __future__ import annotations

import hashlib
import hmac

TIMESTAMP_HEADER = "X-Rtem-Timestamp"
SIGNATURE_HEADER = "X-Rtem-Signature"
VERSION = "v1"


def signature(secret: bytes, body: bytes, timestamp: int) -> str:
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"{VERSION}={digest}"


def sign(secret: bytes, body: bytes, timestamp: int) -> dict[str, str]:
    """The two headers that sign `body` at `timestamp` (seconds since the epoch)."""
    return {TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: signature(secret, body, timestamp)}


def verify(secret: bytes, body: bytes, headers: dict[str, str], now: float, tolerance_s: float = 300.0) -> bool:
    """True when the headers sign `body` with `secret` and the timestamp is within `tolerance_s` of `now`."""
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        timestamp = int(lowered[TIMESTAMP_HEADER.lower()])
        given = lowered[SIGNATURE_HEADER.lower()]
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(given, signature(secret, body, timestamp))
