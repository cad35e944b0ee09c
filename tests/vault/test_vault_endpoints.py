"""Following the active node of a real three-node OpenBao Raft cluster."""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import signal
import time
from collections.abc import Iterator
from typing import Any

import hvac
import pytest
import requests

from broker.dev.raft import RaftCluster, RaftNode
from broker.ops.operator import operator_client
from broker.settings import VaultTLS
from broker.vault.endpoints import VaultEndpoints
from broker.vault.session import make_client

MOUNT = "ha-kv"
DOC = "endpoints"


def _kv(client: hvac.Client) -> Any:
    """A KV v2 mount of this test's own, ready for writes (a new mount upgrades itself)."""
    if f"{MOUNT}/" not in client.sys.list_mounted_secrets_engines()["data"]:
        client.sys.enable_secrets_engine("kv", path=MOUNT, options={"version": "2"})
    kv = client.secrets.kv.v2
    for _ in range(100):
        with contextlib.suppress(
            hvac.exceptions.InvalidRequest, hvac.exceptions.InternalServerError
        ):
            kv.create_or_update_secret(DOC, {"i": -1}, mount_point=MOUNT)
            return kv
        time.sleep(0.1)
    raise AssertionError(f"{MOUNT} never took a write")


def _standbys(cluster: RaftCluster) -> list[RaftNode]:
    active = cluster.active()
    return [n for n in cluster.nodes if n is not active and n.alive()]


@pytest.mark.integration
def test_find_active_moves_every_client_to_the_active_node(raft_cluster: RaftCluster) -> None:
    """Given the standbys first, the endpoints find the active node and every attached
    client's address moves to it."""
    raft_cluster.heal()
    active = raft_cluster.active()
    order = [n.addr for n in _standbys(raft_cluster)] + [active.addr]
    endpoints = VaultEndpoints(order, VaultTLS())
    client = make_client(order[0], raft_cluster.root_token, endpoints=endpoints)
    assert client.url == order[0]
    assert endpoints.find_active() is True
    assert endpoints.current == active.addr
    assert client.url == active.addr
    assert endpoints.cluster_id
    assert endpoints.headers()["X-Vault-Inconsistent"] == "forward-active-node"


@pytest.fixture
def paused(raft_cluster: RaftCluster) -> Iterator[RaftNode]:
    """One standby paused (SIGSTOP): it stops applying the Raft log until continued."""
    raft_cluster.heal()
    node = _standbys(raft_cluster)[0]
    node.process.send_signal(signal.SIGSTOP)
    try:
        yield node
    finally:
        node.process.send_signal(signal.SIGCONT)


@pytest.mark.integration
def test_a_lagging_standby_answers_from_the_active_node_with_the_headers(
    raft_cluster: RaftCluster, paused: RaftNode
) -> None:
    """Documents written while a standby was paused: read through that standby the moment it
    runs again, with the endpoints' headers, the answer is the active node's latest version
    (a standby answering from its own copy would give an older one)."""
    active = raft_cluster.active()
    endpoints = VaultEndpoints([n.addr for n in raft_cluster.nodes], VaultTLS())
    assert endpoints.find_active()
    kv = _kv(make_client(active.addr, raft_cluster.root_token))
    for i in range(5):
        kv.create_or_update_secret(DOC, {"i": i}, mount_point=MOUNT)
    latest = kv.read_secret_version(DOC, mount_point=MOUNT, raise_on_deleted_version=True)
    paused.process.send_signal(signal.SIGCONT)
    resp = requests.get(
        f"{paused.addr}/v1/{MOUNT}/data/{DOC}",
        headers={"X-Vault-Token": raft_cluster.root_token, **endpoints.headers()},
        timeout=5,
        allow_redirects=False,
    )
    assert resp.status_code == 200, resp.text
    version = resp.json()["data"]["metadata"]["version"]
    assert version == latest["data"]["metadata"]["version"]


def test_one_address_sends_no_consistency_headers() -> None:
    """A single Vault (dev server, load balancer) is addressed exactly as before."""
    endpoints = VaultEndpoints(["http://127.0.0.1:8200"], VaultTLS())
    endpoints.cluster_id = "c-1"
    assert endpoints.clustered is False
    assert endpoints.headers() == {}


def test_a_cluster_sends_an_index_no_node_reached_for_its_own_cluster() -> None:
    """The index names the cluster found by sys/health and a value past any Raft index."""
    endpoints = VaultEndpoints(["http://127.0.0.1:1", "http://127.0.0.1:2"], VaultTLS())
    assert endpoints.headers() == {}  # cluster not known yet: the runtime reads nothing
    endpoints.cluster_id = "c-1"
    index = json.loads(base64.b64decode(endpoints.headers()["X-Vault-Index"]))
    assert index["cluster"] == "c-1"
    assert int(index["value"]) > 2**63


def test_no_active_node_leaves_every_client_where_it_was() -> None:
    """Nothing answers (closed ports): find_active is False and nothing moves."""
    endpoints = VaultEndpoints(["http://127.0.0.1:9", "http://127.0.0.1:7"], VaultTLS(), 0.2)
    client = make_client("http://127.0.0.1:9", endpoints=endpoints)
    assert endpoints.find_active() is False
    assert (endpoints.current, client.url, endpoints.switches) == ("http://127.0.0.1:9",) * 2 + (0,)


@pytest.mark.integration
def test_runbook_commands_act_on_the_active_node(
    raft_cluster: RaftCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given the standbys first, an operator command's client is the active node's, with the
    consistency headers; one address is used as given, without them."""
    raft_cluster.heal()
    active = raft_cluster.active()
    order = [n.addr for n in _standbys(raft_cluster)] + [active.addr]
    monkeypatch.setenv("VAULT_TOKEN", raft_cluster.root_token)
    client, addr = operator_client(argparse.Namespace(vault_addr=",".join(order)))
    assert (addr, client.url) == (active.addr, active.addr)
    assert client.sys.read_health_status(method="GET")["standby"] is False
    assert "X-Vault-Inconsistent" in client.session.headers
    single, addr = operator_client(argparse.Namespace(vault_addr=order[0]))
    assert addr == order[0]
    assert "X-Vault-Inconsistent" not in single.session.headers
