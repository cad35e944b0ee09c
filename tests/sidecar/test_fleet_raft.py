"""The fleet ledger on a real three-node OpenBao Raft cluster: budgets exact across replicas."""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest

from broker.dev.devstack import DevServer
from broker.dev.raft import RaftCluster
from tests.sidecar.test_fleet_live import allowed_in_trails, fleet_manifest, replicas, spread

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class _ActiveNode:
    """What the sidecar harness reads of a server: its address and a root token."""

    addr: str
    root_token: str


async def test_four_replicas_on_raft_mint_exactly_the_budget(
    raft_cluster: RaftCluster, tmp_path: Path
) -> None:
    """4 replicas against the Raft cluster's active node, 400 concurrent requests, budget 100:
    exactly 100 minted and recorded, every other request refused budget_exhausted."""
    node = _ActiveNode(raft_cluster.active().addr, raft_cluster.root_token)
    manifest = fleet_manifest(tmp_path, 100)
    async with AsyncExitStack() as stack:
        sidecars = await replicas(stack, cast(DevServer, node), manifest, tmp_path, 4)
        counts = await spread(sidecars, 400)
        assert counts[(200, "allow")] == 100, counts
        assert counts[(403, "budget_exhausted")] == 300, counts
        assert allowed_in_trails(sidecars) == 100
