"""Where a sidecar listens, and how it keeps slow or idle clients from holding it.

- Header and idle timeout: aiohttp closes a connection that has not completed a request's
  headers within ``keepalive_timeout`` of connecting, or of its previous answer (its
  keep-alive timer starts at ``connection_made`` and spares only a request in progress).
  ``IDLE_TIMEOUT`` sets it; a body that does not arrive is bounded in ``broker.sidecar.server``.
- Socket access: a unix socket is born 0600; ``SocketAccess`` may hand it to a group (mode
  0660) so an agent container running as another user in that group (Kubernetes: a shared
  ``emptyDir`` and the pod's ``fsGroup``) can connect, and may check each connection's peer
  (``SO_PEERCRED``) against uid/gid allowlists, refused before aiohttp sees a byte.
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
import socket
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from broker.core.errors import ConfigError
from broker.sidecar.probe import parse_listen

log = logging.getLogger("broker.sidecar.listener")

IDLE_TIMEOUT = 5.0
MAX_CONNECTIONS = 2048

_BUSY_BODY = b'{"error":"too_many_connections","detail":"every connection is busy; retry"}'
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
    % (len(_BUSY_BODY), _BUSY_BODY)
)


_DENIED_BODY = b'{"error":"peer_not_allowed","detail":"this uid/gid may not use the sidecar"}'
_DENIED = (
    b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_DENIED_BODY), _DENIED_BODY)
)


@dataclass(frozen=True)
class SocketAccess:
    """Who may connect to the unix socket: its group and mode, and optionally the peers'
    uids/gids (empty allowlists: any peer the file mode lets in)."""

    group: int | None = None
    mode: int = 0o600
    allow_uids: frozenset[int] = frozenset()
    allow_gids: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        if self.mode & ~0o660 or not self.mode & stat.S_IRUSR:
            raise ConfigError(
                f"--socket-mode {self.mode:04o}: allowed are 0600 and 0660 (owner and group "
                "only; others never reach the credential API)"
            )
        if self.mode & 0o060 and self.group is None:
            raise ConfigError(f"--socket-mode {self.mode:04o} needs --socket-group")

    def allows(self, uid: int, gid: int) -> bool:
        if not (self.allow_uids or self.allow_gids):
            return True
        return uid in self.allow_uids or gid in self.allow_gids


def parse_socket_mode(text: str) -> int:
    """'0660' or '660' (octal, as chmod reads it)."""
    try:
        return int(text, 8)
    except ValueError:
        raise ConfigError(f"--socket-mode {text!r}: expected an octal mode such as 0660") from None


def parse_group(text: str) -> int:
    """A gid, or a group name looked up in the group database."""
    if text.isdigit():
        return int(text)
    import grp

    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        raise ConfigError(
            f"--socket-group {text!r}: no such group (give a name or a gid)"
        ) from None


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of a unix socket's peer, from the kernel (``SO_PEERCRED``)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


class _Busy(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(_BUSY)
        transport.close()


class _PeerGate(asyncio.Protocol):
    """Checks the peer's credentials when a connection is made, then hands the transport to
    aiohttp's handler, or answers 403 and closes: a refused peer never reaches a handler."""

    def __init__(self, make: Callable[[], asyncio.BaseProtocol], access: SocketAccess) -> None:
        self._make, self._access = make, access
        self._refused: asyncio.Transport | None = None

    def data_received(self, data: bytes) -> None:
        if self._refused is not None and not self._refused.is_closing():
            self._refused.write(_DENIED)
            self._refused.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        _, uid, gid = peer_credentials(transport.get_extra_info("socket"))
        if not self._access.allows(uid, gid):
            log.warning("refused a connection from uid %d gid %d (not allowlisted)", uid, gid)
            # Answered once the request arrives (a 403 written before the client has sent is
            # lost to a reset); nothing of the request is read or parsed.
            self._refused = transport
            asyncio.get_running_loop().call_later(IDLE_TIMEOUT, transport.close)
            return
        handler = self._make()
        transport.set_protocol(handler)
        handler.connection_made(transport)


class CappedFactory:
    """The protocol factory for ``loop.create_server``: aiohttp's, behind the cap."""

    def __init__(
        self, server: web.Server, cap: int = MAX_CONNECTIONS, access: SocketAccess | None = None
    ) -> None:
        self.server, self.cap = server, cap
        self.evicted = 0
        self._gated = access is not None and bool(access.allow_uids or access.allow_gids)
        self._access = access

    def __call__(self) -> asyncio.BaseProtocol:
        if len(self.server.connections) >= self.cap and not self._evict_one():
            return _Busy()
        if self._gated:
            assert self._access is not None
            return _PeerGate(self.server, self._access)
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
    runner: web.AppRunner,
    listen: str,
    cap: int = MAX_CONNECTIONS,
    access: SocketAccess | None = None,
) -> tuple[str, asyncio.Server]:
    """Serve ``runner``'s app at ``listen``; returns the address and the server to close."""
    kind, where = parse_listen(listen)
    if kind != "unix" and access is not None and access != SocketAccess():
        raise ConfigError("--socket-group/--socket-mode/--allow-peer-* need a unix: listen address")
    factory = CappedFactory(runner.server, cap, access)  # type: ignore[arg-type]  # set by setup()
    loop = asyncio.get_running_loop()
    if kind == "unix":
        return await _listen_unix(loop, factory, Path(str(where)), access or SocketAccess())
    server = await loop.create_server(factory, "127.0.0.1", int(where), backlog=1024)
    port = server.sockets[0].getsockname()[1]
    return f"http://127.0.0.1:{port}", server


async def _listen_unix(
    loop: asyncio.AbstractEventLoop, factory: CappedFactory, path: Path, access: SocketAccess
) -> tuple[str, asyncio.Server]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    old = os.umask(0o177)  # the socket is born 0600: no window where others can connect
    try:
        server = await loop.create_unix_server(factory, str(path), backlog=1024)
    finally:
        os.umask(old)
    try:
        if access.group is not None:  # the group first, then the mode that opens it to it
            os.chown(path, -1, access.group)
        os.chmod(path, access.mode)
    except OSError as exc:
        server.close()
        raise ConfigError(
            f"cannot give the socket {path} group {access.group} mode {access.mode:04o}: "
            f"{exc.strerror}"
        ) from exc
    return f"unix:{path}", server


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
