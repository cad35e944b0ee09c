"""Publish a sidecar's public signing keys where ``broker issuer`` reads them.

One KV v2 document per agent (``issuer/keys/<agent>``), written only by that agent's sidecars
(Vault's policy says so). Replicas of one agent share it, so every write is a check-and-set
merge: a replica never drops another's key."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from broker.core.controlstate import GLOBAL_PATH, agent_path
from broker.core.errors import BackendUnavailable, NotFound
from broker.core.jwk import merge_published, merge_status
from broker.vault import calls
from broker.vault.asyncapi import AsyncVault
from broker.vault.calls import Steps, drive
from broker.vault.layout import (
    ISSUER_KEYS_DIR,
    KV_MOUNT,
    PKI_MOUNT,
    STATUS_DIR,
    STATUS_LIST_KEY,
    TRANSIT_MOUNT,
    issuer_keys_path,
    status_path,
)

if TYPE_CHECKING:
    import hvac

_ATTEMPTS = 5


def publish_keys(
    client: hvac.Client, agent: str, entries: Sequence[dict[str, Any]], now: float, addr: str = ""
) -> None:
    drive(client, publish_keys_steps(agent, entries, now))


def publish_keys_steps(agent: str, entries: Sequence[dict[str, Any]], now: float) -> Steps[None]:
    path = issuer_keys_path(agent)
    if not (yield from _merge(path, lambda doc: merge_published(doc, entries, now))):
        raise BackendUnavailable(
            f"could not publish keys at {KV_MOUNT}/{path}: too many concurrent writers"
        )


def _merge(path: str, merge: Callable[[dict[str, Any]], dict[str, Any]]) -> Steps[bool]:
    """Read, merge, write back with check-and-set; False when other writers kept winning."""
    for _ in range(_ATTEMPTS):
        doc, version = yield from calls.kv_read_versioned(path)
        if (yield from calls.kv_write_cas(path, merge(doc or {}), version)) is not None:
            return True
    return False


@dataclass(frozen=True)
class IssuerView:
    """What ``broker issuer`` reads from Vault, with a ``broker-issuer`` policy token."""

    keys: dict[str, dict[str, Any]]  # agent -> published-keys document
    min_generation: int
    ca_pem: str
    status: dict[str, dict[str, Any]] = field(default_factory=dict)  # agent -> status doc
    killed: frozenset[str] = frozenset()  # agents whose tokens are all revoked
    status_keys: dict[str, str] = field(default_factory=dict)  # version -> PEM public key


async def read_published(vault: AsyncVault) -> IssuerView:
    """Every agent's published keys and status lists, the kill flags and revoked-below
    generation, the broker CA, and the public keys that sign status lists."""
    agents = [a for a in await _list(vault, ISSUER_KEYS_DIR) if not a.endswith("/")]
    listed = [a for a in await _list(vault, STATUS_DIR) if not a.endswith("/")]
    keys, status, controls = await asyncio.gather(
        asyncio.gather(*(vault.kv_read(issuer_keys_path(a)) for a in agents)),
        asyncio.gather(*(vault.kv_read(status_path(a)) for a in listed)),
        asyncio.gather(*(vault.kv_read(agent_path(a)) for a in listed)),
    )
    control = await vault.kv_read(GLOBAL_PATH) or {}
    killed = {a for a, doc in zip(listed, controls, strict=True) if (doc or {}).get("killed")}
    if control.get("killed_all"):
        killed = set(listed)
    return IssuerView(
        keys={a: d for a, d in zip(agents, keys, strict=True) if d is not None},
        min_generation=int(control.get("min_generation", 0) or 0),
        ca_pem=await _ca_pem(vault),
        status={a: d for a, d in zip(listed, status, strict=True) if d is not None},
        killed=frozenset(killed),
        status_keys=await _status_keys(vault),
    )


async def _ca_pem(vault: AsyncVault) -> str:
    ca = await vault.get(f"{PKI_MOUNT}/cert/ca", "read of the broker CA")
    pem = str((ca.get("data") or {}).get("certificate") or "")
    if "BEGIN CERTIFICATE" not in pem:
        raise BackendUnavailable(
            f"Vault at {vault.addr} has no broker CA yet; run `broker bootstrap`"
        )
    return pem


async def _status_keys(vault: AsyncVault) -> dict[str, str]:
    try:
        found = await vault.get(
            f"{TRANSIT_MOUNT}/keys/{STATUS_LIST_KEY}", "read of the status-list key"
        )
    except NotFound:
        return {}
    versions = (found.get("data") or {}).get("keys") or {}
    return {
        str(v): str(k.get("public_key", "")) for v, k in versions.items() if isinstance(k, dict)
    }


async def sign_status_list(vault: AsyncVault, signing_input: bytes, version: str) -> bytes:
    """Vault transit signs a Status List Token with key ``version`` (ES256, raw r||s)."""
    body = {
        "input": base64.b64encode(signing_input).decode(),
        "hash_algorithm": "sha2-256",
        "marshaling_algorithm": "jws",
        "key_version": int(version),
    }
    found = await vault.post(f"{TRANSIT_MOUNT}/sign/{STATUS_LIST_KEY}", body, "sign a status list")
    sig = str(found["data"]["signature"]).split(":", 2)[2]
    return base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))


def publish_status(
    client: hvac.Client, agent: str, lists: dict[str, dict[str, Any]], now: float, addr: str = ""
) -> None:
    drive(client, publish_status_steps(agent, lists, now))


def publish_status_steps(agent: str, lists: dict[str, dict[str, Any]], now: float) -> Steps[None]:
    """The sidecar's status lists, merged by check-and-set into the agent's document."""
    path = status_path(agent)
    if not (yield from _merge(path, lambda doc: merge_status(doc, lists, now))):
        raise BackendUnavailable(f"could not publish status lists at {KV_MOUNT}/{path}")


async def _list(vault: AsyncVault, path: str) -> list[str]:
    try:
        found = await vault.get(
            f"{KV_MOUNT}/metadata/{path}?list=true", f"list of {KV_MOUNT}/{path}"
        )
    except NotFound:
        return []
    keys = (found.get("data") or {}).get("keys") or []
    return [str(k) for k in keys]
