"""Revocation in Vault, and the lookups that prove it took effect.

A runbook command reports what Vault confirms, not what it attempted: after each revocation
it looks the token or lease up again, and only a refused lookup counts as revoked. Both
lookups run with the operator's token (``auth/token/lookup-accessor``, ``sys/leases/lookup``),
so checking never spends one of a token's uses."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import hvac

from broker.core.errors import BackendUnavailable, NotFound
from broker.vault._errors import translate_errors
from broker.vault.asyncapi import AsyncVault
from broker.vault.layout import APPROLE_MOUNT, approle_role

# What Vault answers for a token or lease that does not exist (any more).
_GONE = ("invalid accessor", "invalid lease", "lease not found", "not found")


def _gone(exc: hvac.exceptions.VaultError) -> bool:
    text = "; ".join(str(e) for e in (exc.errors or [])).lower() or str(exc).lower()
    return any(marker in text for marker in _GONE)


def token_info(client: hvac.Client, accessor: str, addr: str = "") -> dict[str, Any] | None:
    """The token behind ``accessor`` (no secret in it), or None when Vault has none."""
    with translate_errors("token lookup", addr):
        try:
            data = client.auth.token.lookup_accessor(accessor)["data"]
        except (hvac.exceptions.InvalidRequest, hvac.exceptions.InvalidPath) as exc:
            if _gone(exc) or isinstance(exc, hvac.exceptions.InvalidPath):
                return None
            raise
    return dict(data)


def revoke_token(client: hvac.Client, accessor: str, addr: str = "") -> None:
    """Revoke the token and, in Vault, every child token and lease it created."""
    with translate_errors("token revocation", addr):
        try:
            client.auth.token.revoke_accessor(accessor)
        except (hvac.exceptions.InvalidRequest, hvac.exceptions.InvalidPath) as exc:
            if not (_gone(exc) or isinstance(exc, hvac.exceptions.InvalidPath)):
                raise


def lease_info(client: hvac.Client, lease_id: str, addr: str = "") -> dict[str, Any] | None:
    with translate_errors("lease lookup", addr):
        try:
            data = client.sys.read_lease(lease_id)["data"]
        except (hvac.exceptions.InvalidRequest, hvac.exceptions.InvalidPath) as exc:
            if _gone(exc) or isinstance(exc, hvac.exceptions.InvalidPath):
                return None
            raise
    return dict(data)


def revoke_lease(client: hvac.Client, lease_id: str, addr: str = "") -> None:
    with translate_errors("lease revocation", addr):
        try:
            client.sys.revoke_lease(lease_id)
        except (hvac.exceptions.InvalidRequest, hvac.exceptions.InvalidPath) as exc:
            if not (_gone(exc) or isinstance(exc, hvac.exceptions.InvalidPath)):
                raise


def approle_exists(client: hvac.Client, agent: str, addr: str = "") -> bool:
    try:
        with translate_errors("AppRole role read", addr):
            found = client.read(f"auth/{APPROLE_MOUNT}/role/{approle_role(agent)}")
    except NotFound:
        return False
    return found is not None


def secret_id_accessors(client: hvac.Client, agent: str, addr: str = "") -> list[str]:
    with translate_errors("AppRole secret id list", addr):
        try:
            listed = client.list(f"auth/{APPROLE_MOUNT}/role/{approle_role(agent)}/secret-id")
        except hvac.exceptions.InvalidPath:
            return []
    return [str(k) for k in ((listed or {}).get("data") or {}).get("keys", [])]


def destroy_secret_ids(client: hvac.Client, agent: str, addr: str = "") -> int:
    """Destroy every AppRole secret id of ``agent``: nothing can log in as it any more."""
    accessors = secret_id_accessors(client, agent, addr)
    with translate_errors("AppRole secret id destruction", addr):
        for accessor in accessors:
            client.auth.approle.destroy_secret_id_accessor(
                role_name=approle_role(agent),
                secret_id_accessor=accessor,
                mount_point=APPROLE_MOUNT,
            )
    return len(accessors)


async def _alive(vault: AsyncVault, kind: str, vault_id: str) -> bool | str:
    """True/False, or the reason the lookup itself failed."""
    if kind == "vault_token":
        path, body = "auth/token/lookup-accessor", {"accessor": vault_id}
    else:
        path, body = "sys/leases/lookup", {"lease_id": vault_id}
    try:
        await vault.post(path, body, f"{kind} lookup")
    except (NotFound, BackendUnavailable) as exc:
        if any(marker in exc.detail.lower() for marker in _GONE) or isinstance(exc, NotFound):
            return False
        return exc.detail
    return True


def still_alive(
    addr: str, token: str, items: Sequence[tuple[str, str]], concurrency: int = 32
) -> list[bool | str]:
    """Look many tokens (``vault_token``) and leases up at once, over one pooled connection
    (one by one through hvac, a thousand lookups take over a second)."""

    async def run() -> list[bool | str]:
        vault = AsyncVault(addr, lambda: token, timeout=5.0, pool=concurrency)
        gate = asyncio.Semaphore(concurrency)

        async def one(kind: str, vault_id: str) -> bool | str:
            async with gate:
                return await _alive(vault, kind, vault_id)

        try:
            return list(await asyncio.gather(*(one(k, v) for k, v in items)))
        finally:
            await vault.close()

    return asyncio.run(run())
