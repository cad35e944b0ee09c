"""Human approval gates end to end: a real sidecar, real OpenBao, operators with their own
Vault tokens running ``broker approvals`` in-process, webhooks on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from broker.cli import main
from broker.core.controlstate import agent_path
from broker.dev.devstack import DevServer
from broker.vault.approvals import ApprovalStore
from broker.vault.control import control_written
from broker.vault.kv import kv_write
from tests.harness import (
    Harness,
    approver_token,
    root_client,
    running_sidecar,
    unique_agent,
    write_manifest,
)

pytestmark = pytest.mark.integration

APPROVER = "finance-ops@acme.example"
MANIFEST = """\
agent: {agent}
policy_version: approvals-test-1
system_owner: platform@acme.example
risk_owner: risk@acme.example
budgets:
  usd: {{limit: 1000, per: 1d, unit: usd}}
actions:
  pay.out:
    accountable: finance-ops@acme.example
    consulted: [billing-lead@acme.example]
    informed: [billing-alerts@acme.example]
    credential: {{kind: jwt, audience: payments, ttl: 60s}}
    inputs:
      ticket_id: {{type: string}}
      usd: {{type: number, min: 0, max: 500}}
    cost: {{usd: inputs.usd}}
    approval:
      when: {{usd: {{gt: 100}}}}
      approvers: [finance-ops@acme.example]
      reason: needs_human_approval_over_100
      message: Payout requires approval because amount exceeds $100 threshold.
"""
INPUTS = {"ticket_id": "CS-1", "usd": 120}


@pytest.fixture
def manifest_path(tmp_path: Path) -> Path:
    return write_manifest(tmp_path, MANIFEST.format(agent=unique_agent("apr")))


@pytest.fixture
def operator_trail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, openbao: DevServer) -> Path:
    path = tmp_path / "operator-audit.jsonl"
    monkeypatch.setenv("VAULT_ADDR", openbao.addr)
    monkeypatch.setenv("BROKER_OPERATOR_AUDIT", str(path))
    for name in ("BAO_ADDR", "BAO_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return path


def operator_token(openbao: DevServer, identity: str) -> str:
    """The approver's own identity token, or a security operator's for anyone else."""
    if identity == APPROVER:
        return approver_token(openbao, identity)
    created = root_client(openbao).auth.token.create(
        policies=["broker-security-operator"], meta={"operator": identity}, ttl="10m"
    )
    return str(created["auth"]["client_token"])


async def operator(
    openbao: DevServer, monkeypatch: pytest.MonkeyPatch, identity: str, *args: str
) -> int:
    """``broker approvals ...`` as ``identity``, run in a thread beside the sidecar's loop."""
    monkeypatch.setenv("VAULT_TOKEN", operator_token(openbao, identity))
    return await asyncio.to_thread(main, ["approvals", *args])


async def redeem(
    h: Harness, approval_id: str, body: dict[str, Any] | None = None, wait: float = 0
) -> tuple[int, dict[str, Any]]:
    status, doc, _ = await h.raw(
        "POST", f"/v1/approvals/{approval_id}/redeem?wait={wait}", json=body or {}
    )
    return status, doc


def records(path: Path, **match: Any) -> list[dict[str, Any]]:
    found = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in found if all(r.get(k) == v for k, v in match.items())]


async def ask_pending(h: Harness, inputs: dict[str, Any] | None = None) -> str:
    status, body, _ = await h.ask("pay.out", inputs or INPUTS, workflow="payout", request_id="r1")
    assert status == 202, body
    assert body["reason"] == "needs_human_approval_over_100"
    assert body["approvers"] == [APPROVER]
    return str(body["approval_id"])


async def test_approve_then_redeem_once(
    openbao: DevServer,
    manifest_path: Path,
    tmp_path: Path,
    operator_trail: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Approved by the listed approver: one credential, charged to the budget; then refused."""
    async with running_sidecar(openbao, manifest_path, tmp_path) as h:
        approval_id = await ask_pending(h)
        assert (await redeem(h, approval_id))[0] == 202
        assert await operator(openbao, monkeypatch, APPROVER, "approve", approval_id) == 0
        status, body = await redeem(h, approval_id)
        assert status == 200, body
        assert body["credential"]["kind"] == "jwt"
        assert h.sidecar.service.ledger.budget_used("usd", time.time()) == 120
        again, refused = await redeem(h, approval_id)
        agent = h.sidecar.manifest.agent
    assert (again, refused["reason"]) == (403, "approval_expired")
    assert "already redeemed" in refused["detail"]
    [approved] = records(h.audit_path, type="approval", event="approved")
    assert (approved["by"], approved["human_override"]) == (APPROVER, True)
    [minted] = records(h.audit_path, type="decision", outcome="allow")
    assert minted["approval_id"] == approval_id
    assert minted["human_override"] is True
    assert minted["credential_id"] == body["credential"]["credential_id"]
    [spent] = records(h.audit_path, type="approval", event="redeemed")
    assert spent["credential_id"] == minted["credential_id"]
    [op] = records(operator_trail, event="approved")
    assert (op["operator"], op["agent_id"], op["approval_id"]) == (APPROVER, agent, approval_id)


async def test_deny(
    openbao: DevServer,
    manifest_path: Path,
    tmp_path: Path,
    operator_trail: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A denial with its reason reaches the agent as 403 approval_denied, and the trail."""
    async with running_sidecar(openbao, manifest_path, tmp_path) as h:
        approval_id = await ask_pending(h)
        code = await operator(
            openbao, monkeypatch, APPROVER, "deny", approval_id, "--reason", "duplicate refund"
        )
        assert code == 0
        status, body = await redeem(h, approval_id)
    assert (status, body["outcome"], body["reason"]) == (403, "deny", "approval_denied")
    [denied] = records(h.audit_path, type="approval", event="denied")
    assert (denied["reason"], denied["human_override"]) == ("duplicate refund", False)
    [refusal] = records(h.audit_path, type="decision", reason="approval_denied")
    assert refusal["tool_calls"][-1] == {
        "tool": "pay.out",
        "status": "blocked",
        "reason": "approval_denied",
    }
    assert records(operator_trail, event="denied")[0]["reason"] == "duplicate refund"


async def test_expire_by_the_clock(
    openbao: DevServer,
    manifest_path: Path,
    tmp_path: Path,
    operator_trail: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past its 15 minutes (an injected clock), redeem is 403 approval_expired and approve fails."""
    async with running_sidecar(openbao, manifest_path, tmp_path) as h:
        approval_id = await ask_pending(h)
        h.sidecar.service.approvals.clock = lambda: time.time() + 901
        status, body = await redeem(h, approval_id)
        stored = ApprovalStore(root_client(openbao)).find(approval_id)[0]
        code = await operator(openbao, monkeypatch, APPROVER, "approve", approval_id)
    assert (status, body["reason"]) == (403, "approval_expired")
    assert stored.state.value == "expired"
    assert len(records(h.audit_path, type="approval", event="expired")) == 1
    assert code == 1  # refused by the approval lifecycle (exit-code table)
    assert records(operator_trail, event="refused")[0]["attempted"] == "approve"


async def test_wrong_approver_is_refused_and_audited(
    openbao: DevServer,
    manifest_path: Path,
    tmp_path: Path,
    operator_trail: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A security operator not listed as approver cannot approve; the attempt is recorded."""
    intruder = "billing-alerts@acme.example"
    async with running_sidecar(openbao, manifest_path, tmp_path) as h:
        approval_id = await ask_pending(h)
        code = await operator(openbao, monkeypatch, intruder, "approve", approval_id)
        status, _ = await redeem(h, approval_id)
    assert code == 1  # not an approver: refused
    assert "not_an_approver" in capsys.readouterr().err
    assert status == 202
    [attempt] = records(operator_trail, event="refused")
    assert (attempt["operator"], attempt["approval_id"]) == (intruder, approval_id)
    assert records(h.audit_path, type="approval") == []


async def test_redeem_with_other_inputs_is_refused(
    openbao: DevServer,
    manifest_path: Path,
    tmp_path: Path,
    operator_trail: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redeeming for $121 what was approved for $120 is refused; the approval stays usable."""
    async with running_sidecar(openbao, manifest_path, tmp_path) as h:
        approval_id = await ask_pending(h)
        await operator(openbao, monkeypatch, APPROVER, "approve", approval_id)
        other, body = await redeem(h, approval_id, {"inputs": {**INPUTS, "usd": 121}})
        same, _ = await redeem(h, approval_id, {"inputs": INPUTS})
    assert (other, body["reason"]) == (403, "invalid_inputs")
    assert same == 200


async def test_wait_returns_when_approved(
    openbao: DevServer,
    manifest_path: Path,
    tmp_path: Path,
    operator_trail: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """?wait= holds the redeem open until the approval arrives, then answers 200."""
    async with running_sidecar(openbao, manifest_path, tmp_path) as h:
        approval_id = await ask_pending(h)
        waiting = asyncio.create_task(redeem(h, approval_id, wait=10))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        await operator(openbao, monkeypatch, APPROVER, "approve", approval_id)
        status, body = await asyncio.wait_for(waiting, 5)
    assert status == 200, body


async def test_sidecar_restart_between_request_and_approval(
    openbao: DevServer,
    manifest_path: Path,
    tmp_path: Path,
    operator_trail: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The approval lives in Vault: a new sidecar process sees the approval and redeems it."""
    async with running_sidecar(openbao, manifest_path, tmp_path) as h:
        approval_id = await ask_pending(h)
    await operator(openbao, monkeypatch, APPROVER, "approve", approval_id)
    async with running_sidecar(openbao, manifest_path, tmp_path) as h:
        status, body = await redeem(h, approval_id)
    assert status == 200, body
    assert len(records(h.audit_path, type="approval", event="approved")) == 1


async def test_show_and_list(
    openbao: DevServer,
    manifest_path: Path,
    tmp_path: Path,
    operator_trail: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """show names who asked, what, why, the RACI and the policy version; list filters by agent."""
    async with running_sidecar(openbao, manifest_path, tmp_path) as h:
        approval_id = await ask_pending(h)
        agent = h.sidecar.manifest.agent
    capsys.readouterr()
    await operator(openbao, monkeypatch, APPROVER, "show", approval_id, "--json")
    shown = json.loads(capsys.readouterr().out)
    assert (shown["agent"], shown["action"], shown["inputs"]) == (agent, "pay.out", INPUTS)
    assert shown["reason"] == "needs_human_approval_over_100"
    assert shown["raci"]["approvers"] == [APPROVER]
    assert shown["raci"]["informed"] == ["billing-alerts@acme.example"]
    assert shown["policy_version"] == "approvals-test-1"
    await operator(openbao, monkeypatch, APPROVER, "list", "--agent", agent, "--json")
    assert [r["id"] for r in json.loads(capsys.readouterr().out)] == [approval_id]


class Receiver:
    def __init__(self) -> None:
        self.got: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.got.append(await request.json())
        return web.Response(status=204)


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    r = Receiver()
    app = web.Application()
    app.router.add_post("/hook", r.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield r, f"http://127.0.0.1:{port}/hook"
    await runner.cleanup()


async def test_webhooks_tell_the_raci_about_each_step(
    openbao: DevServer,
    manifest_path: Path,
    tmp_path: Path,
    operator_trail: Path,
    monkeypatch: pytest.MonkeyPatch,
    receiver: tuple[Receiver, str],
) -> None:
    """approval.requested goes to the approvers and A/C/I; approval.approved follows."""
    got, url = receiver
    async with running_sidecar(openbao, manifest_path, tmp_path, webhooks=(url,)) as h:
        approval_id = await ask_pending(h)
        await operator(openbao, monkeypatch, APPROVER, "approve", approval_id)
        await redeem(h, approval_id)
        assert h.sidecar.notifier is not None
        assert await h.sidecar.notifier.drain(5)
    events = [(g["event"], g["data"]["approval_id"]) for g in got.got]
    assert events == [("approval.requested", approval_id), ("approval.approved", approval_id)]
    assert got.got[1]["recipients"] == [
        APPROVER,
        "billing-lead@acme.example",
        "billing-alerts@acme.example",
    ]
    delivered = records(h.audit_path, type="notification", status="delivered")
    assert len(delivered) == 2


async def test_webhook_receiver_down_leaves_decisions_alone(
    openbao: DevServer, manifest_path: Path, tmp_path: Path
) -> None:
    """A closed port: the 202 comes at once, retries happen, the final failure is audited."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
    config = {"webhooks": (url,), "webhook_attempts": 3, "webhook_backoff": 0.05}
    async with running_sidecar(openbao, manifest_path, tmp_path, **config) as h:
        started = time.perf_counter()
        await ask_pending(h)
        took = time.perf_counter() - started
        status, _, _ = await h.ask("pay.out", {"ticket_id": "CS-2", "usd": 5})
        assert h.sidecar.notifier is not None
        assert await h.sidecar.notifier.drain(5)
        stats = dict(h.sidecar.notifier.stats)
    assert took < 1.0
    assert status == 200
    assert stats["retries"] == 2
    [failed] = records(h.audit_path, type="notification")
    assert (failed["status"], failed["attempts"]) == ("failed", 3)
    assert failed["event"] == "approval.requested"


async def test_budget_crossing_and_kill_switch_are_announced(
    openbao: DevServer,
    manifest_path: Path,
    tmp_path: Path,
    receiver: tuple[Receiver, str],
) -> None:
    """80% of a budget and the kill switch each reach the webhook once, with their humans."""
    got, url = receiver
    async with running_sidecar(openbao, manifest_path, tmp_path, webhooks=(url,)) as h:
        for n in range(8):
            status, body, _ = await h.ask("pay.out", {"ticket_id": f"CS-{n}", "usd": 100})
            assert status == 200, body
        await h.sidecar.service.approvals.tick()
        agent = h.sidecar.manifest.agent
        client = root_client(openbao)
        kv_write(client, agent_path(agent), {"killed": True, "reason": "drill"})
        control_written(client)  # what every broker command does after a control write
        for _ in range(50):
            if any(g["event"] == "agent.killed" for g in got.got):
                break
            await asyncio.sleep(0.05)
        assert h.sidecar.notifier is not None
        assert await h.sidecar.notifier.drain(5)
    by_event = {g["event"]: g for g in got.got}
    assert set(by_event) == {"budget.warning", "agent.killed"}
    assert by_event["budget.warning"]["data"]["used"] == 800
    assert by_event["budget.warning"]["recipients"] == [
        "risk@acme.example",
        APPROVER,
        "billing-lead@acme.example",
        "billing-alerts@acme.example",
    ]
    assert "platform@acme.example" in by_event["agent.killed"]["recipients"]
