"""The usage snapshot a busy sidecar writes stays small: it names only the credentials whose
record is not yet written, and no slots when no concurrency cap reads them."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from broker.dev.devstack import DevServer
from tests.harness import running_sidecar, unique_agent, write_manifest

pytestmark = pytest.mark.integration

MANIFEST = """\
agent: {agent}
policy_version: snap-1
system_owner: platform@acme.example
risk_owner: risk@acme.example
budgets:
  calls: {{limit: 1000, per: 1d, unit: calls}}
actions:
  zendesk.get_ticket:
    accountable: support-lead@acme.example
    credential: {{kind: jwt, audience: zendesk-gateway, ttl: 60s}}
    inputs:
      ticket_id: {{type: string}}
    cost: {{calls: 1}}
  stripe.refund:
    accountable: finance-ops@acme.example
    credential: {{kind: vault_token, policies: [stripe-refund], ttl: 60s}}
    inputs:
      ticket_id: {{type: string}}
    cost: {{calls: 1}}
"""


async def test_every_minted_credential_leaves_the_unrecorded_set(
    openbao: DevServer, tmp_path: Path
) -> None:
    """After JWT and Vault-token mints (record before and after the mint), nothing is left
    unrecorded and the uncapped snapshot lists no slot, while the count still shows them."""
    manifest = write_manifest(tmp_path, MANIFEST.format(agent=unique_agent("snap")))
    async with running_sidecar(openbao, manifest, tmp_path) as h:
        for action in ["zendesk.get_ticket", "stripe.refund"] * 3:
            status, _, _ = await h.ask(action, {"ticket_id": "CS-1"})
            assert status == 200
        ledger = h.sidecar.service.ledger  # type: ignore[union-attr]
        snapshot = ledger.to_json()
        assert (snapshot["unrecorded"], snapshot["in_flight"]) == ([], {})
        assert ledger.in_flight(time.time()) == 6
        assert ledger.budget_used("calls", time.time()) == 6


async def test_snapshots_follow_the_records_without_a_timer(
    openbao: DevServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A snapshot at start, then one as each SNAPSHOT_EVERY more records are durable (the trail
    wakes the writer of snapshots; nothing polls the head), never two closer than that."""
    import asyncio
    import itertools
    import json

    monkeypatch.setattr("broker.sidecar.main.SNAPSHOT_EVERY", 4)
    manifest = write_manifest(tmp_path, MANIFEST.format(agent=unique_agent("snapwake")))
    async with running_sidecar(openbao, manifest, tmp_path) as h:

        def snapshots() -> list[int]:
            lines = h.audit_path.read_text().splitlines()
            return [r["seq"] for r in map(json.loads, lines) if r["type"] == "usage_snapshot"]

        for _ in range(10):
            status, _, _ = await h.ask("zendesk.get_ticket", {"ticket_id": "CS-1"})
            assert status == 200
        for _ in range(200):  # a bound for a failure, not a timing: done as soon as they are
            if len(snapshots()) >= 3:
                break
            await asyncio.sleep(0.05)
        seqs = snapshots()
        assert len(seqs) >= 3, seqs
        assert all(b - a >= 4 for a, b in itertools.pairwise(seqs)), seqs
