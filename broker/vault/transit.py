"""Audit checkpoints signed by Vault transit (ed25519) and the latest signed head kept in KV v2.

The private key never leaves Vault; its public keys are read once so that anyone can verify
a trail offline. The head is published at ``<kv_mount>/audit/<agent>/head`` so that cutting
records off the end of the file, which the hash chain alone cannot see, is detected."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from broker.core.errors import NotFound
from broker.settings import VaultSettings
from broker.vault._errors import translate_errors
from broker.vault.asyncapi import AsyncVault
from broker.vault.layout import KV_MOUNT, TRANSIT_MOUNT, audit_key
from broker.vault.session import make_client

AUDIT_KEY = "audit-checkpoint"  # the shared key of old; each agent now has audit_key(agent)

T = TypeVar("T")


@dataclass(frozen=True)
class PublishedHead:
    seq: int
    hash: str
    signature: str


class TransitCheckpointSigner:
    """A ``broker.audit.records.CheckpointSigner`` backed by Vault. Each call is one HTTP round trip."""

    def __init__(
        self,
        client: Any,
        *,
        transit_mount: str = TRANSIT_MOUNT,
        key: str | None = None,
        kv_mount: str = KV_MOUNT,
        agent: str,
    ) -> None:
        self._client = client
        self._transit, self._kv, self.agent = transit_mount, kv_mount, agent
        self._key = key or audit_key(agent)
        self._addr = str(getattr(client, "url", ""))

    @classmethod
    def from_settings(
        cls, settings: VaultSettings, *, agent: str, timeout: float = 10.0
    ) -> TransitCheckpointSigner:
        token = settings.token.get_secret_value() if settings.token else None
        return cls(make_client(settings.addr, token, timeout, tls=settings.tls), agent=agent)

    def ensure_key(self) -> str:
        """Mount transit and KV v2 if absent and create the ed25519 key; "created" or "present"."""
        self._ensure_mount(self._transit, "transit", None)
        self._ensure_mount(self._kv, "kv", {"version": "2"})
        try:
            with translate_errors("read the audit checkpoint key", self._addr):
                self._client.secrets.transit.read_key(name=self._key, mount_point=self._transit)
            return "present"
        except NotFound:
            pass
        with translate_errors("create the audit checkpoint key", self._addr):
            self._client.secrets.transit.create_key(
                name=self._key, key_type="ed25519", mount_point=self._transit
            )
        return "created"

    def _ensure_mount(self, path: str, kind: str, options: dict[str, str] | None) -> None:
        with translate_errors("list secrets engines", self._addr):
            mounts = self._client.sys.list_mounted_secrets_engines()
        if f"{path}/" in mounts.get("data", mounts):
            return
        with translate_errors(f"enable the {kind} engine at {path}", self._addr):
            self._client.sys.enable_secrets_engine(kind, path=path, options=options)

    def sign(self, message: bytes) -> tuple[str, int]:
        with translate_errors("sign an audit checkpoint", self._addr):
            resp = self._client.secrets.transit.sign_data(
                name=self._key,
                hash_input=base64.b64encode(message).decode("ascii"),
                mount_point=self._transit,
            )
        return _signature(resp)

    def public_keys(self) -> dict[int, bytes]:
        """Every version's raw ed25519 public key, for offline verification."""
        with translate_errors("read the audit checkpoint public keys", self._addr):
            resp = self._client.secrets.transit.read_key(name=self._key, mount_point=self._transit)
        keys = resp["data"]["keys"]
        return {int(v): base64.b64decode(k["public_key"]) for v, k in keys.items()}

    def publish_head(self, agent: str, seq: int, hash: str, signature: str) -> None:
        secret = {"seq": seq, "hash": hash, "signature": signature}
        with translate_errors("publish the audit head", self._addr):
            self._client.secrets.kv.v2.create_or_update_secret(
                path=self._head_path(agent), secret=secret, mount_point=self._kv
            )

    def read_head(self, agent: str | None = None) -> PublishedHead | None:
        """The latest head published for ``agent`` (default: this signer's), or None."""
        try:
            with translate_errors("read the published audit head", self._addr):
                resp = self._client.secrets.kv.v2.read_secret_version(
                    path=self._head_path(agent or self.agent),
                    mount_point=self._kv,
                    raise_on_deleted_version=True,
                )
        except NotFound:
            return None
        data = resp["data"]["data"]
        return PublishedHead(int(data["seq"]), str(data["hash"]), str(data["signature"]))

    def _head_path(self, agent: str) -> str:
        return _head_path(agent)


class LoopCheckpointSigner:
    """The sidecar's ``CheckpointSigner``: the same two Vault calls, made on the event loop
    through the pooled aiohttp client. The audit log's signing thread hands each call to the
    loop and waits with the GIL released; through hvac, the thread held the GIL for about a
    millisecond per call, which showed as a stall in the mint latencies at every checkpoint.
    Never call it from the loop's own thread: it would wait for itself."""

    def __init__(
        self,
        vault: AsyncVault,
        loop: asyncio.AbstractEventLoop,
        *,
        agent: str,
        key: str | None = None,
        timeout: float = 15.0,
    ) -> None:
        self._vault, self._loop, self.agent, self._key = vault, loop, agent, key or audit_key(agent)
        self._timeout = timeout

    def sign(self, message: bytes) -> tuple[str, int]:
        body = {"input": base64.b64encode(message).decode("ascii")}
        path = f"{TRANSIT_MOUNT}/sign/{self._key}"
        return _signature(self._call(self._vault.post(path, body, "sign an audit checkpoint")))

    def publish_head(self, agent: str, seq: int, hash: str, signature: str) -> None:
        secret = {"seq": seq, "hash": hash, "signature": signature}
        self._call(self._vault.kv_write(_head_path(agent), secret))

    def _call(self, call: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(call, self._loop).result(self._timeout)


def _signature(resp: dict[str, Any]) -> tuple[str, int]:
    signature = str(resp["data"]["signature"])
    version = resp["data"].get("key_version") or signature.split(":")[1].lstrip("v")
    return signature, int(version)


def _head_path(agent: str) -> str:
    if not agent or "/" in agent or agent in {".", ".."}:
        raise ValueError(f"agent {agent!r} is not usable in a Vault path")
    return f"audit/{agent}/head"
