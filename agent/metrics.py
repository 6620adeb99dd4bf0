"""Prometheus metrics of the service, in one place (served on /metrics by `rtem run`)."""

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter("rtem_events_total", "Events recorded by triage (valid, first time seen)")
INCIDENTS = Counter("rtem_incidents_total", "Incidents opened")
VERDICTS = Counter("rtem_verdicts_total", "Guard verdicts", ["outcome"])
ACTIONS = Counter("rtem_actions_total", "Executed steps", ["action", "kind", "ok"])
ACTION_LATENCY = Histogram("rtem_action_seconds", "Time to run one step, retries included", ["action"])
MTTR = Histogram("rtem_mttr_seconds", "First event to verified recovery, in event time",
                 buckets=(30, 60, 120, 300, 600, 1200, 1800, 3600, 7200))
BREAKER = Gauge("rtem_breaker_open", "1 while an executor's circuit breaker for a target is open", ["target"])
CONSUMER_LAG = Gauge("rtem_consumer_lag", "Events on the EVENTS stream not yet delivered to triage")
LEADER = Gauge("rtem_leader", "1 while this worker leads (consumes and drives incidents), 0 while it stands by")
TRIAGE_UNAVAILABLE = Counter("rtem_triage_unavailable_total",
                             "Tries to record a triage batch that found the database unavailable or the lease gone "
                             "(the batch is held and tried again, not failed)")
EVENTS_TRIMMED = Counter("rtem_events_trimmed_total", "Events triage had acknowledged, trimmed from the EVENTS stream")
