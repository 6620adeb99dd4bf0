"""Cold start that generalises: evidence of every kind, weighted by its rarity in the system at hand, with
one instance per service as well as many. Small synthetic incidents through the real reasoner."""

from __future__ import annotations

import pytest

from agent.reasoner import DeterministicReasoner
from agent.reasoner._catalog import log_template, text_domain, without_names
from agent.reasoner._signals import extract_signals
from rules.topology import Topology
from tests.helpers import Events

SERVICES = ("web", "api", "auth", "orders", "search", "mail")
# web calls api and search; api calls auth and orders; orders calls mail.
CALLS = (("web", "api"), ("web", "search"), ("api", "auth"), ("api", "orders"), ("orders", "mail"))


@pytest.fixture
def single() -> Topology:
    """Six services, each with ONE instance on a host of its own: no siblings to compare with."""
    entities = [{"id": s, "type": "service"} for s in SERVICES]
    entities += [{"id": f"{s}-0", "type": "instance"} for s in SERVICES]
    entities += [{"id": f"node-{s}", "type": "host"} for s in SERVICES]
    relations = [{"source": a, "target": b, "type": "calls"} for a, b in CALLS]
    for s in SERVICES:
        relations.append({"source": f"{s}-0", "target": s, "type": "instance_of"})
        relations.append({"source": f"{s}-0", "target": f"node-{s}", "type": "runs_on"})
    return Topology.from_dict({"entities": entities, "relations": relations})


@pytest.fixture
def paired() -> Topology:
    """Six services, each with TWO instances, each instance on a host of its own."""
    entities = [{"id": s, "type": "service"} for s in SERVICES]
    relations = [{"source": a, "target": b, "type": "calls"} for a, b in CALLS]
    for s in SERVICES:
        for n in (0, 1):
            entities += [{"id": f"{s}-{n}", "type": "instance"}, {"id": f"node-{s}-{n}", "type": "host"}]
            relations.append({"source": f"{s}-{n}", "target": s, "type": "instance_of"})
            relations.append({"source": f"{s}-{n}", "target": f"node-{s}-{n}", "type": "runs_on"})
    return Topology.from_dict({"entities": entities, "relations": relations})


@pytest.fixture
def services_only() -> Topology:
    """Services and their calls, nothing else: what a tracing backend alone tells about a system."""
    return Topology.from_dict({"entities": [{"id": s, "type": "service"} for s in SERVICES],
                               "relations": [{"source": a, "target": b, "type": "calls"} for a, b in CALLS]})


def log(ev: Events, subject: str, message: str, at: float = 0, severity: str = "error") -> None:
    ev.other("rtem.log", subject, at=at, severity=severity, message=message)


def ranked(ev: Events, topology: Topology) -> list[str]:
    return [c.entity for c in DeterministicReasoner().rank(ev.events, topology, limit=20)]


# -- rarity ------------------------------------------------------------------------------------------


def test_a_log_template_every_entity_shows_weighs_less_than_a_rare_one(single):
    ev = Events()
    for i, s in enumerate(SERVICES):
        log(ev, f"{s}-0", f"request {1000 + i} failed after {20 + i} ms")  # one template, everywhere
    log(ev, "auth-0", "permission denied opening /var/lib/auth/keys.pem")  # once, on one entity
    causes = DeterministicReasoner().rank(ev.events, single, limit=20)
    assert single.matches(causes[0].entity, "auth")
    scores = {c.entity: c.confidence for c in causes}
    assert scores["web-0"] < scores[causes[0].entity]
    assert "permission denied opening *" in causes[0].explanation or "permission denied" in " ".join(
        c.explanation for c in causes[:2])


def test_a_rare_statement_stands_out_behind_the_headers_every_line_has(single):
    """Lines as real programs write them, header first and the logger's name in it, at the levels they
    use: the common warning is everywhere, the one failure (logged at info) is on auth alone."""
    ev = Events()
    for i, s in enumerate(SERVICES):
        header = f"2021-07-01 10:54:{10 + i},639 | {{}} | 172.17.0.{i} | {s}-0 | {s} | {i:08x}4f3e |"
        log(ev, f"{s}-0", header.format("WARNING") + f" slow query took {200 + i} ms", at=i, severity="warning")
        if s == "auth":
            log(ev, "auth-0", header.format("INFO") + " login failed for user bob", at=30, severity="info")
    assert single.matches(ranked(ev, single)[0], "auth")


def test_the_same_log_everywhere_says_nothing_about_where(single):
    """With one template on every entity and nothing else, no entity outranks another by evidence."""
    ev = Events()
    for s in SERVICES:
        log(ev, f"{s}-0", "request 17 failed")
    causes = DeterministicReasoner().rank(ev.events, single, limit=20)
    instances = [c.confidence for c in causes if c.entity.endswith("-0")]
    assert len(set(instances)) == 1


def test_a_rare_metric_outweighs_a_common_one_with_one_instance_per_service(single):
    ev = Events()
    for s in SERVICES:
        ev.metric(f"{s}-0", "container_memory_usage_MB")
    ev.metric("orders-0", "container_fs_writes./dev/vda", at=30)
    assert single.matches(ranked(ev, single)[0], "orders")


# -- one instance per service ----------------------------------------------------------------------


def test_one_instance_per_service_ranks_the_faulty_service_first(single):
    ev = Events()
    for metric in ("container_cpu_usage_seconds", "container_threads"):
        ev.metric("orders-0", metric)
    ev.metric("api", "grpc-mrt", at=60)  # its caller slows down after it
    ev.metric("web", "http-mrt", at=90)
    ev.metric("search-0", "container_memory_usage_MB", at=240)  # unrelated noise, later
    top = ranked(ev, single)[0]
    assert single.matches(top, "orders"), top


def test_with_two_instances_the_faulty_one_outranks_its_service(paired):
    """A service is suspect as a whole when most of its instances are anomalous. With two instances the
    median is their mean, half the faulty one's evidence: that, with the service's own slow calls, put the
    service above the instance that is at fault. The typical instance is the lower median: what more than
    half of them show (both of two, two of three, three of four)."""
    ev = Events()
    for metric in ("container_cpu_usage_seconds", "container_fs_writes", "container_threads"):
        ev.metric("orders-0", metric)
    for metric in ("container_memory_usage_MB", "container_cpu_usage_seconds"):
        ev.metric("orders-1", metric, at=20)  # its sibling strains too, less
    ev.metric("orders", "grpc-mrt", at=30)
    ev.trace("api-0", "orders-0", at=30)
    ev.trace("api-1", "orders-1", at=30)
    ev.metric("api", "grpc-mrt", at=60)
    ev.metric("search-1", "container_memory_usage_MB", at=240)
    top = ranked(ev, paired)
    assert top[0] == "orders-0", top[:3]


def test_a_host_fault_with_one_resident_is_not_blamed_on_the_resident_alone(single):
    ev = Events()
    for metric in ("system.disk.pct_usage", "system.disk.used"):
        ev.metric("node-mail", metric)
    ev.metric("mail-0", "container_threads", at=60)
    assert ranked(ev, single)[0] == "node-mail"


# -- logs only, traces only --------------------------------------------------------------------------


def test_logs_alone_rank_the_cause_first(single):
    ev = Events()
    log(ev, "auth-0", "open /etc/auth/token: permission denied")
    log(ev, "auth-0", "open /etc/auth/token: permission denied", at=5)
    log(ev, "api-0", "call to auth failed: status 500", at=20)
    log(ev, "web-0", "upstream api returned 502", at=40)
    log(ev, "search-0", "request 12 failed", at=300)
    top = ranked(ev, single)[0]
    assert single.matches(top, "auth"), top


def test_traces_alone_rank_the_deepest_troubled_callee_first(single):
    """Callers see slow calls all the way down; the one that reports no troubled callee of its own is
    where it starts (one instance each, so no sibling to compare it with)."""
    ev = Events()
    for caller, callee in (("web-0", "api-0"), ("api-0", "orders-0"), ("orders-0", "mail-0")):
        ev.trace(caller, callee, at=10)
    ev.trace("api-0", "auth-0", at=200)
    assert ranked(ev, single)[0] in ("mail-0", "mail")


def test_traces_naming_services_count(services_only):
    """A tracing backend names services, not instances: their errors still point at the callee."""
    ev = Events()
    ev.trace("web", "api", anomaly="500")
    ev.trace("api", "orders", anomaly="500")
    ev.trace("web", "search", at=400)
    causes = DeterministicReasoner().rank(ev.events, services_only, limit=10)
    assert causes and causes[0].entity == "orders"
    assert causes[0].fault_type == "errors"


# -- the log vocabulary ------------------------------------------------------------------------------


@pytest.mark.parametrize("a,b", [
    ("timeout after 3012 ms calling 10.0.0.3:8080", "timeout after 87 ms calling 10.1.2.3:9090"),
    ('user "bob" not found', 'user "alice" not found'),
    ("request 550e8400-e29b-41d4-a716-446655440000 failed", "request 6ba7b810-9dad-11d1-80b4-00c04fd430c8 failed"),
    ("cannot open /var/data/a.db", "cannot open /srv/b/c.db"),
])
def test_lines_of_one_log_statement_share_a_template(a, b):
    assert log_template(a) == log_template(b)


@pytest.mark.parametrize("a,b,template", [
    ("2021-07-01 10:54:22,639 | ERROR | 0.0.0.1 | 172.17.0.6 | web-1 | 3c5a4b5e | an error occurred downstream",
     "2021-07-02 11:00:01,002 | ERROR | 0.0.0.4 | 172.17.0.9 | cart-0 | 9f8e7d6c | an error occurred downstream",
     "an error occurred downstream"),
    ("2024-01-02T03:04:05.123Z ERROR [http-nio-8080-exec-3] c.e.CartController - Failed to add item 123",
     "2024-01-05T13:14:15Z ERROR [http-nio-8080-exec-17] c.e.CartController - Failed to add item 9",
     "http-nio * exec * c.e.cartcontroller failed to add item *"),
])
def test_a_header_and_the_loggers_own_name_do_not_make_a_statement(a, b, template):
    """Timestamps, levels, addresses, ids and the entity that logged the line vary; the statement does not.
    Two entities logging it share its kind, so its rarity counts them both."""
    assert log_template(without_names(a, ("web-1", "web"))) == template
    assert log_template(without_names(b, ("cart-0", "cart"))) == template


@pytest.mark.parametrize("line,template", [
    ("2021-07-01 10:54:22,639 | ERROR | 172.17.0.6 | an error occurred downstream", "an error occurred downstream"),
    ("2024-01-02T03:04:05Z WARN disk 93% full on /data", "disk * full on *"),
    ("error reading file /var/x", "error reading file *"),  # a statement's first word, not a header's level
    ("500 internal server error", "internal server error"),
])
def test_a_template_is_the_statement_without_its_header(line, template):
    """What explanations, reports and the model show: the words a person would quote."""
    assert log_template(line) == template


@pytest.mark.parametrize("line", [
    "Jul  1 10:54:22 node-3 cart[1234]: permission denied opening keyring",
    "Mon Dec 30 23:59:01 2024 node-3 cart[99]: permission denied opening keyring",
])
def test_a_syslog_timestamp_is_variable(line):
    """A month name in a timestamp is not a word of the statement: lines of July and August are one kind."""
    assert log_template(line) == "node * cart * permission denied opening keyring"


@pytest.mark.parametrize("line", [
    '{"ts":"2024-01-02T03:04:05Z","level":"warn","caller":"mem/pool.go:41","instance":"cart-0","msg":"permission '
    'denied opening keyring","request_id":"9f8e7d6c"}',
    'ts=2024-01-02T03:04:05Z level=warn caller=mem/pool.go:41 instance=cart-0 msg="permission denied opening '
    'keyring" request_id=9f8e7d6c',
    "2024-01-02 03:04:05,639 | WARN | 10.0.0.1 | cart | cart-0 | 9f8e7d6c | permission denied opening keyring",
])
def test_structured_lines_are_read_by_their_message(line):
    """The same statement in JSON, in logfmt and behind a header is one kind with one domain: the fields
    around it ("caller": "mem/pool.go") say nothing about the resource."""
    topology = Topology.from_dict({"entities": [{"id": "cart", "type": "service"},
                                                {"id": "cart-0", "type": "instance"}],
                                   "relations": [{"source": "cart-0", "target": "cart", "type": "instance_of"}]})
    ev = Events()
    log(ev, "cart-0", line)
    [signal] = extract_signals(ev.events, topology)
    assert (signal.kind, signal.domain) == ("log:permission denied opening keyring", "errors")


def test_tracebacks_that_raised_different_things_are_different_kinds(single):
    """Before: the first eight words of every Python traceback were its header, one kind on every service."""
    ev = Events()
    frames = 'Traceback (most recent call last):\n  File "/app/h.py", line 9, in handle\n    do()\n'
    log(ev, "auth-0", "request failed\n" + frames + "PermissionError: [Errno 13] Permission denied: '/keys'")
    log(ev, "orders-0", "request failed\n" + frames + "KeyError: 'sku'")
    kinds = {s.entity: s.kind for s in extract_signals(ev.events, single)}
    assert kinds == {"auth-0": "log:request failed permissionerror errno * permission denied *",
                     "orders-0": "log:request failed keyerror *"}


def test_the_writers_name_says_nothing_about_the_resource():
    """A service named "mem-cache" logging "request failed" is not a memory fault; its line names itself."""
    topology = Topology.from_dict({"entities": [{"id": "mem-cache", "type": "service"},
                                                {"id": "mem-cache-0", "type": "instance"}],
                                   "relations": [{"source": "mem-cache-0", "target": "mem-cache",
                                                  "type": "instance_of"}]})
    ev = Events()
    log(ev, "mem-cache-0", "mem-cache-0 | request 42 failed")
    [signal] = extract_signals(ev.events, topology)
    assert (signal.kind, signal.domain) == ("log:request * failed", "errors")
    assert text_domain("mem-cache-0 | request 42 failed") == "memory"  # what reading the name would say


def test_statements_behind_one_header_keep_their_own_templates():
    """Before: a header's first eight words were the template, so every line of a system was one kind."""
    header = "2021-07-01 10:54:22,639 | INFO | 0.0.0.1 | 172.17.0.6 | web-1 | 3c5a4b5e | "
    assert log_template(header + "login failed for user *") != log_template(header + "write redis successfully")


def test_different_statements_have_different_templates():
    assert log_template("permission denied") != log_template("connection refused")


@pytest.mark.parametrize("message,domain", [
    ("OOMKilled: container exceeded its limit", "memory"),
    ("write failed: no space left on device (ENOSPC)", "disk_space"),
    ("dial tcp: connection refused", "network"),
    ("container_fs_reads anomaly", "disk_io"),
    ("permission denied", "errors"),
])
def test_log_domains(message, domain):
    assert text_domain(message) == domain


def test_a_log_template_keeps_no_piece_of_a_credential():
    """Templates are shown in explanations, reports and the LLM's context: secrets go before templating,
    or a password cut into variable parts would leave pieces no scrubber recognises."""
    from agent.reasoner._catalog import log_template

    template = log_template("db login failed: postgres://app:hunter2@db:5432/orders token=ghp_" + "a" * 36)
    assert "hunter" not in template and "ghp_" not in template and template.startswith("db login failed")
