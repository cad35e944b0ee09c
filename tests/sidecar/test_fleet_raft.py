"""The fleet ledger on a real three-node OpenBao Raft cluster: budgets exact across replicas."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest

from broker.dev.devstack import DevServer
from broker.dev.raft import RaftCluster
from tests.harness import unique_agent, write_manifest
from tests.sidecar.test_fleet_live import allowed_in_trails, fleet_manifest, replicas, spread

pytestmark = pytest.mark.integration

LIMITED = """\
agent: {agent}
policy_version: fleet-limits-1
system_owner: platform@acme.example
risk_owner: risk@acme.example
{limits}
actions:
  read.thing:
    accountable: owner@acme.example
    credential: {{kind: jwt, audience: things, ttl: 60s}}
"""


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


@pytest.mark.parametrize(
    ("limits", "cap", "reason"),
    [
        ("concurrency: 5", 5, "concurrency_limit"),
        ("rate: {limit: 30, per: 1d}", 30, "rate_limited"),
    ],
)
async def test_four_replicas_on_raft_hold_a_concurrency_cap_and_a_rate_limit(
    raft_cluster: RaftCluster, tmp_path: Path, limits: str, cap: int, reason: str
) -> None:
    """4 replicas, 200 concurrent requests: a concurrency cap of 5 (60 s credentials) admits
    exactly 5, and a rate limit of 30 per (aligned) day exactly 30: the declared tolerance
    inside one window is zero; every other request is refused with the limit's reason."""
    node = _ActiveNode(raft_cluster.active().addr, raft_cluster.root_token)
    text = LIMITED.format(agent=unique_agent("fleetlim"), limits=limits)
    manifest = write_manifest(tmp_path, text)
    async with AsyncExitStack() as stack:
        sidecars = await replicas(stack, cast(DevServer, node), manifest, tmp_path, 4)
        counts = await spread(sidecars, 200)
        assert counts[(200, "allow")] == cap, counts
        assert counts[(429, reason)] == 200 - cap, counts
        assert allowed_in_trails(sidecars) == cap


async def test_released_slots_are_reused_across_replicas_never_above_the_cap(
    raft_cluster: RaftCluster, tmp_path: Path
) -> None:
    """Three rounds of 100 concurrent requests over 4 replicas, every credential reported done
    between rounds: each round admits exactly the cap of 5, so never more than 5 live at once."""
    node = _ActiveNode(raft_cluster.active().addr, raft_cluster.root_token)
    text = LIMITED.format(agent=unique_agent("fleetslot"), limits="concurrency: 5")
    manifest = write_manifest(tmp_path, text)
    async with AsyncExitStack() as stack:
        sidecars = await replicas(stack, cast(DevServer, node), manifest, tmp_path, 4)

        # A connection per request: a pooled keep-alive connection the sidecar closes as idle
        # between rounds would reset a request, and a POST of a credential is not retried.
        http = await stack.enter_async_context(
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        )

        async def post(r: int, path: str, body: dict[str, str]) -> tuple[int, dict[str, Any]]:
            async with http.post(f"{sidecars[r].url}{path}", json=body) as resp:
                return resp.status, await resp.json()

        async def one(i: int) -> tuple[int, str | None]:
            status, body = await post(i % 4, "/v1/credentials", {"action": "read.thing"})
            return i % 4, body["credential"]["credential_id"] if status == 200 else None

        for _ in range(3):
            minted = [(r, c) for r, c in await asyncio.gather(*map(one, range(100))) if c]
            assert len(minted) == 5, minted
            for r, cid in minted:
                path = f"/v1/credentials/{cid}/outcome"
                assert (await post(r, path, {"status": "ok"}))[0] == 200
