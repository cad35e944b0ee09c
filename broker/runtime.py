"""A sidecar's long-lived connections and the loops that keep them current.

``Runtime`` owns the Vault session, the in-memory signer and the control state. Its
background loop polls the shared control state every ``poll_interval`` seconds (kill
switches, revocations and key generations reach the sidecar within that time), renews the
Vault token, replaces the signing certificate before it expires, and publishes a heartbeat.
``vault_ok`` turns false the moment a poll fails, so minting fails closed within one poll
interval plus the request timeout; it turns true again on the first good poll.

The poll's reads and the heartbeat run on the event loop through the pooled aiohttp client:
through hvac in a worker thread, each read held the GIL for most of a millisecond at a
stretch, and every poll showed as a stall of several milliseconds in the mint latencies.
Renewal and certificate rotation, minutes apart, stay on hvac in a thread."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from broker.controlstate import GLOBAL_PATH, REVOKED_PATH, ControlState, agent_path
from broker.credids import ID_PREFIX
from broker.errors import BrokerError, PermissionDenied
from broker.metrics import SidecarMetrics
from broker.settings import VaultSettings
from broker.signing import ActionTokenSigner
from broker.vault.asyncapi import AsyncVault
from broker.vault.pki import SignedCert, sign_csr
from broker.vault.registry import login_recorder
from broker.vault.session import VaultSession

log = logging.getLogger("broker.runtime")

HEARTBEAT_EVERY = 2.0  # and at most once a second sooner when the outstanding set changed
# A poll older than this means Vault is not answering, even if the poll itself still hangs.
STALE_AFTER = 1.5


class Runtime:
    def __init__(
        self,
        agent: str,
        vault: VaultSettings,
        *,
        poll_interval: float = 0.25,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.agent = agent
        self.session = VaultSession(vault, clock=clock)
        # Polls use their own short-timeout client so a hung Vault is noticed quickly.
        self._poller = AsyncVault(vault.addr, lambda: self.session.token, timeout=1.0, pool=4)
        self.signer = ActionTokenSigner(agent, self._issue_cert)
        self.control = ControlState(agent=agent)
        self.vault_ok = False
        self.vault_problem = "not connected yet"
        self.poll_interval = poll_interval
        self.last_poll_ok = 0.0
        self.outstanding: Callable[[], dict[str, Any]] = dict
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._last_heartbeat = 0.0
        self._killed_seen_at: float | None = None
        self._ack_due = False
        # Set when outstanding Vault credentials change, so runbooks see them on the next poll.
        self.dirty = False
        self._last_outstanding: dict[str, Any] = {}
        # Called on the event loop when the kill flag or a revocation time changes.
        self.on_change: Callable[[ControlState, ControlState], None] | None = None
        self.metrics: SidecarMetrics | None = None
        # KV versions of the control documents last read; sent in the heartbeat so that a
        # runbook command knows when this sidecar has seen what it wrote (no clocks compared).
        self.control_versions: tuple[int, int, int] = (0, 0, 0)
        # Every login token goes on the registry before it mints: ``broker kill`` revokes it
        # (and with it all it minted) even after this process is gone.
        self.session.on_login = login_recorder(agent, ID_PREFIX, vault.addr, clock)

    async def announce(self) -> None:
        """A full heartbeat now: the sidecar is wired up, so its actions and outstanding
        credentials can be listed (runbook commands check ``--action`` against them)."""
        await self._heartbeat(self._clock(), self.outstanding())

    def available(self) -> bool:
        """Vault answered the last poll, recently enough: the condition for minting anything."""
        return (
            self.vault_ok and self._clock() - self.last_poll_ok < STALE_AFTER + self.poll_interval
        )

    def _issue_cert(self, csr_pem: str, ttl: str) -> SignedCert:
        return sign_csr(self.session.client, self.agent, csr_pem, ttl, self.session.addr)

    async def start(self) -> None:
        """Log in and certify a first key; raises BackendUnavailable when Vault is not there."""
        await asyncio.to_thread(self.session.login)
        try:
            await self._refresh(self.outstanding())
        except BaseException:
            await self._poller.close()
            raise
        self._task = asyncio.create_task(self._loop(), name=f"runtime-{self.agent}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._poller.close()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            if self.metrics is not None:
                self.metrics.control_lag(self._clock() - self.last_poll_ok)
            try:
                await self._refresh(self._outstanding_if_due())
            except BrokerError as exc:
                self._mark_down(exc.detail)
                if self.metrics is not None:
                    self.metrics.vault_error("control_poll")
            except Exception as exc:  # any failure must fail closed, not end the loop
                log.exception("control poll failed")
                self._mark_down(f"unexpected {type(exc).__name__}")

    def _outstanding_if_due(self) -> dict[str, Any]:
        """The outstanding set, rebuilt on the event loop only when a heartbeat may go out;
        otherwise the last one (a kill confirmation needs no fresh list)."""
        since = self._clock() - self._last_heartbeat
        if self.dirty or since >= HEARTBEAT_EVERY - self.poll_interval:
            self._last_outstanding = self.outstanding()
        return self._last_outstanding

    def _mark_down(self, why: str) -> None:
        if self.vault_ok:
            log.warning("Vault unavailable, refusing to mint: %s", why)
        self.vault_ok = False
        self.vault_problem = why

    async def _refresh(self, outstanding: dict[str, Any]) -> None:
        """One poll: control state, token freshness, signing key, heartbeat."""
        try:
            await self._read_control()
        except PermissionDenied:
            # A revoked or expired sidecar token reads as permission denied: log in again.
            await asyncio.to_thread(self.session.login)
            await self._read_control()
        now = self._clock()
        generation = self.control.signing_generation
        if self.session.renewal_due() or self.signer.needs_rotation(now, generation):
            await asyncio.to_thread(self._maintain, generation)
        since = now - self._last_heartbeat
        acknowledge, self._ack_due = self._ack_due, False
        if acknowledge:
            # A command waits for this: the outstanding set as of a read of its write.
            outstanding = self.outstanding()
        killed = self._killed_changed()
        if since >= HEARTBEAT_EVERY or killed or acknowledge or (self.dirty and since >= 1.0):
            self.dirty = False
            await self._heartbeat(now, outstanding)
        if not self.vault_ok:
            log.info("Vault reachable at %s; minting resumes", self.session.addr)
        self.vault_ok = True
        self.vault_problem = ""
        self.last_poll_ok = now

    def _maintain(self, generation: int) -> None:
        """In a worker thread: renew the token, certify a new key when one is due."""
        self.session.ensure_fresh()
        if self.signer.needs_rotation(self._clock(), generation):
            self.signer.rotate(generation)

    async def _read_control(self) -> None:
        old = self.control
        read = await asyncio.gather(
            self._poller.kv_read_versioned(GLOBAL_PATH),
            self._poller.kv_read_versioned(agent_path(self.agent)),
            self._poller.kv_read_versioned(REVOKED_PATH),
        )
        self.control = new = ControlState.from_docs(self.agent, *(doc for doc, _ in read))
        versions = (read[0][1], read[1][1], read[2][1])
        if versions != self.control_versions:
            self.control_versions = versions
            self.dirty = True
            self._ack_due = True
        changed = (old.killed, old.revoked_before) != (new.killed, new.revoked_before)
        if changed and self.on_change is not None:
            self.on_change(old, new)

    def _killed_changed(self) -> bool:
        seen = self._killed_seen_at is not None
        if self.control.killed and not seen:
            self._killed_seen_at = self._clock()
            return True
        if not self.control.killed and seen:
            self._killed_seen_at = None
            return True
        return False

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
        self._last_heartbeat = now
