"""Where a sidecar listens, and how it keeps slow or idle clients from holding it.

- Header and idle timeout: aiohttp closes a connection that has not completed a request's
  headers within ``keepalive_timeout`` of connecting, or of its previous answer (its
  keep-alive timer starts at ``connection_made`` and spares only a request in progress).
  ``IDLE_TIMEOUT`` sets it; a body that does not arrive is bounded in ``broker.sidecar.server``.
- Connection cap: past ``MAX_CONNECTIONS``, a new connection evicts the oldest one that never
  sent a whole request (else the oldest idle keep-alive one), so a thousand idle sockets
  cannot lock out the agent's next call; when every connection is busy, the new one is
  answered 503 and closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from broker.core.errors import ConfigError

log = logging.getLogger("broker.sidecar.listener")

IDLE_TIMEOUT = 5.0
MAX_CONNECTIONS = 2048

_BUSY_BODY = b'{"error":"too_many_connections","detail":"every connection is busy; retry"}'
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
    % (len(_BUSY_BODY), _BUSY_BODY)
)


def parse_listen(listen: str) -> tuple[str, str | int]:
    """("unix", path) or ("tcp", port). TCP is loopback only: a sidecar serves its neighbour."""
    if listen.startswith("unix:"):
        return "unix", listen[5:]
    host, _, port = listen.rpartition(":")
    if host not in ("", "127.0.0.1", "localhost"):
        raise ConfigError(
            f"--listen {listen!r}: a sidecar listens on 127.0.0.1 or a unix socket only"
        )
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"--listen {listen!r}: expected unix:PATH or 127.0.0.1:PORT")
    return "tcp", int(port)


class _Busy(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(_BUSY)
        transport.close()


class CappedFactory:
    """The protocol factory for ``loop.create_server``: aiohttp's, behind the cap."""

    def __init__(self, server: web.Server, cap: int = MAX_CONNECTIONS) -> None:
        self.server, self.cap = server, cap
        self.evicted = 0

    def __call__(self) -> asyncio.BaseProtocol:
        if len(self.server.connections) >= self.cap and not self._evict_one():
            return _Busy()
        return self.server()

    def _evict_one(self) -> bool:
        """Close the oldest connection that never sent a whole request, else the oldest idle
        keep-alive one: an agent's pooled connections outlive a flood of silent ones."""
        # aiohttp has no public "is idle" or "requests seen": read its handler's own fields.
        idle = [h for h in self.server.connections if not getattr(h, "_request_in_progress", True)]
        silent = [h for h in idle if getattr(h, "_request_count", 1) == 0]
        for handler in silent[:1] or idle[:1]:
            handler.force_close()
            self.evicted += 1
            return True
        return False


async def listen(
    runner: web.AppRunner, listen: str, cap: int = MAX_CONNECTIONS
) -> tuple[str, asyncio.Server]:
    """Serve ``runner``'s app at ``listen``; returns the address and the server to close."""
    kind, where = parse_listen(listen)
    factory = CappedFactory(runner.server, cap)  # type: ignore[arg-type]  # set by setup()
    loop = asyncio.get_running_loop()
    if kind == "unix":
        path = Path(str(where))
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        old = os.umask(0o177)  # the socket is born 0600: no window where others can connect
        try:
            server = await loop.create_unix_server(factory, str(path), backlog=1024)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        return f"unix:{path}", server
    server = await loop.create_server(factory, "127.0.0.1", int(where), backlog=1024)
    port = server.sockets[0].getsockname()[1]
    return f"http://127.0.0.1:{port}", server


def waiting_app(why: Callable[[], str]) -> web.Application:
    """What a sidecar serves while it cannot build its service yet (its manifest lives in
    Vault and Vault has not answered): alive on /healthz, 503 with the reason elsewhere."""

    async def answer(request: web.Request) -> web.Response:
        if request.path == "/healthz":
            return web.json_response({"status": "up"})
        detail = f"the sidecar is waiting for Vault to load its manifest: {why()}"
        if request.path == "/readyz":
            body = {"ready": False, "problems": {"vault": why(), "manifest": "not loaded yet"}}
            return web.json_response(body, status=503)
        return web.json_response(
            {"error": "backend_unavailable", "detail": detail},
            status=503,
            headers={"Retry-After": "2"},
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app
