"""Mint each credential kind through Vault, for one agent.

``jwt`` signs locally with the Vault-certified in-memory key (no Vault round trip);
``vault_token`` creates a child token through the agent's token role; ``dynamic`` reads
a database secrets engine role and records the lease. hvac is synchronous, so Vault calls
run in worker threads and never block the event loop."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from broker.signing import ActionTokenSigner
from broker.vault.asyncapi import AsyncVault
from broker.vault.database import issue_credential
from broker.vault.layout import action_token_role
from broker.vault.session import VaultSession


@dataclass(frozen=True)
class IssuedCredential:
    """What the agent receives. ``secret`` is never logged or audited; ``credential_id`` is."""

    kind: str
    credential_id: str  # jti, token accessor or lease id
    expires_at: float
    ttl: int
    secret: dict[str, Any] = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "credential_id": self.credential_id,
            "expires_at": int(self.expires_at),
            "ttl": self.ttl,
            **self.secret,
        }


class Minter:
    def __init__(self, session: VaultSession, signer: ActionTokenSigner) -> None:
        self.session = session
        self.signer = signer
        self.vault = AsyncVault(session.addr, lambda: session.token)

    def mint_jwt(
        self, *, jti: str, now: float, ttl: int, claims: dict[str, Any]
    ) -> IssuedCredential:
        minted = self.signer.mint(now, ttl, jti=jti, **claims)
        return IssuedCredential(
            kind="jwt",
            credential_id=minted.jti,
            expires_at=minted.expires_at,
            ttl=minted.expires_at - int(now),
            secret={"token": minted.token, "token_type": "Bearer"},
        )

    async def mint_vault_token(
        self,
        *,
        now: float,
        action: str,
        policies: list[str],
        ttl: int,
        uses: int,
        meta: dict[str, str],
    ) -> IssuedCredential:
        body = {
            "policies": policies,
            "ttl": f"{ttl}s",
            "num_uses": uses,
            "renewable": False,
            "meta": meta,
            "no_default_policy": True,
        }
        role = action_token_role(self.signer.agent, action)
        result = await self.vault.post(f"auth/token/create/{role}", body, "child token creation")
        auth = result["auth"]
        granted = int(auth["lease_duration"])
        return IssuedCredential(
            kind="vault_token",
            credential_id=str(auth["accessor"]),
            expires_at=now + granted,
            ttl=granted,
            secret={
                "token": auth["client_token"],
                "policies": list(auth["policies"]),
                "uses": uses,
            },
        )

    async def mint_dynamic(
        self, *, now: float, mount: str, role: str, ttl: int
    ) -> IssuedCredential:
        cred = await asyncio.to_thread(
            issue_credential, self.session.client, mount=mount, role=role, ttl_seconds=ttl
        )
        return IssuedCredential(
            kind="dynamic",
            credential_id=cred.lease_id,
            expires_at=now + cred.lease_duration,
            ttl=cred.lease_duration,
            secret={
                "username": cred.username,
                "password": cred.password,
                "lease_id": cred.lease_id,
            },
        )
