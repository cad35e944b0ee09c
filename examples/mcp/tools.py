"""The refund scenario's two tools as MCP servers, for the README's end-to-end example.

``python examples/mcp/tools.py tickets --port 8931`` serves the ticket system over
streamable HTTP on 127.0.0.1; its tool checks the action token in the Authorization header
with ``broker.verify`` (trusting only the broker CA that Vault publishes at VAULT_ADDR),
bound to exactly the call's arguments. ``python examples/mcp/tools.py payments`` is the
payment system over stdio, started by the gateway for each call with a one-use Vault token
in STRIPE_VAULT_TOKEN; it spends that use reading the payment provider's key from Vault,
which only the ``stripe-refund`` policy allows, and refunds only if the read succeeds. Neither tool ever sees a long-lived key."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import urllib.error
import urllib.request
from typing import Any

from mcp.server import MCPServer
from mcp.server.mcpserver import Context

from broker.core.errors import VerificationError
from broker.vault.pki import fetch_ca_pem
from broker.verify import Verifier

tickets = MCPServer("tickets")
payments = MCPServer("payments")


@tickets.tool()
def get_ticket(ticket_id: str, ctx: Context) -> dict[str, Any]:
    """Read a support ticket: who asks, and for how much."""
    token = (ctx.headers or {}).get("authorization", "").removeprefix("Bearer ")
    verifier = Verifier([fetch_ca_pem(os.environ["VAULT_ADDR"])])
    try:
        claims = verifier.verify(
            token, audience="zendesk-gateway", action="zendesk.get_ticket",
            inputs={"ticket_id": ticket_id},
        )  # fmt: skip
    except VerificationError as exc:
        raise ValueError(f"credential refused: {exc.code}") from exc
    return {"ticket_id": ticket_id, "customer": "cus_8a1", "asks_usd": 120, "jti": claims.jti}


def _stripe_key(token: str) -> dict[str, Any]:
    """The payment provider's key, read from Vault with the one-use token (``make run``'s
    demo policy ``stripe-refund`` allows exactly this read, and nothing else)."""
    url = os.environ["VAULT_ADDR"].rstrip("/") + "/v1/secret/data/demo/stripe-refund"
    req = urllib.request.Request(url, headers={"X-Vault-Token": token})  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 - the operator's Vault
            return dict(json.load(resp)["data"]["data"])
    except urllib.error.HTTPError as exc:
        raise ValueError(f"credential refused by Vault: HTTP {exc.code}") from exc


@payments.tool()
def refund(ticket_id: str, amount_usd: int | float, currency: str = "usd") -> dict[str, Any]:
    """Refund a customer for a ticket."""
    _stripe_key(os.environ.get("STRIPE_VAULT_TOKEN", ""))  # spends the token's one use
    return {"refunded_usd": amount_usd, "ticket_id": ticket_id, "status": "succeeded"}


async def _serve_tickets(port: int) -> None:
    import uvicorn

    app = tickets.streamable_http_app(json_response=True, stateless_http=True)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            await task
        await asyncio.sleep(0.01)
    print(
        f"tickets: serving http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/mcp",
        flush=True,
    )
    await task


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("server", choices=["tickets", "payments"])
    parser.add_argument("--port", type=int, default=8931)
    args = parser.parse_args()
    if args.server == "tickets":
        asyncio.run(_serve_tickets(args.port))
    else:
        payments.run()
