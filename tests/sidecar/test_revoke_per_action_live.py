"""``broker revoke --agent A --action X`` against the live stack, checked right after that
step alone (the revoke drill looks only after the agent-wide step, which would hide a
verifier that ignores per-action revocation): X's tokens are refused by a gateway's
verifier at once, the agent's other actions are untouched."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import hvac
import pytest
from pydantic import SecretStr

from broker.cli import main
from broker.core.errors import VerificationError
from broker.dev.devstack import DevServer
from broker.settings import VaultSettings
from broker.vault.control import VaultRevocations
from broker.vault.pki import fetch_ca_pem
from broker.verify import Verifier
from tests.harness import root_client, running_sidecar, unique_agent, write_manifest

pytestmark = pytest.mark.integration

MANIFEST = """\
agent: {agent}
policy_version: per-action-1
system_owner: platform@acme.example
risk_owner: security@acme.example
actions:
  tickets.read:
    accountable: support-lead@acme.example
    credential: {{kind: jwt, audience: tickets, ttl: 5m}}
  tickets.write:
    accountable: support-lead@acme.example
    credential: {{kind: jwt, audience: tickets, ttl: 5m}}
  payments.refund:
    accountable: finance-ops@acme.example
    credential: {{kind: vault_token, policies: [stripe-refund], ttl: 5m, uses: 5}}
"""


def gateway_verify(openbao: DevServer, token: str) -> Any:
    """As a gateway would, with a fresh control-state view (no cache from an earlier look)."""
    revocations = VaultRevocations(
        VaultSettings(addr=openbao.addr, token=SecretStr(openbao.root_token))
    )
    return Verifier([fetch_ca_pem(openbao.addr)], revocations=revocations).verify(
        token, audience="tickets"
    )


def token_alive(openbao: DevServer, accessor: str) -> bool:
    try:
        root_client(openbao).auth.token.lookup_accessor(accessor)
    except hvac.exceptions.VaultError:
        return False
    return True


async def test_per_action_revocation_refuses_that_action_at_once(
    openbao: DevServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After revoke --action tickets.read alone: its token is refused, the others still work."""
    manifest = write_manifest(tmp_path, MANIFEST.format(agent=unique_agent("peraction")))
    async with running_sidecar(openbao, manifest, tmp_path) as h:
        minted = {}
        for action in ("tickets.read", "tickets.write", "payments.refund"):
            status, body, _ = await h.ask(action)
            assert status == 200, body
            minted[action] = body["credential"]
        read, write = minted["tickets.read"]["token"], minted["tickets.write"]["token"]
        assert gateway_verify(openbao, read).action == "tickets.read"

        operator = root_client(openbao).auth.token.create(
            policies=["broker-security-operator"], meta={"operator": "sec@acme.example"}, ttl="1h"
        )["auth"]["client_token"]
        monkeypatch.setenv("VAULT_ADDR", openbao.addr)
        monkeypatch.setenv("VAULT_TOKEN", operator)
        monkeypatch.setenv("BROKER_OPERATOR_AUDIT", str(tmp_path / "ops.jsonl"))
        for name in ("BAO_ADDR", "BAO_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        args = ["revoke", "--agent", h.sidecar.manifest.agent, "--action", "tickets.read"]
        assert await asyncio.to_thread(main, [*args, "--reason", "tool incident"]) == 0

        with pytest.raises(VerificationError) as refused:
            gateway_verify(openbao, read)
        assert refused.value.code == "token_revoked"
        assert "tickets.read" in refused.value.detail
        assert gateway_verify(openbao, write).action == "tickets.write"
        assert token_alive(openbao, minted["payments.refund"]["vault_id"])
        assert (await h.ask("tickets.write"))[0] == 200  # revoked, not disabled
