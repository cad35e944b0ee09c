"""Approvals cannot be forged by a KV write: the sidecar redeems only an approval backed by the
approver's own decision record, which only that approver's Vault identity can create. Real
sidecar, real OpenBao; the attacker holds a Vault token that can write approval documents."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import hvac
import hvac.exceptions
import pytest

from broker.core.approvals import Approval, Event, transition
from broker.core.decision import inputs_hash
from broker.dev.devstack import DevServer
from broker.vault.approvals import ApprovalStore, approval_path
from broker.vault.layout import KV_MOUNT, SECURITY_OPERATOR_POLICY
from broker.vault.session import make_client
from tests.harness import root_client, running_sidecar, unique_agent, write_manifest
from tests.sidecar.test_approvals_live import (
    APPROVER,
    INPUTS,
    MANIFEST,
    ask_pending,
    operator,
    records,
    redeem,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def manifest_path(tmp_path: Path) -> Path:
    return write_manifest(tmp_path, MANIFEST.format(agent=unique_agent("forge")))


@pytest.fixture
def attacker(openbao: DevServer) -> hvac.Client:
    """Someone who may write approval documents (as every approver may) but is not the
    approver the manifest lists: the approver policy without finance-ops' Vault identity."""
    token = root_client(openbao).auth.token.create(
        policies=["broker-approver"], meta={"operator": "mallory@acme.example"}, ttl="10m"
    )["auth"]["client_token"]
    return make_client(openbao.addr, token)


def _says_approved(approval: Approval) -> Approval:
    return transition(
        approval, Event.approve, at=approval.created_at + 1, by=APPROVER, reason="ok by finance"
    )


def _other_inputs(approval: Approval) -> Approval:
    inputs = {**approval.inputs, "usd": 499}
    digest = inputs_hash(approval.agent, approval.action, inputs)
    return replace(approval, inputs=inputs, inputs_hash=digest)


def _other_action(approval: Approval) -> Approval:
    inputs = dict(approval.inputs)
    return replace(approval, action="pay.out.bulk", inputs=inputs)


FORGERIES: list[tuple[str, bool, Callable[[Approval], Approval]]] = [
    ("document says approved by finance-ops, no decision", False, _says_approved),
    ("finance-ops approved $120, document rewritten to $499", True, _other_inputs),
    ("finance-ops approved, document rewritten to another action", True, _other_action),
]


def forge(
    client: hvac.Client, agent: str, approval_id: str, change: Callable[..., Approval]
) -> None:
    """A raw KV write of the approval document, as ``bao kv put`` would do it."""
    found = ApprovalStore(client).read(agent, approval_id)
    assert found is not None
    client.secrets.kv.v2.create_or_update_secret(
        path=approval_path(agent, approval_id),
        secret=change(found[0]).to_json(),
        mount_point=KV_MOUNT,
    )


@pytest.mark.parametrize(
    ("label", "approve_first", "change"), FORGERIES, ids=[f[0] for f in FORGERIES]
)
async def test_forged_approval_is_not_redeemed(
    openbao: DevServer,
    manifest_path: Path,
    tmp_path: Path,
    attacker: hvac.Client,
    monkeypatch: pytest.MonkeyPatch,
    label: str,
    approve_first: bool,
    change: Callable[[Approval], Approval],
) -> None:
    """Redeem refused (approval_denied), nothing minted, and the trail records the attempt."""
    del label
    monkeypatch.setenv("VAULT_ADDR", openbao.addr)
    monkeypatch.delenv("BROKER_OPERATOR_AUDIT", raising=False)
    async with running_sidecar(openbao, manifest_path, tmp_path) as h:
        approval_id = await ask_pending(h)
        if approve_first:
            assert await operator(openbao, monkeypatch, APPROVER, "approve", approval_id) == 0
        forge(attacker, h.sidecar.manifest.agent, approval_id, change)
        status, body = await redeem(h, approval_id)
        spent = h.sidecar.service.ledger.budget_used("usd", h.sidecar.service._clock())
    assert (status, body["reason"]) == (403, "approval_denied"), body
    assert "not honoured" in body["detail"]
    assert spent == 0
    assert records(h.audit_path, type="decision", outcome="allow") == []
    [attempt] = records(h.audit_path, type="decision", reason="approval_denied")
    assert attempt["approval_id"] == approval_id
    assert "not honoured" in attempt["output"]


async def test_forged_approve_step_is_audited_as_unverified(
    openbao: DevServer, manifest_path: Path, tmp_path: Path, attacker: hvac.Client
) -> None:
    """The sidecar's trail does not believe a forged 'approved by finance-ops' step."""
    async with running_sidecar(openbao, manifest_path, tmp_path) as h:
        approval_id = await ask_pending(h)
        forge(attacker, h.sidecar.manifest.agent, approval_id, _says_approved)
        await h.sidecar.service.approvals.tick()
    assert records(h.audit_path, type="approval", event="approved") == []
    [step] = records(h.audit_path, type="approval", event="unverified")
    assert (step["by"], step["human_override"]) == (APPROVER, False)
    assert "recorded no decision" in step["reason"]


async def test_forged_deny_step_is_audited_as_unverified(
    openbao: DevServer, manifest_path: Path, tmp_path: Path, attacker: hvac.Client
) -> None:
    """A forged 'denied by finance-ops' blocks the redeem (fail safe) but the trail does not
    attribute it to finance-ops."""

    def says_denied(approval: Approval) -> Approval:
        return transition(approval, Event.deny, at=approval.created_at + 1, by=APPROVER)

    async with running_sidecar(openbao, manifest_path, tmp_path) as h:
        approval_id = await ask_pending(h)
        forge(attacker, h.sidecar.manifest.agent, approval_id, says_denied)
        await h.sidecar.service.approvals.tick()
        status, body = await redeem(h, approval_id)
    assert (status, body["reason"]) == (403, "approval_denied")
    assert records(h.audit_path, type="approval", event="denied") == []
    [step] = records(h.audit_path, type="approval", event="unverified")
    assert step["by"] == APPROVER


async def test_shipped_operator_policy_cannot_write_an_approval(
    openbao: DevServer, manifest_path: Path, tmp_path: Path
) -> None:
    """A security operator's raw ``kv put`` of an approval is refused by Vault itself."""
    token = root_client(openbao).auth.token.create(
        policies=[SECURITY_OPERATOR_POLICY], meta={"operator": "sec@acme.example"}, ttl="10m"
    )["auth"]["client_token"]
    async with running_sidecar(openbao, manifest_path, tmp_path) as h:
        approval_id = await ask_pending(h)
        with pytest.raises(hvac.exceptions.Forbidden):
            forge(
                make_client(openbao.addr, token),
                h.sidecar.manifest.agent,
                approval_id,
                _says_approved,
            )
        status, _ = await redeem(h, approval_id)
    assert status == 202


async def test_genuine_approval_still_redeems(
    openbao: DevServer, manifest_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The approver's own decision record backs the approval: 200, once."""
    monkeypatch.setenv("VAULT_ADDR", openbao.addr)
    monkeypatch.delenv("BROKER_OPERATOR_AUDIT", raising=False)
    async with running_sidecar(openbao, manifest_path, tmp_path) as h:
        approval_id = await ask_pending(h)
        assert await operator(openbao, monkeypatch, APPROVER, "approve", approval_id) == 0
        status, body = await redeem(h, approval_id, {"inputs": INPUTS})
    assert status == 200, body
    [approved] = records(h.audit_path, type="approval", event="approved")
    assert approved["by"] == APPROVER
