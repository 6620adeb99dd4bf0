"""Ownership: the incidents one worker drives, each through a lease of its own.

Every `rtem run` worker, leader or standby, drives incidents: before it starts an incident's thread it
takes the lease `incident:<id>`, and it keeps the lease — renewing it with its heartbeat — until the
incident is final, also while the incident waits for an approval or for recovery, so an approval sent
through any worker resumes the incident on the worker that owns it. A worker that dies stops renewing;
once its leases expire, other workers take its incidents over at the next epoch and resume them from
their checkpoints. The ledger fences each step by the incident's lease (`fence`), so a worker paused
past its lease cannot start or finish a step that the new owner now drives.
"""

from __future__ import annotations

import logging
import threading

from ..db import Connection
from ._lease import Fenced, Lease, Leases

log = logging.getLogger("rtem.cluster")

INCIDENT = "incident:"  # + incident id


class Ownership:
    """The incidents this worker owns; thread-safe (the event loop takes and releases, the heartbeat
    renews on a worker thread, the graph's nodes fence on theirs)."""

    def __init__(self, leases: Leases, worker_id: str, ttl_s: float):
        self.leases = leases
        self.worker_id = worker_id
        self.ttl_s = ttl_s
        self._owned: dict[str, Lease] = {}
        self._lock = threading.Lock()

    def owns(self, incident_id: str) -> bool:
        with self._lock:
            return incident_id in self._owned

    @property
    def owned(self) -> list[str]:
        with self._lock:
            return sorted(self._owned)

    def take(self, incident_id: str) -> bool:
        """Own the incident if no other worker does (or its owner stopped renewing). A lease this worker's
        previous life held (the same worker id, restarted) is taken at the next epoch, so a step that life
        still had in flight cannot commit."""
        if self.owns(incident_id):
            return True
        lease = self.leases.acquire(INCIDENT + incident_id, self.worker_id, self.ttl_s, anew=True)
        if lease is None:
            return False
        with self._lock:
            self._owned[incident_id] = lease
        log.info("worker %s owns incident %s (epoch %d)", self.worker_id, incident_id, lease.epoch)
        return True

    def renew(self) -> list[str]:
        """Renew every lease this worker holds; returns the incidents it lost (not renewed in time, and
        maybe taken by another worker), which it no longer drives."""
        with self._lock:
            held = list(self._owned.values())
        kept = {lease.name: lease for lease in self.leases.renew_all(held, self.ttl_s)}
        lost = []
        with self._lock:
            for lease in held:
                incident_id = lease.name[len(INCIDENT):]
                if lease.name in kept:
                    if incident_id in self._owned:  # not released meanwhile
                        self._owned[incident_id] = kept[lease.name]
                elif self._owned.get(incident_id) == lease:
                    del self._owned[incident_id]
                    lost.append(incident_id)
        for incident_id in lost:
            log.error("worker %s lost incident %s (its lease was not renewed in time)", self.worker_id, incident_id)
        return lost

    def release(self, incident_id: str) -> None:
        """The incident is final: drop its lease (no row stays behind for it)."""
        with self._lock:
            lease = self._owned.pop(incident_id, None)
        if lease is not None:
            self.leases.drop(lease)

    def leave(self) -> None:
        """A clean stop: give every incident up at once, so other workers need not wait for the leases to
        expire."""
        with self._lock:
            held, self._owned = list(self._owned.values()), {}
        for lease in held:
            self.leases.release(lease)

    def fence(self, conn: Connection, incident_id: str) -> None:
        """Inside a write transaction: raise Fenced unless this worker still owns the incident."""
        with self._lock:
            lease = self._owned.get(incident_id)
        if lease is None:
            raise Fenced(f"worker {self.worker_id} does not own incident {incident_id}: its steps are refused")
        self.leases.fence(conn, lease)

    def others(self) -> set[str]:
        """The incidents other workers own now (their leases live)."""
        return {lease["name"][len(INCIDENT):] for lease in self.leases.holders(INCIDENT)
                if lease["live"] and lease["holder"] != self.worker_id}
