"""What a sidecar tells runbook commands through Vault: a heartbeat document with its login
accessor, the control versions it has read, when it saw a kill, its signing key, whether a
node agent confirms its control state, and its outstanding credentials. A mixin of ``Runtime``, over its state.

The heartbeat goes out when something changed (kill seen, a command to acknowledge,
outstanding credentials at most once a second), else every ``HEARTBEAT_EVERY`` seconds as
liveness."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from typing import Any

from broker.core.controlstate import ControlState
from broker.core.credids import ID_PREFIX
from broker.core.errors import BrokerError
from broker.sidecar.metrics import SidecarMetrics
from broker.sidecar.nodewatch import NodeWatch
from broker.sidecar.signing import ActionTokenSigner
from broker.vault.asyncapi import AsyncVault
from broker.vault.session import VaultSession

log = logging.getLogger("broker.sidecar.runtime")

# Liveness only: a change (kill seen, a write to acknowledge) sends one at once, changed
# outstanding credentials at most once a second. Runbooks call a heartbeat older than 30 s
# stale (broker.cli_lifecycle.HEARTBEAT_STALE).
HEARTBEAT_EVERY = 10.0


class Heartbeat:
    agent: str
    session: VaultSession
    signer: ActionTokenSigner
    control: ControlState
    control_versions: tuple[int, int, int]
    metrics: SidecarMetrics | None
    outstanding: Callable[[], dict[str, Any]]
    poll_interval: float
    dirty: bool
    _poller: AsyncVault
    _clock: Callable[[], float]
    _mono: Callable[[], float]
    _last_heartbeat: float  # monotonic
    _last_outstanding: dict[str, Any]
    _killed_seen_at: float | None
    node: NodeWatch | None
    agent_mismatch: bool

    async def announce(self) -> None:
        """A full heartbeat now: the sidecar is wired up, so its actions and outstanding
        credentials can be listed (runbook commands check ``--action`` against them)."""
        await self._heartbeat(self._clock(), self.outstanding())

    def _outstanding_if_due(self) -> dict[str, Any]:
        """The outstanding set, rebuilt on the event loop only when a heartbeat may go out;
        otherwise the last one (a kill confirmation needs no fresh list)."""
        since = self._mono() - self._last_heartbeat
        if self.dirty or since >= HEARTBEAT_EVERY - self.poll_interval:
            self._last_outstanding = self.outstanding()
        return self._last_outstanding

    def _killed_changed(self) -> bool:
        seen = self._killed_seen_at is not None
        if self.control.killed and not seen:
            self._killed_seen_at = self._clock()
            return True
        if not self.control.killed and seen:
            self._killed_seen_at = None
            return True
        return False

    def _node_agent_state(self) -> str:
        """For ``broker status``: whether this sidecar's control reads ride on a node agent."""
        if self.node is None:
            return "off"
        if self.node.problem:
            return f"down: {self.node.problem}"[:120]
        return "not believed" if self.agent_mismatch else "confirming"

    async def _heartbeat(self, now: float, outstanding: dict[str, Any]) -> None:
        doc = {
            "at": now,
            "pid": os.getpid(),
            "accessor": self.session.accessor,
            "id_prefix": ID_PREFIX,
            "control_seen": dict(
                zip(("global", "agent", "revoked"), self.control_versions, strict=True)
            ),
            "killed_seen_at": self._killed_seen_at,
            "signing_serial": repr(self.signer),
            "generation": self.signer.generation,
            "node_agent": self._node_agent_state(),
            **outstanding,
        }
        # Lists go as one JSON string: Vault caps the number of strings in a request body
        # (1,000 by default), and a sidecar may hold thousands of credentials.
        doc = {k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in doc.items()}
        try:
            await self._poller.kv_write(f"heartbeat/{self.agent}", doc)
        except BrokerError as exc:
            # Minting does not depend on the heartbeat; runbooks see a stale one and say so.
            log.warning("heartbeat not written: %s", exc.detail)
            if self.metrics is not None:
                self.metrics.vault_error("heartbeat")
            return
        self._last_heartbeat = self._mono()  # a wall clock stepped back must not hold it
