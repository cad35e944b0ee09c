"""Redeem after the manifest changed (real OpenBao, a sidecar restarted between the steps):
an approval counts only while its approver is still listed in the manifest in force."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from broker.cli import main
from broker.devstack import DevServer
from tests.harness import running_sidecar, unique_agent, write_manifest
from tests.test_approvals_live import (
    APPROVER,
    INPUTS,
    MANIFEST,
    ask_pending,
    operator_token,
    records,
    redeem,
)

pytestmark = pytest.mark.integration

NEW_APPROVER = "risk-officer@acme.example"
APPROVERS_LINE = "      approvers: [finance-ops@acme.example]\n"

CHANGES = [
    pytest.param(f"      approvers: [{NEW_APPROVER}]\n", 403, id="approver replaced"),
    pytest.param(f"      approvers: [{NEW_APPROVER}, {APPROVER}]\n", 200, id="approver kept"),
]


@pytest.mark.parametrize(("approvers", "expected"), CHANGES)
async def test_redeem_needs_an_approver_listed_in_the_manifest_in_force(
    openbao: DevServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    approvers: str,
    expected: int,
) -> None:
    """Approved, then the approver is dropped from the manifest: the redeem is 403
    approval_denied and nothing is minted. Kept among others: the redeem is 200."""
    assert APPROVERS_LINE in MANIFEST
    agent = unique_agent("apr-change")
    path = write_manifest(tmp_path, MANIFEST.format(agent=agent))
    monkeypatch.setenv("VAULT_ADDR", openbao.addr)
    monkeypatch.setenv("BROKER_OPERATOR_AUDIT", str(tmp_path / "ops.jsonl"))
    for name in ("BAO_ADDR", "BAO_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    async with running_sidecar(openbao, path, tmp_path) as h:
        approval_id = await ask_pending(h)
    monkeypatch.setenv("VAULT_TOKEN", operator_token(openbao, APPROVER))
    assert await asyncio.to_thread(main, ["approvals", "approve", approval_id]) == 0

    path.write_text(MANIFEST.format(agent=agent).replace(APPROVERS_LINE, approvers))
    async with running_sidecar(openbao, path, tmp_path) as h:
        status, body = await redeem(h, approval_id, {"inputs": INPUTS})
    assert status == expected, body
    minted = records(h.audit_path, type="decision", outcome="allow")
    if expected == 403:
        assert (body["outcome"], body["reason"]) == ("deny", "approval_denied")
        assert (
            f"{APPROVER} is not an approver of pay.out under the manifest in force"
            in body["detail"]
        )
        assert "credential" not in body
        assert minted == []
        [refusal] = records(h.audit_path, type="decision", reason="approval_denied")
        assert refusal["approval_id"] == approval_id
    else:
        assert body["credential"]["kind"] == "jwt"
        assert [r["approved_by"] for r in minted] == [APPROVER]
