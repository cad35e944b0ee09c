"""A sidecar's line to its node agent (``BROKER_NODE_AGENT_SOCKET``).

Connects to the agent's unix socket, checks who holds it (``SO_PEERCRED``: root, this
sidecar's own user, or a user in ``BROKER_NODE_AGENT_UIDS``), and hands every confirmation
of ``control/version`` to the runtime as it arrives. Anything wrong (no agent, a refused
peer, a line no agent would write, an error the agent reports, silence) is ``None`` to the
runtime, which then polls Vault itself until the agent is back: the agent only ever saves
Vault work; it cannot make a sidecar mint on older control state than its own poll would."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from broker.core.errors import ConfigError
from broker.sidecar.nodewire import (
    MAX_LINE,
    PEERCRED,
    Confirmation,
    WireError,
    decode,
    peer_allowed,
)

log = logging.getLogger("broker.sidecar.nodewatch")

RECONNECT_MIN = 0.25
RECONNECT_MAX = 2.0
# The agent writes a line every poll (0.25 s); none for this long and it is taken as gone.
SILENCE = 1.0


def extra_uids(value: str) -> frozenset[int]:
    """``BROKER_NODE_AGENT_UIDS``: comma-separated user ids, besides root and our own."""
    uids = [v.strip() for v in value.split(",") if v.strip()]
    if not all(u.isdigit() for u in uids):
        raise ConfigError(
            f"BROKER_NODE_AGENT_UIDS must be user ids separated by commas, got {value[:60]!r}"
        )
    return frozenset(int(u) for u in uids)


class NodeWatch:
    def __init__(
        self,
        path: Path,
        on_update: Callable[[Confirmation | None], None],
        *,
        uids: frozenset[int] = frozenset(),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self._on_update = on_update
        self._uids = uids
        self._mono = monotonic
        self.latest: Confirmation | None = None
        self.problem = "not connected yet"
        self.connects = 0
        self._told = False  # a failure was logged since the start
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"NodeWatch(path={str(self.path)!r}, problem={self.problem!r})"

    def confirmed(self, within: float) -> Confirmation | None:
        """The agent's latest confirmation when it is younger than ``within`` seconds."""
        seen = self.latest
        if seen is None or self.problem or self._mono() - seen.read_at >= within:
            return None
        return seen

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="node-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        backoff = RECONNECT_MIN
        while True:
            connects = self.connects
            try:
                await self._follow()
            except asyncio.IncompleteReadError:
                self._lost("the node agent hung up")
            except (OSError, WireError, TimeoutError, asyncio.LimitOverrunError) as exc:
                self._lost(_why(exc))
            # Back to the shortest wait after a connection that worked (an agent restart).
            backoff = RECONNECT_MIN if self.connects > connects else backoff
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RECONNECT_MAX)

    async def _follow(self) -> None:
        reader, writer = await asyncio.open_unix_connection(str(self.path), limit=MAX_LINE)
        try:
            self._check_peer(writer)
            self.connects += 1
            while True:
                async with asyncio.timeout(SILENCE):  # no extra task per line, as wait_for makes
                    line = await reader.readuntil(b"\n")
                self._receive(decode(line, self._mono()))
        finally:
            writer.close()

    def _check_peer(self, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        _, uid, _ = PEERCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, PEERCRED.size)
        )
        if not peer_allowed(uid, os.getuid(), self._uids):
            raise WireError(
                f"the socket is held by user {uid}, not root, this sidecar's user or "
                "BROKER_NODE_AGENT_UIDS: not believed"
            )

    def _receive(self, got: Confirmation | str) -> None:
        if isinstance(got, str):
            self._lost(f"the node agent cannot confirm the control state: {got}")
            return
        if self.problem:
            log.info("node agent at %s confirms the control state", self.path)
        self.latest, self.problem = got, ""
        self._on_update(got)

    def _lost(self, why: str) -> None:
        if not self.problem or not self._told:  # the first failure too: a wrong path
            log.warning("node agent at %s: %s; polling Vault directly", self.path, why)
            self._told = True
        self.latest, self.problem = None, why
        self._on_update(None)


def _why(exc: Exception) -> str:
    if isinstance(exc, TimeoutError):
        return f"the node agent said nothing for {SILENCE:g} s"
    if isinstance(exc, asyncio.LimitOverrunError):
        return "the node agent sent a line longer than any it writes"
    if isinstance(exc, OSError):
        return f"cannot reach the node agent ({exc.strerror or type(exc).__name__})"
    return f"the node agent sent what no agent writes ({exc})"
