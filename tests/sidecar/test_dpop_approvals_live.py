"""DPoP and human approvals (real OpenBao): an action that requires DPoP asks with a proof,
waits for its approver, and redeems with a proof; a redeem without one is refused with
dpop_required and leaves the approval redeemable, so the holder of the key still gets it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from broker.cli import main
from broker.client import AsyncBrokerClient, PendingApproval
from broker.dev.devstack import DevServer
from broker.dpop import DPoPKey
from broker.vault.pki import fetch_ca_pem
from broker.verify import DPoPProof, Verifier
from tests.harness import running_sidecar, unique_agent, write_manifest
from tests.sidecar.test_approvals_live import (
    APPROVER,
    INPUTS,
    MANIFEST,
    operator_token,
    records,
    redeem,
)

pytestmark = pytest.mark.integration

PLAIN = "credential: {{kind: jwt, audience: payments, ttl: 60s}}"
BOUND = "credential: {{kind: jwt, audience: payments, ttl: 60s, dpop: required}}"


async def test_redeem_of_an_action_requiring_dpop_needs_a_proof(
    openbao: DevServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ask with a proof (202), approve, redeem without a proof (403 dpop_required, nothing
    minted), then redeem with one: 200, a token bound to the agent's key."""
    assert PLAIN in MANIFEST
    agent = unique_agent("apr-dpop")
    path = write_manifest(tmp_path, MANIFEST.replace(PLAIN, BOUND).format(agent=agent))
    monkeypatch.setenv("VAULT_ADDR", openbao.addr)
    monkeypatch.setenv("BROKER_OPERATOR_AUDIT", str(tmp_path / "ops.jsonl"))
    for name in ("BAO_ADDR", "BAO_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    key = DPoPKey.generate("ES256")
    async with (
        running_sidecar(openbao, path, tmp_path) as h,
        AsyncBrokerClient(h.url, dpop=key) as client,
    ):
        with pytest.raises(PendingApproval) as pending:
            await client.credential("pay.out", INPUTS)
        approval_id = pending.value.approval_id
        monkeypatch.setenv("VAULT_TOKEN", operator_token(openbao, APPROVER))
        assert await asyncio.to_thread(main, ["approvals", "approve", approval_id]) == 0
        status, body = await redeem(h, approval_id, {"inputs": INPUTS})
        cred = await client.redeem(approval_id, INPUTS)
    assert (status, body["reason"]) == (403, "dpop_required"), body
    assert [r["credential_id"] for r in records(h.audit_path, reason="dpop_required")] == [None]
    assert cred.token is not None
    assert cred.secret["token_type"] == "DPoP"
    url = "https://payments.example/v1/payouts"
    proof = DPoPProof(key.proof("POST", url, cred.token), "POST", url)
    claims = Verifier([fetch_ca_pem(openbao.addr)]).verify(
        cred.token, audience="payments", dpop=proof
    )
    assert claims.key_thumbprint == key.thumbprint
    [minted] = records(h.audit_path, type="decision", outcome="allow")
    assert (minted["approval_id"], minted["dpop_jkt"]) == (approval_id, key.thumbprint)
