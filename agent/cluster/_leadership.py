"""Leadership: the role one worker holds at a time, through a lease it keeps renewing.

Several `rtem run` workers share one database and one NATS cluster; one of them leads — consumes the
EVENTS stream (detection and correlation state is global) and drives the incidents — while the others
stand by, serve the HTTP API and take over when the leader stops renewing. Every write the leader makes
that must not come from two workers (a triage batch, the start of an action) calls `fence`, which
checks inside the write's own transaction that the lease is still this worker's, at its epoch.
"""

from __future__ import annotations

import logging
import hashlib
import socket
from pathlib import Path

from ..db import Connection
from ._lease import Fenced, Lease, Leases

log = logging.getLogger("rtem.cluster")

LEADER = "leader"
WORKER = "worker:"  # + worker id: each worker's heartbeat, for `rtem cluster status`
CONSUMER_STATE = "consumer"  # the store's pipeline state the leader saves its consumer's lag in, for the same


def default_worker_id(data_dir: str | Path) -> str:
    """host:data-directory: unique among the workers of a cluster (two on one host have two data
    directories), says where to look, and stays the same across restarts, so a worker restarted after a
    crash takes its own lease back at once instead of waiting for it to expire."""
    where = hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:8]
    return f"{socket.gethostname()}:{where}"


class Leadership:
    """Whether this worker leads, kept through the `leader` lease; `fence(conn)` guards the leader's writes."""

    def __init__(self, leases: Leases, worker_id: str, ttl_s: float):
        self.leases = leases
        self.worker_id = worker_id
        self.ttl_s = ttl_s
        self.lease: Lease | None = None

    @property
    def leading(self) -> bool:
        return self.lease is not None

    def keep(self) -> bool:
        """Take the lease if it is free, renew it if it is ours; False while another worker leads (or once
        ours was lost: expired while this worker did not renew it, and taken)."""
        if self.lease is not None:
            self.lease = self.leases.renew(self.lease, self.ttl_s)
            if self.lease is None:
                log.error("worker %s lost the leader lease (not renewed in time): it stops leading", self.worker_id)
            return self.lease is not None
        self.lease = self.leases.acquire(LEADER, self.worker_id, self.ttl_s, anew=True)
        if self.lease is not None:
            log.info("worker %s leads (epoch %d)", self.worker_id, self.lease.epoch)
        return self.lease is not None

    def heartbeat(self) -> None:
        """Say this worker is alive (leader or standby): its own lease, renewed as the leader's is."""
        self.leases.acquire(WORKER + self.worker_id, self.worker_id, self.ttl_s)

    def fence(self, conn: Connection) -> None:
        """Inside a write transaction: raise Fenced unless this worker still leads."""
        if self.lease is None:
            raise Fenced(f"worker {self.worker_id} does not lead: its writes as leader are refused")
        self.leases.fence(conn, self.lease)

    def release(self) -> None:
        """Stop leading at once and leave (a clean stop): a standby need not wait for the lease to expire."""
        lease, self.lease = self.lease, None
        if lease is not None:
            self.leases.release(lease)
        mine = self.leases.acquire(WORKER + self.worker_id, self.worker_id, self.ttl_s)
        if mine is not None:
            self.leases.release(mine)
