"""The reference scenario of DESIGN.md, end to end on the live stack: the refund agent reads
ticket CS-19422, asks to refund $120, waits for finance, and redeems exactly once.

The audit record of the refund request is compared with the article's example record field
for field. Two differences from the shipped manifest are made explicit here rather than
hidden: the article's agent id (``support-refund-agent-v3``) is set on a copy of
``scopes/support-refund-agent.yaml``, and that manifest keeps ``redact: [ticket_id]``, so
the record holds the ticket id's keyed hash where the article shows it in clear; the test
computes that hash with the sidecar's redaction key and compares it exactly."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from broker.audit.records import redact
from broker.cli import main
from broker.dev.devstack import DevServer
from tests.harness import SCOPES, Harness, approver_token, running_sidecar

pytestmark = pytest.mark.integration

ARTICLE_RECORD = json.loads(
    """
{"timestamp": "2026-03-18T14:02:11Z", "agent_id": "support-refund-agent-v3",
 "workflow": "refund_request", "request_id": "req_8f1c2",
 "inputs": {"ticket_id": "CS-19422", "amount_usd": 120},
 "tool_calls": [{"tool": "zendesk.get_ticket", "status": "ok"},
                {"tool": "stripe.refund", "status": "blocked", "reason": "needs_human_approval_over_100"}],
 "output": "Refund requires approval because amount exceeds $100 threshold.",
 "policy_version": "refund-policy-2026-02", "human_override": false}
"""
)
ARTICLE_TIME = 1_773_842_531.0  # 2026-03-18T14:02:11Z
APPROVER = "finance-ops@acme.example"
REFUND = {"ticket_id": "CS-19422", "amount_usd": 120}


@pytest.fixture
def manifest_path(tmp_path: Path) -> Path:
    text = (SCOPES / "support-refund-agent.yaml").read_text()
    path = tmp_path / "support-refund-agent-v3.yaml"
    path.write_text(
        text.replace("agent: support-refund-agent\n", "agent: support-refund-agent-v3\n")
    )
    return path


async def ask(h: Harness, action: str, inputs: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    status, body, _ = await h.ask(action, inputs, workflow="refund_request", request_id="req_8f1c2")
    return status, body


async def approve(openbao: DevServer, monkeypatch: pytest.MonkeyPatch, approval_id: str) -> int:
    token = approver_token(openbao, APPROVER)
    monkeypatch.setenv("VAULT_ADDR", openbao.addr)
    monkeypatch.setenv("VAULT_TOKEN", token)
    monkeypatch.delenv("BROKER_OPERATOR_AUDIT", raising=False)
    return await asyncio.to_thread(main, ["approvals", "approve", approval_id, "--reason", "ok"])


async def redeem(h: Harness, approval_id: str, inputs: dict[str, Any] | None = None) -> Any:
    body = {"inputs": inputs} if inputs is not None else {}
    return await h.raw("POST", f"/v1/approvals/{approval_id}/redeem", json=body)


async def test_design_record_reproduced_field_for_field(
    openbao: DevServer, manifest_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read allowed, $120 pending with the article's exact record; approved, redeemed once."""
    async with running_sidecar(openbao, manifest_path, tmp_path) as h:
        # The article's moment: the decision clock is a hook (the approval clock stays real,
        # because the approver acts now).
        h.sidecar.service._clock = lambda: ARTICLE_TIME
        read, _ = await ask(h, "zendesk.get_ticket", {"ticket_id": "CS-19422"})
        status, pending = await ask(h, "stripe.refund", REFUND)
        assert (read, status) == (200, 202)
        assert pending["reason"] == "needs_human_approval_over_100"
        approval_id = pending["approval_id"]

        assert await approve(openbao, monkeypatch, approval_id) == 0
        other, refused, _ = await redeem(h, approval_id, {**REFUND, "amount_usd": 121})
        ok, granted, _ = await redeem(h, approval_id)
        again, spent, _ = await redeem(h, approval_id)
        key = (h.audit_path.parent / (h.audit_path.name + ".key")).read_bytes()

    lines = [json.loads(line) for line in h.audit_path.read_text().splitlines()]
    [record] = [r for r in lines if r.get("outcome") == "pending_approval"]
    assert record["approval_id"] == approval_id
    expected = {
        **ARTICLE_RECORD,
        # The shipped manifest redacts ticket_id: the record holds its keyed hash.
        "inputs": redact(ARTICLE_RECORD["inputs"], ["ticket_id"], key),
    }
    assert {k: record[k] for k in ARTICLE_RECORD} == expected

    assert (other, refused["reason"]) == (403, "invalid_inputs")
    assert ok == 200, granted
    assert (granted["credential"]["kind"], granted["credential"]["uses"]) == ("vault_token", 1)
    assert (again, spent["reason"]) == (403, "approval_expired")
    minted = [r for r in lines if r.get("credential_id") == granted["credential"]["credential_id"]]
    assert minted[0]["human_override"] is True
    assert minted[0]["approved_by"] == APPROVER
