"""Assemble and run one agent's sidecar: manifest, Vault runtime, audit trail, usage ledger,
HTTP server on a unix socket (mode 0600) or 127.0.0.1:PORT.

Budgets survive restarts because the ledger is rebuilt from the audit trail itself: every
credential that was handed out has a durable record with its charges and time, so a
sidecar killed with SIGKILL continues exactly where its records end."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import json
import logging
import os
import secrets
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from broker.auditlog import AuditLog
from broker.errors import ConfigError
from broker.limits import UsageLedger
from broker.loader import load_manifest
from broker.manifest import Manifest
from broker.metrics import SidecarMetrics
from broker.notify import WebhookNotifier
from broker.replay import record_action, record_time
from broker.runtime import Runtime
from broker.server import build_app
from broker.service import CredentialService
from broker.settings import DEFAULT_MAX_BODY, VaultSettings
from broker.vault.asyncapi import AsyncVault
from broker.vault.transit import LoopCheckpointSigner
from broker.watcher import DEFAULT_MANIFEST_POLL, ManifestWatcher, vault_agent, vault_fetch

log = logging.getLogger("broker.sidecar")

VAULT_THREADS = 64


@dataclass(frozen=True)
class SidecarConfig:
    manifest_path: Path
    vault: VaultSettings
    listen: str  # "unix:/path/to.sock" or "127.0.0.1:8080" / ":8080" / "8080"
    audit_path: Path
    redact_key_file: Path | None = None
    max_body: int = DEFAULT_MAX_BODY
    poll_interval: float = 0.25
    manifest_poll_interval: float = DEFAULT_MANIFEST_POLL  # with manifest_path vault:<agent>
    checkpoint_every: int = 1000
    checkpoint_interval: float = 60.0
    webhooks: tuple[str, ...] = ()  # notification receivers (broker.notify)
    webhook_attempts: int = 5
    webhook_backoff: float = 0.5  # seconds before the first retry; doubles per retry
    extra: dict[str, Any] = field(default_factory=dict)


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


@dataclass(frozen=True)
class _Charged:
    action: str
    charges: dict[str, float]


def _records(path: Path) -> Iterator[dict[str, Any]]:
    if not path.exists():
        return
    with path.open("rb") as fh:
        for line in fh:
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    yield record


def restore_ledger(manifest: Manifest, audit_path: Path) -> UsageLedger:
    """Replay the audit trail's issued credentials and outcomes into a fresh ledger."""
    ledger = UsageLedger.for_manifest(manifest)
    for record in _records(audit_path):
        if record.get("agent_id") != manifest.agent:
            continue
        if (
            record.get("type") == "decision"
            and record.get("credential_id")
            and record.get("outcome") == "allow"
        ):
            at = record_time(record)
            charged = _Charged(record_action(record), dict(record.get("charges") or {}))
            ledger.charge(
                charged, str(record["credential_id"]), at + float(record.get("ttl") or 0), at
            )
        elif record.get("type") == "outcome" and record.get("credential_id"):
            ledger.release(str(record["credential_id"]))
    return ledger


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


def _checkpoint_signer(runtime: Runtime, vault: AsyncVault) -> LoopCheckpointSigner:
    loop = asyncio.get_running_loop()
    return LoopCheckpointSigner(vault, loop, agent=runtime.agent)


class Sidecar:
    def __init__(self, config: SidecarConfig) -> None:
        self.config = config
        # ``vault:<agent>``: the manifest published in Vault, read once logged in, then watched.
        self._vault_agent = vault_agent(config.manifest_path)
        self.watcher: ManifestWatcher | None = None
        self.manifest: Manifest
        if self._vault_agent is None:
            self.manifest = load_manifest(config.manifest_path)
        self.runtime = Runtime(
            self._vault_agent or self.manifest.agent,
            config.vault,
            poll_interval=config.poll_interval,
        )
        self.audit: AuditLog | None = None
        self.service: CredentialService | None = None
        self.notifier: WebhookNotifier | None = None
        self._runner: web.AppRunner | None = None
        self.address = ""
        # The audit checkpoints' own Vault connection, closed after the trail's last one.
        self._checkpoint_vault = AsyncVault(
            config.vault.addr, lambda: self.runtime.session.token, timeout=10.0, pool=2
        )

    async def start(self) -> str:
        # hvac is synchronous: Vault calls run in threads. The default pool (cores + 4) would
        # cap concurrent mints far below what Vault serves; match the HTTP pool instead.
        asyncio.get_running_loop().set_default_executor(
            concurrent.futures.ThreadPoolExecutor(VAULT_THREADS, thread_name_prefix="vault")
        )
        await self.runtime.start()
        if self._vault_agent is not None:
            await self._load_from_vault(self._vault_agent)
        ledger = restore_ledger(self.manifest, self.config.audit_path)
        self.audit = AuditLog(
            self.config.audit_path,
            signer=_checkpoint_signer(self.runtime, self._checkpoint_vault),
            agent=self.manifest.agent,
            checkpoint_every=self.config.checkpoint_every,
            checkpoint_interval=self.config.checkpoint_interval,
        )
        for note in self.audit.notes:
            log.warning("audit trail recovery: %s", note)
        self.service = CredentialService(
            self.manifest, self.runtime, self.audit, ledger, redact_key=_redact_key(self.config)
        )
        self.service.metrics = SidecarMetrics(
            actions=self.manifest.actions, budgets=self.manifest.budgets
        )
        self.runtime.metrics = self.service.metrics
        self.service.approvals.metrics = self.service.metrics
        self.runtime.outstanding = self.service.outstanding_summary
        self.runtime.on_change = self.service.control_changed
        await self.runtime.announce()
        self.notifier = WebhookNotifier(
            self.config.webhooks,
            self.audit.append,
            attempts=self.config.webhook_attempts,
            backoff=self.config.webhook_backoff,
        )
        await self.notifier.start()
        self.service.approvals.notifier = self.notifier
        await self.service.approvals.start(self.config.poll_interval)
        if self.watcher is not None:
            self.service.manifest_state = self.watcher.state
            self.watcher.start(self.service, self.audit, self.config.manifest_poll_interval)
        app = build_app(self.service, max_body=self.config.max_body)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        self.address = await self._listen(self._runner)
        return self.address

    async def _load_from_vault(self, agent: str) -> None:
        self.watcher = ManifestWatcher(agent, vault_fetch(self.runtime.session, agent))
        try:
            self.manifest = await asyncio.to_thread(self.watcher.load_initial)
        except BaseException:
            await self.runtime.stop()  # fail closed: no good manifest, no sidecar
            raise

    async def _listen(self, runner: web.AppRunner) -> str:
        kind, where = parse_listen(self.config.listen)
        if kind == "unix":
            path = Path(str(where))
            path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            old = os.umask(0o177)  # the socket is born 0600: no window where others can connect
            try:
                await web.UnixSite(runner, str(path)).start()
            finally:
                os.umask(old)
            os.chmod(path, 0o600)
            return f"unix:{path}"
        site = web.TCPSite(runner, "127.0.0.1", int(where))
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self.watcher is not None:
            await self.watcher.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        if self.service is not None:
            await self.service.approvals.stop()
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
        address = await sidecar.start()
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
