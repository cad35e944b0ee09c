"""Publish a sidecar's public signing keys where ``broker issuer`` reads them.

One KV v2 document per agent (``issuer/keys/<agent>``), written only by that agent's sidecars
(Vault's policy says so). Replicas of one agent share it, so every write is a check-and-set
merge: a replica never drops another's key."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import hvac

from broker.controlstate import GLOBAL_PATH
from broker.errors import BackendUnavailable, NotFound
from broker.jwk import merge_published
from broker.vault._errors import translate_errors
from broker.vault.asyncapi import AsyncVault
from broker.vault.layout import ISSUER_KEYS_DIR, KV_MOUNT, PKI_MOUNT, issuer_keys_path

_ATTEMPTS = 5


def publish_keys(
    client: hvac.Client, agent: str, entries: Sequence[dict[str, Any]], now: float, addr: str = ""
) -> None:
    path = issuer_keys_path(agent)
    for _ in range(_ATTEMPTS):
        doc, version = _read(client, path, addr)
        merged = merge_published(doc, entries, now)
        if _write_cas(client, path, merged, version, addr):
            return
    raise BackendUnavailable(
        f"could not publish keys at {KV_MOUNT}/{path}: too many concurrent writers"
    )


def _read(client: hvac.Client, path: str, addr: str) -> tuple[dict[str, Any], int]:
    with translate_errors(f"read of {KV_MOUNT}/{path}", addr):
        try:
            result = client.secrets.kv.v2.read_secret_version(
                path=path, mount_point=KV_MOUNT, raise_on_deleted_version=False
            )
        except hvac.exceptions.InvalidPath:
            return {}, 0
    data = (result or {}).get("data") or {}
    version = int((data.get("metadata") or {}).get("version") or 0)
    return dict(data.get("data") or {}), version


def _write_cas(
    client: hvac.Client, path: str, doc: dict[str, Any], version: int, addr: str
) -> bool:
    with translate_errors(f"write of {KV_MOUNT}/{path}", addr):
        try:
            client.secrets.kv.v2.create_or_update_secret(
                path=path, secret=doc, cas=version, mount_point=KV_MOUNT
            )
        except hvac.exceptions.InvalidRequest as exc:
            if "check-and-set" in str(exc):
                return False
            raise
    return True


async def read_published(vault: AsyncVault) -> tuple[dict[str, dict[str, Any]], int, str]:
    """For ``broker issuer``: every agent's published keys, the revoked-below generation and
    the broker CA (PEM), read with a token under the ``broker-verifier`` policy."""
    listing = await _list(vault, ISSUER_KEYS_DIR)
    agents = [a for a in listing if not a.endswith("/")]
    docs = await asyncio.gather(*(vault.kv_read(issuer_keys_path(a)) for a in agents))
    control = await vault.kv_read(GLOBAL_PATH) or {}
    ca = await vault.get(f"{PKI_MOUNT}/cert/ca", "read of the broker CA")
    pem = str((ca.get("data") or {}).get("certificate") or "")
    if "BEGIN CERTIFICATE" not in pem:
        raise BackendUnavailable(
            f"Vault at {vault.addr} has no broker CA yet; run `broker bootstrap`"
        )
    found = {a: d for a, d in zip(agents, docs, strict=True) if d is not None}
    return found, int(control.get("min_generation", 0) or 0), pem


async def _list(vault: AsyncVault, path: str) -> list[str]:
    try:
        found = await vault.get(
            f"{KV_MOUNT}/metadata/{path}?list=true", f"list of {KV_MOUNT}/{path}"
        )
    except NotFound:
        return []
    keys = (found.get("data") or {}).get("keys") or []
    return [str(k) for k in keys]
