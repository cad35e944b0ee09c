"""Assemble and run one agent's sidecar: manifest, Vault runtime, audit trail, usage ledger,
HTTP server on a unix socket (mode 0600) or 127.0.0.1:PORT.

Budgets survive restarts because the ledger is rebuilt from the audit trail itself (the
newest usage snapshot in it and the records after, see ``broker.audit.usagesnap``), so a sidecar
killed with SIGKILL continues exactly where its records end."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import logging
import os
import secrets
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from aiohttp import web

from broker.audit.log import AuditLog
from broker.audit.usagesnap import SNAPSHOT_EVERY, restore_ledger, snapshot_body
from broker.core.errors import AuditUnavailable, BrokerError, ConfigError
from broker.core.limits import UsageLedger
from broker.core.manifest import Manifest
from broker.scopes.loader import load_manifest
from broker.settings import DEFAULT_MAX_BODY, VaultSettings
from broker.sidecar.fleetledger import DEFAULT_LEASE_TTL, FleetLedger
from broker.sidecar.listener import IDLE_TIMEOUT, MAX_CONNECTIONS, SocketAccess, listen, waiting_app
from broker.sidecar.metrics import SidecarMetrics
from broker.sidecar.notify import WebhookNotifier
from broker.sidecar.probes import ProbeListener
from broker.sidecar.runtime import Runtime
from broker.sidecar.server import build_app
from broker.sidecar.service import CredentialService
from broker.sidecar.watcher import (
    DEFAULT_MANIFEST_POLL,
    ManifestWatcher,
    vault_afetch,
    vault_agent,
    vault_fetch,
)
from broker.vault.asyncapi import AsyncVault
from broker.vault.ledgerstore import VaultLedgerStore
from broker.vault.transit import LoopCheckpointSigner

log = logging.getLogger("broker.sidecar.main")

VAULT_THREADS = 64
START_GRACE = 3.0  # seconds to wait for Vault before listening anyway
LATE_SETTLE = 5.0  # seconds a stopping sidecar waits for late credentials to be revoked


@dataclass(frozen=True)
class SidecarConfig:
    manifest_path: Path
    vault: VaultSettings
    listen: str  # "unix:/path/to.sock" or "127.0.0.1:8080" / ":8080" / "8080"
    audit_path: Path
    redact_key_file: Path | None = None
    max_body: int = DEFAULT_MAX_BODY
    poll_interval: float = 0.5
    manifest_poll_interval: float = DEFAULT_MANIFEST_POLL  # with manifest_path vault:<agent>
    checkpoint_every: int = 1000
    # Checkpoints every second while records arrive: the unanchored tail stays that short.
    checkpoint_interval: float = 1.0
    webhooks: tuple[str, ...] = ()  # notification receivers (broker.sidecar.notify)
    webhook_secret_file: Path | None = None  # signs every delivery (X-Broker-Signature)
    webhook_attempts: int = 5
    webhook_backoff: float = 0.5  # seconds before the first retry; doubles per retry
    idle_timeout: float = IDLE_TIMEOUT  # unfinished headers or an idle keep-alive: closed
    max_connections: int = MAX_CONNECTIONS
    socket_access: SocketAccess | None = None  # group/mode/peer allowlist of a unix socket
    metrics_listen: str | None = None  # a separate listener for /metrics and the probes only
    # "local": usage per sidecar (rebuilt from its own trail); "vault": budgets shared by every
    # replica of the agent through leases on Vault (broker.sidecar.fleetledger).
    ledger: str = "local"
    ledger_lease_ttl: float = DEFAULT_LEASE_TTL
    # ``BROKER_NODE_AGENT_SOCKET``: the node agent that polls Vault for every sidecar of the
    # node (``broker.sidecar.nodeagent``); its holder must be root, our user or one of these.
    node_agent: Path | None = None
    node_agent_uids: frozenset[int] = frozenset()
    extra: dict[str, Any] = field(default_factory=dict)


def _redact_key(config: SidecarConfig) -> bytes:
    """The keyed-hash key for redacted inputs: from a file, else made once beside the trail."""
    path = config.redact_key_file or config.audit_path.with_name(config.audit_path.name + ".key")
    if path.exists():
        return path.read_bytes()
    if config.redact_key_file is not None:
        raise ConfigError(f"the redaction key file {path} does not exist")
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
    return key


def _webhook_secret(config: SidecarConfig) -> bytes | None:
    from broker.sidecar.notify import read_secret_file

    return (
        None if config.webhook_secret_file is None else read_secret_file(config.webhook_secret_file)
    )


def _checkpoint_signer(runtime: Runtime, vault: AsyncVault) -> LoopCheckpointSigner:
    loop = asyncio.get_running_loop()
    return LoopCheckpointSigner(vault, loop, agent=runtime.agent)


class Sidecar:
    def __init__(self, config: SidecarConfig) -> None:
        self.config = config
        # ``vault:<agent>``: the manifest published in Vault, read once logged in, then watched.
        self._vault_agent = vault_agent(config.manifest_path)
        self.watcher: ManifestWatcher | None = None
        self._watch_vault: AsyncVault | None = None
        self.manifest: Manifest
        if self._vault_agent is None:
            self.manifest = load_manifest(config.manifest_path)
        self.runtime = Runtime(
            self._vault_agent or self.manifest.agent,
            config.vault,
            poll_interval=config.poll_interval,
        )
        if config.node_agent is not None:
            self.runtime.use_node_agent(config.node_agent, config.node_agent_uids)
        self.audit: AuditLog | None = None
        self.service: CredentialService | None = None
        self.notifier: WebhookNotifier | None = None
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self._snapshots: asyncio.Task[None] | None = None
        self._rotated = asyncio.Event()
        self.address = ""
        self.metrics_url = ""
        self.probes = (
            ProbeListener(
                config.metrics_listen,
                lambda: self.service,
                lambda: self.runtime.vault_problem or "not connected yet",
            )
            if config.metrics_listen
            else None
        )
        # The audit checkpoints' own Vault connection, closed after the trail's last one.
        self._checkpoint_vault = self.runtime.session.async_client(timeout=10.0, pool=2)

    async def start(self) -> str:
        # Manifest validation and the stores' work run in threads; the default pool (cores + 4)
        # is also where aiohttp resolves Vault's host name. Match the HTTP pool.
        asyncio.get_running_loop().set_default_executor(
            concurrent.futures.ThreadPoolExecutor(VAULT_THREADS, thread_name_prefix="vault")
        )
        await self.runtime.start()
        if self.probes is not None:
            self.metrics_url = await self.probes.start()
        # Usually Vault answers at once and the sidecar listens ready; if it does not, the
        # sidecar listens anyway after the grace, refusing and saying why in /readyz.
        with contextlib.suppress(TimeoutError):
            await self.runtime.wait_connected(START_GRACE)
        if self._vault_agent is not None:
            # No manifest, no service: until Vault answers (the runtime logs and retries),
            # a placeholder listens, alive on /healthz and 503 with the reason elsewhere.
            if not self.runtime.available():
                await self._wait_listening()
            await self._load_from_vault(self._vault_agent)
        ledger = restore_ledger(self.manifest, self.config.audit_path)
        if self.config.ledger == "vault":
            ledger = self._fleet_ledger(ledger)
        self.audit = AuditLog(
            self.config.audit_path,
            signer=_checkpoint_signer(self.runtime, self._checkpoint_vault),
            agent=self.manifest.agent,
            checkpoint_every=self.config.checkpoint_every,
            checkpoint_interval=self.config.checkpoint_interval,
        )
        for note in self.audit.notes:
            log.warning("audit trail recovery: %s", note)
        loop = asyncio.get_running_loop()

        def rotated() -> None:  # on the audit writer thread
            loop.call_soon_threadsafe(self._rotated.set)

        self.audit.on_rotate = self.audit.on_head = rotated
        self.service = CredentialService(
            self.manifest, self.runtime, self.audit, ledger, redact_key=_redact_key(self.config)
        )
        self.service.metrics = SidecarMetrics(
            actions=self.manifest.actions, budgets=self.manifest.budgets, agent=self.manifest.agent
        )
        if isinstance(ledger, FleetLedger):
            ledger.on_event = self._recorder(self.audit)
            ledger.on_usage = self.service.metrics.fleet_budget
        self.runtime.metrics = self.service.metrics
        self.service.approvals.metrics = self.service.metrics
        self._snapshots = asyncio.create_task(self._write_snapshots(ledger), name="snapshots")
        self.runtime.outstanding = self.service.outstanding_summary
        self.runtime.on_change = self.service.control_changed
        await self.runtime.announce()
        self.notifier = WebhookNotifier(
            self.config.webhooks,
            self.audit.append,
            attempts=self.config.webhook_attempts,
            backoff=self.config.webhook_backoff,
            secret=_webhook_secret(self.config),
        )
        await self.notifier.start()
        self.service.approvals.notifier = self.notifier
        await self.service.approvals.start(self.config.poll_interval)
        if self.watcher is not None:
            self.service.manifest_state = self.watcher.state
            self.watcher.start(self.service, self.audit, self.config.manifest_poll_interval)
            self.runtime.on_full_read = self.watcher.poke
        app = build_app(self.service, max_body=self.config.max_body)
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, keepalive_timeout=self.config.idle_timeout
        )
        await self._runner.setup()
        self.address, self._server = await listen(
            self._runner, self.config.listen, self.config.max_connections, self.config.socket_access
        )
        return self.address

    def _recorder(self, audit: AuditLog) -> Callable[[dict[str, Any]], None]:
        """Lease grants go on the trail from the event loop, without holding up the mint."""
        tasks: set[asyncio.Task[Any]] = set()

        def record(body: dict[str, Any]) -> None:
            task = asyncio.get_running_loop().create_task(audit.append(body, owned=True))
            tasks.add(task)
            task.add_done_callback(done)

        def done(task: asyncio.Task[Any]) -> None:
            tasks.discard(task)
            if not task.cancelled() and task.exception() is not None:
                log.warning("lease record not written: %s", task.exception())

        return record

    def _fleet_ledger(self, local: UsageLedger) -> FleetLedger:
        """Rates and slots as restored from this replica's trail; budgets from the fleet's."""
        store = VaultLedgerStore(
            lambda: self.runtime.sync_client, self.manifest.agent, self.config.vault.addr
        )
        fleet = FleetLedger(
            **{f.name: getattr(local, f.name) for f in fields(UsageLedger)},
            store=store,
            replica=f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}",
            ttl=self.config.ledger_lease_ttl,
        )
        fleet.configure(self.manifest)
        return fleet

    async def _write_snapshots(self, ledger: UsageLedger) -> None:
        """A usage snapshot now, then every SNAPSHOT_EVERY records and after each rotation,
        so a restart replays a bounded tail (``broker.audit.usagesnap``). Between them it
        sleeps until the trail says so (``on_rotate``, ``on_head``): an idle sidecar's trail
        wakes nothing; after a failed write it retries every second."""
        assert self.audit is not None
        last, retry = -SNAPSHOT_EVERY, None
        while True:
            if self._rotated.is_set() or self.audit.head[0] - last >= SNAPSHOT_EVERY:
                self._rotated.clear()
                body = snapshot_body(self.manifest.agent, ledger, time.time())
                try:
                    last, retry = (await self.audit.append(body, owned=True)).seq, None
                except AuditUnavailable as exc:
                    log.warning("usage snapshot not written: %s", exc.detail)
                    retry = 1.0
            self.audit.wake_at = last + SNAPSHOT_EVERY
            if retry is None and self.audit.head[0] - last >= SNAPSHOT_EVERY:
                continue  # reached before wake_at was set: the writer will not call
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._rotated.wait(), retry)

    async def _wait_listening(self) -> None:
        app = waiting_app(lambda: self.runtime.vault_problem or "not connected yet")
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        address, server = await listen(
            runner, self.config.listen, self.config.max_connections, self.config.socket_access
        )
        log.warning(
            "waiting for Vault before loading the manifest; meanwhile %s answers 503", address
        )
        try:
            await self.runtime.wait_connected()
        finally:
            server.close()
            await runner.cleanup()
        if address.startswith("http://"):  # the real listener takes the same port
            self.config = replace(self.config, listen=address.removeprefix("http://"))

    async def _load_from_vault(self, agent: str) -> None:
        # A timeout of its own: a hung Vault delays only the watcher.
        self._watch_vault = self.runtime.session.async_client(timeout=2.0, pool=1)
        self.watcher = ManifestWatcher(
            agent,
            vault_fetch(self.runtime.session, agent),
            afetch=vault_afetch(self._watch_vault, agent),
        )
        try:
            self.manifest = await self.watcher.aload_initial()
        except BaseException:
            await self._watch_vault.close()
            await self.runtime.stop()  # fail closed: no good manifest, no sidecar
            raise

    async def stop(self) -> None:
        if self._snapshots is not None:
            self._snapshots.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._snapshots
        if self.watcher is not None:
            await self.watcher.stop()
        if self._watch_vault is not None:
            await self._watch_vault.close()
        if self._server is not None:
            self._server.close()  # no new connections; the runner closes the open ones
        if self._runner is not None:
            await self._runner.cleanup()
        if self.probes is not None:
            await self.probes.stop()
        if self.service is not None and isinstance(self.service.ledger, FleetLedger):
            try:  # the unspent rest of this replica's slices is free for the others at once
                for body in await self.service.ledger.give_back(time.time()):
                    await self.service.audit.append(body)
            except BrokerError as exc:
                log.warning("leases not given back (they expire by themselves): %s", exc.detail)
        if self.service is not None:
            await self.service.approvals.stop()
            # Credentials that came back after their request gave up are being revoked.
            await self.service.minter.settle_late(LATE_SETTLE)
            await self.service.minter.vault.close()
        if self.notifier is not None:
            await self.notifier.stop()
        if self.audit is not None:
            await self.audit.aclose()
        await self._checkpoint_vault.close()
        await self.runtime.stop()


async def serve(
    config: SidecarConfig, on_ready: Callable[[Sidecar], Awaitable[None] | None] | None = None
) -> None:
    """Run until SIGTERM or SIGINT, then stop cleanly (the audit trail closes last-but-one)."""
    sidecar = Sidecar(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        starting = asyncio.ensure_future(sidecar.start())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():  # stopped while waiting for Vault at start-up
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            return
        stopping.cancel()
        address = starting.result()
        # Start-up objects leave the collector's sight and young collections run less often:
        # at thousands of mints a second, collector pauses were most of the p99 latency
        # (`broker bench mint`: p99 50 ms with the defaults, 20 ms with these).
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 1000)
        log.info("sidecar for %s listening on %s", sidecar.manifest.agent, address)
        if on_ready is not None:
            result = on_ready(sidecar)
            if result is not None:
                await result
        await stop.wait()
    finally:
        await sidecar.stop()


def monotonic_ms() -> float:
    return time.monotonic() * 1000
