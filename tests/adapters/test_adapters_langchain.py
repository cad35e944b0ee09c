"""The LangChain adapter, with the real ``langchain-core`` package."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.adapters.langchain import broker_tool
from broker.client import AsyncBrokerClient, Credential
from broker.dev.devstack import DevServer
from tests.adapter_fixtures import records, sidecar, verified

pytestmark = pytest.mark.integration

seen: list[Credential] = []


async def get_ticket(ticket_id: str, credential: Credential) -> str:
    """Read a support ticket."""
    seen.append(credential)
    return f"ticket {ticket_id}"


async def test_structured_tool_hides_the_credential_and_returns_refusals_to_the_model(
    openbao: DevServer, tmp_path: Path
) -> None:
    """The tool's args are ticket_id only; an allowed call runs with a bound token; a refused
    call returns the reason code as the tool's answer and does not run."""
    seen.clear()
    async with sidecar(openbao, tmp_path) as h, AsyncBrokerClient(h.url) as client:
        tool = broker_tool(get_ticket, action="zendesk.get_ticket", client=client)
        ok = await tool.ainvoke({"ticket_id": "CS-19422"})
        refused = await tool.ainvoke({"ticket_id": "DROP TABLE"})
        decisions = records(h, type="decision")
    assert set(tool.args) == {"ticket_id"}
    assert ok == "ticket CS-19422"
    [cred] = seen
    assert verified(openbao, cred, {"ticket_id": "CS-19422"}).jti == decisions[0]["credential_id"]
    assert str(refused).startswith("refused: constraint_violation")
