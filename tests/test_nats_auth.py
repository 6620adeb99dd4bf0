"""Who may use the bus: the embedded server's users (rtem, producer, target) and the credentials rtem
takes to an external server (user and password, token, nkey seed, credentials file, TLS), against real
nats-servers."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import nats
import pytest

from agent.store import IncidentStore
from bus import EVENTS, Bus, BusSettings, EmbeddedNats, NatsAuth
from bus import PRODUCER, RTEM_USER, TARGET, NatsAuthError, NatsServerError, connect_options, embedded_credentials
from bus import nats_server_binary
from tests.conftest import EXAMPLES
from tests.live import sample, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def server(tmp_path):
    with EmbeddedNats(tmp_path / "nats", authenticate=True) as running:
        yield running


async def connect(server: EmbeddedNats, user: str, errors: list | None = None) -> nats.NATS:
    auth = server.credentials(user)

    async def noted(exc):
        errors.append(str(exc))
    return await nats.connect(server.url, user=auth.user, password=auth.password, allow_reconnect=False,
                              **({"error_cb": noted} if errors is not None else {}))


async def as_rtem(server: EmbeddedNats) -> Bus:
    bus = await Bus.connect(server.url, BusSettings(auth=server.credentials(RTEM_USER)))
    await bus.ensure_streams()
    return bus


async def test_a_connection_without_credentials_is_refused(server):
    with pytest.raises(NatsAuthError, match="refused the connection"):
        await Bus.connect(server.url)
    with pytest.raises(NatsAuthError):
        await Bus.connect(server.url, BusSettings(auth=NatsAuth(user=PRODUCER, password="guessed")))


async def test_a_producer_publishes_events_and_nothing_else(server):
    rtem = await as_rtem(server)
    producer = await Bus.connect(server.url, BusSettings(auth=server.credentials(PRODUCER)))
    errors: list[str] = []
    raw = await connect(server, PRODUCER, errors)
    commands: list[bytes] = []

    async def note(msg):
        commands.append(msg.data)
    await rtem.nc.subscribe("rtem.cmd.>", cb=note)
    await rtem.nc.flush()
    try:
        report = await producer.publish_lines([json.dumps(sample(f"e{i}", "cart-0", i)).encode() for i in range(5)])
        assert report.published == 5
        assert (await rtem.js.stream_info(EVENTS)).state.messages == 5

        await raw.publish("rtem.cmd.restart_instance.cart-0", b'{"action": "restart_instance"}')
        await raw.publish("rtem.audit.forged", b"{}")
        await raw.flush()
        with pytest.raises(nats.errors.TimeoutError):  # no stream acks what never reached it
            await raw.jetstream().publish("rtem.audit.forged", b"{}", timeout=1)
        await asyncio.sleep(0.3)
        assert commands == [], "a producer cannot send commands"
        assert sum("permissions violation for publish" in e for e in errors) >= 2, errors
    finally:
        for bus in (producer, rtem):
            await bus.close()
        await raw.close()


async def test_only_a_target_can_answer_a_command(server):
    rtem = await as_rtem(server)
    errors: list[str] = []
    producer = await connect(server, PRODUCER, errors)
    target = await connect(server, TARGET, errors)

    async def obey(msg):
        await msg.respond(b'{"ok": true}')
    try:
        await producer.subscribe("rtem.cmd.>", cb=obey)  # refused: a producer may not listen for commands
        await producer.flush()
        await asyncio.sleep(0.2)
        assert any('permissions violation for subscription to "rtem.cmd.>"' in e for e in errors), errors
        with pytest.raises(nats.errors.NoRespondersError):
            await rtem.nc.request("rtem.cmd.restart_instance.cart-0", b"{}", timeout=2)

        await target.subscribe("rtem.cmd.>", cb=obey)
        await target.flush()
        answer = await rtem.nc.request("rtem.cmd.restart_instance.cart-0", b"{}", timeout=2)
        assert json.loads(answer.data) == {"ok": True}

        before = len(errors)
        await target.publish("rtem.events.forged", b"{}")  # a target answers; it does not publish
        await target.publish(rtem.nc.new_inbox(), b'{"ok": true}')
        await target.flush()
        await asyncio.sleep(0.3)
        assert len(errors) - before == 2, errors
        assert (await rtem.js.stream_info(EVENTS)).state.messages == 0
    finally:
        await rtem.close()
        await producer.close()
        await target.close()


async def test_a_producer_cannot_read_the_replies_meant_for_rtem(server):
    rtem = await as_rtem(server)
    errors: list[str] = []
    producer = await connect(server, PRODUCER, errors)
    target = await connect(server, TARGET, errors)
    overheard: list[bytes] = []

    async def obey(msg):
        await msg.respond(b'{"ok": true}')

    async def note(msg):
        overheard.append(msg.data)
    try:
        await target.subscribe("rtem.cmd.>", cb=obey)
        for inbox in ("_INBOX.>", "_INBOX.rtem.>", ">"):
            await producer.subscribe(inbox, cb=note)
        await producer.flush()
        await asyncio.sleep(0.2)
        assert sum("permissions violation for subscription" in e for e in errors) == 3, errors
        answer = await rtem.nc.request("rtem.cmd.restart_instance.cart-0", b"{}", timeout=2)
        assert json.loads(answer.data) == {"ok": True}
        await asyncio.sleep(0.2)
        assert overheard == [], "replies to rtem come to rtem's own inbox, which a producer may not read"
        # The producer's own inbox still works: a producer gets JetStream's acks.
        bus = await Bus.connect(server.url, BusSettings(auth=server.credentials(PRODUCER)))
        assert (await bus.publish_lines([json.dumps(sample("p1", "cart-0", 1)).encode()])).published == 1
        await bus.close()
    finally:
        await rtem.close()
        await producer.close()
        await target.close()


async def test_named_target_users_each_receive_only_their_own_commands(tmp_path):
    targets = {"db-agent": ["rtem.cmd.*.orders-db"], "k8s": ["rtem.cmd.restart_instance.*"]}
    with EmbeddedNats(tmp_path / "nats", authenticate=True, targets=targets) as server:
        passwords = json.loads((tmp_path / "nats" / "credentials.json").read_text())
        assert set(passwords) == {RTEM_USER, PRODUCER, "db-agent", "k8s"}, "no shared target user"
        rtem = await as_rtem(server)
        errors: list[str] = []
        db, k8s = await connect(server, "db-agent", errors), await connect(server, "k8s", errors)
        answered: list[tuple[str, str]] = []

        def obey(name):
            async def answer(msg):
                answered.append((name, msg.subject))
                await msg.respond(json.dumps({"ok": True, "by": name}).encode())
            return answer
        try:
            await db.subscribe("rtem.cmd.>", cb=obey("db-agent"))  # wider than it may: refused
            await db.subscribe("rtem.cmd.*.orders-db", cb=obey("db-agent"))
            await k8s.subscribe("rtem.cmd.restart_instance.*", cb=obey("k8s"))
            await k8s.subscribe("rtem.cmd.failover_database.orders-db", cb=obey("k8s"))  # not its own: refused
            for connection in (db, k8s):
                await connection.flush()
            await asyncio.sleep(0.2)
            assert sum("permissions violation for subscription" in e for e in errors) == 2, errors
            failover = await rtem.nc.request("rtem.cmd.failover_database.orders-db", b"{}", timeout=2)
            restart = await rtem.nc.request("rtem.cmd.restart_instance.cart-0", b"{}", timeout=2)
            assert json.loads(failover.data)["by"] == "db-agent" and json.loads(restart.data)["by"] == "k8s"
            assert sorted(answered) == [("db-agent", "rtem.cmd.failover_database.orders-db"),
                                        ("k8s", "rtem.cmd.restart_instance.cart-0")]
            with pytest.raises(nats.errors.NoRespondersError):
                await rtem.nc.request("rtem.cmd.drain_host.node-1", b"{}", timeout=2)
        finally:
            await rtem.close()
            await db.close()
            await k8s.close()
    # Dropping a target user takes its password away.
    with EmbeddedNats(tmp_path / "nats", authenticate=True, targets={"k8s": ["rtem.cmd.>"]}):
        assert set(json.loads((tmp_path / "nats" / "credentials.json").read_text())) == {RTEM_USER, PRODUCER, "k8s"}


@pytest.mark.parametrize("targets, message", [
    ({"producer": ["rtem.cmd.>"]}, "a name of its own"),
    ({"a.b": ["rtem.cmd.>"]}, "a name of its own"),
    ({"agent": ["rtem.events.>"]}, "not rtem.events.>"),
    ({"agent": []}, "command subjects"),
])
def test_target_users_that_would_widen_access_are_refused(tmp_path, targets, message):
    with pytest.raises(NatsServerError, match=message):
        EmbeddedNats(tmp_path / "nats", authenticate=True, targets=targets)


def test_credentials_are_private_kept_across_restarts_and_never_logged(tmp_path):
    server = EmbeddedNats(tmp_path / "nats", authenticate=True)
    server.start()
    try:
        first = {user: server.credentials(user).password for user in (RTEM_USER, PRODUCER, TARGET)}
        server.stop()
        server.start()
        assert {user: server.credentials(user).password for user in first} == first
    finally:
        server.stop()
    assert len(set(first.values())) == 3
    for name in ("credentials.json", "nats.conf"):
        assert stat.S_IMODE(os.stat(tmp_path / "nats" / name).st_mode) == 0o600, name
    log = (tmp_path / "nats" / "nats-server.log").read_text()
    assert not any(password in log for password in first.values())
    assert embedded_credentials(tmp_path / "nats", PRODUCER) == NatsAuth(user=PRODUCER, password=first[PRODUCER])
    assert EmbeddedNats(tmp_path / "other").credentials(PRODUCER) is None, "a server without authentication"


async def test_rtem_ingest_publishes_to_a_running_rtem_run(tmp_path):
    data = tmp_path / "data"
    env = {**os.environ, "RTEM_DATA_DIR": str(data)}
    env.pop("RTEM_NATS_URL", None)
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps(sample(f"i{i}", "cartservice-0", i)) + "\n" for i in range(20)))
    with open(tmp_path / "rtem.err", "wb") as stderr:
        rtem = subprocess.Popen([sys.executable, "-m", "agent", "run", "--topology",
                                 str(EXAMPLES / "boutique-topology.json"), "--metrics-port", "0", "--no-http"],
                                env=env, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    try:
        await wait_for(lambda: "rtem run: bus" in (tmp_path / "rtem.err").read_text() or rtem.poll() is not None, 60)
        assert rtem.poll() is None, (tmp_path / "rtem.err").read_text()
        ingest = subprocess.run([sys.executable, "-m", "agent", "ingest", str(events), "--json"], env=env,
                                capture_output=True, text=True, timeout=60)
        assert ingest.returncode == 0, ingest.stderr
        assert json.loads(ingest.stdout) == {"lines": 20, "published": 20, "duplicates": 0, "rejected": 0,
                                             "invalid": [], "dead_lettered": []}

        def stored():
            store = IncidentStore(data / "rtem.db", readonly=True)
            try:
                return store.event_count()
            finally:
                store.close()
        await wait_for(lambda: stored() == 20, 30)
    finally:
        rtem.terminate()
        rtem.wait(30)


# -- an external server, configured for rtem's settings ----------------------------------------------------


class ExternalNats:
    """A nats-server with a configuration of the test's own, as an operator would run it."""

    def __init__(self, directory: Path, config: str):
        directory.mkdir(parents=True, exist_ok=True)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        (directory / "server.conf").write_text(config)
        self.proc = subprocess.Popen([nats_server_binary(), "-c", str(directory / "server.conf"), "-a", "127.0.0.1",
                                      "-p", str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"nats://127.0.0.1:{self.port}"

    async def listening(self) -> None:
        async def accepts():
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                return False
            writer.close()
            return True
        await wait_for(accepts, 15, 0.05)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


async def connects(url: str, auth: NatsAuth) -> bool:
    bus = await Bus.connect(url, BusSettings(auth=auth))
    try:
        await bus.nc.flush()
        return bus.nc.is_connected
    finally:
        await bus.close()


@pytest.mark.parametrize("config, good, bad", [
    ('authorization { user: "ops", password: "s3cret" }',
     NatsAuth(user="ops", password="s3cret"), NatsAuth(user="ops", password="wrong")),
    ('authorization { token: "t0ken" }', NatsAuth(token="t0ken"), NatsAuth(token="other")),
])
async def test_bus_connect_uses_the_configured_credentials(tmp_path, config, good, bad):
    server = ExternalNats(tmp_path / "external", config)
    try:
        await server.listening()
        assert await connects(server.url, good)
        with pytest.raises(NatsAuthError, match=server.url):
            await connects(server.url, bad)
        with pytest.raises(NatsAuthError):
            await connects(server.url, NatsAuth())
    finally:
        server.stop()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="makes its certificates with the openssl command")
async def test_bus_connect_verifies_the_server_with_the_configured_ca(tmp_path):
    certs = tmp_path / "certs"
    certs.mkdir()

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=certs, check=True, capture_output=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=rtem test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj",
            "/CN=127.0.0.1")
    (certs / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out",
            "server.pem", "-days", "2", "-extfile", "san.cnf")
    server = ExternalNats(tmp_path / "external", f'tls {{ cert_file: "{certs / "server.pem"}", key_file: '
                                                 f'"{certs / "server.key"}" }}\n'
                                                 'authorization { user: "ops", password: "s3cret" }\n')
    try:
        await server.listening()
        assert await connects(server.url, NatsAuth(user="ops", password="s3cret", tls_ca=certs / "ca.pem"))
        with pytest.raises(NatsAuthError, match="certificate verify failed"):  # the system's CAs do not know ours
            await connects(server.url, NatsAuth(user="ops", password="s3cret"))
    finally:
        server.stop()


async def test_bus_connect_signs_in_with_an_nkey_seed(tmp_path):
    import nkeys

    def user_seed() -> bytes:
        return nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    seed, other = user_seed(), user_seed()
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    (tmp_path / "user.nk").write_bytes(seed)
    (tmp_path / "other.nk").write_bytes(other)
    server = ExternalNats(tmp_path / "external", f'authorization {{ users: [ {{ nkey: "{public}" }} ] }}')
    try:
        await server.listening()
        assert await connects(server.url, NatsAuth(nkey_seed=tmp_path / "user.nk"))
        with pytest.raises(NatsAuthError, match="nkey seed"):  # a seed the server does not know
            await connects(server.url, NatsAuth(nkey_seed=tmp_path / "other.nk"))
    finally:
        server.stop()


def test_credentials_that_cannot_be_used_together_are_refused_before_connecting(tmp_path):
    with pytest.raises(NatsAuthError, match="not a token and a user"):
        connect_options(NatsAuth(token="t", user="u", password="p"))
    with pytest.raises(NatsAuthError, match="needs a password"):
        connect_options(NatsAuth(user="u"))
    with pytest.raises(NatsAuthError, match="needs its key"):
        connect_options(NatsAuth(tls_cert=tmp_path / "client.pem"))
    assert connect_options(NatsAuth(user="u", password="p")) == {"user": "u", "password": "p",
                                                                 "inbox_prefix": "_INBOX.u"}
    assert connect_options(NatsAuth(token="t")) == {"token": "t"}


def _jwt(issuer_seed: bytes, subject: str, name: str, nats_claims: dict) -> str:
    """A NATS JWT (v2) signed with an nkey seed, as `nsc` writes them: header.claims.signature, each
    base64url without padding, the signature ed25519 over "header.claims"."""
    import base64
    import hashlib
    import time

    import nkeys

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")
    issuer = nkeys.from_seed(bytearray(issuer_seed))
    claims = {"iat": int(time.time()), "iss": issuer.public_key.decode(), "name": name, "sub": subject,
              "nats": nats_claims}
    claims["jti"] = base64.b32encode(hashlib.sha256(json.dumps(claims, sort_keys=True).encode()).digest()) \
        .decode().rstrip("=")
    signing_input = f"{b64(json.dumps({'typ': 'JWT', 'alg': 'ed25519-nkey'}).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(issuer.sign(signing_input.encode()))}"


def _creds_file(path: Path, user_jwt: str, user_seed: bytes) -> Path:
    path.write_text(f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
                    f"-----BEGIN USER NKEY SEED-----\n{user_seed.decode()}\n------END USER NKEY SEED------\n")
    return path


async def test_bus_connect_signs_in_with_a_credentials_file(tmp_path):
    """Operator mode, as `nsc` sets it up: an operator signs an account, the account signs a user, and the
    user's credentials file (JWT + seed) is what RTEM_NATS_CREDS names; a user of another account is refused."""
    import nkeys

    def seed(prefix: int) -> bytes:
        return nkeys.encode_seed(os.urandom(32), prefix)

    def public(of: bytes) -> str:
        return nkeys.from_seed(bytearray(of)).public_key.decode()
    operator, account, stranger = (seed(nkeys.PREFIX_BYTE_OPERATOR), seed(nkeys.PREFIX_BYTE_ACCOUNT),
                                   seed(nkeys.PREFIX_BYTE_ACCOUNT))
    unlimited = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": True,
                 "conn": -1, "leaf": -1}
    account_jwt = _jwt(operator, public(account), "rtem", {"limits": unlimited, "default_permissions":
                                                          {"pub": {}, "sub": {}}, "type": "account", "version": 2})
    user_claims = {"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2}
    user, other = seed(nkeys.PREFIX_BYTE_USER), seed(nkeys.PREFIX_BYTE_USER)
    good = _creds_file(tmp_path / "rtem.creds", _jwt(account, public(user), "rtem", user_claims), user)
    # Signed by an account the operator never signed: the server does not know it.
    bad = _creds_file(tmp_path / "other.creds", _jwt(stranger, public(other), "other", user_claims), other)
    server = ExternalNats(tmp_path / "external",
                          f'operator: "{_jwt(operator, public(operator), "op", {"type": "operator", "version": 2})}"\n'
                          f'resolver: MEMORY\nresolver_preload: {{ {public(account)}: "{account_jwt}" }}\n')
    try:
        await server.listening()
        assert await connects(server.url, NatsAuth(creds=good))
        with pytest.raises(NatsAuthError, match="credentials file"):
            await connects(server.url, NatsAuth(creds=bad))
        with pytest.raises(NatsAuthError):  # operator mode admits no one without a signed user
            await connects(server.url, NatsAuth())
    finally:
        server.stop()
