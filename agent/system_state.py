"""The system's observed state, for guardrail preconditions ("no failover while replica lag > 30 s").

State is what events say: the latest value of each attribute reported in events about an entity
(`subject`), e.g. an `rtem.health` or `rtem.metric.sample` event about `orders-db` carrying
`attributes.replica_lag_s`. It is read from the store's events table as of the decision's event time,
so a replay sees what the live decision saw. Observations older than `max_age_s` do not count: a
lag measured an hour ago says nothing about now, and an unknown value makes a precondition false
(a rule can test `{exists: false}` to act on "unknown").
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from .store import IncidentRepository

DEFAULT_MAX_AGE_S = 900.0


class StoreState:
    """A SystemState over the store's events."""

    def __init__(self, store: IncidentRepository, max_age_s: float = DEFAULT_MAX_AGE_S):
        self.store = store
        self.max_age_s = max_age_s

    def latest(self, entity: str, at: datetime) -> Mapping[str, Any]:
        return self.store.latest_state(entity, at.timestamp(), self.max_age_s)
