"""Sidecars sharing one node agent's poll of a real OpenBao: what they read themselves, what
happens when the agent or Vault goes away, and what a false agent can and cannot do."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import hvac
import pytest
from pydantic import SecretStr

from broker.core.controlstate import agent_path
from broker.dev.devstack import DevServer
from broker.dev.raft import RaftCluster
from broker.dev.stack import node_agent_files
from broker.settings import VaultSettings
from broker.sidecar.nodeagent import NodeAgent
from broker.sidecar.nodewire import Confirmation, encode
from broker.sidecar.runtime import STALE_AFTER, Runtime
from broker.vault.bootstrap import bootstrap
from broker.vault.control import control_written
from broker.vault.kv import kv_write
from broker.vault.layout import KV_MOUNT
from broker.vault.session import make_client
from tests.harness import Harness, root_client, running_sidecar, unique_agent, write_manifest

pytestmark = pytest.mark.integration

MANIFEST = """\
agent: {agent}
policy_version: node-agent-1
system_owner: platform@acme.example
risk_owner: risk@acme.example
actions:
  read.thing:
    accountable: owner@acme.example
    credential: {{kind: jwt, audience: things, ttl: 60s}}
"""
NOBODY = 65534


def node_settings(openbao: DevServer, where: Path) -> VaultSettings:
    """The node agent's own AppRole login, as ``broker up`` gives it."""
    client = root_client(openbao)
    bootstrap(client, [], addr=openbao.addr)
    role, secret = node_agent_files(client, where)
    return VaultSettings(addr=openbao.addr, role_id_file=role, secret_id_file=secret)


@asynccontextmanager
async def node_agent(openbao: DevServer, sock: Path, tmp_path: Path) -> AsyncIterator[NodeAgent]:
    agent = NodeAgent(node_settings(openbao, tmp_path / "node"), sock, interval=0.1)
    await agent.start()
    try:
        await until(lambda: agent.latest is not None, 10.0)
        yield agent
    finally:
        await agent.stop()


@asynccontextmanager
async def sidecar(openbao: DevServer, tmp_path: Path, sock: Path) -> AsyncIterator[Harness]:
    manifest = write_manifest(tmp_path, MANIFEST.format(agent=unique_agent("node")))
    async with running_sidecar(openbao, manifest, tmp_path, node_agent=sock) as h:
        yield h


async def until(check: Callable[[], bool], limit: float) -> float:
    """Seconds until ``check()`` held; fails the test after ``limit``."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < limit, f"not within {limit} s"
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def runtime(h: Harness) -> Runtime:
    return h.sidecar.runtime


async def kill_switch(openbao: DevServer, h: Harness) -> float:
    """The agent's kill flag written and the version bumped, as ``broker kill`` does;
    returns when (monotonic) the write was acknowledged."""
    client = root_client(openbao)
    await asyncio.to_thread(kv_write, client, agent_path(runtime(h).agent), {"killed": True})
    await asyncio.to_thread(control_written, client, openbao.addr)
    return time.monotonic()


async def test_an_idle_sidecar_reads_no_control_version_of_its_own_while_the_agent_confirms(
    openbao: DevServer, tmp_path: Path, sockdir: Path
) -> None:
    """With the node agent confirming, the sidecar's own reads of control/version stop while
    the agent's polls go on; the state stays fresh (ready); a kill still reaches it within
    the freshness bound and the next request is refused."""
    sock = sockdir / "node.sock"
    async with node_agent(openbao, sock, tmp_path) as agent, sidecar(openbao, tmp_path, sock) as h:
        rt = runtime(h)
        await until(lambda: rt.control_source == "node-agent", 5.0)
        own, polls = rt.direct_polls, agent.polls
        await asyncio.sleep(2.0)
        assert rt.direct_polls - own <= 1, f"{rt.direct_polls - own} reads of its own in 2 s"
        assert agent.polls - polls >= 10
        assert rt.available()
        assert rt.control_age() < STALE_AFTER
        written = await kill_switch(openbao, h)
        took = await until(lambda: rt.control.killed, 5.0)
        status, body, _ = await h.ask("read.thing")
    print(f"kill through the node agent: in effect {took:.3f} s after the write")
    assert time.monotonic() - written > 0
    assert took < STALE_AFTER + 0.25
    assert (status, body["reason"]) == (403, "agent_disabled")


async def test_without_its_node_agent_a_sidecar_polls_vault_itself_and_returns_to_it(
    openbao: DevServer, tmp_path: Path, sockdir: Path
) -> None:
    """The agent stopped: the sidecar reads control/version itself, stays ready, and obeys a
    kill written meanwhile; an agent started again on the socket is used again."""
    sock = sockdir / "node.sock"
    async with sidecar(openbao, tmp_path, sock) as h:
        rt = runtime(h)
        async with node_agent(openbao, sock, tmp_path):
            await until(lambda: rt.control_source == "node-agent", 5.0)
        own = rt.direct_polls
        await until(lambda: rt.control_source == "vault" and rt.direct_polls > own + 3, 5.0)
        assert rt.available()
        await kill_switch(openbao, h)
        await until(lambda: rt.control.killed, 5.0)
        async with node_agent(openbao, sock, tmp_path):
            await until(lambda: rt.control_source == "node-agent", 10.0)
            assert rt.node is not None
            assert rt.node.connects >= 2
            assert rt.available()


async def test_vault_frozen_behind_the_node_agent_fails_closed_and_recovers(
    openbao: DevServer, tmp_path: Path, sockdir: Path
) -> None:
    """Vault SIGSTOPped: the agent stops confirming, the sidecar's own poll hangs too, so it
    refuses within the bound and says so in /readyz; Vault back, it mints again by itself."""
    sock = sockdir / "node.sock"
    async with node_agent(openbao, sock, tmp_path), sidecar(openbao, tmp_path, sock) as h:
        rt = runtime(h)
        await until(lambda: rt.control_source == "node-agent", 5.0)
        openbao.pause()
        try:
            took = await until(lambda: not rt.available(), 5.0)
            status, body, _ = await h.ask("read.thing")
            ready, _, _ = await h.raw("GET", "/readyz")
        finally:
            openbao.resume()
        await until(lambda: rt.available() and rt.control_source == "node-agent", 15.0)
        again, _, _ = await h.ask("read.thing")
    assert took < STALE_AFTER + 0.5
    assert status == 503
    assert body["reason"] in ("backend_unavailable", "control_state_stale")
    assert ready == 503
    assert again == 200


def _false_agent(sock: Path, version: tuple[int, str], user: int) -> str:
    """A program that becomes ``user`` (its interpreter is loaded first: it may live where
    that user cannot read), then serves ``sock`` confirming ``version`` (number and Vault's
    created_time, both readable with the sidecar's own login) whatever Vault says."""
    return (
        "import json, os, socket, threading, time\n"
        f"os.setgid({user}) if {user} != os.getuid() else None\n"
        f"os.setuid({user}) if {user} != os.getuid() else None\n"
        f"path = {str(sock)!r}\n"
        "srv = socket.socket(socket.AF_UNIX)\n"
        "srv.bind(path)\n"
        "os.chmod(path, 0o777)\n"
        "srv.listen()\n"
        "def feed(conn):\n"
        "    while True:\n"
        f"        line = {{'v': 1, 'version': {version[0]}, 'stamp': {version[1]!r}, "
        "'read_at': time.monotonic()}\n"
        "        try: conn.sendall(json.dumps(line).encode() + b'\\n')\n        except OSError: return\n"
        "        time.sleep(0.05)\n"
        "while True:\n"
        "    conn, _ = srv.accept()\n"
        "    threading.Thread(target=feed, args=(conn,), daemon=True).start()\n"
    )


@contextlib.contextmanager
def false_agent_as(user: int, sock: Path, version: tuple[int, str]) -> Iterator[None]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _false_agent(sock, version, user)],
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert proc.poll() is None, "the false agent exited"
            assert time.monotonic() < deadline, "the false agent did not bind its socket"
            time.sleep(0.02)
        yield
    finally:
        proc.kill()
        proc.wait()


def _version(openbao: DevServer) -> int:
    return _written(openbao)[0]


def _written(openbao: DevServer) -> tuple[int, str]:
    """control/version's KV version and Vault's created_time of it."""
    found = root_client(openbao).secrets.kv.v2.read_secret_version(
        "control/version", mount_point=KV_MOUNT, raise_on_deleted_version=True
    )
    meta = found["data"]["metadata"]
    return int(meta["version"]), str(meta["created_time"])


@pytest.mark.skipif(os.getuid() != 0, reason="starting a process as another user needs root")
async def test_a_socket_held_by_another_user_is_not_believed(
    openbao: DevServer, tmp_path: Path, sockdir: Path
) -> None:
    """Another user binds the agent's socket first and confirms a version forever: the
    sidecar refuses it by the holder's user id, polls Vault itself and sees the kill."""
    sockdir.chmod(0o777)
    sock = sockdir / "node.sock"
    with false_agent_as(NOBODY, sock, _written(openbao)):
        async with sidecar(openbao, tmp_path, sock) as h:
            rt = runtime(h)
            assert rt.node is not None
            await until(lambda: f"held by user {NOBODY}" in rt.node.problem, 5.0)  # type: ignore[union-attr]
            await kill_switch(openbao, h)
            await until(lambda: rt.control.killed, 5.0)
            assert rt.control_source == "vault"
            assert rt.node.connects == 0


async def test_a_false_agent_of_our_own_user_delays_a_change_at_most_one_full_read(
    openbao: DevServer, tmp_path: Path, sockdir: Path
) -> None:
    """The trust the agent gets, measured: one that confirms the old version forever can
    hold a kill back until the sidecar's periodic full read (every 10 s in production, 1 s
    here), never longer. Without that read the kill would never be seen."""
    sock = sockdir / "node.sock"
    with false_agent_as(os.getuid(), sock, _written(openbao)):
        async with sidecar(openbao, tmp_path, sock) as h:
            rt = runtime(h)
            rt.full_read_every = 1.0
            await until(lambda: rt.control_source == "node-agent", 5.0)
            await kill_switch(openbao, h)
            took = await until(lambda: rt.control.killed, 5.0)
    assert took < rt.full_read_every + STALE_AFTER


def _denied(call: Callable[[], object]) -> bool:
    try:
        call()
    except hvac.exceptions.Forbidden:
        return True
    return False


def test_the_node_agents_login_reads_the_control_version_and_nothing_else(
    openbao: DevServer, tmp_path: Path
) -> None:
    """The node agent's AppRole token, stolen: control/version readable and its own renewal,
    nothing else (the control documents, manifests, writes, lists, tokens, policies)."""
    settings = node_settings(openbao, tmp_path)
    assert settings.role_id_file is not None
    assert settings.secret_id_file is not None
    login = make_client(openbao.addr).auth.approle.login(
        role_id=settings.role_id_file.read_text(), secret_id=settings.secret_id_file.read_text()
    )
    stolen = make_client(openbao.addr, login["auth"]["client_token"])
    kv = stolen.secrets.kv.v2

    def read(path: str) -> object:
        return kv.read_secret_version(path, mount_point=KV_MOUNT, raise_on_deleted_version=True)

    read("control/version")
    stolen.auth.token.renew_self()
    refused = {
        "control/global": lambda: read("control/global"),
        "control/revoked": lambda: read("control/revoked"),
        "manifests": lambda: read("manifests/x"),
        "write version": lambda: kv.create_or_update_secret(
            "control/version", {"at": 1}, mount_point=KV_MOUNT
        ),
        "list control": lambda: kv.list_secrets("control", mount_point=KV_MOUNT),
        "version metadata": lambda: kv.read_secret_metadata(
            "control/version", mount_point=KV_MOUNT
        ),
        "create token": lambda: stolen.auth.token.create(ttl="1m"),
        "lookup self": stolen.auth.token.lookup_self,
        "read policy": lambda: stolen.sys.read_policy("broker-node-agent"),
        "secret id": lambda: stolen.auth.approle.generate_secret_id("broker_node_agent"),
    }
    allowed = [name for name, call in refused.items() if not _denied(call)]
    assert not allowed, f"the node agent's token may also: {allowed}"


async def test_a_wire_line_from_the_running_agent_is_a_current_confirmation(
    openbao: DevServer, tmp_path: Path, sockdir: Path
) -> None:
    """What the agent writes is the version Vault holds, read moments ago on this host's
    clock; after a control write it is the new version."""
    sock = sockdir / "node.sock"
    async with node_agent(openbao, sock, tmp_path) as agent:
        await until(lambda: agent.latest is not None and agent.clients == 0, 5.0)
        before = agent.latest
        assert before is not None
        assert before.version == _version(openbao)
        assert 0 <= time.monotonic() - before.read_at < 1.0
        await asyncio.to_thread(control_written, root_client(openbao), openbao.addr)
        await until(lambda: agent.latest is not None and agent.latest.version > before.version, 5.0)
        reader, writer = await asyncio.open_unix_connection(str(sock))
        line = await asyncio.wait_for(reader.readline(), 2.0)
        writer.close()
    agent_version, stamp = _written(openbao)
    assert line == encode(Confirmation(agent_version, _read_at(line), stamp))
    assert agent_version > before.version


async def test_the_daemonsets_probe_finds_the_running_agent_alive_and_a_stopped_one_not(
    openbao: DevServer, tmp_path: Path, sockdir: Path
) -> None:
    """`broker probe --node-agent SOCKET`, the command the DaemonSet's liveness check runs:
    exit 0 naming the version while the agent serves; exit 1 once it has stopped."""
    sock = sockdir / "node.sock"

    async def probe() -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "broker.cli", "probe", "--node-agent", str(sock),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        out, _ = await proc.communicate()
        return int(proc.returncode or 0), out.decode()

    async with node_agent(openbao, sock, tmp_path) as agent:
        await until(lambda: agent.latest is not None, 5.0)
        alive = await probe()
    gone = await probe()
    assert alive[0] == 0, alive[1]
    assert f"control/version {_version(openbao)}, read " in alive[1]
    assert gone[0] == 1
    assert "not ok" in gone[1]


def _read_at(line: bytes) -> float:
    import json

    return float(json.loads(line)["read_at"])


async def test_the_node_agent_follows_the_active_node_of_a_raft_cluster(
    raft_cluster: RaftCluster, sockdir: Path
) -> None:
    """Given every node of a three-node Raft cluster, a standby first: the agent confirms
    from the active node; that node SIGKILLed, the agent stops confirming (the sidecars fall
    back and fail closed) and confirms again from the newly elected node by itself."""
    raft_cluster.heal()
    active = raft_cluster.active()
    client = make_client(active.addr, raft_cluster.root_token)
    await asyncio.to_thread(bootstrap, client, [], addr=active.addr)
    standbys = [n.addr for n in raft_cluster.nodes if n is not active]
    settings = VaultSettings(
        addr=standbys[0],
        addrs=(*standbys, active.addr),
        token=SecretStr(raft_cluster.root_token),
    )
    agent = NodeAgent(settings, sockdir / "node.sock", interval=0.1)
    await agent.start()
    try:
        await until(lambda: agent.latest is not None, 30.0)
        assert agent.session.endpoints.current == active.addr
        raft_cluster.kill(active)
        gone = await until(lambda: agent.latest is None, 10.0)
        back = await until(lambda: agent.latest is not None, 60.0)
        moved_to = agent.session.endpoints.current
    finally:
        await agent.stop()
        raft_cluster.restart(active)
    print(
        f"node agent: stopped confirming {gone:.2f} s after the kill, confirmed again {back:.2f} s later"
    )
    assert moved_to != active.addr


async def test_a_stopping_agent_revokes_its_login_and_only_its_login(
    openbao: DevServer, tmp_path: Path, sockdir: Path
) -> None:
    """Stopped, the agent revokes the token its AppRole login gave it (each restart would
    otherwise leave one alive for its TTL); a token it was handed (VAULT_TOKEN) is left alone."""
    root = root_client(openbao)
    async with node_agent(openbao, sockdir / "a.sock", tmp_path) as agent:
        accessor = agent.session.accessor
    with pytest.raises(hvac.exceptions.InvalidRequest):
        root.auth.token.lookup_accessor(accessor)
    given = root.auth.token.create(policies=["broker-node-agent"], ttl="10m")["auth"]
    settings = VaultSettings(addr=openbao.addr, token=SecretStr(given["client_token"]))
    handed = NodeAgent(settings, sockdir / "b.sock", interval=0.1)
    await handed.start()
    try:
        await until(lambda: handed.latest is not None, 10.0)
    finally:
        await handed.stop()
    assert root.auth.token.lookup_accessor(given["accessor"])["data"]["accessor"]
