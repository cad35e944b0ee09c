"""The three-node Raft cluster the fleet tests run on is real: it elects, replicates and
survives the loss of its active node."""

from __future__ import annotations

import signal

import hvac
import pytest

from broker.dev.raft import RaftCluster

pytestmark = pytest.mark.integration


def test_three_voters_one_active_and_a_write_survives_the_active_node(
    raft_cluster: RaftCluster,
) -> None:
    """One active node and two standbys; after SIGKILL of the active node another takes over
    and still holds what was written through the first."""
    assert sorted(n.health() for n in raft_cluster.nodes) == ["active", "standby", "standby"]
    first = raft_cluster.active()
    client = hvac.Client(url=first.addr, token=raft_cluster.root_token)
    client.sys.enable_secrets_engine("kv", path="raft-test", options={"version": "2"})
    client.secrets.kv.v2.create_or_update_secret(
        path="probe", secret={"n": 1}, mount_point="raft-test"
    )
    raft_cluster.kill(first)
    second = raft_cluster.active(timeout=60)
    assert second is not first
    after = hvac.Client(url=second.addr, token=raft_cluster.root_token)
    read = after.secrets.kv.v2.read_secret_version(
        path="probe", mount_point="raft-test", raise_on_deleted_version=True
    )
    assert read["data"]["data"] == {"n": 1}
    assert first.health() == "down"


def test_heal_restarts_a_node_that_never_settles(raft_cluster: RaftCluster) -> None:
    """A standby that stops answering (SIGSTOP: alive, but silent, as a node stuck under load)
    keeps the cluster from agreeing; heal restarts it after the settle time, and the three
    nodes agree again: the next test finds a whole cluster instead of failing on it."""
    raft_cluster.heal()
    active = raft_cluster.active()
    stuck = next(n for n in raft_cluster.nodes if n is not active)
    stuck.process.send_signal(signal.SIGSTOP)
    old_pid = stuck.pid
    try:
        raft_cluster.heal(settle=2.0)
    finally:
        if stuck.pid == old_pid:
            stuck.process.send_signal(signal.SIGCONT)
    assert stuck.pid != old_pid
    assert sorted(n.health() for n in raft_cluster.nodes) == ["active", "standby", "standby"]
