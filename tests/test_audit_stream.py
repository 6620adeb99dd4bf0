"""Issue 11, finding 9: the audit log against its copy on the JetStream AUDIT stream (a truncated tail with
its head rewritten passes the hash chain, not the comparison), and CLI actions recorded with user@host."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.audit import AuditCopy, AuditLog, verify_file
from agent.cli import app
from agent.db import is_postgres_url
from agent.identity import operator
from agent.ledger import Ledger
from agent.store import IncidentStore
from bus import Bus
from tests.test_audit import tamper

runner = CliRunner()


def fill(where: str | Path, n: int) -> list:
    with AuditLog(where) as audit:
        return [audit.append("decision", incident_id=f"inc-{i}", inputs={"i": i}, reasons=[f"r{i}"])
                for i in range(1, n + 1)]


def copy_of(records) -> AuditCopy:
    copy = AuditCopy(source="test")
    for record in records:
        copy.add(json.dumps(record.model_dump(mode="json")).encode())
    return copy


def truncate(where: str | Path, from_seq: int) -> None:
    """What someone allowed to change the schema can do: triggers out of the way, delete the newest records,
    move the head back."""
    tamper(str(where), f"DELETE FROM audit WHERE seq >= {from_seq}",
           "UPDATE audit_head SET seq = (SELECT MAX(seq) FROM audit), "
           "hash = (SELECT hash FROM audit ORDER BY seq DESC LIMIT 1)")


def kinds(report) -> list[tuple[int, str]]:
    return [(p.seq, p.kind) for p in report.problems]


# -- the comparison ---------------------------------------------------------------------------------------


def test_a_truncated_tail_passes_the_chain_but_not_the_copy(backend):
    path = backend
    records = fill(path, 6)
    truncate(path, 4)

    assert verify_file(path).ok  # the blind spot: the chain and the head agree
    report = verify_file(path, copy=copy_of(records))
    assert not report.ok and kinds(report) == [(4, "not_in_log")]
    assert "seq 4–6 on the AUDIT stream but not in this log" in report.problems[0].detail


def test_a_rewritten_suffix_differs_from_the_copy(backend):
    path = backend
    records = fill(path, 5)
    truncate(path, 4)
    with AuditLog(path) as audit:  # the log goes on under the old seqs, with other content
        audit.append("decision", reasons=["a different story"])
    report = verify_file(path, copy=copy_of(records))
    assert kinds(report) == [(5, "not_in_log"), (4, "differs")]


def test_records_missing_from_the_copy_are_named_and_unpublished_ones_are_not_problems(backend):
    path = backend
    records = fill(path, 8)
    report = verify_file(path, copy=copy_of(records[:2] + records[4:6]))  # 3–4 lost there; 7–8 not sent yet
    assert kinds(report) == [(3, "not_in_copy")]
    assert report.copy_check.pending == 2 and report.copy_check.records == 4


def test_an_edited_copy_is_reported(backend):
    path = backend
    records = fill(path, 2)
    copy = copy_of(records)
    edited = records[1].model_dump(mode="json") | {"reasons": ["edited"]}
    copy.add(json.dumps(edited).encode(), where="#3")
    copy.add(b"not json", where="#4")
    report = verify_file(path, copy=copy)
    assert [p.kind for p in report.problems] == ["differs", "differs"]
    assert "#3" in report.problems[0].detail and "#4" in report.problems[1].detail


def test_records_purged_here_and_aged_out_there_are_not_problems(backend):
    from datetime import datetime, timedelta, timezone

    path = backend
    old = datetime.now(timezone.utc) - timedelta(days=500)
    with AuditLog(path) as audit:
        records = [audit.append("x", at=old) for _ in range(3)] + [audit.append("y")]
        audit.purge(old + timedelta(days=1))
        records.append(audit.last())
    report = verify_file(path, copy=copy_of(records[1:]))  # the copy lost seq 1 to its max_age
    assert report.ok, report.problems
    assert report.copy_check.purged == 2  # seq 2 and 3: purged here, still there


def test_a_clean_log_and_its_copy_agree(backend):
    path = backend
    report = verify_file(path, copy=copy_of(fill(path, 3)))
    assert report.ok and report.copy_check.records == 3 and "AUDIT stream copy" in report.summary()


# -- the commands, on either backend -----------------------------------------------------------------------


def test_rtem_audit_verify_and_list_take_a_file_or_a_postgresql_url(backend):
    records = fill(backend, 4)
    ok = runner.invoke(app, ["audit", "verify", "--db", backend, "--local-only", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["records"] == 4
    listed = runner.invoke(app, ["audit", "list", "--db", backend, "--incident", "inc-2", "--json"])
    assert listed.exit_code == 0, listed.output
    assert [r["seq"] for r in json.loads(listed.stdout)] == [records[1].seq]

    tamper(backend, "UPDATE audit SET node = 'evil' WHERE seq = 2", "DELETE FROM audit WHERE seq >= 4")
    caught = runner.invoke(app, ["audit", "verify", "--db", backend, "--local-only", "--json"])
    assert caught.exit_code == 1
    assert [(p["seq"], p["kind"]) for p in json.loads(caught.stdout)["problems"]] == [(2, "changed"), (4, "deleted")]


def test_rtem_audit_verify_reads_the_configured_database_by_default(backend, monkeypatch):
    fill(backend, 2)
    if is_postgres_url(backend):
        monkeypatch.setenv("RTEM_DATABASE_URL", backend)
    else:
        monkeypatch.setenv("RTEM_DATA_DIR", str(Path(backend).parent))
    result = runner.invoke(app, ["audit", "verify", "--local-only"])
    assert result.exit_code == 0, result.output
    assert "2 records" in result.stdout


def test_rtem_audit_verify_says_which_database_it_cannot_read(tmp_path):
    (tmp_path / "other.db").touch()
    result = runner.invoke(app, ["audit", "verify", "--db", str(tmp_path / "other.db"), "--local-only"])
    assert result.exit_code == 1 and "cannot read the audit log in" in result.output
    assert "no audit table" in result.output


# -- against a real AUDIT stream --------------------------------------------------------------------------


@pytest.mark.integration
def test_rtem_audit_verify_compares_with_the_audit_stream(tmp_path, nats_server, caplog):
    from agent.service import check_audit_copy, publish_audit

    path = tmp_path / "data" / "rtem.db"
    path.parent.mkdir()
    fill(path, 5)

    async def publish(reset: bool) -> int:
        bus = await Bus.connect(nats_server.url)
        try:
            if reset:
                await bus.reset_streams()
            with AuditLog(path) as audit:
                if not reset:  # as rtem run does at start
                    assert not await check_audit_copy(bus, audit)
                return await publish_audit(bus, audit, page=2)
        finally:
            await bus.close()
    assert asyncio.run(publish(reset=True)) == 5

    ok = runner.invoke(app, ["audit", "verify", "--db", str(path), "--nats", nats_server.url])
    assert ok.exit_code == 0, ok.output
    assert "5 records" in ok.stdout and "AUDIT stream copy" in ok.stdout

    truncate(path, 4)
    assert runner.invoke(app, ["audit", "verify", "--db", str(path), "--local-only"]).exit_code == 0
    assert asyncio.run(publish(reset=False)) == 0  # the service sees the stream ahead of the log, and says so
    assert "records were deleted from the audit log" in caplog.text
    # The service's data directory names its embedded server: the comparison is the default.
    (path.parent / "nats.url").write_text(nats_server.url)
    caught = runner.invoke(app, ["audit", "verify", "--db", str(path), "--json"])
    assert caught.exit_code == 1
    doc = json.loads(caught.stdout)
    assert [(p["seq"], p["kind"]) for p in doc["problems"]] == [(4, "not_in_log")]
    assert doc["copy_check"]["records"] == 5


@pytest.mark.integration
def test_audit_verify_reads_the_copy_of_a_running_service_with_its_credentials(tmp_path, boutique):
    """`rtem run`'s embedded server admits only its users (docs/nats.md): verify finds rtem's own
    credentials in the data directory instead of warning that the stream cannot be read."""
    from agent.config import Settings
    from tests.live import ThreadedService

    settings = Settings(data_dir=tmp_path / "data", http_port=0)
    service = ThreadedService(settings, boutique).start()
    try:
        service.call(service.service.stop())  # publishes the audit copy, then stops the server
    finally:
        service.loop.call_soon_threadsafe(service.loop.stop)
        service.thread.join(10)
    again = ThreadedService(settings, boutique).start()  # the same server directory and credentials
    try:
        result = runner.invoke(app, ["audit", "verify", "--db", str(tmp_path / "data" / "rtem.db"), "--json"])
        assert result.exit_code == 0, result.output
        doc = json.loads(result.stdout)
        assert doc["copy_check"]["records"] >= 1 and "only the hash chain" not in result.output
    finally:
        again.stop()


@pytest.mark.integration
def test_an_unreachable_stream_fails_when_asked_for_and_warns_when_defaulted(tmp_path):
    path = tmp_path / "rtem.db"
    fill(path, 1)
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        url = f"nats://127.0.0.1:{sock.getsockname()[1]}"
    asked = runner.invoke(app, ["audit", "verify", "--db", str(path), "--nats", url])
    assert asked.exit_code == 2 and "cannot read the AUDIT stream" in asked.output
    (tmp_path / "nats.url").write_text(url)
    defaulted = runner.invoke(app, ["audit", "verify", "--db", str(path)])
    assert defaulted.exit_code == 0 and "only the hash chain was checked" in defaulted.output


# -- who did it -------------------------------------------------------------------------------------------


def test_operator_is_user_at_host():
    user, _, host = operator().partition("@")
    assert user and host == socket.gethostname()


def records_of(path: Path, kind: str) -> list:
    with AuditLog(path) as audit:
        return audit.records(kind=kind)


def test_pause_and_resume_are_audited_with_user_and_host(tmp_path):
    path = tmp_path / "rtem.db"
    IncidentStore(path).close()
    assert runner.invoke(app, ["pause", "--db", str(path)]).exit_code == 0
    assert runner.invoke(app, ["resume", "--db", str(path), "--by", "alice"]).exit_code == 0
    [paused] = records_of(path, "execution.paused")
    [resumed] = records_of(path, "execution.resumed")
    assert paused.inputs["operator"] == operator() and paused.decision == {"paused": True, "by": operator()}
    assert resumed.inputs["operator"] == operator() and resumed.decision["by"] == "alice"
    assert f"as {operator()}" in resumed.reasons[0]
    assert not Ledger(path).paused()


def test_token_creation_and_revocation_are_audited_without_the_secret(tmp_path):
    path = tmp_path / "rtem.db"
    created = runner.invoke(app, ["tokens", "create", "bot", "--role", "viewer", "--json", "--db", str(path)])
    assert created.exit_code == 0, created.output
    token = json.loads(created.stdout)["token"]
    assert runner.invoke(app, ["tokens", "revoke", "bot", "--db", str(path)]).exit_code == 0
    [made] = records_of(path, "token.created")
    [revoked] = records_of(path, "token.revoked")
    assert made.inputs["name"] == "bot" and made.inputs["role"] == "viewer" and made.decision["by"] == operator()
    assert revoked.decision == {"token": "bot", "by": operator()}
    assert token not in json.dumps([made.model_dump(mode="json"), revoked.model_dump(mode="json")])
    assert verify_file(path).ok
