"""A sidecar given every node of a three-node OpenBao Raft cluster: it follows the active
node through an election, and a lagging standby never widens access."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest

from broker.core.controlstate import agent_path
from broker.dev.devstack import DevServer
from broker.dev.raft import RaftCluster, RaftNode
from broker.sidecar.runtime import STALE_AFTER
from broker.vault.control import control_written
from broker.vault.kv import kv_write
from tests.harness import Harness, root_client, running_sidecar, unique_agent, write_manifest

pytestmark = pytest.mark.integration

BUDGET = 80
MANIFEST = """\
agent: {agent}
policy_version: ha-failover-1
system_owner: platform@acme.example
risk_owner: risk@acme.example
budgets:
  calls: {{limit: {limit}, per: 1d, unit: calls}}
actions:
  read.thing:
    accountable: owner@acme.example
    credential: {{kind: jwt, audience: things, ttl: 60s}}
    cost: {{calls: 1}}
"""
HANG = 3.0  # no request may take longer than this, election or not
# A sidecar mints on control state confirmed at most STALE_AFTER ago; the harness polls
# every 0.1 s. Later than this after a kill was written, nothing may be minted.
BOUND = STALE_AFTER + 0.25


@dataclass(frozen=True)
class _Node:
    """What the sidecar harness reads of a server: its address and a root token."""

    addr: str
    root_token: str


@dataclass
class Answer:
    at: float  # monotonic, when the request was sent
    took: float
    status: int
    reason: str
    retry_after: str | None
    credential_id: str = ""


@dataclass
class Load:
    """Steady minting: one request every ``gap`` seconds, every answer kept."""

    h: Harness
    gap: float = 0.1
    answers: list[Answer] = field(default_factory=list)

    async def one(self) -> None:
        sent = time.monotonic()
        body = {"action": "read.thing", "inputs": {}}
        timeout = aiohttp.ClientTimeout(total=HANG * 3)
        async with self.h.http.post(
            f"{self.h.url}/v1/credentials", json=body, timeout=timeout
        ) as resp:
            doc = await resp.json(content_type=None)
            cred = (doc.get("credential") or {}).get("credential_id", "")
            reason = doc.get("reason") or doc.get("error") or doc.get("outcome") or ""
            answer = Answer(
                sent, time.monotonic() - sent, resp.status, reason, resp.headers.get("Retry-After")
            )
            answer.credential_id = cred
            self.answers.append(answer)

    async def until(self, done: Any, limit: float) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and not done(self.answers):
            await self.one()
            await asyncio.sleep(self.gap)


def _order(cluster: RaftCluster, first: RaftNode) -> list[str]:
    return [first.addr] + [n.addr for n in cluster.nodes if n is not first]


def _minted_after(answers: list[Answer], t: float) -> list[Answer]:
    return [a for a in answers if a.at > t and a.status == 200]


async def test_minting_resumes_by_itself_after_the_active_node_is_killed(
    raft_cluster: RaftCluster, tmp_path: Path
) -> None:
    """Steady minting (fleet ledger in Vault); the active node is SIGKILLed. During the
    election every request is refused 503 with Retry-After (never a 500, none over 3 s);
    minting resumes on the new active node by itself; every credential minted is in the
    audit trail, and no more than the budget is minted. The gap is printed for the note."""
    raft_cluster.heal()
    active = raft_cluster.active()
    server = cast(DevServer, _Node(active.addr, raft_cluster.root_token))
    manifest = write_manifest(tmp_path, MANIFEST.format(agent=unique_agent("hafail"), limit=BUDGET))
    try:
        async with running_sidecar(
            server,
            manifest,
            tmp_path,
            vault_addrs=tuple(_order(raft_cluster, active)),
            ledger="vault",
        ) as h:
            load = Load(h)
            await load.until(lambda a: sum(x.status == 200 for x in a) >= 10, 30.0)
            killed_at = time.monotonic()
            raft_cluster.kill(active)
            elected = asyncio.create_task(_elected(raft_cluster))
            resumed = lambda a: len(_minted_after(a, killed_at)) >= 5  # noqa: E731
            await load.until(resumed, 60.0)
            leader_at = await elected
            trail = h.audit_path.read_text()
            switched = h.sidecar.runtime.session.endpoints.current
    finally:
        raft_cluster.restart(active)
    answers = load.answers
    print(_report(answers, killed_at, leader_at))
    statuses = Counter((a.status, a.reason) for a in answers)
    assert switched != active.addr
    assert len(_minted_after(answers, killed_at)) >= 5, statuses
    assert all(a.status in (200, 503) for a in answers), statuses
    assert all(a.retry_after for a in answers if a.status == 503), statuses
    assert any(a.status == 503 for a in answers if a.at > killed_at), statuses
    assert max(a.took for a in answers) < HANG, max(a.took for a in answers)
    minted = [a.credential_id for a in answers if a.status == 200]
    assert all(c and c in trail for c in minted)
    assert len(minted) <= BUDGET


async def _elected(cluster: RaftCluster) -> float:
    """When (monotonic) a node first answered as active after the kill."""
    await asyncio.to_thread(cluster.active, 60.0)
    return time.monotonic()


def _report(answers: list[Answer], killed_at: float, leader_at: float) -> str:
    before = [a for a in answers if a.at <= killed_at and a.status == 200]
    after = _minted_after(answers, killed_at)
    last_ok, first_ok = before[-1].at, after[0].at
    refused = [a for a in answers if last_ok < a.at < first_ok]
    return (
        f"HA failover: gap between the last mint before the kill and the first after "
        f"{first_ok - last_ok:.2f} s (first mint {first_ok - killed_at:.2f} s after the kill, "
        f"{first_ok - leader_at:.2f} s after a new active node answered sys/health); "
        f"{len(refused)} requests refused meanwhile "
        f"{dict(Counter((a.status, a.reason) for a in refused))}; "
        f"slowest answer {max(a.took for a in answers):.3f} s"
    )


async def test_a_kill_written_while_a_standby_lags_is_enforced_within_the_bound(
    raft_cluster: RaftCluster, tmp_path: Path
) -> None:
    """A standby is paused, the agent is killed through the active node, then the active
    node is paused and the standby continued: it lags, and cannot catch up until the third
    node wins an election. The sidecar's clients are pointed at that standby (as when the
    node it talks to steps down). Nothing is minted from the standby's copy: every answer
    from BOUND after the kill on is a refusal, and the kill is read once a leader is back."""
    raft_cluster.heal()
    active = raft_cluster.active()
    lagging = next(n for n in raft_cluster.nodes if n is not active and n.alive())
    server = cast(DevServer, _Node(active.addr, raft_cluster.root_token))
    manifest = write_manifest(tmp_path, MANIFEST.format(agent=unique_agent("halag"), limit=1000))
    async with running_sidecar(
        server, manifest, tmp_path, vault_addrs=tuple(_order(raft_cluster, active))
    ) as h:
        load = Load(h)
        await load.until(lambda a: sum(x.status == 200 for x in a) >= 3, 30.0)
        lagging.process.send_signal(signal.SIGSTOP)
        try:
            client = root_client(server)
            kv_write(client, agent_path(h.sidecar.manifest.agent), {"killed": True})
            control_written(client)
            written = time.monotonic()
            endpoints = h.sidecar.runtime.session.endpoints
            endpoints._switch(endpoints.addrs.index(lagging.addr), endpoints.cluster_id)
            active.process.send_signal(signal.SIGSTOP)
            lagging.process.send_signal(signal.SIGCONT)
            await load.until(lambda a: time.monotonic() - written > BOUND + 3.0, 6.0)
        finally:
            lagging.process.send_signal(signal.SIGCONT)
            active.process.send_signal(signal.SIGCONT)
        disabled = await _until_disabled(h, 60.0)
    late = [a for a in load.answers if a.at > written + BOUND]
    assert late, "no request after the bound"
    assert all(a.status in (403, 503) for a in late), Counter(a.status for a in late)
    assert disabled, "the kill was never read"


async def _until_disabled(h: Harness, limit: float) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        _, ready, _ = await h.raw("GET", "/readyz")
        if ready.get("agent_disabled") is True:
            return True
        await asyncio.sleep(0.2)
    return False
