"""The simulated shop's telemetry as Prometheus metrics, for a real Prometheus to scrape.

`ShopExporter` keeps one gauge per measurement the shop's metric samples carry (`rtem_shop_cpu_pct`,
`rtem_shop_error_rate`, `rtem_shop_latency_ms`, `rtem_shop_connections_in_use`, …), labelled with
the entity, its type, service and host, plus `rtem_shop_up` and the counter
`rtem_shop_health_failures_total` from the health checks. It follows the shop's events as published:
`observe` takes them directly (a test steps a `Simulation` and feeds what `advance` returns), `follow`
subscribes to them on NATS (`rtem demo --prometheus-port`). Its registry is its own, so several
exporters can run in one process and none touches rtem's own /metrics.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import start_http_server

from rules import Topology

from ._telemetry import Outgoing

PREFIX = "rtem_shop_"
LABELS = ("entity", "type", "service", "host")
_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


class ShopExporter:
    def __init__(self, topology: Topology):
        self.topology = topology
        self.registry = CollectorRegistry(auto_describe=False)
        self._lock = threading.Lock()
        self._gauges: dict[str, Gauge] = {}
        self._up = Gauge(f"{PREFIX}up", "1 while the entity's health check passes, 0 while it fails", LABELS,
                         registry=self.registry)
        self._failures = Counter(f"{PREFIX}health_failures", "failed health checks (each one restarts the process)",
                                 LABELS, registry=self.registry)
        self._server = None
        self._thread: threading.Thread | None = None
        self._subscription = None
        self._nc = None

    # -- following the shop ----------------------------------------------------------------------

    def observe(self, events: Iterable[Outgoing | dict[str, Any]]) -> int:
        """Update the metrics from the shop's events (Outgoing messages or CloudEvent dicts); returns how
        many were metric samples or health checks."""
        seen = 0
        for item in events:
            event = item.event if isinstance(item, Outgoing) else item
            if not isinstance(event, dict):
                continue  # a malformed line of the malformed-records scenario
            if event.get("type") == "rtem.metric.sample":
                self._sample(event)
                seen += 1
            elif event.get("type") == "rtem.health":
                self._health(event)
                seen += 1
        return seen

    async def follow(self, nats_url: str) -> None:
        """Subscribe to the shop's events on NATS until `stop()`."""
        import nats

        self._nc = await nats.connect(nats_url, name="rtem-demo-exporter")

        async def on_event(msg) -> None:
            try:
                self.observe([json.loads(msg.data)])
            except ValueError:
                pass  # not JSON: a malformed record, which rtem dead-letters

        self._subscription = await self._nc.subscribe("rtem.events.>", cb=on_event)

    # -- serving ---------------------------------------------------------------------------------

    def serve(self, port: int = 0, host: str = "127.0.0.1") -> int:
        """Serve /metrics on `host:port` (0: a free port) from a thread of its own; returns the port."""
        if self._server is not None:
            raise RuntimeError("the exporter is already serving")
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        return self._server.server_port

    async def stop(self) -> None:
        if self._nc is not None:
            await self._nc.close()
            self._nc = self._subscription = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- metrics ---------------------------------------------------------------------------------

    def _labels(self, event: dict[str, Any]) -> tuple[str, ...] | None:
        entity = str(event.get("subject") or "")
        if entity not in self.topology:
            return None
        attributes = (event.get("data") or {}).get("attributes") or {}
        host = attributes.get("host.name") or self.topology.host_of(entity) or ""
        return (entity, self.topology.entity_type(entity) or "", self.topology.service_of(entity), str(host))

    def _sample(self, event: dict[str, Any]) -> None:
        labels = self._labels(event)
        if labels is None:
            return
        for name, value in ((event.get("data") or {}).get("attributes") or {}).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not _NAME.match(name):
                continue  # placement labels (host.name, service.name) and flags are not measurements
            self._gauge(name).labels(*labels).set(float(value))

    def _health(self, event: dict[str, Any]) -> None:
        labels = self._labels(event)
        if labels is None:
            return
        failing = ((event.get("data") or {}).get("attributes") or {}).get("status") == "failing"
        self._up.labels(*labels).set(0.0 if failing else 1.0)
        counter = self._failures.labels(*labels)
        if failing:
            counter.inc()

    def _gauge(self, measurement: str) -> Gauge:
        with self._lock:
            gauge = self._gauges.get(measurement)
            if gauge is None:
                gauge = Gauge(f"{PREFIX}{measurement}", f"the shop's {measurement} samples", LABELS,
                              registry=self.registry)
                self._gauges[measurement] = gauge
            return gauge
