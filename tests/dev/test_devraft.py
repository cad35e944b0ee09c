"""The three-node Raft cluster the fleet tests run on is real: it elects, replicates and
survives the loss of its active node."""

from __future__ import annotations

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
