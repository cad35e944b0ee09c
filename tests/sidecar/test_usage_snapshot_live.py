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
