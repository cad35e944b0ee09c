"""Credentials Vault created after the sidecar stopped waiting for them.

At its deadline a mint answers 503, but Vault may still create the token or lease (a frozen
Vault that wakes up works through its backlog). Such a credential was never handed out and
must not stay alive: it is revoked as soon as its id arrives, and the trail records both that
it existed and whether the revocation went through. Revocation is retried with backoff, since
a Vault that just answered late may be slow again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from broker.audit.records import iso_utc
from broker.core.errors import AuditUnavailable, BrokerError
from broker.sidecar.minting import IssuedCredential
from broker.vault.database import revoke_own_lease_steps
from broker.vault.session import VaultSession
from broker.vault.tokens import revoke_child_token_steps

log = logging.getLogger("broker.sidecar.orphans")

REVOKE_ATTEMPTS = 6


class _Sink(Protocol):
    async def append(self, body: Mapping[str, Any], *, owned: bool = False) -> Any: ...


async def revoke_in_vault(session: VaultSession, issued: IssuedCredential) -> None:
    """Revoke a child token or lease this sidecar minted; BrokerError when Vault refuses."""
    if issued.kind == "vault_token":
        await session.aio.run(revoke_child_token_steps(str(issued.secret["token"])))
    else:
        await session.aio.run(revoke_own_lease_steps(issued.credential_id))


class LateCredentials:
    def __init__(
        self, session: VaultSession, audit: _Sink, agent: str, clock: Callable[[], float]
    ) -> None:
        self._session, self._audit, self._agent, self._clock = session, audit, agent, clock
        self.backoff = 0.5  # seconds before the first retry; doubles per retry

    def handler(self, credential_id: str, action: str) -> Callable[[IssuedCredential], Any]:
        async def on_late(issued: IssuedCredential) -> None:
            await self.revoke(credential_id, action, issued)

        return on_late

    async def revoke(self, credential_id: str, action: str, issued: IssuedCredential) -> None:
        log.warning(
            "Vault created %s %s after its deadline (credential %s): revoking it",
            issued.kind,
            issued.credential_id,
            credential_id,
        )
        detail = await self._revoke_with_retries(issued)
        body = {
            "type": "late_credential",
            "timestamp": iso_utc(self._clock()),
            "at": round(self._clock(), 6),
            "agent_id": self._agent,
            "action": action,
            "credential_id": credential_id,
            "credential_kind": issued.kind,
            "vault_id": issued.credential_id,
            "revoked": not detail,
            "detail": detail or "created after the mint's deadline; revoked, never handed out",
        }
        with contextlib.suppress(AuditUnavailable):
            await self._audit.append(body, owned=True)

    async def _revoke_with_retries(self, issued: IssuedCredential) -> str:
        """'' once revoked, else the last error (logged: an operator must revoke it)."""
        delay, error = self.backoff, ""
        for attempt in range(REVOKE_ATTEMPTS):
            if attempt:
                await asyncio.sleep(delay)
                delay *= 2
            try:
                await revoke_in_vault(self._session, issued)
                return ""
            except BrokerError as exc:
                error = exc.detail
        log.error("could not revoke late %s %s: %s", issued.kind, issued.credential_id, error)
        return f"revocation failed: {error}"
