"""The sidecar's manifest watcher: polls the published manifest in Vault, validates each new
version, and switches the service to it, or refuses it and keeps the last good one.

Invariants:
- The sidecar enforces only a manifest that validated here, whose agent is this sidecar's
  agent and whose stored content hash matches the hash of the validated content.
- A bad version (invalid YAML, wrong agent, hash mismatch, deleted) never replaces a good
  one: it is refused once, audited once, and reported in ``state()`` until a good version
  follows. Vault being unreachable is not a refusal: it is counted and retried.
- The switch is recorded in the audit trail first, then applied in one synchronous step on
  the event loop. The service decides and charges with no ``await`` in between, so every
  request is decided wholly under one manifest: a stricter version applies to the next
  request, and nothing in flight gets more than its own decision allowed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from broker.audit.records import iso_utc
from broker.core.errors import BrokerError, ManifestError
from broker.core.manifest import Manifest
from broker.scopes.loader import manifest_from_text
from broker.vault.manifests import PublishedManifest

if TYPE_CHECKING:
    from broker.vault.asyncapi import AsyncVault

log = logging.getLogger("broker.sidecar.watcher")

VAULT_SOURCE = "vault:"
# The runtime pokes the watcher whenever it reads the control documents: at once after a
# control/version bump (``broker scopes publish`` makes one) and every 10 s regardless. This
# is the fallback when no poke comes (a publish by raw write that forgot the bump).
DEFAULT_MANIFEST_POLL = 10.0
# A poke is followed after a random wait up to this: a bump reaches every sidecar of a fleet
# at once, and its kill or revocation is read first; the manifests then trickle in over a
# second instead of landing on Vault in the same instant.
POKE_SPREAD = 1.0

Fetch = Callable[[], PublishedManifest | None]
AsyncFetch = Callable[[], Awaitable[PublishedManifest | None]]


def vault_agent(source: str | Path) -> str | None:
    """``vault:<agent>`` names a manifest published in Vault; anything else is a file."""
    text = str(source)
    return text[len(VAULT_SOURCE) :] if text.startswith(VAULT_SOURCE) else None


def validate_published(published: PublishedManifest, agent: str) -> Manifest:
    """The validated manifest of one stored version, or ``ManifestError`` saying why not."""
    source = f"vault:{agent}@{published.version}"
    if published.agent != agent:
        raise ManifestError(f"{source}: stored for agent {published.agent!r}, not {agent!r}")
    manifest = manifest_from_text(published.yaml, source)
    if manifest.agent != agent:
        raise ManifestError(f"{source}: the manifest is for agent {manifest.agent!r}")
    if manifest.content_hash != published.content_hash:
        raise ManifestError(
            f"{source}: stored content hash {published.content_hash or '(none)'!r} does not "
            f"match the content ({manifest.content_hash}); publish with `broker scopes publish`"
        )
    return manifest


@dataclass(frozen=True)
class Switch:
    old: Manifest
    new: Manifest
    published: PublishedManifest


@dataclass(frozen=True)
class Refusal:
    version: int
    reason: str
    published_by: str
    at: float


class Swappable(Protocol):
    def swap_manifest(self, new: Manifest) -> None: ...


class AuditSink(Protocol):
    async def append(self, body: Mapping[str, Any]) -> Any: ...


class ManifestWatcher:
    """State of one sidecar's manifest source. ``poll`` runs in a thread; ``apply`` on the loop."""

    def __init__(
        self,
        agent: str,
        fetch: Fetch,
        *,
        clock: Callable[[], float] = time.time,
        afetch: AsyncFetch | None = None,
    ):
        self.agent = agent
        self._fetch = fetch
        # The same read on the event loop: the poll's every second, and through a thread and
        # hvac it was most of an idle sidecar's own CPU (0.8 ms a read, 0.2 ms this way).
        self._afetch = afetch
        self._clock = clock
        self.current: Manifest | None = None
        self.published: PublishedManifest | None = None
        self.refused: Refusal | None = None
        self._refused_versions: set[int] = set()
        # Counters and figures a metrics collector reads (monotonic, since start).
        self.reloads = 0
        self.refusals = 0
        self.poll_errors = 0
        self.last_error = ""
        self.last_poll_at = 0.0
        self.last_switch_delay: float | None = None  # publish time -> enforcing, seconds
        self._task: asyncio.Task[None] | None = None
        self._poked = asyncio.Event()
        self.poke_spread = POKE_SPREAD
        self._rng = random.Random()  # noqa: S311 - spreading load, not a secret

    @property
    def version(self) -> int:
        return self.published.version if self.published else 0

    @property
    def degraded(self) -> bool:
        """A newer version was refused: this sidecar enforces an older one."""
        return self.refused is not None

    def load_initial(self) -> Manifest:
        """The first manifest; there is no last good one yet, so any problem is fatal."""
        return self._initial(self._fetch())

    async def aload_initial(self) -> Manifest:
        """``load_initial`` with the async fetch when there is one (validated in a thread)."""
        if self._afetch is None:
            return await asyncio.to_thread(self.load_initial)
        return await asyncio.to_thread(self._initial, await self._afetch())

    def _initial(self, published: PublishedManifest | None) -> Manifest:
        if published is None:
            raise ManifestError(f"vault:{self.agent}: no manifest is published for this agent")
        self.current = validate_published(published, self.agent)
        self.published = published
        return self.current

    def poll(self) -> Switch | Refusal | None:
        """Fetch once; the event to apply, if any. Never raises for Vault or content trouble."""
        assert self.current is not None, "load_initial first"
        try:
            published = self._fetch()
        except BrokerError as exc:
            self._poll_failed(exc)
            return None
        return self.consider(published)

    async def apoll(self) -> Switch | Refusal | None:
        """``poll`` with the async fetch when there is one; only a new version is validated,
        in a thread (YAML and the models take milliseconds the loop owes to requests)."""
        if self._afetch is None:
            return await asyncio.to_thread(self.poll)
        try:
            published = await self._afetch()
        except BrokerError as exc:
            self._poll_failed(exc)
            return None
        if published is not None and self._known(published.version):
            self.last_error, self.last_poll_at = "", self._clock()
            return None
        return await asyncio.to_thread(self.consider, published)

    def _poll_failed(self, exc: BrokerError) -> None:
        self.poll_errors += 1
        self.last_error = exc.detail

    def _known(self, version: int) -> bool:
        return version == self.version or version in self._refused_versions

    def consider(self, published: PublishedManifest | None) -> Switch | Refusal | None:
        """What one fetched answer means: a switch, a refusal, or nothing new."""
        assert self.current is not None, "load_initial first"
        self.last_error, self.last_poll_at = "", self._clock()
        if published is None:
            return self._refusal(0, "the published manifest is gone (deleted?)", "")
        if self._known(published.version):
            return None
        try:
            new = validate_published(published, self.agent)
        except ManifestError as exc:
            return self._refusal(published.version, exc.detail, published.published_by)
        return Switch(self.current, new, published)

    def _refusal(self, version: int, reason: str, by: str) -> Refusal | None:
        if version in self._refused_versions:
            return None
        return Refusal(version, reason, by, self._clock())

    async def apply(self, event: Switch | Refusal, service: Swappable, audit: AuditSink) -> None:
        """Record, then act. A switch that cannot be recorded is not made (retried next poll)."""
        now = self._clock()
        if isinstance(event, Refusal):
            self.refused = event
            self._refused_versions.add(event.version)
            self.refusals += 1
            log.warning(
                "manifest version %s refused, keeping the last good one: %s",
                event.version,
                event.reason,
            )
            with contextlib.suppress(BrokerError):
                await audit.append(self._refusal_record(event, now))
            return
        await audit.append(self._switch_record(event, now))
        service.swap_manifest(event.new)
        self.current, self.published, self.refused = event.new, event.published, None
        self.reloads += 1
        if event.published.published_at:
            self.last_switch_delay = max(0.0, now - event.published.published_at)
        log.info(
            "manifest version %s in force (%s)", event.published.version, event.new.content_hash
        )

    def _base(self, event: str, now: float) -> dict[str, Any]:
        return {
            "type": "manifest",
            "event": event,
            "timestamp": iso_utc(now),
            "at": round(now, 6),
            "agent_id": self.agent,
        }

    def _switch_record(self, event: Switch, now: float) -> dict[str, Any]:
        return {
            **self._base("switch", now),
            "from_version": self.version,
            "from_hash": event.old.content_hash,
            "to_version": event.published.version,
            "to_hash": event.new.content_hash,
            "policy_version": event.new.policy_version,
            "published_by": event.published.published_by,
        }

    def _refusal_record(self, event: Refusal, now: float) -> dict[str, Any]:
        assert self.current is not None
        return {
            **self._base("refused", now),
            "version": event.version,
            "reason": event.reason,
            "published_by": event.published_by,
            "keeping_version": self.version,
            "keeping_hash": self.current.content_hash,
        }

    def state(self) -> dict[str, Any]:
        """For /readyz and metrics: what is enforced, what was refused, poll health."""
        refused = self.refused
        return {
            "source": f"{VAULT_SOURCE}{self.agent}",
            "version": self.version,
            "published_by": self.published.published_by if self.published else None,
            "degraded": self.degraded,
            "refused": None
            if refused is None
            else {"version": refused.version, "reason": refused.reason, "at": refused.at},
            "reloads": self.reloads,
            "refusals": self.refusals,
            "poll_errors": self.poll_errors,
            "last_error": self.last_error or None,
        }

    # -- the loop ----------------------------------------------------------------------------

    def poke(self) -> None:
        """Look at the published manifest now (the control version moved, or its periodic
        full read came round): a publish is picked up without a read a second per sidecar."""
        self._poked.set()

    def start(self, service: Swappable, audit: AuditSink, interval: float) -> None:
        self._task = asyncio.create_task(
            self._run(service, audit, interval), name=f"manifest-watcher-{self.agent}"
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self, service: Swappable, audit: AuditSink, interval: float) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poked.wait(), interval)
                await asyncio.sleep(self._rng.uniform(0, self.poke_spread))
            self._poked.clear()
            try:
                event = await self.apoll()
                if event is not None:
                    await self.apply(event, service, audit)
            except Exception as exc:  # the loop must outlive any one bad poll
                self.poll_errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"[:200]
                log.warning("manifest poll failed: %s", self.last_error)


def vault_fetch(session: Any, agent: str) -> Fetch:
    """A fetch through the sidecar's own Vault identity (renewed by its runtime), with a short
    timeout of its own so a hung Vault delays only the watcher."""
    from broker.vault.manifests import read_manifest

    clients: list[Any] = []  # built at the first fetch: a sidecar fetches on the loop instead

    def fetch() -> PublishedManifest | None:
        if not clients:
            clients.append(session.new_client(timeout=2.0))
        clients[0].token = session.token
        return read_manifest(clients[0], agent, addr=session.addr)

    return fetch


def vault_afetch(vault: AsyncVault, agent: str) -> AsyncFetch:
    """``vault_fetch`` on the event loop, through an ``AsyncVault`` of the sidecar's identity
    (same answers: a deleted or missing version is ``None``)."""
    from broker.vault.manifests import manifest_path

    async def fetch() -> PublishedManifest | None:
        doc, version = await vault.kv_read_versioned(manifest_path(agent))
        return None if doc is None else PublishedManifest.from_doc(agent, version, doc)

    return fetch
