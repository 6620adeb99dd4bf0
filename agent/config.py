"""rtem's configuration: one pydantic settings model, from a file and `RTEM_*` variables.

Precedence, highest first: environment variables (`RTEM_DATA_DIR`, `RTEM_NATS_URL`, …), the file
named by `RTEM_CONFIG` (TOML or YAML), then the defaults below, which run on a laptop.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from bus import EVENTS_MAX_BYTES, EVENTS_MAX_MSGS, BusSettings, NatsAuth, RetryPolicy
from rules import Topology, TopologyError


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RTEM_", extra="forbid")

    data_dir: Path = Field(Path(".rtem"), description="where the store, audit log and checkpoints live")
    database_url: SecretStr | None = Field(
        None, description="postgresql://… to keep rtem's records in PostgreSQL (several workers on one "
                          "database); unset: SQLite files in data_dir (docs/storage.md)")
    database_pool_size: int = Field(20, ge=2, le=500, description="PostgreSQL connections one rtem may hold")
    worker_id: str | None = Field(None, description="this `rtem run` among several on one database (unique, and the "
                                  "same across its restarts); unset: host:hash-of-data_dir")
    leader_lease_s: float = Field(6.0, ge=1, le=120, description="the leader's lease, and each incident's: a "
                                  "standby takes over at most this long after the leader stopped renewing it, "
                                  "and another worker a dead worker's incidents (docs/deployment.md)")
    worker_concurrency: int = Field(8, ge=1, le=1024, description="incident threads one `rtem run` worker moves "
                                    "on at once; more ready incidents wait for a free slot here or on another "
                                    "worker (docs/deployment.md)")
    nats_url: str | None = Field(None, description="an existing NATS server, or several of a cluster separated "
                                 "by commas; unset: start an embedded one")
    nats_replicas: int = Field(1, ge=1, le=5, description="copies JetStream keeps of each stream: 3 on a cluster "
                               "of three servers (docs/deployment.md)")
    # Credentials and TLS for an external NATS server (docs/nats.md); the embedded one makes its own.
    nats_creds: Path | None = Field(None, description="NATS credentials file (JWT and nkey seed)")
    nats_nkey_seed: Path | None = Field(None, description="NATS nkey seed file")
    nats_token: SecretStr | None = Field(None, description="NATS token")
    nats_user: str | None = Field(None, description="NATS user (with nats_password)")
    nats_password: SecretStr | None = Field(None, description="NATS password")
    nats_tls_ca: Path | None = Field(None, description="CA bundle that signed the NATS server's certificate")
    nats_tls_cert: Path | None = Field(None, description="client certificate for mutual TLS (with nats_tls_key)")
    nats_tls_key: Path | None = Field(None, description="client certificate's private key")
    nats_targets: dict[str, list[str]] = Field(
        {}, description="the embedded server's target users, each with the command subjects it may receive, "
                        'e.g. {"db-agent": ["rtem.cmd.*.orders-db"]}; unset: one user `target` receives all')
    rules_dir: Path | None = Field(None, description="guardrails, contracts and detections; unset: packaged")
    topology: Path | None = Field(None, description="topology file (JSON or YAML)")
    llm: Literal["none", "openai", "local"] = Field(
        "none", description="reasoner: none = the deterministic reasoner; openai = any OpenAI-compatible "
                            "endpoint; local = llama.cpp's server started by rtem (the [local] extra); docs/llm.md")
    # The LLM reasoner (docs/llm.md). Unset provider fields fall back to the SDK's OPENAI_* variables.
    llm_base_url: str | None = Field(None, description="OpenAI-compatible endpoint; unset: OPENAI_BASE_URL, else OpenAI")
    llm_api_key: SecretStr | None = Field(None, description="unset: OPENAI_API_KEY")
    llm_model: str | None = Field(None, description="unset: OPENAI_MODEL, else gpt-4o-mini; local: `local`")
    llm_output: Literal["json_schema", "tools"] = Field(
        "json_schema", description="structured output: a json_schema response format, or a forced tool call")
    llm_strict: bool = Field(False, description="ask for strict schema adherence (OpenAI's subset of JSON Schema)")
    llm_timeout_s: float | None = Field(None, gt=0, description="per request; unset: 30 (openai), 180 (local)")
    llm_temperature: float = Field(0.0, ge=0, le=2)
    llm_seed: int | None = Field(7, description="sampling seed, for reproducible answers where supported")
    llm_max_tokens: int = Field(1024, ge=64, le=32768, description="answer tokens per call")
    llm_context_tokens: int | None = Field(None, ge=500, description="token budget of the incident context; "
                                           "unset: 6000 (openai), 2500 (local)")
    llm_retry_attempts: int = Field(3, ge=1, le=10, description="tries per call for 429/5xx/timeouts")
    llm_retry_initial_s: float = Field(0.5, ge=0, description="first backoff; doubles per retry, at most 8 s")
    llm_breaker_failures: int = Field(5, ge=1, description="consecutive failed requests that open the breaker")
    llm_breaker_reset_s: float = Field(30.0, gt=0, description="open breaker's wait before one trial call")
    llm_max_concurrency: int = Field(4, ge=1, description="LLM calls in flight at once")
    llm_incident_calls: int = Field(6, ge=1, description="LLM calls one incident may make")
    llm_incident_tokens: int = Field(60000, ge=1000, description="LLM tokens (in + out) one incident may use")
    llm_deadline_s: float = Field(10.0, gt=0, description="wall seconds one incident's LLM refinement (diagnosis "
                                  "and proposals together) may take, queue included; past it the deterministic "
                                  "answer stands")
    llm_price_in: float | None = Field(None, ge=0, description="USD per million input tokens (cost estimate)")
    llm_price_out: float | None = Field(None, ge=0, description="USD per million output tokens (cost estimate)")
    local_model: Path | None = Field(None, description="GGUF file for --llm local; unset: SmolLM2-135M-Instruct")
    local_ctx_size: int = Field(8192, ge=512, description="llama.cpp server context size (tokens)")

    batch_size: int = Field(256, ge=1, le=10000, description="events fetched per pull")
    max_ack_pending: int = Field(2048, ge=1, description="events in flight before the consumer waits")
    max_deliver: int = Field(5, ge=1, description="deliveries before an event goes to the DLQ")
    ack_wait_s: float = Field(30.0, gt=0)
    redelivery_initial_s: float = Field(0.4, ge=0, description="wait before redelivering an event the pipeline "
                                        "failed on; doubles per delivery")
    redelivery_max_s: float = Field(5.0, ge=0, description="longest wait before a redelivery")
    publish_retry_attempts: int = Field(10, ge=1, le=100, description="tries to publish an event whose ack was "
                                        "lost (a reconnect)")
    publish_retry_initial_s: float = Field(0.2, ge=0, description="first wait between them; doubles per retry")
    publish_retry_max_s: float = Field(3.0, ge=0, description="longest wait between them")
    nats_reconnect_wait_s: float = Field(0.25, gt=0, description="wait between attempts to reconnect to NATS")
    duplicate_window_s: float = Field(120.0, gt=0, description="JetStream Nats-Msg-Id dedupe window")
    max_event_bytes: int = Field(1024 * 1024, ge=1024)
    correlation_gap_s: float = Field(300.0, gt=0, description="event-time gap that ends an incident")
    max_clock_skew_s: float = Field(300.0, gt=0, description="an event dated further than this after it is "
                                    "received goes to the DLQ: event time never jumps ahead on a bad clock")
    idle_close_s: float = Field(3600.0, gt=0, description="event time without a new signal after which an "
                                "incident on which nothing was done ages out (closed as stale)")
    # Retention (docs/retention.md): what `rtem purge` (and rtem run, daily) deletes, by age.
    retain_events_days: float = Field(30.0, gt=0, description="stored events of closed incidents, and events "
                                      "of none, are kept this long")
    retain_dlq_days: float = Field(14.0, gt=0, description="the DLQ stream keeps messages this long")
    retain_checkpoints_days: float = Field(7.0, gt=0, description="graph checkpoints of closed incidents")
    retain_audit_days: float = Field(400.0, gt=0, description="audit records (and the AUDIT stream): kept "
                                     "longest; a purge never breaks the hash chain's verification")
    # EVENTS' bounds and trimming (docs/retention.md, "The streams")
    events_max_bytes: int = Field(EVENTS_MAX_BYTES, ge=-1, description="bytes the EVENTS stream holds at most; "
                                  "full, it refuses new events (the producer sees it) rather than drop unread "
                                  "ones; JetStream reserves it on the server's storage; -1: no bound")
    events_max_msgs: int = Field(EVENTS_MAX_MSGS, ge=-1, description="events the EVENTS stream holds at most; "
                                 "-1: no bound")
    events_keep_s: float = Field(3600.0, ge=0, description="events triage has acknowledged stay on EVENTS this "
                                 "long before trimming removes them (given up while EVENTS is half full)")
    events_trim_every_s: float = Field(30.0, gt=0, le=3600, description="how often `rtem run` trims EVENTS of "
                                       "what triage has acknowledged")
    approval_ttl_s: float = Field(900.0, gt=0, description="an approval request, and an approval, expire after this")
    verify_quiet_s: float = Field(60.0, gt=0, description="event-time quiet after acting that counts as recovery")
    verify_deadline_s: float = Field(600.0, gt=0, description="event time after acting before rtem escalates")
    diagnose_after_s: float = Field(30.0, ge=0, description="event time an incident gathers evidence before diagnosis")
    command_allowlist: list[str] = Field(default_factory=list, description="programs the command executor may run")
    http_host: str = Field("127.0.0.1", description="where `rtem run` serves the HTTP API and console")
    http_port: int = Field(8080, ge=0, le=65535, description="its port; 0: a free port, printed at start")
    http_max_body_bytes: int = Field(1024 * 1024, ge=1024, description="larger request bodies get 413")
    reports_dir: Path | None = Field(None, description="where closed incidents' reports are written; "
                                                       "unset: DATA_DIR/reports")
    sqlite_synchronous: Literal["NORMAL", "FULL"] = Field(
        "NORMAL", description="NORMAL (WAL) survives a crash of rtem, like JetStream's default sync "
                              "policy; FULL also survives power loss, at one fsync per batch")
    # Paging: Alertmanager and the direct notifiers (docs/integrations.md)
    # Paging (docs/integrations.md): Alertmanager and the direct notifiers; none set: pages are only logged.
    public_url: str | None = Field(None, description="the console's base URL as people reach it (e.g. "
                                   "https://rtem.example.com), for links in notifications; unset: no links")
    alertmanager_url: str | None = Field(None, description="Alertmanager to post incidents to as alerts "
                                         "(/api/v2/alerts); several separated by commas for an HA pair")
    alertmanager_refresh_s: float = Field(60.0, ge=1, description="how often an open incident's alert is "
                                          "posted again; it ends by itself 3 refreshes after rtem stops posting")
    webhook_url: str | None = Field(None, description="a receiver for every notice as signed JSON")
    webhook_secret: SecretStr | None = Field(None, description="HMAC-SHA256 key that signs webhook notices")
    webhook_secret_file: Path | None = Field(None, description="file holding webhook_secret (wins over it)")
    pagerduty_routing_key: SecretStr | None = Field(None, description="PagerDuty Events API v2 integration key")
    pagerduty_routing_key_file: Path | None = Field(None, description="file holding pagerduty_routing_key")
    pagerduty_url: str = Field("https://events.pagerduty.com/v2/enqueue", description="PagerDuty Events API v2")
    slack_webhook_url: SecretStr | None = Field(None, description="Slack (or compatible) incoming webhook URL")
    notify_timeout_s: float = Field(5.0, gt=0, description="per request to a notification destination")
    notify_retry_attempts: int = Field(3, ge=1, le=10, description="tries per notice and destination")
    notify_retry_initial_s: float = Field(0.5, ge=0, description="first backoff; doubles per retry, at most 8 s")
    notify_breaker_failures: int = Field(5, ge=1, description="consecutive failed notices that open a "
                                         "destination's breaker")
    notify_breaker_reset_s: float = Field(60.0, gt=0, description="open breaker's wait before one trial notice")
    # The escalation policy (docs/integrations.md)
    escalation_policy: Path | None = Field(None, description="escalation policy file (YAML, checked by `rtem rules "
                                           "check`); unset: RULES_DIR/escalation.yaml if there is one, else none: "
                                           "each incident pages once, as without a policy (docs/integrations.md)")
    escalation_every_s: float = Field(15.0, gt=0, le=3600, description="how often `rtem run` looks for pages "
                                      "the escalation policy says are due")
    # Investigation through Prometheus (docs/integrations.md)
    prometheus_url: str | None = Field(None, description="Prometheus to investigate incidents with, e.g. "
                                       "http://prometheus:9090; unset: no investigation (docs/integrations.md)")
    prometheus_queries: Path | None = Field(None, description="the query file (allowlisted PromQL templates per "
                                            "entity type); unset: the packaged one, for the demo shop's metrics")
    prometheus_timeout_s: float = Field(5.0, gt=0, le=120, description="per Prometheus query")
    prometheus_max_points: int = Field(120, ge=2, le=11000, description="points per series at most: the step "
                                       "grows with the incident's window to stay under it")
    prometheus_min_step_s: float = Field(1.0, gt=0, description="the smallest query step (a scrape interval)")
    prometheus_max_series: int = Field(20, ge=1, le=1000, description="series kept per query; more are dropped")
    prometheus_lookback_s: float = Field(120.0, ge=0, le=86400, description="queried before the incident's "
                                         "first event, to see a cause that came before its symptoms")
    prometheus_max_queries: int = Field(60, ge=1, le=1000, description="queries one incident's investigation runs")
    prometheus_budget_s: float = Field(20.0, gt=0, le=600, description="wall time one investigation may take")
    prometheus_llm_calls: int = Field(4, ge=0, le=50, description="query_prometheus tool calls the LLM may make "
                                      "per incident; 0: no tool")
    # Topology reload and discovery (docs/integrations.md)
    topology_reload: bool = Field(True, description="`rtem run` watches the topology file: a change is checked "
                                  "and swapped in, or refused with its file:line (docs/integrations.md)")
    topology_mapping: Path | None = Field(None, description="discovery: which Prometheus target and series labels "
                                          "make which entities and relations (YAML); unset: no discovery")
    topology_discovery_interval_s: float = Field(60.0, ge=1, le=86400, description="how often discovery asks "
                                                 "Prometheus (RTEM_PROMETHEUS_URL) for targets and series")
    otel_exporter: Literal["none", "console", "otlp"] | None = Field(
        None, description="where `rtem run` exports OpenTelemetry spans: none, console (printed), or otlp "
                          "(OTLP/HTTP to OTEL_EXPORTER_OTLP_ENDPOINT); unset: otlp when that variable is set, "
                          "else none")

    def escalation_policy_file(self) -> Path | None:
        """The escalation policy in force: `escalation_policy`, else RULES_DIR/escalation.yaml when it exists
        (the packaged example is documentation, never applied unasked)."""
        if self.escalation_policy is not None:
            return self.escalation_policy
        candidate = self.rules_dir / "escalation.yaml" if self.rules_dir is not None else None
        return candidate if candidate is not None and candidate.is_file() else None

    def load_topology(self, path: Path | None = None) -> Topology:
        """The topology named on the command line, else RTEM_TOPOLOGY; TopologyError says what is wrong."""
        path = path or self.topology
        if path is None:
            raise TopologyError("no topology", "pass --topology FILE or set RTEM_TOPOLOGY")
        return Topology.load(path)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "rtem.db"

    @property
    def database(self) -> str | Path:
        """Where rtem's records live: the PostgreSQL URL of `database_url`, else the SQLite file `db_path`."""
        return self.database_url.get_secret_value() if self.database_url else self.db_path

    def bus_settings(self) -> BusSettings:
        return BusSettings(duplicate_window_s=self.duplicate_window_s, max_ack_pending=self.max_ack_pending,
                           max_deliver=self.max_deliver, ack_wait_s=self.ack_wait_s,
                           redelivery=RetryPolicy(initial_interval_s=self.redelivery_initial_s,
                                                  max_interval_s=self.redelivery_max_s),
                           publish_retry=RetryPolicy(max_attempts=self.publish_retry_attempts,
                                                     initial_interval_s=self.publish_retry_initial_s,
                                                     max_interval_s=self.publish_retry_max_s),
                           reconnect_wait_s=self.nats_reconnect_wait_s,
                           dlq_max_age_s=self.retain_dlq_days * 86400, audit_max_age_s=self.retain_audit_days * 86400,
                           max_future_skew_s=self.max_clock_skew_s, replicas=self.nats_replicas,
                           events_max_bytes=self.events_max_bytes, events_max_msgs=self.events_max_msgs,
                           events_keep_s=self.events_keep_s,
                           auth=NatsAuth(creds=self.nats_creds, nkey_seed=self.nats_nkey_seed,
                                         token=self.nats_token.get_secret_value() if self.nats_token else None,
                                         user=self.nats_user,
                                         password=self.nats_password.get_secret_value() if self.nats_password
                                         else None,
                                         tls_ca=self.nats_tls_ca, tls_cert=self.nats_tls_cert,
                                         tls_key=self.nats_tls_key))

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _FileSource(settings_cls)


class _FileSource(PydanticBaseSettingsSource):
    """Reads the file named by RTEM_CONFIG (TOML or YAML); a missing variable means no file."""

    def get_field_value(self, field, field_name):  # pragma: no cover - __call__ does the work
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        name = os.environ.get("RTEM_CONFIG")
        if not name:
            return {}
        path = Path(name)
        text = path.read_text("utf-8")
        doc = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
        return dict(doc.get("rtem", doc) if isinstance(doc, dict) else {})
