"""A sidecar's long-lived connections and the loops that keep them current.

``Runtime`` owns the Vault session, the in-memory signer and the control state. Its
background loop polls the shared control state every ``poll_interval`` seconds, give or take
a tenth at random so that a fleet started together does not poll in step (kill switches,
revocations and key generations reach the sidecar within that time), renews the Vault token,
replaces the signing certificate before it expires, and publishes a heartbeat.

An idle poll is one small read: ``control/version``, which every control write bumps. The
three control documents are read only when its KV version moved, and every
``FULL_READ_EVERY`` seconds regardless (a raw ``bao kv put`` that forgot the bump is still
obeyed, later). The heartbeat goes out when something changed (kill seen, a command to
acknowledge, outstanding credentials), else every ``HEARTBEAT_EVERY`` seconds as liveness.
An idle fleet costs Vault one KV read per sidecar per poll, where it cost three reads, a CA
read a second and a heartbeat write every two seconds.
With a node agent (``BROKER_NODE_AGENT_SOCKET``, ``broker.sidecar.nodeagent``) the version
comes from the agent's poll, shared by every sidecar of the node, and the sidecar reads
nothing of its own while it confirms: the agent's lines extend the state's freshness as of
its reads, and the periodic full read is the three documents alone. A new version wakes the
loop at once, and the sidecar reads it itself, then the documents. The agent gone, silent or
wrong, the sidecar reads control/version itself as above.
``vault_ok`` turns false the moment a poll fails, so minting fails closed within one poll
interval plus the request timeout; it turns true again on the first good poll.

Vault need not be there at start-up: the loop logs in with backoff, and until then nothing is
minted and ``problems`` says why. Control state is fresh when its last read was *sent* less
than ``STALE_AFTER`` ago on the monotonic clock (what Vault answered is at least that recent),
however late the loop got round to the answer; a request that finds it stale asks for a poll
now and waits for it briefly (``refresh_now``) before refusing with ``control_state_stale``.

The poll's reads and the heartbeat run on the event loop through the pooled aiohttp client:
through hvac in a worker thread, each read held the GIL for most of a millisecond at a
stretch, and every poll showed as a stall of several milliseconds in the mint latencies.
Login and renewal run there too; certificate rotation (key generation) runs in a worker
thread whose Vault calls go to the loop (``LoopBridge``). A sidecar loads no hvac."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from broker.core.controlstate import (
    GLOBAL_PATH,
    REVOKED_PATH,
    VERSION_PATH,
    ControlState,
    agent_path,
)
from broker.core.credids import ID_PREFIX
from broker.core.errors import BackendUnavailable, BrokerError, ConfigError, PermissionDenied
from broker.core.reasons import ReasonCode
from broker.settings import VaultSettings, issuer_from_env
from broker.sidecar.heartbeat import HEARTBEAT_EVERY, Heartbeat
from broker.sidecar.keyupkeep import KeyUpkeep
from broker.sidecar.metrics import SidecarMetrics
from broker.sidecar.nodewatch import NodeWatch
from broker.sidecar.nodewire import Confirmation
from broker.sidecar.signing import ActionTokenSigner
from broker.vault.asyncapi import LoopBridge, find_active, off_loop
from broker.vault.registry import login_recorder
from broker.vault.session import VaultSession

log = logging.getLogger("broker.sidecar.runtime")

# The three control documents are read again this often even when control/version did not
# move: a raw write that forgot the bump is obeyed within this.
FULL_READ_EVERY = 10.0
JITTER = 0.1  # each wait is the poll interval times a random factor in [1 - JITTER, 1 + JITTER]
# Control state read longer ago than this (monotonic) is stale: nothing is minted on it.
# With the poll every 0.25 s and ``refresh_now``'s wait below, a stale sidecar refuses
# within 2 s of Vault's last answer.
STALE_AFTER = 1.25
# How long a request waits for a poll it asked for when it found the state stale.
FRESH_WAIT = 0.5
# Bootstrap creates control/version and nothing deletes it. A standby OpenBao node answers
# 404 to every KV read (measured on a three-node Raft cluster): read as "no document", that
# would mean "nothing revoked". So a missing version document fails closed.
NO_VERSION = (
    "control/version is missing: this Vault node is a standby (it answers 404 for every"
    " read) or the broker was never bootstrapped; nothing is minted"
)
# With a node agent: a confirmation it sent is used instead of a read of our own while it is
# younger than this; older (the agent lags or is gone), the sidecar reads Vault itself.
NODE_FRESH = 0.75
# With a node agent confirming, the loop wakes for its own upkeep (heartbeat, renewal, the
# periodic full read) this often; the agent's lines wake it at once when the version moves.
NODE_TICK = 2.0
# Login retries at start-up, or after the token was lost: from the poll interval, doubling.
LOGIN_BACKOFF_MAX = 5.0


class Runtime(KeyUpkeep, Heartbeat):
    def __init__(
        self,
        agent: str,
        vault: VaultSettings,
        *,
        poll_interval: float = 0.25,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.agent = agent
        self.session = VaultSession(vault, clock=monotonic)
        # Polls use their own short-timeout client so a hung Vault is noticed quickly.
        self._poller = self.session.async_client(timeout=1.0, pool=4)
        self.signer = ActionTokenSigner(
            agent, self._issue_cert, issuer=issuer_from_env(), publish=self._publish_keys
        )
        self.control = ControlState(agent=agent)
        self.vault_ok = False
        self.vault_problem = "not connected yet"
        self.poll_interval = poll_interval
        self.last_poll_ok = 0.0
        self._mono = monotonic
        self.control_read_at = -float("inf")  # monotonic: when the last good read was sent
        self._polled: asyncio.Future[None] | None = None  # settled by the next good read
        self._poll_now = asyncio.Event()
        self.logged_in = False
        self.stale_refusals = 0
        self._init_key_upkeep()
        self.outstanding: Callable[[], dict[str, Any]] = dict
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        # Monotonic: a wall clock stepped back must not hold heartbeats back by the step.
        self._last_heartbeat = -float("inf")
        self._killed_seen_at: float | None = None
        self._ack_due = False
        # Set when outstanding Vault credentials change, so runbooks see them on the next poll.
        self.dirty = False
        self._last_outstanding: dict[str, Any] = {}
        # Called on the event loop when the kill flag or a revocation time changes.
        self.on_change: Callable[[ControlState, ControlState], None] | None = None
        # Called on the event loop after each read of the control documents (the manifest
        # watcher looks at the published manifest then: ``ManifestWatcher.poke``).
        self.on_full_read: Callable[[], None] | None = None
        self.metrics: SidecarMetrics | None = None
        self._status_published: tuple[Any, ...] | None = None
        # KV versions of the control documents last read; sent in the heartbeat so that a
        # runbook command knows when this sidecar has seen what it wrote (no clocks compared).
        self.control_versions: tuple[int, int, int] = (0, 0, 0)
        # control/version (KV version, Vault's created_time) at the last full read, as read by
        # this sidecar itself: the node agent's word counts only while it names the same write.
        self._version_seen: tuple[int, str] = (-1, "")
        self._full_read_at = -float("inf")  # monotonic
        self.full_read_every = FULL_READ_EVERY
        self.full_reads = 0
        self.direct_polls = 0  # reads of control/version of our own (not the node agent's)
        self.agent_mismatch = False  # the node agent named a write this Vault never made
        self.node: NodeWatch | None = None
        self.control_source = "vault"  # where the last confirmation came from
        self.control_changed_at: float | None = None  # wall clock: a kill or revocation seen
        self._rng = random.Random()  # noqa: S311 - jitter, not a secret
        # Every login token goes on the registry before it mints: ``broker kill`` revokes it
        # (and with it all it minted) even after this process is gone.
        self.session.on_login = login_recorder(agent, ID_PREFIX, vault.addr, clock)

    def use_node_agent(self, path: Any, uids: frozenset[int] = frozenset()) -> None:
        """Take the control version from the node agent at ``path`` (``broker.sidecar.nodeagent``)
        while it confirms it, and from Vault directly whenever it does not."""
        self.node = NodeWatch(path, self._node_update, uids=uids, monotonic=self._mono)

    def _node_update(self, seen: Confirmation | None) -> None:
        """A line from the node agent, on the event loop. The same version as our last full
        read, and nothing else due: the state is confirmed as of the agent's read, no I/O.
        Anything else (a new version, the agent gone): a poll now."""
        if seen is None or (seen.version, seen.stamp) != self._version_seen:
            self._poll_now.set()
            return
        if self._full_read_due() or not self.vault_ok:
            self._poll_now.set()
            return
        if seen.read_at > self.control_read_at:
            self.control_read_at = seen.read_at
            self.control_source = "node-agent"
            if self.metrics is not None:
                self.metrics.control_read("node_agent")
        if self._polled is not None and not self._polled.done() and self.available():
            self._polled.set_result(None)

    def control_age(self) -> float:
        return self._mono() - self.control_read_at

    def available(self) -> bool:
        """Vault answered the last poll, recently enough: the condition for minting anything."""
        return self.vault_ok and self.control_age() < STALE_AFTER

    def problems(self) -> dict[str, str]:
        """Why this sidecar would refuse for a reason of its own, by component; {} when none."""
        found: dict[str, str] = {}
        if not self.vault_ok:
            found["vault"] = self.vault_problem or "Vault has not answered yet"
        elif self.control_age() >= STALE_AFTER:
            found["control_state"] = self.stale_detail()
        cert = self.certificate_problem()
        if cert:
            found["certificate"] = cert
        return found

    def mint_problem(self, kind: str | None) -> tuple[ReasonCode, str] | None:
        """Why nothing of ``kind`` may be minted now, for a reason of the sidecar's own."""
        if not self.vault_ok:
            return ReasonCode.backend_unavailable, f"Vault is unavailable: {self.vault_problem}"
        if not self.available():
            return ReasonCode.control_state_stale, self.stale_detail()
        if kind == "jwt" and (cert := self.certificate_problem()):
            return ReasonCode.backend_unavailable, f"no action token can be signed: {cert}"
        return None

    def stale_detail(self) -> str:
        age = self.control_age()
        shown = f"{age:.2f} s old" if age != float("inf") else "never read"
        return f"the control state is {shown} (bound {STALE_AFTER:g} s); nothing is minted on it"

    async def refresh_now(self, wait: float = FRESH_WAIT) -> None:
        """Ask for a poll now and wait (bounded) for a good read: for a request that found the
        state stale only because the loop was late (a paused process, CPU contention)."""
        if self.available() or not self.vault_ok:
            return
        if self._polled is None or self._polled.done():
            self._polled = asyncio.get_running_loop().create_future()
        polled = self._polled
        self._poll_now.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(polled), wait)
        if not self.available():
            self.stale_refusals += 1
            log.warning("refusing to mint: %s", self.stale_detail())

    async def start(self) -> None:
        """Start the loop. Vault need not answer yet: the loop logs in with backoff and
        nothing is minted until it has. Missing credentials settings fail here, at once."""
        self.session.check_credentials()
        self.bridge = LoopBridge(self.session.aio, asyncio.get_running_loop())
        if self.node is not None:
            self.node.start()
        self._task = asyncio.create_task(self._loop(), name=f"runtime-{self.agent}")

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Until the first good poll (for start-up steps that need Vault)."""
        async with asyncio.timeout(timeout):
            while not self.available():
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self.node is not None:
            await self.node.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._poller.close()
        await self.session.aclose()

    async def _loop(self) -> None:
        backoff = self.poll_interval
        while True:
            try:
                if not self.logged_in:
                    await self._follow_active()
                    await self._login()
                await self._refresh(self._outstanding_if_due())
                backoff = self.poll_interval
            except BrokerError as exc:
                self._mark_down(exc.detail)
                if self.metrics is not None:
                    self.metrics.vault_error("control_poll")
                with contextlib.suppress(BrokerError):  # the next poll says what is wrong
                    await self._follow_active()
            except Exception as exc:  # any failure must fail closed, not end the loop
                log.exception("control poll failed")
                self._mark_down(f"unexpected {type(exc).__name__}")
            delay = self._tick() * self._rng.uniform(1 - JITTER, 1 + JITTER)
            if not self.logged_in:
                delay, backoff = backoff, min(backoff * 2, LOGIN_BACKOFF_MAX)
                log.warning(
                    "not logged in to Vault (%s); retrying in %.2g s", self.vault_problem, delay
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poll_now.wait(), delay)
            self._poll_now.clear()
            if self.metrics is not None:
                self.metrics.control_lag(self.control_age())

    def _tick(self) -> float:
        """The poll interval; longer while the node agent confirms for us."""
        if self._agent_confirms() is not None:
            return max(NODE_TICK, self.poll_interval)
        return self.poll_interval

    def _agent_confirms(self) -> Confirmation | None:
        """The node agent's confirmation when it is fresh and names the write of our last
        full read (so it says "unchanged since", never what changed)."""
        seen = self.node.confirmed(NODE_FRESH) if self.node is not None else None
        if seen is None or (seen.version, seen.stamp) != self._version_seen:
            return None
        return seen

    async def _follow_active(self) -> None:
        """With several Vault addresses: move every client to the active node (after a failed
        poll, and before a login). Nothing is read from a cluster before its active node was
        found once: the headers that keep standbys from answering need its cluster id."""
        endpoints = self.session.endpoints
        if not endpoints.clustered:
            return
        was = endpoints.current
        if await find_active(endpoints):
            if endpoints.current != was:
                log.warning("Vault active node is now %s (was %s)", endpoints.current, was)
        elif not endpoints.cluster_id:
            raise BackendUnavailable(f"no active Vault node among {', '.join(endpoints.addrs)}")

    async def _login(self) -> None:
        try:
            await self.session.alogin()
        except ConfigError as exc:  # an unreadable secret id file may be fixed in place
            raise BrokerError(exc.detail) from exc
        self.logged_in = True
        log.info("logged in to Vault at %s", self.session.addr)

    def _mark_down(self, why: str) -> None:
        if self.vault_ok:
            log.warning("Vault unavailable, refusing to mint: %s", why)
        self.vault_ok = False
        self.vault_problem = why

    async def _refresh(self, outstanding: dict[str, Any]) -> None:
        """One poll: control state, token freshness, signing key, heartbeat."""
        try:
            confirmed = await self._read_control()
        except PermissionDenied:
            # A revoked or expired sidecar token reads as permission denied: log in again.
            self.logged_in = False
            await self._login()
            confirmed = await self._read_control()
        revocations = _revocation_view(self.control)
        if self.signer.status is not None and revocations != self._status_published:
            await self._publish_status()
            self._status_published = revocations
        now = self._clock()
        generation = self.control.signing_generation
        await self._check_ca()
        if self.session.renewal_due():
            await self.session.aensure_fresh()
        if self.signer.needs_rotation(now, generation) or self.ca_mismatch:
            await off_loop(self._maintain, generation)
        since = self._mono() - self._last_heartbeat
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
        self.control_read_at = max(self.control_read_at, confirmed)
        if self._polled is not None and not self._polled.done():
            self._polled.set_result(None)

    async def _read_control(self) -> float:
        """control/version (the node agent's confirmation when it is fresh and names the
        write of our last full read, else a read of our own); the documents themselves when it
        moved or when the last full read is FULL_READ_EVERY old. Either way the state is
        confirmed as of the moment the version's read was sent, which is returned: writers
        bump the version after writing the documents. A version that moved is always read by
        the sidecar itself, so the agent's word never becomes the baseline it is checked
        against (an agent of another Vault would otherwise confirm its own counter)."""
        agreed = self._agent_confirms()
        if agreed is not None:
            self.control_source = "node-agent"
            if self._full_read_due():
                # The backstop for a raw write that forgot the bump: the documents only. The
                # agent named our own baseline after it was written, so these reads, sent
                # later, are at least that new (a false agent holds a change back until here).
                started = self._mono()
                self._after_full_read(await self._read_documents(), started)
            return agreed.read_at
        sent = self._mono()
        version = await self._own_version()
        if version == self._version_seen and not self._full_read_due():
            return sent
        started = self._mono()
        moved = await self._read_documents()
        self._version_seen = version
        self._after_full_read(moved, started)
        return sent

    def _after_full_read(self, moved: bool, started: float) -> None:
        self._full_read_at = started
        self.full_reads += 1
        if self.on_full_read is not None and not moved:
            # A bump that moved no control document was a publish (or a periodic read):
            # the manifest is looked at then, never in the burst after a kill or revocation.
            self.on_full_read()

    async def _own_version(self) -> tuple[int, str]:
        """control/version as this sidecar reads it itself."""
        seen = self.node.latest if self.node is not None else None
        version = await self._poller.kv_version(VERSION_PATH)
        self.direct_polls += 1
        self.control_source = "vault"
        if self.metrics is not None:
            self.metrics.control_read("vault")
        if version[0] == 0:
            raise BackendUnavailable(NO_VERSION)
        if seen is not None and seen.version == version[0] and seen.stamp != version[1]:
            self._agent_disagrees(seen, version)
        return version

    def _full_read_due(self) -> bool:
        return self._mono() - self._full_read_at >= self.full_read_every

    def _agent_disagrees(self, seen: Confirmation, own: tuple[int, str]) -> None:
        """The same version number written at another time: not this Vault's counter."""
        if not self.agent_mismatch:
            log.warning(
                "the node agent confirms control/version %d written at %r, Vault says at %r: "
                "not this Vault's write (another Vault, or an agent too old to say); this sidecar "
                "reads the version itself",
                seen.version,
                seen.stamp,
                own[1],
            )
        self.agent_mismatch = True

    async def _read_documents(self) -> bool:
        """The three documents; True when any of them moved (a command wrote one)."""
        old = self.control
        read = await asyncio.gather(
            self._poller.kv_read_versioned(GLOBAL_PATH),
            self._poller.kv_read_versioned(agent_path(self.agent)),
            self._poller.kv_read_versioned(REVOKED_PATH),
        )
        self.control = new = ControlState.from_docs(self.agent, *(doc for doc, _ in read))
        versions = (read[0][1], read[1][1], read[2][1])
        moved = versions != self.control_versions
        if moved:
            self.control_versions = versions
            self.dirty = True
            self._ack_due = True
        changed = (old.killed, old.revoked_before) != (new.killed, new.revoked_before)
        if changed:
            self.control_changed_at = self._clock()
        if changed and self.on_change is not None:
            self.on_change(old, new)
        return moved


def _revocation_view(control: ControlState) -> tuple[Any, ...]:
    """What decides which tokens are revoked: a change means the status lists change."""
    return (
        control.killed,
        control.revoked_before,
        control.revoked_jtis,
        frozenset(control.revoked_before_action.items()),
        control.min_generation,
    )
