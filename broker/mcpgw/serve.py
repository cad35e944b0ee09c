"""Serving the gateway to the agent's MCP client: over stdio (the agent's host starts
``broker mcp`` as a subprocess) or over streamable HTTP on a loopback address."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from mcp.server.stdio import stdio_server

from broker.client import AsyncBrokerClient
from broker.mcpgw.config import GatewayConfig
from broker.mcpgw.gateway import Gateway

LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


async def serve_stdio(config: GatewayConfig, broker_target: str) -> None:
    async with AsyncBrokerClient(broker_target) as broker:
        gateway = Gateway(config, broker)
        server = gateway.server()
        try:
            async with stdio_server() as (read, write):
                await server.run(read, write, server.create_initialization_options())
        finally:
            await gateway.upstreams.aclose()


@asynccontextmanager
async def serving_http(
    config: GatewayConfig, broker_target: str, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[str]:
    """Serve on ``host:port`` (0: any free port) until the block ends; yields the MCP URL."""
    if host not in LOOPBACK:
        raise ValueError(f"the gateway listens on loopback only, not {host!r}")
    async with AsyncBrokerClient(broker_target) as broker:
        gateway = Gateway(config, broker)
        app = gateway.server().streamable_http_app(json_response=True, host=host)
        server = uvicorn.Server(
            uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
        )
        task = asyncio.create_task(server.serve())
        try:
            while not server.started:
                if task.done():
                    await task  # raises what stopped it (a port in use...)
                    raise RuntimeError("the gateway's HTTP server stopped while starting")
                await asyncio.sleep(0.01)
            yield f"http://{host}:{_bound_port(server)}/mcp"
        finally:
            server.should_exit = True
            await task
            await gateway.upstreams.aclose()


def _bound_port(server: Any) -> int:
    return int(server.servers[0].sockets[0].getsockname()[1])


async def serve_http_forever(
    config: GatewayConfig, broker_target: str, host: str, port: int
) -> None:
    async with serving_http(config, broker_target, host, port) as url:
        print(f"broker mcp: serving {url}", flush=True)
        await asyncio.Event().wait()
