"""OpenTelemetry over OTLP: a real `rtem run` (a subprocess: the tracer provider is process-wide) with only
OTEL_EXPORTER_OTLP_ENDPOINT set exports its spans to an OTLP/HTTP receiver the test starts; the producer's
trace continues in triage, and a NATS command carries the trace context of the span that sent it."""

import asyncio
import gzip
import json
import os
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from nats.js.errors import NotFoundError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (ExportTraceServiceRequest,
                                                                        ExportTraceServiceResponse)

from agent.telemetry import choose_exporter
from bus._streams import event_subject
from tests.helpers import EXAMPLES
from tests.live import Target, anomaly, wait_for

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PRODUCER_SPAN = "00f067aa0ba902b7"


class OtlpReceiver:
    """An OTLP/HTTP collector's trace endpoint: `POST /v1/traces`, protobuf bodies, every span kept."""

    def __init__(self):
        self.spans: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
                    self.send_response(404)
                    self.end_headers()
                    return
                request = ExportTraceServiceRequest.FromString(body)
                for resource_spans in request.resource_spans:
                    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                    for scope_spans in resource_spans.scope_spans:
                        receiver.spans += [{"name": s.name, "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(),
                                            "parent_id": s.parent_span_id.hex(), "service": resource["service.name"]}
                                           for s in scope_spans.spans]
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_an_otlp_endpoint_selects_otlp_unless_the_setting_says_otherwise():
    assert choose_exporter(None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}) == "otlp"
    assert choose_exporter(None, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}) == "otlp"
    assert choose_exporter(None, {}) == "none"
    assert choose_exporter("console", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}) == "console"


@pytest.mark.integration
async def test_rtem_run_exports_its_spans_over_otlp_with_the_trace_carried_through(tmp_path, nats_server, bus):
    receiver = OtlpReceiver()
    target = Target()
    await target.attach(bus.nc)
    env = {**os.environ, "RTEM_NATS_URL": nats_server.url, "RTEM_DATA_DIR": str(tmp_path / "data"),
           "RTEM_DIAGNOSE_AFTER_S": "5", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
           # Nothing is exported on a timer within the test: the spans arrive only if stopping flushes them.
           "OTEL_BSP_SCHEDULE_DELAY": "600000"}
    env.pop("RTEM_OTEL_EXPORTER", None)
    events = [anomaly(f"a{i}", "cartservice-0", i) for i in range(10)]
    for event in events:  # the producer's trace context, as `rtem ingest` or an instrumented producer sets it
        await bus.js.publish(event_subject(event["type"]), json.dumps(event).encode(),
                             headers={"Nats-Msg-Id": event["id"], "traceparent": f"00-{TRACE_ID}-{PRODUCER_SPAN}-01"})
    topology = EXAMPLES / "boutique-topology.json"
    run = subprocess.Popen([sys.executable, "-m", "agent", "run", "--topology", str(topology), "--no-http",
                            "--metrics-port", "0"], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)
    try:
        await wait_for(lambda: target.headers, timeout=25, message=lambda: "no command reached the target")
        await wait_for(lambda: consumed(bus), timeout=10)
        assert receiver.spans == []  # batched, not yet sent
        run.send_signal(signal.SIGTERM)
        output, _ = await asyncio.to_thread(run.communicate, timeout=20)
        assert run.returncode == 0, output.decode(errors="replace")
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        receiver.close()

    assert {s["service"] for s in receiver.spans} == {"rtem"}
    batches = [s for s in receiver.spans if s["name"] == "triage.batch"]
    assert batches and all(s["trace_id"] == TRACE_ID and s["parent_id"] == PRODUCER_SPAN for s in batches)
    _, trace_id, parent_id, _ = target.headers[0]["traceparent"].split("-")
    sender = next(s for s in receiver.spans if s["span_id"] == parent_id)
    assert sender["name"] == "action.do" and sender["trace_id"] == trace_id


async def consumed(bus) -> bool:
    """The live run has taken and acknowledged every event published."""
    try:
        info = await bus.js.consumer_info("EVENTS", "triage")
    except NotFoundError:
        return False
    return info.num_pending == 0 and info.num_ack_pending == 0 and info.delivered.stream_seq >= 10
