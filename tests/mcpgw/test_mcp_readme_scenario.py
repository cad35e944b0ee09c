"""The README's end-to-end example: the refund scenario of the design brief driven through
``broker mcp`` over stdio, with the shipped manifest, the shipped gateway config and the
example tool servers (``examples/mcp``), on the live OpenBao. Only the ticket server's port
and the Python interpreter are adapted to the test machine."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
import yaml
from mcp import Client, StdioServerParameters

from broker.dev.devstack import DevServer
from tests.harness import REPO, SCOPES, running_sidecar, unique_agent
from tests.mcp_fixtures import result_json
from tests.mcpgw.test_mcp_gateway import _approve

pytestmark = pytest.mark.integration
EXAMPLE = REPO / "examples" / "mcp"


async def start_tickets(vault_addr: str) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLE / "tools.py"), "tickets", "--port", "0",
        stdout=asyncio.subprocess.PIPE, env={**os.environ, "VAULT_ADDR": vault_addr},
    )  # fmt: skip
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
    assert line.startswith("tickets: serving "), line
    return proc, line.split()[-1]


def gateway_config(tmp_path: Path, tickets_url: str) -> Path:
    doc = yaml.safe_load((EXAMPLE / "gateway.yaml").read_text())
    doc["upstreams"]["zendesk"]["url"] = tickets_url
    doc["upstreams"]["stripe"]["command"][0] = sys.executable
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


async def test_refund_scenario_through_mcp(
    openbao: DevServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read the ticket, refund $40 at once, ask $120 (approval pending), approve, refund:
    each tool checks its credential (action token; one-use Vault token with the
    stripe-refund policy); the last record lists every call of the request."""
    agent = unique_agent("support-refund-agent")
    manifest = tmp_path / "support-refund-agent.yaml"
    text = (SCOPES / "support-refund-agent.yaml").read_text()
    manifest.write_text(text.replace("agent: support-refund-agent\n", f"agent: {agent}\n"))
    meta = {"broker/request_id": "req_8f1c2"}
    async with running_sidecar(openbao, manifest, tmp_path) as h:
        tickets, url = await start_tickets(openbao.addr)
        try:
            gateway = StdioServerParameters(
                command=sys.executable,
                args=["-m", "broker.cli", "mcp", "--config", str(gateway_config(tmp_path, url))],
                env={"BROKER_URL": h.url, "VAULT_ADDR": openbao.addr},
                cwd=str(REPO),
            )
            async with Client(gateway) as mcp:
                names = sorted(t.name for t in (await mcp.list_tools()).tools)
                ticket = await mcp.call_tool("get_ticket", {"ticket_id": "CS-19422"}, meta=meta)
                small = await mcp.call_tool(
                    "refund", {"ticket_id": "CS-19422", "amount_usd": 40}, meta=meta
                )
                big = {"ticket_id": "CS-19422", "amount_usd": 120}
                pending = result_json(await mcp.call_tool("refund", big, meta=meta))
                approved = await asyncio.to_thread(
                    _approve, openbao, monkeypatch, pending["approval_id"]
                )
                done = await mcp.call_tool("refund", big, meta=meta)
        finally:
            tickets.terminate()
            await tickets.wait()
        records = [json.loads(x) for x in h.audit_path.read_text().splitlines()]
    assert names == ["get_ticket", "refund"]
    assert result_json(ticket)["asks_usd"] == 120
    assert result_json(small)["status"] == "succeeded"
    assert pending["error"] == "approval_pending"
    assert pending["reason"] == "needs_human_approval_over_100"
    assert approved == 0
    assert result_json(done)["refunded_usd"] == 120
    decisions = [r for r in records if r["type"] == "decision"]
    assert [d["outcome"] for d in decisions] == ["allow", "allow", "pending_approval", "allow"]
    assert decisions[-1]["human_override"] is True
    assert [c["tool"] for c in decisions[-1]["tool_calls"]] == [
        "zendesk.get_ticket", "stripe.refund", "stripe.refund", "stripe.refund"
    ]  # fmt: skip
    assert all(r["status"] == "ok" for r in records if r["type"] == "outcome")
