"""Several `rtem run` workers on one database: leases with epochs and the fence every guarded write
checks, the leadership one worker holds at a time, and the incidents each worker owns
(docs/deployment.md)."""

from ._lease import LEASE_SCHEMA, Fenced, Lease, Leases
from ._leadership import CONSUMER_STATE, LEADER, WORKER, Leadership, default_worker_id
from ._ownership import INCIDENT, Ownership

__all__ = ["CONSUMER_STATE", "INCIDENT", "LEADER", "LEASE_SCHEMA", "WORKER", "Fenced", "Lease", "Leadership", "Leases", "Ownership",
           "default_worker_id"]
