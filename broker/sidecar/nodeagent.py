"""``broker node-agent``: one Vault poll of the control state for every sidecar of a node.

An idle sidecar's cost to Vault was its poll of ``control/version`` four times a second:
about 0.3 % of a Vault core per sidecar, a whole core for every 350 idle agents. The node
agent (a DaemonSet in Kubernetes, like SPIRE's agent) polls once for the node, from the
active node of the cluster with the consistency headers a sidecar would send, and writes
each answer to every sidecar connected to its unix socket (``broker.sidecar.nodewire``).
A sidecar then reads the control documents itself, with its own token, only when the
version moves (and every ten seconds regardless); Vault stays the authority.

The agent's Vault identity reads ``control/version`` and nothing else
(``broker.vault.policies.node_agent_hcl``): stolen, it learns a counter. It mints nothing
and holds no key. If it dies or stops answering, each sidecar polls Vault directly as
before (``broker.sidecar.nodewatch``), so the agent saves cost and never decides access.

The socket carries only version numbers, so anyone on the node may connect (mode 0666);
the trust runs the other way: a sidecar believes the socket only when the process holding
it is root or its own user (``SO_PEERCRED``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from broker.core.controlstate import VERSION_PATH
from broker.core.errors import BackendUnavailable, BrokerError, ConfigError, PermissionDenied
from broker.settings import VaultSettings
from broker.sidecar.nodewire import PEERCRED, Confirmation, encode
from broker.vault.asyncapi import find_active
from broker.vault.session import VaultSession

log = logging.getLogger("broker.sidecar.nodeagent")

POLL_INTERVAL = 0.25
# A sidecar takes a confirmation while it is younger than 0.75 s (runtime.NODE_FRESH) and
# hangs up after 1 s of silence (nodewatch.SILENCE): a slower agent, with its jitter, would
# have its sidecars read Vault themselves and reconnect every few seconds.
MAX_INTERVAL = 0.5
# An unchanged confirmation goes out about this often (every few polls), a change at once:
# each line wakes every sidecar of the node, and half a second keeps them well inside what
# they take (``NODE_FRESH``) while halving their wakeups at the default interval.
REPEAT = 0.5
JITTER = 0.1
MAX_CLIENTS = 4096  # sidecars on one node; more connections are refused, not queued
# A sidecar that does not read its lines (stopped, hung) is dropped once this much waits
# for it: the agent never blocks on one sidecar, and the sidecar reconnects when it wakes.
MAX_BUFFERED = 16 * 1024
LOGIN_BACKOFF_MAX = 5.0
READ_CHUNK = 4096


class NodeAgent:
    def __init__(
        self,
        vault: VaultSettings,
        socket_path: Path,
        *,
        interval: float = POLL_INTERVAL,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < interval <= MAX_INTERVAL:
            raise ConfigError(
                f"the node agent's poll interval must be above 0 and at most {MAX_INTERVAL:g} s "
                f"(its sidecars take confirmations younger than 0.75 s), got {interval:g}"
            )
        self.session = VaultSession(vault)
        self.path = socket_path
        self.interval = interval
        self._mono = monotonic
        self._vault = self.session.async_client(timeout=1.0, pool=2)
        self.latest: Confirmation | None = None
        self.problem = "not connected yet"
        self.polls = 0
        self._clients: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._logged_in = False
        self._inode = -1  # of the socket this agent bound
        self._full = False  # MAX_CLIENTS reached (logged once until it is not)
        self._repeat = max(1, round(REPEAT / interval))  # polls per unchanged line
        self._said: tuple[object, ...] = ()  # the last line's version, stamp and problem
        self._quiet = 0  # polls since a line went out
        self._rng = random.Random()  # noqa: S311 - jitter, not a secret

    def __repr__(self) -> str:
        return f"NodeAgent(socket={str(self.path)!r}, vault={self.session.addr!r})"

    @property
    def clients(self) -> int:
        return len(self._clients)

    async def start(self) -> None:
        self.session.check_credentials()
        _clear_stale_socket(self.path)
        self._server = await self._bind()
        self._inode = self.path.lstat().st_ino
        self._task = asyncio.create_task(self._loop(), name="node-agent")
        log.info("node agent serving %s for Vault at %s", self.path, self.session.addr)

    async def _bind(self) -> asyncio.Server:
        """The socket is bound and opened up in a directory only this process may write, then
        renamed into place: a chmod by name at ``path`` would follow a link that someone who
        may write its directory put there in the meantime (to a file of the agent's user)."""
        private = Path(tempfile.mkdtemp(prefix=".na", dir=self.path.parent))
        try:
            staged = private / "s"
            server = await asyncio.start_unix_server(self._serve, path=str(staged))
            os.chmod(staged, 0o666)  # noqa: S103 - version numbers only; see the docstring
            os.rename(staged, self.path)
        finally:
            shutil.rmtree(private, ignore_errors=True)
        return server

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._server is not None:
            self._server.close()
        for writer in list(self._clients):
            writer.close()
        await self._vault.close()
        if self._logged_in:
            try:
                await self.session.alogout()
            except BrokerError as exc:  # it expires by itself; say why it is still there
                log.warning("the node agent's Vault token not revoked at stop: %s", exc.detail)
        await self.session.aclose()
        # Only our own socket: a restarted agent may already serve a new one at the path.
        with contextlib.suppress(FileNotFoundError):
            if self.path.lstat().st_ino == self._inode:
                self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._clients) >= MAX_CLIENTS:
            self._refuse(writer)
            return
        self._clients.add(writer)
        try:
            writer.write(encode(self.latest, self.problem))
            # Sidecars send nothing; anyone on the node may connect, so what arrives is read
            # and dropped (``read()`` would keep it all until the sender hangs up).
            while await reader.read(READ_CHUNK):
                pass
        except OSError:
            pass
        finally:
            self._clients.discard(writer)
            writer.close()

    def _refuse(self, writer: asyncio.StreamWriter) -> None:
        why = f"the node agent at {self.path} serves {MAX_CLIENTS} connections already"
        if not self._full:
            log.warning("%s: refusing more (the sidecars refused poll Vault themselves)", why)
        self._full = True
        writer.write(encode(None, why))
        writer.close()

    def _broadcast(self) -> None:
        self._full = len(self._clients) >= MAX_CLIENTS
        seen = self.latest
        said = (seen.version, seen.stamp) if seen else None, self.problem
        self._quiet += 1
        if said == self._said and self._quiet < self._repeat:
            return
        self._said, self._quiet = said, 0
        line = encode(self.latest, self.problem)
        for writer in list(self._clients):
            if writer.transport.get_write_buffer_size() > MAX_BUFFERED:
                self._clients.discard(writer)
                writer.transport.abort()
                continue
            writer.write(line)

    async def _loop(self) -> None:
        backoff = self.interval
        while True:
            delay = self.interval * self._rng.uniform(1 - JITTER, 1 + JITTER)
            try:
                await self._poll()
                backoff = self.interval
            except BrokerError as exc:
                self._down(exc.detail)
                if not self._logged_in:
                    delay, backoff = backoff, min(backoff * 2, LOGIN_BACKOFF_MAX)
            except Exception as exc:  # the loop must outlive any one failure
                log.exception("node agent poll failed")
                self._down(f"unexpected {type(exc).__name__}")
            self._broadcast()
            await asyncio.sleep(delay)

    async def _poll(self) -> None:
        # With several addresses: find the active node first, and again after any failure.
        if self.session.endpoints.clustered and self.problem:
            await self._follow_active()
        if not self._logged_in:
            await self.session.alogin()
            self._logged_in = True
        elif self.session.renewal_due():
            await self.session.aensure_fresh()
        sent = self._mono()
        try:
            version, stamp = await self._vault.kv_version(VERSION_PATH)
        except PermissionDenied:
            self._logged_in = False  # a revoked or expired token: log in on the next round
            raise
        if version == 0:
            raise BackendUnavailable("control/version is missing (a standby, or no bootstrap)")
        if self.latest is None or self.problem:
            log.info("Vault answers at %s: control/version %d", self.session.addr, version)
        self.latest, self.problem = Confirmation(version, sent, stamp), ""
        self.polls += 1

    async def _follow_active(self) -> None:
        endpoints = self.session.endpoints
        if not await find_active(endpoints) and not endpoints.cluster_id:
            raise BackendUnavailable(f"no active Vault node among {', '.join(endpoints.addrs)}")

    def _down(self, why: str) -> None:
        if not self.problem:
            log.warning("node agent cannot confirm the control state: %s", why)
        self.latest, self.problem = None, why


def _clear_stale_socket(path: Path) -> None:
    """A socket left by a dead agent is removed; a live agent's is an error, not stolen."""
    if not path.exists():
        return
    if not path.is_socket():
        raise ConfigError(f"{path} exists and is not a socket: refusing to replace it")
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()
            return
        _, uid, _ = PEERCRED.unpack(
            probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, PEERCRED.size)
        )
    # Whoever holds it: a second agent, or another user who bound the path first (which its
    # sidecars refuse to believe, and which must be removed by hand).
    raise ConfigError(f"another process, of user {uid}, is serving {path}: not replaced")


async def run(agent: NodeAgent) -> None:
    """Until cancelled (SIGTERM/SIGINT end ``asyncio.run``)."""
    await agent.start()
    try:
        await asyncio.Event().wait()
    finally:
        await agent.stop()
