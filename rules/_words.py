"""What a message's own words say, read the same way by detection (a derived field rules can test) and by
the reasoner (which log lines are evidence): whether it says that something failed."""

from __future__ import annotations

import re
from functools import lru_cache

from ._logline import read_line

# Words with which a line says that something went wrong, whatever level it was logged at, as whole words
# (runs of letters and digits: "ERROR_CODE" says error, "errorless" does not); a word ending in "error" or
# "exception" (OutOfMemoryError, NullPointerException) says it too. "Anomaly" is what an anomaly detector's
# line says. Splitting into words and looking each up is faster than one regular expression with word
# boundaries on long lines (2-3 µs a line here), and detection runs it on every event.
_FAILURE_WORDS = frozenset((
    "error", "errors", "errno", "fail", "fails", "failed", "failing", "failure", "failures", "fatal", "panic",
    "panicked", "denied", "refused", "forbidden", "unauthorized", "unauthorised", "rejected", "invalid", "unable",
    "cannot", "timeout", "timed", "unreachable", "crash", "crashed", "crashes", "killed", "oom", "enospc",
    "anomaly", "anomalies", "anomalous", "abnormal"))
_WORD = re.compile(r"[a-z0-9]+")
# Levels a structured line may give itself that say it failed, whatever level its event was filed at.
_FAILURE_LEVELS = frozenset(("error", "err", "fatal", "critical", "crit", "alert", "emerg", "emergency", "panic",
                             "severe"))


# Detection asks for every event, and most messages (metric and trace anomalies) repeat. Log lines mostly
# do not: they pass through, so the cache stays small (a few thousand messages, a megabyte or two).
@lru_cache(maxsize=4096)
def says_failure(text: str) -> bool:
    """Whether a message's own words say that something failed ("login failed", "permission denied",
    "java.lang.NullPointerException", "container_cpu_usage anomaly"), as opposed to reporting routine work
    ("request served"). A JSON or logfmt line is read by its message and error fields and its own level, not
    its field names: `{"level": "info", "msg": "served", "error": null}` says nothing failed."""
    line = read_line(text)
    if line.level in _FAILURE_LEVELS:
        return True
    return any(w in _FAILURE_WORDS or w.endswith(("error", "exception"))
               for w in _WORD.findall(line.statement.lower()))
