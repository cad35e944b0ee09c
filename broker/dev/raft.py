"""A real three-node OpenBao cluster with integrated Raft storage, on loopback ports.

Not dev mode: each node is ``bao server -config=...`` with ``storage "raft"``; the first is
initialised (one key share, for tests and `broker up` only), every node is unsealed, and the
others join through ``retry_join``. Used by the fleet tests and benchmarks to show what
happens when the active node dies. Every process is stopped by its own process id.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.core.errors import BackendUnavailable
from broker.dev.devstack import free_port_pair, spawn_bao

CONFIG = """\
storage "raft" {{
  path    = "{data}"
  node_id = "{node_id}"
{joins}}}
listener "tcp" {{
  address         = "127.0.0.1:{port}"
  cluster_address = "127.0.0.1:{cluster_port}"
  tls_disable     = true
}}
api_addr      = "http://127.0.0.1:{port}"
cluster_addr  = "http://127.0.0.1:{cluster_port}"
disable_mlock = true
ui            = false
log_level     = "warn"
"""
JOIN = '  retry_join {{\n    leader_api_addr = "{addr}"\n  }}\n'


def _call(
    addr: str, method: str, path: str, body: Any = None, *, token: str = "", timeout: float = 2.0
) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{addr}/v1/{path}", data=data, method=method)  # noqa: S310 - loopback URL we built
    if token:
        request.add_header("X-Vault-Token", token)
    with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310 - loopback URL we built
        raw = resp.read()
    return json.loads(raw) if raw else {}


@dataclass
class RaftNode:
    node_id: str
    addr: str
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def health(self) -> str:
        """``active``, ``standby``, ``sealed`` or ``down``, from ``sys/health``'s status code."""
        if not self.alive():
            return "down"
        try:
            with urllib.request.urlopen(f"{self.addr}/v1/sys/health", timeout=1) as resp:  # noqa: S310 - loopback
                return "active" if resp.status == 200 else "other"
        except urllib.error.HTTPError as exc:
            exc.close()
            return {429: "standby", 473: "standby", 503: "sealed"}.get(exc.code, "other")
        except (urllib.error.URLError, OSError):
            return "down"


@dataclass
class RaftCluster:
    """Three (or ``n``) OpenBao nodes on Raft. ``root_token`` and the unseal key are for the
    test or operator who started it, never printed."""

    nodes: list[RaftNode]
    root_token: str = field(repr=False)
    unseal_key: str = field(repr=False)
    workdir: Path

    @property
    def addrs(self) -> list[str]:
        return [n.addr for n in self.nodes]

    def active(self, timeout: float = 30.0) -> RaftNode:
        """The node that answers as active, waiting through an election."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.health() == "active":
                    return node
            time.sleep(0.1)
        raise BackendUnavailable(f"no active OpenBao node within {timeout:.0f}s")

    def kill(self, node: RaftNode) -> None:
        """SIGKILL one node, as a crashed machine: no graceful step-down."""
        if node.alive():
            node.process.send_signal(signal.SIGKILL)
            node.process.wait()

    def restart(self, node: RaftNode) -> None:
        """Start a killed node again on its own data and address, and unseal it: it rejoins
        as a standby (so a test that killed one leaves the cluster whole for the next)."""
        if node.alive():
            return
        home = self.workdir / node.node_id
        node.process = spawn_bao(
            ["server", f"-config={home / 'config.hcl'}"], home, home / "bao.log"
        )
        _unseal(node, self.unseal_key)

    def heal(self, settle: float = 60.0) -> None:
        """Every node up again (a test before may have killed one): restart the dead ones,
        unseal the sealed ones, and wait until one is active and every node names it as
        leader (a node that still names an old leader redirects there), so one more node may
        fail. Under load a restarted node was seen never to settle (the suite's Raft tests
        then failed one after another): the nodes that do not agree after a minute are
        restarted once more, and the error says what each node reported."""
        for node in self.nodes:
            self.restart(node)
            if node.health() == "sealed":
                _unseal(node, self.unseal_key)
        try:
            _until(self._agreed, "every node agreeing on one active node", timeout=settle)
        except BackendUnavailable:
            stuck = self._unsettled()
            for node in stuck:
                node.process.terminate()
                try:
                    node.process.wait(10)
                except subprocess.TimeoutExpired:
                    self.kill(node)
                self.restart(node)
            names = ", ".join(n.node_id for n in stuck)
            _until(
                self._agreed,
                f"every node agreeing on one active node after restarting {names} "
                f"(before: {self.describe()})",
                timeout=90.0,
            )

    def describe(self) -> str:
        """Each node's health and the leader it names, for an error message."""
        return "; ".join(f"{n.node_id} {n.health()} leader {self._leader(n)}" for n in self.nodes)

    def _leader(self, node: RaftNode) -> str | None:
        try:
            found = _call(node.addr, "GET", "sys/leader").get("leader_address")
        except (urllib.error.URLError, OSError, ValueError):
            return None
        return str(found) if found else None

    def _unsettled(self) -> list[RaftNode]:
        """The nodes keeping the cluster from agreeing: with one active node, those not its
        standbys naming it; without exactly one, every node."""
        active = [n for n in self.nodes if n.health() == "active"]
        if len(active) != 1:
            return list(self.nodes)
        leader = active[0].addr
        return [
            n
            for n in self.nodes
            if n is not active[0] and (n.health() != "standby" or self._leader(n) != leader)
        ]

    def _agreed(self) -> bool:
        active = [n for n in self.nodes if n.health() == "active"]
        if len(active) != 1 or any(n.health() != "standby" for n in self.nodes if n not in active):
            return False
        leaders = {_call(n.addr, "GET", "sys/leader").get("leader_address") for n in self.nodes}
        return leaders == {active[0].addr}

    def stop(self, timeout: float = 10.0) -> None:
        for node in self.nodes:
            if node.alive():
                node.process.send_signal(signal.SIGTERM)
        for node in self.nodes:
            try:
                node.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _start_node(workdir: Path, index: int, leader: str | None) -> RaftNode:
    port = free_port_pair()
    node_id = f"node{index}"
    home = workdir / node_id
    (home / "data").mkdir(parents=True)
    joins = JOIN.format(addr=leader) if leader else ""
    config = home / "config.hcl"
    config.write_text(
        CONFIG.format(
            data=home / "data", node_id=node_id, joins=joins, port=port, cluster_port=port + 1
        )
    )
    process = spawn_bao(["server", f"-config={config}"], home, home / "bao.log")
    return RaftNode(node_id=node_id, addr=f"http://127.0.0.1:{port}", process=process)


def _until(check: Any, what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            found = check()
            if found:
                return found
        except (urllib.error.URLError, OSError, ValueError) as exc:
            if isinstance(exc, urllib.error.HTTPError):
                exc.close()
            last = exc
        time.sleep(0.1)
    raise BackendUnavailable(f"OpenBao Raft cluster: {what} within {timeout:.0f}s ({last})")


def start_raft_cluster(size: int = 3) -> RaftCluster:
    """Start, initialise, unseal and join ``size`` nodes; return once all are voters."""
    workdir = Path(tempfile.mkdtemp(prefix="broker-raft-"))
    first = _start_node(workdir, 1, None)
    cluster = RaftCluster([first], root_token="", unseal_key="", workdir=workdir)
    try:
        _until(lambda: _call(first.addr, "GET", "sys/init") is not None, "listening")
        # Once: a retried init would meet "already initialised" (Raft's first election is slow).
        shares = {"secret_shares": 1, "secret_threshold": 1}
        init = _call(first.addr, "PUT", "sys/init", shares, timeout=60)
        cluster.root_token, cluster.unseal_key = init["root_token"], init["keys_base64"][0]
        _unseal(first, cluster.unseal_key)
        cluster.active()
        for index in range(2, size + 1):
            node = _start_node(workdir, index, first.addr)
            cluster.nodes.append(node)
            _unseal(node, cluster.unseal_key)
        _until(lambda: _voters(cluster) == size, f"{size} voters")
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _unseal(node: RaftNode, key: str) -> None:
    # A joining node answers "not initialised" until retry_join fetched the keyring: retry.
    _until(
        lambda: (
            not _call(node.addr, "PUT", "sys/unseal", {"key": key}).get("sealed", True)
            or _call(node.addr, "GET", "sys/seal-status").get("sealed") is False
        ),
        f"{node.node_id} unsealed",
    )


def _voters(cluster: RaftCluster) -> int:
    config = _call(
        cluster.active().addr, "GET", "sys/storage/raft/configuration", token=cluster.root_token
    )
    servers = config["data"]["config"]["servers"]
    return sum(1 for s in servers if s.get("voter"))
