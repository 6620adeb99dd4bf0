"""The audit log: every decision as an append-only, hash-chained record (`_log.py`), sealed as
`_records.py` says, kept append-only by the database (`_schema.py`: `AUDIT_SCHEMA`, SQLite or PostgreSQL),
verified by `_verify.py` (also against the JetStream AUDIT stream's copy)."""

from ._log import AuditLog, Sink
from ._records import GENESIS, PURGED_KIND, record_hash
from ._schema import AUDIT_SCHEMA
from ._verify import AuditCopy, CopyCheck, Problem, VerifyReport, report_anchor, verify_file

__all__ = ["AUDIT_SCHEMA", "GENESIS", "PURGED_KIND", "AuditCopy", "AuditLog", "CopyCheck", "Problem", "Sink",
           "VerifyReport", "record_hash", "report_anchor", "verify_file"]
