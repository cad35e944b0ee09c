"""The gateway's test rig: a real sidecar (live OpenBao), the upstream MCP servers of
``tests/mcp_upstream.py`` as subprocesses, and the gateway serving streamable HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mcp_types as types

from broker.dev.devstack import DevServer
from broker.mcpgw.config import GatewayConfig
from broker.mcpgw.serve import serving_http
from broker.vault.pki import fetch_ca_pem
from tests.harness import REPO, Harness, running_sidecar, unique_agent, write_manifest

UPSTREAM = REPO / "tests" / "mcp_upstream.py"

MANIFEST = """\
agent: {agent}
policy_version: mcp-policy-1
system_owner: platform-team@acme.example
risk_owner: risk@acme.example
budgets:
  refunds-usd: {{limit: 100, per: 1d, unit: usd}}
actions:
  zendesk.get_ticket:
    accountable: support-lead@acme.example
    credential: {{kind: jwt, audience: zendesk-gateway, ttl: 60s}}
    inputs:
      ticket_id: {{type: string, pattern: '^CS-[0-9]+$', max_length: 32}}
  stripe.refund:
    accountable: finance-ops@acme.example
    credential: {{kind: jwt, audience: stripe-gateway, ttl: 60s}}
    inputs:
      ticket_id: {{type: string, pattern: '^CS-[0-9]+$', max_length: 32}}
      amount_usd: {{type: number, min: 0, max: 500}}
    cost: {{refunds-usd: inputs.amount_usd}}
    approval:
      when: {{amount_usd: {{gt: 60}}}}
      approvers: [finance-ops@acme.example]
      reason: needs_human_approval_over_60
"""


def gateway_config(tickets_url: str, ca_file: Path) -> GatewayConfig:
    stdio = {
        "transport": "stdio",
        "command": [sys.executable, str(UPSTREAM), "stdio"],
        "environment": {"MCP_TEST_CA_FILE": str(ca_file)},
    }
    return GatewayConfig.model_validate(
        {
            "workflow": "refund_request",
            "upstreams": {
                "tickets": {"transport": "http", "url": tickets_url},
                "payments": {**stdio, "env": "STRIPE_TOKEN"},
                "payments-arg": {**stdio, "argument": "credential"},
            },
            "tools": {
                "get_ticket": {"upstream": "tickets", "action": "zendesk.get_ticket"},
                "leak_token": {"upstream": "tickets", "action": "zendesk.get_ticket"},
                "die": {"upstream": "tickets", "action": "zendesk.get_ticket"},
                "delete_ticket": {"upstream": "tickets", "action": "zendesk.delete_ticket"},
                "ghost": {"upstream": "tickets", "action": "zendesk.get_ticket"},
                "refund": {"upstream": "payments", "action": "stripe.refund"},
                "crash": {"upstream": "payments", "action": "stripe.refund"},
                "crash_by_argument": {
                    "upstream": "payments-arg",
                    "action": "stripe.refund",
                    "tool": "crash",
                },
                "refund_by_argument": {
                    "upstream": "payments-arg",
                    "action": "stripe.refund",
                    "tool": "refund_arg",
                },
            },
        }
    )


@asynccontextmanager
async def tickets_server(ca_file: Path) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    """The streamable HTTP upstream; yields its MCP URL and its process."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(UPSTREAM),
        "http",
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "MCP_TEST_CA_FILE": str(ca_file)},
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.startswith(b"PORT "), line
        yield f"http://127.0.0.1:{int(line.split()[1])}/mcp", proc
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()


@dataclass(frozen=True)
class Tickets:
    """A ticket server shared by a module's tests; its tools read the CA file per call."""

    url: str
    ca_file: Path


@contextmanager
def shared_tickets_server(ca_file: Path) -> Iterator[Tickets]:
    """The streamable HTTP upstream as a plain subprocess (no event loop needed), so one can
    serve every test of a module; the CA file may be written after it starts."""
    proc = subprocess.Popen(
        [sys.executable, str(UPSTREAM), "http"],
        stdout=subprocess.PIPE,
        env={**os.environ, "MCP_TEST_CA_FILE": str(ca_file)},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith(b"PORT "), line
        yield Tickets(f"http://127.0.0.1:{int(line.split()[1])}/mcp", ca_file)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


@dataclass
class Rig:
    sidecar: Harness
    gateway_url: str
    config: GatewayConfig

    def records(self, **match: Any) -> list[dict[str, Any]]:
        found = [json.loads(x) for x in self.sidecar.audit_path.read_text().splitlines()]
        return [r for r in found if all(r.get(k) == v for k, v in match.items())]


@asynccontextmanager
async def rig(
    openbao: DevServer,
    tmp_path: Path,
    monkeypatch: Any = None,
    manifest: str = MANIFEST,
    *,
    tickets: Tickets | None = None,
) -> AsyncIterator[Rig]:
    """A sidecar, the upstreams and the gateway; ``tickets``: a shared ticket server, else
    one of its own (for a test that kills it)."""
    path = write_manifest(tmp_path, manifest.format(agent=unique_agent("mcp")))
    async with running_sidecar(openbao, path, tmp_path) as h, AsyncExitStack() as stack:
        ca_file = tickets.ca_file if tickets else tmp_path / "broker-ca.pem"
        ca_file.write_text(fetch_ca_pem(openbao.addr))
        url = (
            tickets.url
            if tickets
            else (await stack.enter_async_context(tickets_server(ca_file)))[0]
        )
        config = gateway_config(url, ca_file)
        async with serving_http(config, h.url) as gateway_url:
            yield Rig(h, gateway_url, config)


def result_json(result: types.CallToolResult) -> Any:
    """What a tool answered: its structured content, else its one text block as JSON."""
    if result.structured_content is not None:
        return result.structured_content
    [block] = result.content
    assert isinstance(block, types.TextContent)
    return json.loads(block.text)
