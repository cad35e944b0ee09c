"""Replicas of one agent share its budgets exactly through the fleet ledger in OpenBao."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from contextlib import AsyncExitStack
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker.audit.records import verify_lines
from broker.core.fleetdoc import summary
from broker.dev.devstack import DevServer
from broker.ops.control import Control
from broker.scopes.loader import load_manifest
from broker.vault.kv import kv_read, kv_write
from broker.vault.layout import KV_MOUNT, sidecar_policy
from broker.vault.ledgerstore import ledger_path
from broker.vault.session import make_client
from tests.harness import (
    Harness,
    forward,
    free_port,
    process_env,
    root_client,
    running_sidecar,
    unique_agent,
    write_manifest,
)
from tests.manifests_live import security_operator
from tests.sidecar.test_sidecar_crash import _ready, _start

pytestmark = pytest.mark.integration

MANIFEST = """\
agent: {agent}
policy_version: fleet-1
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


def fleet_manifest(tmp_path: Path, limit: int) -> Path:
    return write_manifest(tmp_path, MANIFEST.format(agent=unique_agent("fleet"), limit=limit))


async def replicas(
    stack: AsyncExitStack, openbao: DevServer, manifest: Path, tmp_path: Path, n: int, **kw: Any
) -> list[Harness]:
    """``n`` sidecars of one agent, each with its own (empty) state directory."""
    return [
        await stack.enter_async_context(
            running_sidecar(
                openbao,
                manifest,
                tmp_path / f"r{i}",
                audit_path=tmp_path / f"r{i}" / "audit.jsonl",
                ledger="vault",
                **kw,
            )
        )
        for i in range(n)
    ]


async def spread(sidecars: list[Harness], requests: int) -> Counter[tuple[int, str]]:
    """``requests`` concurrent asks, round robin over the replicas: (status, reason) counts."""

    async def one(i: int) -> tuple[int, str]:
        status, body, _ = await sidecars[i % len(sidecars)].ask("read.thing")
        return status, body.get("reason") or body.get("outcome", "")

    return Counter(await asyncio.gather(*(one(i) for i in range(requests))))


def operator_view(openbao: DevServer, manifest: Path) -> dict[str, Any]:
    """What ``broker status`` shows a security operator of the agent's ``calls`` budget."""
    control = Control(make_client(openbao.addr, security_operator(openbao)), openbao.addr)
    ledger = control.ledger(load_manifest(manifest).agent, time.time())
    assert ledger is not None
    return dict(ledger["calls"])


def replica_env(openbao: DevServer, manifest: Path, tmp_path: Path, ttl: float) -> dict[str, str]:
    """The environment of a replica run as its own process (to be SIGKILLed): its AppRole
    login, the fleet ledger in Vault, a short lease TTL."""
    return process_env(
        openbao, manifest, tmp_path / "s", BROKER_LEDGER="vault", BROKER_LEDGER_LEASE_TTL=str(ttl)
    )


def records(trail: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in trail.read_text().splitlines() if line.strip()]


def allowed_in_trails(sidecars: list[Harness]) -> int:
    lines = [r for h in sidecars for r in records(h.audit_path)]
    return sum(1 for r in lines if r.get("type") == "decision" and r.get("outcome") == "allow")


@pytest.mark.parametrize("trial", range(2))
async def test_four_replicas_mint_exactly_the_budget(
    openbao: DevServer, tmp_path: Path, trial: int
) -> None:
    """4 replicas, 240 concurrent requests, budget 40: exactly 40 minted and 40 recorded."""
    manifest = fleet_manifest(tmp_path, 40)
    async with AsyncExitStack() as stack:
        sidecars = await replicas(stack, openbao, manifest, tmp_path, 4)
        counts = await spread(sidecars, 240)
        assert counts[(200, "allow")] == 40, counts
        # Every other request refused: budget_exhausted, or (on a starved machine) a replica
        # whose control state went stale for a moment: never a mint past the budget.
        refused = {k: v for k, v in counts.items() if k[0] != 200}
        assert set(refused) <= {(403, "budget_exhausted"), (503, "control_state_stale")}, counts
        assert sum(refused.values()) == 200, counts
        assert allowed_in_trails(sidecars) == 40
        # Metrics and budget notifications speak of the fleet's usage, not of one slice.
        seen = [h.sidecar.service.ledger.reported_used("calls", time.time()) for h in sidecars]  # type: ignore[union-attr]
        assert max(seen) == 40.0
        assert min(seen) > 0
    for h in sidecars:  # each replica's trail shows its grants and, on stop, its return
        events = [r["event"] for r in records(h.audit_path) if r.get("type") == "lease"]
        assert events.count("grant") >= 1
        assert events[-1] == "return"
        assert events.count("return") == 1
        assert verify_lines(h.audit_path.read_bytes().splitlines(keepends=True)).ok
    agent = load_manifest(manifest).agent
    doc = kv_read(root_client(openbao), ledger_path(agent))
    after = summary(doc, ledger_path(agent), time.time())["calls"]
    assert (float(after["used"]), after["leased"]) == (40.0, {})  # all given back on stop


async def test_store_unreachable_fails_closed_then_resumes(
    openbao: DevServer, tmp_path: Path
) -> None:
    """Store gone and slice spent: 503 ledger_unavailable with Retry-After; back: exact again."""
    manifest = fleet_manifest(tmp_path, 4)
    port = free_port()
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(forward(port, openbao.addr))
        (sidecar,) = await replicas(
            stack, openbao, manifest, tmp_path, 1, vault_addr=f"http://127.0.0.1:{port}"
        )
        assert [(await sidecar.ask("read.thing"))[0] for _ in range(2)] == [200, 200]
        await stack.aclose()  # the forwarder (and the sidecar) go; restart the sidecar alone
    async with AsyncExitStack() as stack:
        (sidecar,) = await replicas(
            stack, openbao, manifest, tmp_path / "again", 1, vault_addr=f"http://127.0.0.1:{port}"
        )
        status, body, headers = await sidecar.ask("read.thing")
        assert (status, body["reason"]) == (503, "ledger_unavailable"), body
        assert int(headers["Retry-After"]) >= 1
        async with forward(port, openbao.addr):
            granted, deadline = 0, time.monotonic() + 20
            while time.monotonic() < deadline:
                status, body, _ = await sidecar.ask("read.thing")
                granted += status == 200
                if body.get("reason") == "budget_exhausted":
                    break
                await asyncio.sleep(0.1)
        assert granted == 2, "the count did not continue exactly after the store came back"


async def test_nonsense_lease_document_is_refused_with_a_stable_code(
    openbao: DevServer, tmp_path: Path
) -> None:
    """An operator's raw edit of the ledger into nonsense: 503 naming ledger_invalid, no reset."""
    manifest = fleet_manifest(tmp_path, 10)
    agent = load_manifest(manifest).agent
    async with AsyncExitStack() as stack:
        (sidecar,) = await replicas(stack, openbao, manifest, tmp_path, 1)
        bad = {
            "format": 1,
            "budgets": {
                "calls": {
                    "window_start": 0,
                    "per": 86400,
                    "used": "lots",
                    "limit": "1",
                    "leases": {},
                }
            },
        }
        kv_write(root_client(openbao), ledger_path(agent), bad)
        status, body, _ = await sidecar.ask("read.thing")
        assert (status, body["reason"]) == (503, "ledger_unavailable")
        assert body["detail"].startswith("ledger_invalid: ")
        assert "budgets.calls.used" in body["detail"]
    assert kv_read(root_client(openbao), ledger_path(agent)) == bad  # nothing overwritten


async def test_sigkilled_replica_slice_returns_and_a_fresh_replica_continues(
    openbao: DevServer, tmp_path: Path
) -> None:
    """A SIGKILLed replica's unused slice is free again within the lease TTL; a replica on an
    empty state directory continues the fleet's count: together exactly the budget."""
    ttl, limit = 3.0, 40
    manifest = fleet_manifest(tmp_path, limit)
    env = replica_env(openbao, manifest, tmp_path, ttl)
    port = free_port()
    doomed = _start(manifest, tmp_path / "doomed" / "audit.jsonl", env, port)
    try:
        await _ready(f"http://127.0.0.1:{port}")
        async with aiohttp.ClientSession() as http:
            for _ in range(3):
                async with http.post(
                    f"http://127.0.0.1:{port}/v1/credentials", json={"action": "read.thing"}
                ) as resp:
                    assert resp.status == 200
        doomed.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
    finally:
        doomed.kill()
        doomed.wait(10)
    async with AsyncExitStack() as stack:
        (fresh,) = await replicas(
            stack, openbao, manifest, tmp_path / "fresh", 1, ledger_lease_ttl=ttl
        )
        before = await spread([fresh], limit)  # sequentially enough: the dead slice is held
        held_back = limit - 3 - before[(200, "allow")]
        assert held_back > 0, "the dead replica's slice was not held while its lease lived"
        shown = operator_view(openbao, manifest)
        assert (
            Decimal(shown["used"])
            + Decimal(shown["free"])
            + sum(Decimal(v) for v in shown["leased"].values())
            == limit
        )
        assert Decimal(shown["free"]) == 0
        assert held_back in {int(Decimal(v)) for v in shown["leased"].values()}
        granted = 0
        while granted < held_back and time.monotonic() - killed_at < ttl + 10:
            status, _, _ = await fresh.ask("read.thing")
            granted += status == 200
            if status != 200:
                await asyncio.sleep(0.2)
        returned_after = time.monotonic() - killed_at
        assert granted == held_back, "the dead replica's unused slice did not come back"
        assert returned_after < ttl + 10
        status, body, _ = await fresh.ask("read.thing")
        assert (status, body["reason"]) == (403, "budget_exhausted")  # 3 + the rest, no more


SHARED = """\
agent: {agent}
policy_version: fleet-fallback-1
system_owner: platform@acme.example
risk_owner: risk@acme.example
budgets:
  usd: {{limit: 100, per: 1d, unit: usd}}
rate: {{limit: 20, per: 1d, fallback: local_share}}
actions:
  read.thing:
    accountable: owner@acme.example
    credential: {{kind: jwt, audience: things, ttl: 60s}}
  pay.out:
    accountable: owner@acme.example
    credential: {{kind: jwt, audience: pay, ttl: 60s}}
    cost: {{usd: 1}}
"""


def _ledger_rule_withdrawn(openbao: DevServer, agent: str, withdrawn: bool) -> None:
    """Take this agent's ledger rule out of its sidecar policy (the store refuses its writes),
    or put the policy back as bootstrap wrote it."""
    client, name = root_client(openbao), sidecar_policy(agent)
    hcl = client.sys.read_policy(name)["data"]["rules"]
    rule = f'path "{KV_MOUNT}/data/ledger/{agent}"'
    if withdrawn:
        hcl = hcl.replace(rule, f'path "{KV_MOUNT}/data/ledger-withdrawn/{agent}"')
    else:
        hcl = hcl.replace(f'path "{KV_MOUNT}/data/ledger-withdrawn/{agent}"', rule)
    client.sys.create_or_update_policy(name, hcl)


async def test_store_refusing_a_rate_limit_falls_back_to_its_local_share_money_fails_closed(
    openbao: DevServer, tmp_path: Path
) -> None:
    """The ledger store refuses this agent's writes: a rate limit marked local_share allows
    limit / replicas (20 / 2) per replica, the money budget refuses 503 ledger_unavailable with
    Retry-After; once the store is back the calls made on the share are counted, not lost."""
    ttl = 2.0
    manifest = write_manifest(tmp_path, SHARED.format(agent=unique_agent("fallback")))
    agent = load_manifest(manifest).agent
    async with AsyncExitStack() as stack:
        a, b = await replicas(stack, openbao, manifest, tmp_path, 2, ledger_lease_ttl=ttl)
        # b first: a's write then sees both leases, so a's share is 20 / 2
        assert [(await h.ask("read.thing"))[0] for h in (b, a)] == [200, 200]
        _ledger_rule_withdrawn(openbao, agent, True)
        try:
            await asyncio.sleep(ttl)  # the slices lapse: from now on only the local share
            status, body, headers = await a.ask("pay.out")
            assert (status, body["reason"]) == (503, "ledger_unavailable"), body
            assert int(headers["Retry-After"]) >= 1
            answers = [(await a.ask("read.thing"))[0] for _ in range(15)]
            assert answers.count(200) == 9, answers  # 10 per replica, one made before
            assert set(answers[9:]) == {503}
        finally:
            _ledger_rule_withdrawn(openbao, agent, False)
        deadline = time.monotonic() + 10
        while (await a.ask("pay.out"))[0] != 200:
            assert time.monotonic() < deadline, "minting did not resume after the store came back"
            await asyncio.sleep(0.2)
        doc = kv_read(root_client(openbao), ledger_path(agent))
        seen = summary(doc, ledger_path(agent), time.time())["rate:agent:86400"]
        assert Decimal(seen["used"]) == 12  # b's 1, a's 1 + 9 on the share + the last pay.out


async def test_metrics_export_used_leased_and_limit_of_the_fleet(
    openbao: DevServer, tmp_path: Path
) -> None:
    """After a few calls on two replicas, each replica's /metrics shows the budget's limit, the
    fleet's usage and what the fleet's live leases hold unspent, as the document says."""
    manifest = fleet_manifest(tmp_path, 40)
    agent = load_manifest(manifest).agent
    async with AsyncExitStack() as stack:
        a, b = await replicas(stack, openbao, manifest, tmp_path, 2)
        for h in (a, b, a, b, a):
            assert (await h.ask("read.thing"))[0] == 200
        shown = summary(
            kv_read(root_client(openbao), ledger_path(agent)), ledger_path(agent), time.time()
        )["calls"]
        async with a.http.get(f"{a.url}/metrics") as resp:
            text = await resp.text()
    values = {
        (s.name, s.labels.get("budget")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert values[("broker_budget_limit", "calls")] == 40
    assert values[("broker_budget_used", "calls")] == 5  # a wrote last: the fleet's 5
    leased = sum(Decimal(v) for v in shown["leased"].values())
    assert leased > 0
    assert values[("broker_budget_leased", "calls")] == float(leased)


SLOTS = """\
agent: {agent}
policy_version: fleet-slots-1
system_owner: platform@acme.example
risk_owner: risk@acme.example
concurrency: 2
actions:
  read.thing:
    accountable: owner@acme.example
    credential: {{kind: jwt, audience: things, ttl: 3s}}
"""


async def test_sigkilled_replica_holds_its_slots_until_its_credentials_expire(
    openbao: DevServer, tmp_path: Path
) -> None:
    """A replica holding the whole concurrency cap is SIGKILLed: no other replica gets a slot
    while its credentials may still be live (lease TTL 2 s + credential TTL 3 s), then the
    slots come back by themselves."""
    ttl = 2.0
    manifest = write_manifest(tmp_path, SLOTS.format(agent=unique_agent("slots")))
    env = replica_env(openbao, manifest, tmp_path, ttl)
    port = free_port()
    doomed = _start(manifest, tmp_path / "doomed" / "audit.jsonl", env, port)
    try:
        await _ready(f"http://127.0.0.1:{port}")
        expiries = []
        async with aiohttp.ClientSession() as http:
            for _ in range(2):
                async with http.post(
                    f"http://127.0.0.1:{port}/v1/credentials", json={"action": "read.thing"}
                ) as resp:
                    assert resp.status == 200
                    expiries.append((await resp.json())["credential"]["expires_at"])
        doomed.send_signal(signal.SIGKILL)
    finally:
        doomed.kill()
        doomed.wait(10)
    async with AsyncExitStack() as stack:
        (fresh,) = await replicas(
            stack, openbao, manifest, tmp_path / "fresh", 1, ledger_lease_ttl=ttl
        )
        status, body, _ = await fresh.ask("read.thing")
        assert (status, body["reason"]) == (429, "concurrency_limit"), body
        deadline = time.time() + ttl + 3 + 15
        while (status := (await fresh.ask("read.thing"))[0]) != 200:
            assert time.time() < deadline, "the dead replica's slots never came back"
            await asyncio.sleep(0.2)
        assert time.time() >= max(expiries)  # not before its credentials had expired


async def test_a_replica_that_cannot_mint_takes_no_slice(
    openbao: DevServer, tmp_path: Path
) -> None:
    """A replica whose control state is stale (its poll stopped) refuses 503
    control_state_stale and leases nothing: a slice held while refusing would leave the
    other replicas short (fewer minted than the budget, seen under CPU starvation)."""
    manifest = fleet_manifest(tmp_path, 40)
    agent = load_manifest(manifest).agent
    async with AsyncExitStack() as stack:
        (stale,) = await replicas(stack, openbao, manifest, tmp_path, 1)
        assert stale.sidecar.runtime._task is not None  # type: ignore[union-attr]
        stale.sidecar.runtime._task.cancel()  # type: ignore[union-attr]
        await asyncio.sleep(1.5)  # real time for the monotonic staleness bound
        refused = [await stale.ask("read.thing") for _ in range(3)]
        doc = kv_read(root_client(openbao), ledger_path(agent))
    assert {(s, b["reason"]) for s, b, _ in refused} == {(503, "control_state_stale")}
    leased = summary(doc, ledger_path(agent), time.time())["calls"]["leased"] if doc else {}
    assert sum(Decimal(v) for v in leased.values()) == 0
