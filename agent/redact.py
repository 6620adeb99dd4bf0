"""Event text is untrusted: scrub secrets out of it, truncate it, and make it unable to close its quotes.

Everything that leaves the process for an LLM provider and came from an event passes through `untrusted`
first; the reasoner scrubs log lines before it makes templates of them (templates are shown in
explanations and reports). Scrubbing is by pattern, so it errs towards redacting: a long random-looking token is removed even
if it was harmless, since a leaked credential costs more than a less informative sample.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

REDACTED = "[REDACTED]"

# Order matters: whole private keys and URLs with credentials first, so the narrower patterns after them
# do not cut a key or connection string in half and leave the rest behind.
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|$)", re.S),
     "[REDACTED private key]"),
    # scheme://user:password@host (postgres, mysql, mongodb+srv, redis, amqp, https ...)
    (re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]{1,20}://)[^\s:/@]+:[^\s@/]+@"), r"\1" + REDACTED + "@"),
    # Authorization headers and bearer tokens
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9\-._~+/]{8,}=*"), r"\1 " + REDACTED),
    # JSON Web Tokens
    (re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}"), REDACTED),
    # Well-known key formats: AWS access key ids, OpenAI-style, GitHub, Slack, Google API keys
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), REDACTED),
    (re.compile(r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{16,}"), REDACTED),
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}"), REDACTED),
    (re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"), REDACTED),
    (re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"), REDACTED),
    # key=value / key: value / "key": "value" with a sensitive key name (connection strings included:
    # Server=db;User Id=sa;Password=hunter2;)
    (re.compile(r"""(?ix)
        (["']?\b(?:password|passwd|pwd|secret|client_secret|token|access_token|refresh_token|auth_token|
             api[_-]?key|apikey|access[_-]?key|secret[_-]?key|private[_-]?key|credentials?|session[_-]?id|
             cookie|authorization|account[_-]?key|shared[_-]?access[_-]?key|sas[_-]?token)\b["']?)
        (\s*[:=]\s*)
        ("[^"]*"|'[^']*'|[^\s;,&}"']+)"""), r"\1\2" + REDACTED),
    # e-mail addresses
    (re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b"), "[REDACTED e-mail]"),
    # long random-looking tokens: 32+ characters mixing upper case, lower case and digits
    (re.compile(r"\b(?=[A-Za-z0-9+/_-]*[A-Z])(?=[A-Za-z0-9+/_-]*[a-z])(?=[A-Za-z0-9+/_-]*[0-9])"
                r"[A-Za-z0-9+/_-]{32,}={0,2}"), REDACTED),
)

# Attribute keys whose values are dropped whatever they look like.
_SENSITIVE_KEY = re.compile(r"(?i)(pass(word|wd)?|pwd|secret|token|api[_-]?key|credential|private[_-]?key|"
                            r"authorization|cookie|session|connection[_-]?string|dsn)")


def scrub(text: str) -> str:
    """`text` with tokens, passwords, keys, connection-string credentials and e-mail addresses redacted."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def scrub_attributes(attributes: dict) -> dict[str, str]:
    """Attribute values as scrubbed strings; a value under a sensitive key is redacted outright."""
    clean: dict[str, str] = {}
    for key, value in attributes.items():
        key = scrub(str(key))[:64]
        clean[key] = REDACTED if _SENSITIVE_KEY.search(key) else scrub(str(value))
    return clean


def untrusted(text: object, limit: int = 200) -> str:
    """Event-derived text made safe to quote in a prompt: scrubbed, flattened to one line, truncated to
    `limit` characters, angle brackets replaced (so it cannot close the untrusted-data markers), and
    quoted as a JSON-style string."""
    value = scrub(str(text))
    value = " ".join(value.split())
    if len(value) > limit:
        value = value[: max(0, limit - 1)] + "…"
    value = value.replace("<", "‹").replace(">", "›").replace("\\", "\\\\").replace('"', '\\"')
    return f'"{value}"'


def untrusted_word(text: object, limit: int = 80) -> str:
    """An event-derived identifier (subject, metric name) made safe: scrubbed, spaces and angle brackets
    replaced, truncated; unquoted, since identifiers read better bare and cannot carry sentences."""
    value = scrub(str(text))
    value = re.sub(r"[\s<>\"`]+", "_", value)
    return value[:limit] or "-"


def redact_known(text: str, secrets: Iterable[str], mark: str = REDACTED) -> str:
    """`text` with each of these known secret values (configured tokens, keys, URLs that hold one)
    replaced by `mark`, the longest first: one secret may contain another."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, mark)
    return text
