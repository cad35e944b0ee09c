"""The upstream MCP server of ``broker bench mcp``: one ``echo`` tool over streamable HTTP on
127.0.0.1; prints ``PORT <n>`` once it listens. It checks nothing, so the benchmark's
difference between direct and gateway calls is the gateway (and the sidecar) alone."""

from __future__ import annotations

import asyncio

import uvicorn
from mcp.server import MCPServer

app = MCPServer("bench-upstream")


@app.tool()
def echo(n: int) -> int:
    """Return n."""
    return n


async def _serve() -> None:
    http = app.streamable_http_app(json_response=True, stateless_http=True)
    server = uvicorn.Server(uvicorn.Config(http, host="127.0.0.1", port=0, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            await task
        await asyncio.sleep(0.01)
    print(f"PORT {server.servers[0].sockets[0].getsockname()[1]}", flush=True)
    await task


if __name__ == "__main__":
    asyncio.run(_serve())
