"""The OpenAI Agents SDK adapter, with the real ``openai-agents`` package: the tool the SDK
runs is the SDK's own FunctionTool, invoked the way the SDK's runner invokes it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from agents import FunctionTool
from agents.tool_context import ToolContext

from broker.adapters.openai_agents import function_tool
from broker.client import AsyncBrokerClient, Credential
from broker.dev.devstack import DevServer
from tests.adapter_fixtures import records, sidecar, verified

pytestmark = pytest.mark.integration

seen: list[Credential] = []


async def get_ticket(ticket_id: str, credential: Credential) -> str:
    """Read a support ticket.

    Args:
        ticket_id: the ticket, like CS-19422
    """
    seen.append(credential)
    return f"ticket {ticket_id}: refund please"


async def invoke(tool: FunctionTool, args: dict[str, Any]) -> Any:
    raw = json.dumps(args)
    ctx = ToolContext(context=None, tool_name=tool.name, tool_call_id="call_1", tool_arguments=raw)
    return await tool.on_invoke_tool(ctx, raw)


async def test_function_tool_schema_hides_the_credential_and_calls_run_guarded(
    openbao: DevServer, tmp_path: Path
) -> None:
    """The model's schema has only ticket_id; an allowed call runs with a bound token; a
    refused one answers the model with the reason code instead of running."""
    seen.clear()
    async with sidecar(openbao, tmp_path) as h, AsyncBrokerClient(h.url) as client:
        tool = function_tool(get_ticket, action="zendesk.get_ticket", client=client)
        ok = await invoke(tool, {"ticket_id": "CS-19422"})
        refused = await invoke(tool, {"ticket_id": "DROP TABLE"})
        decisions = records(h, type="decision")
    assert set(tool.params_json_schema["properties"]) == {"ticket_id"}
    assert tool.name == "get_ticket"
    assert ok == "ticket CS-19422: refund please"
    [cred] = seen
    assert verified(openbao, cred, {"ticket_id": "CS-19422"}).jti == decisions[0]["credential_id"]
    assert refused.startswith("refused: constraint_violation")
    assert [d["reason"] for d in decisions] == [None, "constraint_violation"]
