"""Real MCP servers for the gateway tests, run as subprocesses: ``http`` (streamable HTTP on
127.0.0.1, prints ``PORT <n>`` once listening) plays a ticket system whose credential comes
in the Authorization header; ``stdio`` plays a payment system whose credential comes in the
``STRIPE_TOKEN`` environment variable (or the ``credential`` argument). Each tool checks its
credential with ``broker.verify`` against the broker CA in ``MCP_TEST_CA_FILE``, bound to
exactly the arguments it received, and answers with what it saw."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from mcp.server import MCPServer
from mcp.server.mcpserver import Context

from broker.core.errors import VerificationError
from broker.verify import Verifier


def _verifier() -> Verifier:
    return Verifier([Path(os.environ["MCP_TEST_CA_FILE"]).read_text()])


def _check(token: str | None, audience: str, action: str, inputs: dict[str, Any]) -> dict[str, Any]:
    if not token:
        raise ValueError("no credential reached the tool")
    try:
        claims = _verifier().verify(token, audience=audience, action=action, inputs=inputs)
    except VerificationError as exc:
        raise ValueError(f"credential refused: {exc.code}") from exc
    return {"verified": True, "jti": claims.jti, "action": claims.action, "agent": claims.agent}


def _bearer(ctx: Context) -> str | None:
    value = (ctx.headers or {}).get("authorization", "")
    return value.removeprefix("Bearer ") if value.startswith("Bearer ") else None


tickets = MCPServer("tickets")


@tickets.tool()
def get_ticket(ticket_id: str, ctx: Context) -> dict[str, Any]:
    """Read a support ticket."""
    seen = _check(_bearer(ctx), "zendesk-gateway", "zendesk.get_ticket", {"ticket_id": ticket_id})
    return {"ticket_id": ticket_id, "subject": "refund please", "seen": seen}


@tickets.tool()
def leak_token(ticket_id: str, ctx: Context) -> dict[str, Any]:
    """A careless tool that echoes its credential back."""
    return {"ticket_id": ticket_id, "token": _bearer(ctx), "note": f"I got {_bearer(ctx)}"}


@tickets.tool()
def delete_ticket(ticket_id: str) -> str:
    """Delete a ticket (no manifest allows it)."""
    return "deleted"


@tickets.tool()
def die(ticket_id: str) -> str:
    """Kill this server in the middle of the call."""
    os._exit(3)


payments = MCPServer("payments")


@payments.tool()
def refund(ticket_id: str, amount_usd: int | float) -> dict[str, Any]:
    """Refund a customer."""
    inputs = {"ticket_id": ticket_id, "amount_usd": amount_usd}
    seen = _check(os.environ.get("STRIPE_TOKEN"), "stripe-gateway", "stripe.refund", inputs)
    return {"refunded": amount_usd, "seen": seen}


@payments.tool()
def refund_arg(ticket_id: str, amount_usd: int | float, credential: str = "") -> dict[str, Any]:
    """Refund a customer; the credential comes as an argument."""
    inputs = {"ticket_id": ticket_id, "amount_usd": amount_usd}
    seen = _check(credential, "stripe-gateway", "stripe.refund", inputs)
    return {"refunded": amount_usd, "seen": seen, "pid": os.getpid()}


@payments.tool()
def crash(ticket_id: str, amount_usd: int | float, credential: str = "") -> str:
    """Die in the middle of the call."""
    os._exit(3)


async def _serve_http() -> None:
    import uvicorn

    app = tickets.streamable_http_app(json_response=True, stateless_http=True)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    print(f"PORT {server.servers[0].sockets[0].getsockname()[1]}", flush=True)
    await task


if __name__ == "__main__":
    if sys.argv[1] == "http":
        asyncio.run(_serve_http())
    else:
        payments.run()
