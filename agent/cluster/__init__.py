"""Several `rtem run` workers on one database: leases with epochs and the fence every guarded write
checks (docs/deployment.md)."""

from ._lease import LEASE_SCHEMA, Fenced, Lease, Leases

__all__ = ["LEASE_SCHEMA", "Fenced", "Lease", "Leases"]
