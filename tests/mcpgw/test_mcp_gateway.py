"""The MCP gateway end to end: the SDK's own client, the gateway, a live sidecar on the real
OpenBao, and real upstream MCP servers (streamable HTTP and stdio) that verify the credential
they receive with ``broker.verify``."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import mcp_types as types
import pytest
from mcp import Client, StdioServerParameters
from mcp.shared.exceptions import MCPError

from broker.cli import main
from broker.dev.devstack import DevServer
from broker.mcpgw.config import GatewayConfig
from broker.mcpgw.serve import serving_http
from tests.harness import REPO, approver_token
from tests.mcp_fixtures import (
    MANIFEST,
    Rig,
    Tickets,
    gateway_config,
    result_json,
    rig,
    shared_tickets_server,
)

pytestmark = pytest.mark.integration

ARTICLE_FIELDS = {
    "timestamp", "agent_id", "workflow", "request_id", "inputs", "tool_calls", "output",
    "policy_version", "human_override",
}  # fmt: skip


@pytest.fixture(scope="module")
def tickets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tickets]:
    """One ticket server for the module (a test that kills its upstream starts its own)."""
    with shared_tickets_server(tmp_path_factory.mktemp("ca") / "broker-ca.pem") as server:
        yield server


def error_of(result: types.CallToolResult) -> dict[str, Any]:
    assert result.is_error, result
    body = result_json(result)
    assert isinstance(body, dict)
    return body


def assert_nothing_minted_unrecorded(r: Rig) -> None:
    """Every credential id an outcome names was first recorded by an allow decision."""
    minted = {d["credential_id"] for d in r.records(type="decision") if d["credential_id"]}
    reported = {o["credential_id"] for o in r.records(type="outcome")}
    assert reported <= minted


async def test_listing_shows_only_allowed_tools_with_the_manifest_constraints(
    openbao: DevServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tickets: Tickets
) -> None:
    """tools/list hides tools whose action the manifest lacks or the upstream lacks, and
    each listed schema is the manifest's inputs with their constraints, closed to others."""
    async with (
        rig(openbao, tmp_path, monkeypatch, tickets=tickets) as r,
        Client(r.gateway_url) as client,
    ):
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == {
        "get_ticket",
        "leak_token",
        "die",
        "refund",
        "crash",
        "refund_by_argument",
        "crash_by_argument",
    }
    assert tools["get_ticket"].input_schema == {
        "type": "object",
        "properties": {
            "ticket_id": {"type": "string", "pattern": "^(?:^CS-[0-9]+$)$", "maxLength": 32}
        },
        "required": ["ticket_id"],
        "additionalProperties": False,
    }
    refund = tools["refund_by_argument"]
    assert refund.input_schema["properties"]["amount_usd"] == {
        "type": "number",
        "minimum": 0,
        "maximum": 500,
    }
    assert "credential" not in refund.input_schema["properties"]
    assert "human approval" in (refund.description or "")


async def test_allowed_http_call_carries_a_token_bound_to_exactly_its_arguments(
    openbao: DevServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tickets: Tickets
) -> None:
    """The HTTP upstream receives, in its Authorization header, a token that verifies for
    its audience, action and exact arguments; the decision and the outcome are recorded."""
    meta = {"broker/request_id": "req_8f1c2"}
    async with (
        rig(openbao, tmp_path, monkeypatch, tickets=tickets) as r,
        Client(r.gateway_url) as client,
    ):
        result = await client.call_tool("get_ticket", {"ticket_id": "CS-19422"}, meta=meta)
        assert not result.is_error, result
        seen = result_json(result)["seen"]
        [decision] = r.records(type="decision")
        [outcome] = r.records(type="outcome")
    assert seen["verified"] is True
    assert seen["action"] == "zendesk.get_ticket"
    assert seen["jti"] == decision["credential_id"] == outcome["credential_id"]
    assert set(decision) >= ARTICLE_FIELDS
    assert (decision["workflow"], decision["request_id"]) == ("refund_request", "req_8f1c2")
    assert decision["tool_calls"] == [{"tool": "zendesk.get_ticket", "status": "ok"}]
    assert outcome["status"] == "ok"


@pytest.mark.parametrize("tool", ["refund", "refund_by_argument"])
async def test_allowed_stdio_call_gets_the_credential_by_env_or_argument(
    openbao: DevServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tickets: Tickets, tool: str
) -> None:
    """A stdio upstream gets the token in its environment or as an extra argument the agent
    never sees; it verifies for exactly the agent's arguments."""
    args = {"ticket_id": "CS-7", "amount_usd": 40}
    async with (
        rig(openbao, tmp_path, monkeypatch, tickets=tickets) as r,
        Client(r.gateway_url) as client,
    ):
        result = await client.call_tool(tool, args)
        assert not result.is_error, result
        body = result_json(result)
        [decision] = r.records(type="decision")
    assert body["seen"]["verified"] is True
    assert body["seen"]["jti"] == decision["credential_id"]
    assert decision["charges"] == {"refunds-usd": 40}


REFUSALS = [
    ("delete_ticket", {"ticket_id": "CS-1"}, "unknown_action"),
    ("get_ticket", {"ticket_id": "DROP TABLE"}, "constraint_violation"),
    ("get_ticket", {"ticket_id": 19422}, "invalid_inputs"),
    ("get_ticket", {"ticket_id": "CS-1", "admin": True}, "invalid_inputs"),
    ("get_ticket", {}, "invalid_inputs"),
    ("refund", {"ticket_id": "CS-1", "amount_usd": 501}, "constraint_violation"),
    ("refund", {"ticket_id": "CS-1", "amount_usd": "40"}, "invalid_inputs"),
]


@pytest.mark.parametrize(("tool", "args", "code"), REFUSALS)
async def test_refusals_are_tool_errors_with_the_reason_code(
    openbao: DevServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tickets: Tickets,
    tool: str,
    args: dict[str, Any],
    code: str,
) -> None:
    """An out-of-scope tool, a constraint violation or a wrong-typed argument is a tool error
    carrying the sidecar's reason code; it is recorded, and nothing is minted."""
    async with (
        rig(openbao, tmp_path, monkeypatch, tickets=tickets) as r,
        Client(r.gateway_url) as client,
    ):
        body = error_of(await client.call_tool(tool, args))
        [decision] = r.records(type="decision")
    assert body["error"] == code
    assert body["detail"]
    assert decision["reason"] == code
    assert decision["credential_id"] is None
    assert decision["tool_calls"][0]["status"] == "blocked" or decision["tool_calls"][0]["reason"]


async def test_exhausted_budget_is_a_tool_error(
    openbao: DevServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tickets: Tickets
) -> None:
    """Two $50 refunds spend the $100 budget; the third is refused with budget_exhausted,
    and the trail holds exactly one decision per call."""
    args = {"ticket_id": "CS-1", "amount_usd": 50}
    async with (
        rig(openbao, tmp_path, monkeypatch, tickets=tickets) as r,
        Client(r.gateway_url) as client,
    ):
        results = [await client.call_tool("refund", args) for _ in range(3)]
        decisions = r.records(type="decision")
        assert_nothing_minted_unrecorded(r)
    assert [x.is_error for x in results] == [False, False, True]
    assert error_of(results[2])["error"] == "budget_exhausted"
    assert [d["reason"] for d in decisions] == [None, None, "budget_exhausted"]


def _approve(openbao: DevServer, monkeypatch: pytest.MonkeyPatch, approval_id: str) -> int:
    token = approver_token(openbao, "finance-ops@acme.example")
    monkeypatch.setenv("VAULT_ADDR", openbao.addr)
    monkeypatch.setenv("VAULT_TOKEN", token)
    monkeypatch.delenv("BAO_TOKEN", raising=False)
    return main(["approvals", "approve", approval_id, "--reason", "within policy"])


async def test_approval_gated_call_is_pending_then_runs_once_approved(
    openbao: DevServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tickets: Tickets
) -> None:
    """A $80 refund is a tool error with the approval id; while pending the same call says
    so again; once the listed approver approves, the same call runs with a token bound to
    exactly the approved arguments."""
    args = {"ticket_id": "CS-1", "amount_usd": 80}
    async with (
        rig(openbao, tmp_path, monkeypatch, tickets=tickets) as r,
        Client(r.gateway_url) as client,
    ):
        first = error_of(await client.call_tool("refund", args))
        again = error_of(await client.call_tool("refund", args))
        assert await asyncio.to_thread(_approve, openbao, monkeypatch, first["approval_id"]) == 0
        done = await client.call_tool("refund", args)
        assert not done.is_error, done
        seen = result_json(done)["seen"]
        assert_nothing_minted_unrecorded(r)
    assert first["error"] == again["error"] == "approval_pending"
    assert first["reason"] == "needs_human_approval_over_60"
    assert again["approval_id"] == first["approval_id"].strip()
    assert first["approval_id"].startswith("apr_")
    assert seen["verified"] is True


async def test_approval_id_in_meta_redeems_only_for_the_approved_arguments(
    openbao: DevServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tickets: Tickets
) -> None:
    """From another session, _meta broker/approval_id redeems an approval; other arguments
    are refused (invalid_inputs) and leave it usable for the approved ones."""
    args = {"ticket_id": "CS-1", "amount_usd": 80}
    async with rig(openbao, tmp_path, monkeypatch, tickets=tickets) as r:
        async with Client(r.gateway_url) as client:
            approval_id = error_of(await client.call_tool("refund", args))["approval_id"]
        assert await asyncio.to_thread(_approve, openbao, monkeypatch, approval_id) == 0
        meta = {"broker/approval_id": approval_id}
        async with Client(r.gateway_url) as client:
            other = error_of(
                await client.call_tool("refund", {**args, "amount_usd": 90}, meta=meta)
            )
            done = await client.call_tool("refund", args, meta=meta)
    assert other["error"] == "invalid_inputs"
    assert not done.is_error, done
    assert result_json(done)["seen"]["verified"] is True


async def test_credential_never_reaches_the_model(
    openbao: DevServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tickets: Tickets
) -> None:
    """An upstream that echoes its token back has it replaced before the agent sees it."""
    async with (
        rig(openbao, tmp_path, monkeypatch, tickets=tickets) as r,
        Client(r.gateway_url) as client,
    ):
        result = await client.call_tool("leak_token", {"ticket_id": "CS-1"})
        assert r.records(type="decision")[0]["credential_id"]
    text = json.dumps(result.model_dump(mode="json"))
    assert "[credential]" in text
    assert "eyJ" not in text  # no JWT (header or payload) in anything returned


async def test_unknown_tool_is_a_protocol_error_with_a_stable_code(
    openbao: DevServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tickets: Tickets
) -> None:
    """A tool the gateway does not route is JSON-RPC invalid params, code unknown_tool, and
    the sidecar is not asked (nothing recorded, nothing minted)."""
    async with (
        rig(openbao, tmp_path, monkeypatch, tickets=tickets) as r,
        Client(r.gateway_url) as client,
    ):
        with pytest.raises(MCPError) as err:
            await client.call_tool("drop_database", {})
        assert r.records(type="decision") == []
    assert err.value.code == types.INVALID_PARAMS
    assert err.value.data == {"error": "unknown_tool"}


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": ', -32700),
        (b'{"jsonrpc": "2.0", "id": 1, "method": 7}', -32602),
        (b"[1, 2, 3]", -32602),
    ],
)
async def test_malformed_json_rpc_is_refused_with_a_stable_code(
    openbao: DevServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tickets: Tickets,
    body: bytes,
    code: int,
) -> None:
    """Bytes that are not JSON-RPC get a JSON-RPC error; the sidecar is never asked."""
    headers = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
    async with (
        rig(openbao, tmp_path, monkeypatch, tickets=tickets) as r,
        aiohttp.ClientSession() as http,
    ):
        async with http.post(r.gateway_url, data=body, headers=headers) as resp:
            status, doc = resp.status, await resp.json(content_type=None)
        assert r.records(type="decision") == []
    assert 400 <= status < 500
    assert doc["error"]["code"] == code


@pytest.mark.parametrize(("tool", "args"), [
    ("crash", {"ticket_id": "CS-1", "amount_usd": 5}),
    ("die", {"ticket_id": "CS-1"}),
])  # fmt: skip
async def test_upstream_dying_mid_call_is_a_tool_error_and_an_error_outcome(
    openbao: DevServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tickets: Tickets,
    tool: str,
    args: dict[str, Any],
) -> None:
    """A stdio upstream process or the HTTP upstream server dying during the call: a tool
    error upstream_failed; the minted credential was recorded and its outcome is error."""
    own = None if tool == "die" else tickets  # killing the shared server would end the module's
    async with (
        rig(openbao, tmp_path, monkeypatch, tickets=own) as r,
        Client(r.gateway_url) as client,
    ):
        body = error_of(await client.call_tool(tool, args))
        [decision] = r.records(type="decision")
        [outcome] = r.records(type="outcome")
    assert body["error"] == "upstream_failed"
    assert body["credential_id"] == decision["credential_id"] == outcome["credential_id"]
    assert outcome["status"] == "error"


async def test_gateway_over_stdio_as_an_agent_host_starts_it(
    openbao: DevServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tickets: Tickets
) -> None:
    """``broker mcp --config`` started by an MCP host over stdio lists and calls tools,
    finding the sidecar through BROKER_URL."""
    async with rig(openbao, tmp_path, monkeypatch, tickets=tickets) as r:
        config = tmp_path / "gateway.json"  # JSON is YAML: the loader reads either
        config.write_text(r.config.model_dump_json(exclude_none=True))
        params = StdioServerParameters(
            command=sys.executable,
            args=["-m", "broker.cli", "mcp", "--config", str(config)],
            env={"BROKER_URL": r.sidecar.url},
            cwd=str(REPO),
        )
        async with Client(params) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            result = await client.call_tool("get_ticket", {"ticket_id": "CS-2"})
    assert "get_ticket" in names
    assert "delete_ticket" not in names
    assert result_json(result)["seen"]["verified"] is True


async def test_each_outcome_frees_the_concurrency_slot(
    openbao: DevServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tickets: Tickets
) -> None:
    """With concurrency 1 and 60 s tokens, three calls in a row all run: the gateway reports
    each outcome, so no credential holds the one slot after its call."""
    one_slot = MANIFEST.replace("actions:", "concurrency: 1\nactions:", 1)
    async with rig(openbao, tmp_path, monkeypatch, one_slot, tickets=tickets) as r:
        async with Client(r.gateway_url) as client:
            results = [
                await client.call_tool("get_ticket", {"ticket_id": f"CS-{i}"}) for i in range(3)
            ]
        outcomes = r.records(type="outcome")
    assert [x.is_error for x in results] == [False, False, False]
    assert [o["status"] for o in outcomes] == ["ok", "ok", "ok"]


async def test_sidecar_unreachable_fails_closed(tmp_path: Path) -> None:
    """No sidecar: a call is a tool error broker_unavailable (nothing reaches the upstream)
    and a listing is a JSON-RPC error with the same code."""
    config: GatewayConfig = gateway_config("http://127.0.0.1:9/mcp", tmp_path / "ca.pem")
    async with (
        serving_http(config, str(tmp_path / "no-sidecar.sock")) as url,
        Client(url) as client,
    ):
        body = error_of(await client.call_tool("get_ticket", {"ticket_id": "CS-1"}))
        with pytest.raises(MCPError) as err:
            await client.list_tools()
    assert body["error"] == "broker_unavailable"
    assert err.value.data == {"error": "broker_unavailable"}


async def test_argument_mode_keeps_one_process_and_restarts_it_after_a_crash(
    openbao: DevServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tickets: Tickets
) -> None:
    """A stdio upstream that takes the credential as an argument serves every call from one
    long-lived process, each call with its own token; when it dies mid-call, that call is
    upstream_failed and the next call starts a new process."""
    args = {"ticket_id": "CS-1", "amount_usd": 5}
    async with rig(openbao, tmp_path, monkeypatch, tickets=tickets) as r:
        async with Client(r.gateway_url) as client:
            first = result_json(await client.call_tool("refund_by_argument", args))
            second = result_json(await client.call_tool("refund_by_argument", args))
            crashed = error_of(await client.call_tool("crash_by_argument", args))
            third = result_json(await client.call_tool("refund_by_argument", args))
        outcomes = [o["status"] for o in r.records(type="outcome")]
    assert first["pid"] == second["pid"] != third["pid"]
    assert first["seen"]["jti"] != second["seen"]["jti"]
    assert third["seen"]["verified"] is True
    assert crashed["error"] == "upstream_failed"
    assert outcomes == ["ok", "ok", "error", "ok"]
