"""A sidecar against a three-node OpenBao Raft cluster: what its Vault node answers while it
is a standby must never read as "nothing revoked"."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from broker.core.controlstate import agent_path
from broker.dev.devstack import DevServer
from broker.dev.raft import RaftCluster
from broker.vault.control import control_written
from broker.vault.kv import kv_write
from tests.harness import root_client, running_sidecar, unique_agent, write_manifest

pytestmark = pytest.mark.integration

MANIFEST = """\
agent: {agent}
policy_version: ha-1
system_owner: platform@acme.example
risk_owner: risk@acme.example
actions:
  tickets.read:
    accountable: support-lead@acme.example
    credential: {{kind: jwt, audience: tickets, ttl: 60s}}
"""


@dataclass
class Node:
    """What the harness needs of a server: an address and a root token."""

    addr: str
    root_token: str


async def _statuses(ask: Any, n: int) -> list[int]:
    got = []
    for _ in range(n):
        got.append((await ask("tickets.read"))[0])
        await asyncio.sleep(0.1)
    return got


async def test_a_killed_agent_stays_refused_when_its_vault_node_becomes_a_standby(
    raft_cluster: RaftCluster, tmp_path: Path
) -> None:
    """The agent is killed; then the node its sidecar talks to steps down. The standby
    answers errors during the election, which must never read as "not killed": every
    request is refused (403 or 503), never a 200, and the kill is still read afterwards."""
    active = raft_cluster.active()
    server = cast(DevServer, Node(active.addr, raft_cluster.root_token))
    manifest = write_manifest(tmp_path, MANIFEST.format(agent=unique_agent("ha")))
    async with running_sidecar(server, manifest, tmp_path) as h:
        assert (await h.ask("tickets.read"))[0] == 200  # the cluster mints at all
        client = root_client(server)
        kv_write(client, agent_path(h.sidecar.manifest.agent), {"killed": True})
        control_written(client)
        await asyncio.sleep(0.5)
        assert set(await _statuses(h.ask, 3)) == {403}
        client.sys.step_down()
        statuses = await _statuses(h.ask, 20)
        _, ready, _ = await h.raw("GET", "/readyz")
    assert 200 not in statuses, statuses
    assert set(statuses) <= {403, 503}, statuses
    # After the election the standby forwards reads to the new active node: killed still.
    assert ready["agent_disabled"] is True, ready
