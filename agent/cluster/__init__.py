"""Several `rtem run` workers on one database: leases with epochs and the fence every guarded write
checks, and the leadership one worker holds at a time (docs/deployment.md)."""

from ._lease import LEASE_SCHEMA, Fenced, Lease, Leases
from ._leadership import LEADER, WORKER, Leadership, default_worker_id

__all__ = ["LEADER", "LEASE_SCHEMA", "WORKER", "Fenced", "Lease", "Leadership", "Leases", "default_worker_id"]
