"""rules.read_line: what a structured log line says. Programs that log one JSON object a line or logfmt put
the statement in a field; read as prose, every line of a system would be its field names."""

from __future__ import annotations

import pytest

from rules import LogLine, read_line, says_failure


@pytest.mark.parametrize("line,expected", [
    # zap / logrus / slog JSON: message, then the error it reports
    ('{"level":"error","ts":1625136862.6,"caller":"auth/login.go:88","msg":"login failed","user":"bob",'
     '"error":"invalid password"}', LogLine("login failed: invalid password", "error")),
    # logfmt, with an escaped quote in the message
    ('ts=2021-07-01T10:54:22Z level=WARN caller=auth.go:88 msg="user \\"bob\\" locked out" attempts=5',
     LogLine('user "bob" locked out', "warn")),
    # ECS: dotted level, nested error
    ('{"@timestamp":"2021-07-01T10:54:22Z","log.level":"ERROR","message":"payment failed",'
     '"error":{"type":"CardError","message":"card declined"}}', LogLine("payment failed: card declined", "error")),
    # a container runtime's wrapper around a structured line, and around a plain one
    ('{"log":"{\\"level\\":\\"warn\\",\\"msg\\":\\"slow query\\"}\\n","stream":"stderr"}',
     LogLine("slow query", "warn")),
    ('{"log":"2021-07-01 10:54:22 ERROR boom\\n","stream":"stderr"}', LogLine("2021-07-01 10:54:22 ERROR boom")),
    # pino numbers its levels
    ('{"level":50,"time":1625136862639,"pid":7,"hostname":"cart-0","msg":"checkout failed"}',
     LogLine("checkout failed", "error")),
    # GELF (Graylog): syslog's numbered levels
    ('{"version":"1.1","host":"node-2","short_message":"disk quota exceeded","level":3,"_app":"cart"}',
     LogLine("disk quota exceeded", "error")),
    # journald: its MESSAGE; a "priority" field is as often a job's as a line's level, so it is not one
    ('{"MESSAGE":"Started session 4.","PRIORITY":"6","_SYSTEMD_UNIT":"systemd-logind.service"}',
     LogLine("Started session 4.")),
    ('{"msg":"job queued","priority":1}', LogLine("job queued")),
    # structlog names its message "event"
    ('{"event":"cache miss storm","level":"warning","logger":"cart"}', LogLine("cache miss storm", "warning")),
])
def test_a_structured_line_says_its_message(line, expected):
    assert read_line(line) == expected


@pytest.mark.parametrize("entry,statement", [
    ('Error processing request 42\nTraceback (most recent call last):\n  File "/app/server.py", line 88, in handle\n'
     "    user = users[name]\nKeyError: 'bob'", "Error processing request 42 KeyError: 'bob'"),
    ("Request failed\njava.lang.NullPointerException: null\n\tat com.shop.Cart.add(Cart.java:42)\n"
     "Caused by: java.io.IOException: disk full\n\t... 3 more",
     "Request failed java.lang.NullPointerException: null Caused by: java.io.IOException: disk full"),
    ("panic: runtime error: index out of range [3]\n\ngoroutine 1 [running]:\nmain.main()\n\t/app/main.go:5 +0x1d",
     "panic: runtime error: index out of range [3] goroutine 1 [running]: main.main()"),
    # JSON escapes the entry's newlines
    ('{"level":"error","msg":"handler crashed\\nTraceback (most recent call last):\\n  File \\"a.py\\", line 1\\n'
     'ValueError: bad input"}', "handler crashed ValueError: bad input"),
])
def test_a_multi_line_entry_says_its_unindented_lines(entry, statement):
    """Stack frames and a traceback's header are the same in every traceback; what was raised is not."""
    assert read_line(entry).statement == statement


@pytest.mark.parametrize("line", [
    "plain line with no fields",
    "retrying with timeout=30 attempts=3",  # pairs in prose, but no message field
    "db login failed: postgres://app:pw@db:5432/orders token=abc",
    '{"a": 1, "b": 2}',  # JSON without a message field
    '{"msg": {"nested": true}}',  # a message that is not text
    "{not json}",
    '["a", "list"]',
    '{"msg": ' + "[" * 100_000 + "]" * 100_000 + "}",  # nested past the JSON parser's recursion limit
])
def test_any_other_line_is_its_own_statement(line):
    assert read_line(line) == LogLine(line)


@pytest.mark.parametrize("line,says", [
    ('{"level":"info","msg":"request served","error":null}', False),  # a null error field says nothing
    ('{"level":"info","msg":"request served","caller":"api/errors.go:12"}', False),
    ("level=info msg=served errors=0", False),
    ('{"level":"fatal","msg":"shutting down"}', True),  # its own level says it
    ('{"level":"info","msg":"login failed"}', True),  # its words say it
    ('{"level":"info","msg":"retry","err":"connection refused"}', True),  # its error field says it
])
def test_says_failure_reads_a_structured_line_by_its_fields(line, says):
    assert says_failure(line) is says
