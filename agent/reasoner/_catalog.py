"""What the deterministic reasoner knows about signals and remedies, as data.

Three tables live here: which resource a metric name measures (its *domain*), which direction of change
is bad for that domain, and which remediation actions answer which (entity type, fault type). Everything
is keyed by generic words found in metric names (cpu, mem, fs_reads, io.w_s, mrt, sr ...), never by the
names of one system's services, so the same tables serve any topology.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable
from dataclasses import dataclass

from ..redact import scrub

# The fault-type vocabulary: what `RootCause.fault_type` may say.
FAULT_TYPES: dict[str, str] = {
    "cpu": "CPU saturation or contention",
    "memory": "memory pressure or leak",
    "disk_io": "disk read/write throughput or IOPS",
    "disk_space": "disk or filesystem filling up",
    "network": "network throughput, packet loss, corruption or retransmission",
    "connections": "connections exhausted: a full connection pool or a server at its connection limit",
    "process": "process or thread trouble: crashes, restarts, thread explosion, health check down",
    "latency": "slow responses with no resource signal that explains them",
    "errors": "failed requests with no resource signal that explains them",
    "bad_deploy": "a deployment shortly before the anomalies",
    "bad_config": "a configuration change shortly before the anomalies",
    "unknown": "anomalous, but the signals do not say which resource",
}

# Domains are the resources (or symptoms) a signal speaks about; most map one-to-one to a fault type.
RESOURCE_DOMAINS = ("cpu", "memory", "disk_io", "disk_space", "network", "connections", "process")
SYMPTOM_DOMAINS = ("latency", "errors", "traffic")
# Most specific first: on a tie between domains, the earlier names the fault. Thread counts and CPU rise
# under almost any load, so they say the least about which resource is at fault.
SPECIFICITY = ("disk_space", "disk_io", "connections", "network", "memory", "cpu", "process", "errors", "latency",
               "traffic")
CHANGE_FAULTS = {"rtem.change.deploy": "bad_deploy", "rtem.change.config": "bad_config"}

# Ordered: the first rule whose words all occur among a metric name's tokens wins, so the more specific
# rules (disk space before disk, success rate before rate) come first.
_DOMAIN_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("disk_space", ("disk", "used")),
    ("disk_space", ("disk", "pct")),
    ("disk_space", ("disk", "free")),
    ("disk_space", ("fs", "usage")),
    ("disk_space", ("filesystem",)),
    ("disk_space", ("inodes",)),
    ("disk_io", ("fs", "reads")),
    ("disk_io", ("fs", "writes")),
    ("connections", ("connections",)),
    ("connections", ("conns",)),
    ("connections", ("pool",)),
    ("network", ("network",)),
    ("network", ("net",)),
    ("network", ("packets",)),
    ("network", ("retrans",)),
    ("network", ("retransmits",)),
    ("network", ("tcp",)),
    ("network", ("rx",)),
    ("network", ("tx",)),
    ("disk_io", ("io",)),
    ("disk_io", ("iowait",)),  # CPU time waiting for the disk (system_core_iowait_pct) is the disk's trouble
    ("disk_io", ("iops",)),
    ("disk_io", ("blkio",)),
    ("disk_io", ("diskio",)),
    ("disk_io", ("disk",)),
    ("cpu", ("cpu",)),
    ("cpu", ("load",)),
    ("memory", ("memory",)),
    ("memory", ("mem",)),
    ("memory", ("rss",)),
    ("memory", ("heap",)),
    ("memory", ("swap",)),
    ("memory", ("oom",)),
    ("process", ("threads",)),
    ("process", ("thread",)),
    ("process", ("restarts",)),
    ("process", ("restart",)),
    ("process", ("pids",)),
    ("process", ("fds",)),
    ("process", ("up",)),
    ("errors", ("sr",)),
    ("errors", ("success",)),
    ("errors", ("error",)),
    ("errors", ("errors",)),
    ("errors", ("5xx",)),
    ("errors", ("failures",)),
    ("latency", ("mrt",)),
    ("latency", ("rt",)),
    ("latency", ("latency",)),
    ("latency", ("duration",)),
    ("latency", ("p99",)),
    ("latency", ("p95",)),
    ("traffic", ("rr",)),
    ("traffic", ("count",)),
    ("traffic", ("qps",)),
    ("traffic", ("rps",)),
    ("traffic", ("requests",)),
)

# Metrics where a rise is good news: a higher success rate or uptime is not a fault.
_HIGHER_IS_BETTER = (("sr",), ("success",), ("up",))

_TOKEN = re.compile(r"[a-z0-9]+")
# A trailing device or interface qualifier (container_fs_reads./dev/vda, ..._packets.eth0) names where
# a metric was measured, not what it measures; two devices of one metric are one kind of signal.
_QUALIFIER = re.compile(r"\.(/dev/[^.]*|eth\d+|ens\w*|enp\w*|lo|vd[a-z]\d*|sd[a-z]\d*|nvme\w*)$")


def metric_kind(name: str) -> str:
    """The metric name without its device or interface qualifier."""
    return _QUALIFIER.sub("", name.strip())


def metric_domain(name: str) -> str:
    """The resource or symptom a metric measures; "unknown" when no rule matches."""
    tokens = set(_TOKEN.findall(metric_kind(name).lower()))
    for domain, words in _DOMAIN_RULES:
        if all(w in tokens for w in words):
            return domain
    return "unknown"


def is_bad_direction(name: str, domain: str, direction: str | None) -> bool:
    """Whether a change in `direction` is a problem for this metric.

    Latency and error counts are only bad when they rise, success rates and uptime only when they fall.
    Resource usage is suspect both ways: a spike is load, a drop is a process that stopped working.
    """
    if not direction:
        return True
    direction = direction.lower()
    tokens = set(_TOKEN.findall(metric_kind(name).lower()))
    if any(all(w in tokens for w in words) for words in _HIGHER_IS_BETTER):
        return direction == "down"
    if domain in ("latency", "errors"):
        return direction == "up"
    return True


# What varies between two lines of one log statement: numbers, hex ids, UUIDs, IPs, paths, quoted values
# and timestamps (ISO 8601, and syslog's "Jul  1 10:54:22", whose month would otherwise be a word). Replacing
# them leaves the statement's constant words, its template (as log parsers such as Drain do, without their
# learning), so "timeout after 3012 ms" and "timeout after 87 ms" are one kind.
_VARIABLE = re.compile(r"\d{4}-\d\d-\d\d[t ]\d\d:\d\d(?::\d\d)?(?:[.,]\d+)?(?:z|[+-]\d\d:?\d\d)?"
                       r"|\b(?:(?:mon|tue|wed|thu|fri|sat|sun)[a-z]*,?\s+)?(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct"
                       r"|nov|dec)[a-z]*\s+\d{1,2}(?:\s+\d{4})?\s+\d\d:\d\d(?::\d\d)?(?:[.,]\d+)?"
                       r"|\"[^\"]*\"|'[^']*'|(?:/[\w.-]+)+|\b[0-9a-f]{8}-[0-9a-f-]{27}\b|\b0x[0-9a-f]+\b"
                       r"|\d+(?:[.:]\d+)*\b|\b[0-9a-f]*\d[0-9a-f]*\b")
# Punctuation around a word ("error:", "[main]", "|") is layout, not the statement; "*" marks a variable.
_LAYOUT = string.punctuation.replace("*", "")
TEMPLATE_WORDS = 8


def without_names(text: str, names: Iterable[str]) -> str:
    """`text` with each of `names` (whole words, any case) as a variable part "*". A line's writer names
    itself in it (in a header, or "web-1 started"); who wrote a line is not what it says."""
    for name in sorted({n for n in names if n}, key=len, reverse=True):
        text = re.sub(rf"(?<![\w-]){re.escape(name)}(?![\w-])", " * ", text, flags=re.IGNORECASE)
    return text


# A level word in a line's header ("2021-07-01 10:54:22 | ERROR | …"): the event's severity says it already.
_LEVELS = frozenset(("trace", "debug", "info", "notice", "warn", "warning", "error", "err", "fatal", "critical",
                     "crit", "severe"))


def log_template(message: str) -> str:
    """A log line's template: its first `TEMPLATE_WORDS` constant words, each run of variable parts one "*".
    Secrets are redacted first: a template is shown in explanations, reports and the LLM's context, and
    cutting a credential into variable parts would leave pieces of it that no longer look like one.

    Real lines often open with a header (a timestamp, the level, a thread, addresses: "2021-07-01
    10:54:22,639 | ERROR | 172.17.0.6 | …"). Its separators are dropped, its variable parts squeeze to one
    "*", and a leading run of variable parts, with a level word among them, is not part of the statement:
    the statement's own words decide the template ("an error occurred downstream")."""
    words: list[str] = []
    for raw in _VARIABLE.sub(" * ", scrub(message).lower()).split():
        word = raw.strip(_LAYOUT)
        if word and not (word == "*" and words and words[-1] == "*"):
            words.append(word)
    start = 0
    while start < len(words) - 1 and (words[start] == "*" or start and words[start] in _LEVELS):
        start += 1  # a level word counts as header only after a variable part (a timestamp): "* error *"
    template: list[str] = []
    constant = 0
    for word in words[start:]:
        template.append(word)
        constant += word != "*"
        if constant == TEMPLATE_WORDS:
            break
    return " ".join(template) or "*"


def text_domain(text: str) -> str:
    """The domain a free-text message (log line, alert name) speaks about: the words below, else the
    metric rules (a log naming "fs reads" or "memory" speaks about them), else "errors"."""
    tokens = set(_TOKEN.findall(text.lower()))
    hints = (
        ("memory", ("oom", "outofmemory", "oomkilled", "memory")),
        ("disk_space", ("space", "full", "enospc")),
        ("disk_io", ("iowait", "io")),
        ("cpu", ("cpu", "throttled", "throttling")),
        # before network: "pool exhausted" and "too many connections" are a limit reached, while one
        # "connection refused" or "connection reset" is the network's (or the peer's) word
        ("connections", ("pool", "exhausted", "connections")),
        ("network", ("timeout", "timed", "unreachable", "refused", "reset", "network", "dns")),
        ("process", ("crash", "crashloop", "crashloopbackoff", "killed", "restart", "restarted", "panic",
                     "segfault", "exited", "down", "unhealthy")),
        ("latency", ("slow", "latency")),
    )
    for domain, words in hints:
        if tokens & set(words):
            return domain
    for domain, words in _DOMAIN_RULES:
        if not set(words) & _PROSE and all(w in tokens for w in words):
            return domain
    return "errors"


# Metric words that are ordinary prose in a log line ("started up", "failed to load", "too many requests").
_PROSE = frozenset(("up", "load", "count", "requests"))


_INWARD = frozenset(("read", "reads", "r", "rx", "receive", "received", "in", "ingress"))
_OUTWARD = frozenset(("write", "writes", "w", "tx", "transmit", "transmitted", "sent", "out", "egress"))


def flow_of(kind: str) -> str | None:
    """Whether a disk or network metric counts reads/receives ("in") or writes/sends ("out")."""
    tokens = set(_TOKEN.findall(kind.lower()))
    if tokens & _INWARD and not tokens & _OUTWARD:
        return "in"
    if tokens & _OUTWARD and not tokens & _INWARD:
        return "out"
    return None


def fault_type_of(domain: str) -> str:
    if domain in FAULT_TYPES:
        return domain
    if domain == "traffic":
        return "latency"
    return "unknown"


# --- actions --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActionRule:
    """One remediation the catalog offers: `type` aimed at the cause itself or at a related entity.

    `aim` is one of: "self" (the cause), "service" (the service an instance belongs to), "host" (the
    host an instance runs on), "instance" (the cause's most anomalous instance), "caller" (the cause
    itself, with the circuit opened from its busiest caller), "user" (a service that uses the cause).
    """

    type: str
    aim: str = "self"
    why: str = ""


# Keyed by (entity type, fault type); "*" matches any fault type. The first matching key wins, and at
# most two remedies are proposed before the closing notify_oncall. Every remedy here fits its key under
# the contracts' `remedies` (tests/test_fitness.py checks each): where nothing fits, the entry is empty.
ACTION_CATALOG: dict[tuple[str, str], tuple[ActionRule, ...]] = {
    ("instance", "bad_deploy"): (ActionRule("rollback_deploy", "service", "undo the deployment before it"),),
    ("instance", "cpu"): (ActionRule("restart_instance", why="a restart clears a runaway process"),
                          ActionRule("scale_out", "service", "more replicas take load off the saturated one")),
    ("instance", "memory"): (ActionRule("restart_instance", why="a restart releases leaked memory"),),
    ("instance", "process"): (ActionRule("restart_instance", why="bring the failed process back"),),
    ("instance", "disk_io"): (ActionRule("restart_instance", why="stop the I/O-heavy process"),),
    ("instance", "disk_space"): (ActionRule("restart_instance", why="a fresh container gets clean scratch space"),),
    ("instance", "network"): (ActionRule("restart_instance", why="a restart moves the pod to a fresh network path"),),
    ("instance", "*"): (ActionRule("restart_instance", why="restart the misbehaving instance"),),
    ("service", "bad_deploy"): (ActionRule("rollback_deploy", why="undo the deployment before the anomalies"),),
    ("service", "cpu"): (ActionRule("scale_out", why="add capacity for the CPU-bound service"),
                         ActionRule("shed_load", why="protect the service while it scales")),
    ("service", "memory"): (ActionRule("scale_out", why="spread memory pressure over more replicas"),),
    ("service", "disk_io"): (ActionRule("scale_out", why="spread I/O over more replicas"),),
    ("service", "errors"): (ActionRule("open_circuit", "caller", "stop failures cascading to callers"),),
    ("service", "network"): (ActionRule("open_circuit", "caller", "stop calls over the degraded network path"),),
    ("service", "latency"): (ActionRule("shed_load", why="cut load until latency recovers"),
                             ActionRule("open_circuit", "caller", "keep callers from queueing on it")),
    ("service", "disk_space"): (ActionRule("restart_instance", "instance",
                                           "a fresh container gets clean scratch space"),),
    ("service", "bad_config"): (),  # no action undoes a configuration change: a person does
    ("service", "*"): (ActionRule("scale_out", why="add capacity to the degraded service"),),
    ("host", "bad_deploy"): (),
    ("host", "bad_config"): (),
    ("host", "*"): (ActionRule("drain_host", why="move workloads off the faulty host"),),
    ("database", "*"): (ActionRule("failover_database", why="switch to a healthy replica"),),
    ("cache", "bad_deploy"): (),
    ("cache", "*"): (ActionRule("restart_instance", "instance", "restart the degraded cache node"),),
    ("queue", "disk_space"): (),
    ("queue", "bad_deploy"): (),
    ("queue", "bad_config"): (),
    ("queue", "*"): (ActionRule("shed_load", "user", "slow producers while the queue recovers"),),
}

ACTION_TYPES = ("restart_instance", "rollback_deploy", "scale_out", "failover_database", "open_circuit",
                "shed_load", "drain_host", "notify_oncall")

# Conservative defaults for the parameterised actions; the guard's contracts bound them.
SCALE_OUT_REPLICAS = 2
SHED_LOAD_PERCENT = 20


def action_rules(entity_type: str, fault_type: str) -> tuple[ActionRule, ...]:
    """The remedies for a cause; an empty entry means none fits (a person decides), not "see *"."""
    if (entity_type, fault_type) in ACTION_CATALOG:
        return ACTION_CATALOG[(entity_type, fault_type)]
    return ACTION_CATALOG.get((entity_type, "*"), ())
