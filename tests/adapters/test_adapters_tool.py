"""``@broker.tool``: the plain-function adapter against a live sidecar."""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path
from typing import Any

import pytest

import broker
from broker.client import AsyncBrokerClient, BrokerClient, Credential, Denied, PendingApproval
from broker.clientenv import BrokerNotConfigured, broker_target
from broker.dev.devstack import DevServer
from tests.adapter_fixtures import records, sidecar, verified

pytestmark = pytest.mark.integration


@broker.tool("zendesk.get_ticket", workflow="refund_request")
def get_ticket(ticket_id: str, *, credential: Credential) -> dict[str, Any]:
    """Read a ticket."""
    return {"ticket_id": ticket_id, "credential": credential}


@broker.tool("zendesk.get_ticket")
def failing_ticket(ticket_id: str) -> None:
    raise RuntimeError("the ticket system is down")


async def test_decorated_function_gets_a_bound_credential_from_the_env_sidecar(
    openbao: DevServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With only BROKER_URL set, the call is decided, the function receives a token bound to
    exactly its arguments, and the outcome ok is reported; the model-facing signature has
    no credential parameter."""
    async with sidecar(openbao, tmp_path) as h:
        monkeypatch.setenv("BROKER_URL", h.url)
        out = await asyncio.to_thread(get_ticket, "CS-19422")
        [decision] = records(h, type="decision")
        [outcome] = records(h, type="outcome")
    claims = verified(openbao, out["credential"], {"ticket_id": "CS-19422"})
    assert claims.jti == decision["credential_id"] == outcome["credential_id"]
    assert outcome["status"] == "ok"
    assert decision["workflow"] == "refund_request"
    assert list(inspect.signature(get_ticket).parameters) == ["ticket_id"]


async def test_a_raising_function_reports_error_and_reraises(
    openbao: DevServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The function's own exception propagates and the outcome is recorded as error."""
    async with sidecar(openbao, tmp_path) as h:
        monkeypatch.setenv("BROKER_URL", h.url)
        with pytest.raises(RuntimeError, match="down"):
            await asyncio.to_thread(failing_ticket, "CS-1")
        [outcome] = records(h, type="outcome")
    assert outcome["status"] == "error"


async def test_refusal_raises_and_the_function_does_not_run(
    openbao: DevServer, tmp_path: Path
) -> None:
    """A constraint violation raises Denied with the reason code; the body never runs."""
    ran: list[str] = []
    async with sidecar(openbao, tmp_path) as h:

        @broker.tool("zendesk.get_ticket", client=BrokerClient(h.url))
        def spy(ticket_id: str) -> None:
            ran.append(ticket_id)

        with pytest.raises(Denied) as err:
            await asyncio.to_thread(spy, "DROP TABLE")
    assert err.value.reason == "constraint_violation"
    assert ran == []


async def test_async_function_and_pending_approval(openbao: DevServer, tmp_path: Path) -> None:
    """A coroutine tool uses the async client; an approval-gated call raises PendingApproval
    with its id and the body does not run."""
    ran: list[float] = []
    async with sidecar(openbao, tmp_path) as h, AsyncBrokerClient(h.url) as client:

        @broker.tool("stripe.refund", client=client)
        async def refund(ticket_id: str, amount_usd: float) -> str:
            ran.append(amount_usd)
            return "refunded"

        assert await refund("CS-1", 20) == "refunded"
        with pytest.raises(PendingApproval) as err:
            await refund("CS-1", 80)
    assert err.value.approval_id.startswith("apr_")
    assert ran == [20]


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({}, "set BROKER_URL or BROKER_SOCKET"),
        ({"BROKER_URL": "http://127.0.0.1:1", "BROKER_SOCKET": "/run/b.sock"}, "different"),
    ],
)
def test_client_from_env_refuses_to_guess(env: dict[str, str], problem: str) -> None:
    """No sidecar named, or two different ones: an error that says so, never a default."""
    with pytest.raises(BrokerNotConfigured, match=problem):
        broker_target(env)


def test_client_from_env_reads_either_variable() -> None:
    """BROKER_URL or BROKER_SOCKET alone names the sidecar."""
    assert (
        broker_target({"BROKER_SOCKET": "/run/broker/sidecar.sock"}) == "/run/broker/sidecar.sock"
    )
    assert broker_target({"BROKER_URL": "unix:///run/b.sock"}) == "unix:///run/b.sock"
