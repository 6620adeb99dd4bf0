"""The audit log: every decision as an append-only, hash-chained record (`_log.py`), sealed as
`_records.py` says, verified by `_verify.py` (also against the JetStream AUDIT stream's copy)."""

from ._log import AuditLog, Sink
from ._records import GENESIS, PURGED_KIND, record_hash
from ._verify import AuditCopy, CopyCheck, Problem, VerifyReport, report_anchor, verify_file

__all__ = ["GENESIS", "PURGED_KIND", "AuditCopy", "AuditLog", "CopyCheck", "Problem", "Sink", "VerifyReport",
           "record_hash", "report_anchor", "verify_file"]
