"""Mint each credential kind through Vault, for one agent.

``jwt`` signs locally with the Vault-certified in-memory key (no Vault round trip);
``vault_token`` creates a child token through the agent's token role; ``dynamic`` reads
a database secrets engine role and records the lease. Every Vault call goes through the
pooled aiohttp client on the event loop (``broker.vault.calls`` steps).

Every Vault call on the mint path has a deadline (``MINT_DEADLINE``) that keeps the answer
within the sidecar's 2 s promise. At the deadline the agent gets 503, but the call is not
cut: Vault may already be creating the credential, and a cut connection would leave it
alive with nobody knowing its id. The call runs on for up to ``LATE_WINDOW`` and whatever
it returns late goes to an ``on_late`` handler, which revokes it and records that."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from broker.core.errors import BackendUnavailable
from broker.sidecar.signing import ActionTokenSigner
from broker.vault.asyncapi import AsyncVault
from broker.vault.database import issue_credential_steps
from broker.vault.layout import action_token_role
from broker.vault.session import VaultSession

# Seconds a Vault call on the mint path may take before the agent is told 503: with the
# decision and the refusal's audit record it stays under the 2 s promise.
MINT_DEADLINE = 1.5
# How long an abandoned call is still awaited: whatever Vault creates in that time is revoked.
LATE_WINDOW = 120.0


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


LateHandler = Callable[["IssuedCredential"], Awaitable[None]]
T = TypeVar("T")


async def bounded(call: Awaitable[T], seconds: float, what: str) -> T:
    """``call``'s result, or BackendUnavailable after ``seconds``; the call itself runs on
    (shielded) so that a Vault write in progress is never cut half-way."""
    try:
        return await asyncio.wait_for(asyncio.shield(call), seconds)
    except TimeoutError:
        raise BackendUnavailable(f"Vault did not answer {what} within {seconds:g} s") from None


class Minter:
    def __init__(
        self, session: VaultSession, signer: ActionTokenSigner, deadline: float = MINT_DEADLINE
    ) -> None:
        self.session = session
        self.signer = signer
        self.deadline = deadline
        # Long timeouts on purpose: the deadline is enforced above the connection (see the
        # module docstring), and a late answer is what lets the sidecar revoke what it made.
        self.vault = AsyncVault(
            session.addr,
            lambda: session.token,
            timeout=LATE_WINDOW,
            tls=session.tls,
            endpoints=session.endpoints,
        )
        self._late: set[asyncio.Task[Any]] = set()

    async def within_deadline(
        self, call: Awaitable[IssuedCredential], what: str, on_late: LateHandler
    ) -> IssuedCredential:
        """``call``'s credential, or BackendUnavailable at the deadline; a credential that
        arrives after that (or after the caller was cancelled) goes to ``on_late``."""
        task = asyncio.ensure_future(call)
        try:
            return await asyncio.wait_for(asyncio.shield(task), self.deadline)
        except TimeoutError:
            task.add_done_callback(self._hand_over(on_late))
            raise BackendUnavailable(
                f"Vault did not answer the {what} within {self.deadline:g} s; nothing is "
                "minted, and anything Vault creates for it later is revoked"
            ) from None
        except asyncio.CancelledError:
            task.add_done_callback(self._hand_over(on_late))
            raise

    def _hand_over(
        self, on_late: LateHandler
    ) -> Callable[[asyncio.Future[IssuedCredential]], None]:
        def done(task: asyncio.Future[IssuedCredential]) -> None:
            if task.cancelled() or task.exception() is not None:
                return  # nothing was created, or Vault refused: nothing to revoke
            late = asyncio.ensure_future(on_late(task.result()))
            self._late.add(late)
            late.add_done_callback(self._late.discard)

        return done

    async def settle_late(self, timeout: float) -> None:
        """Wait (bounded) for late credentials being revoked; for shutdown and tests."""
        if self._late:
            await asyncio.wait(set(self._late), timeout=timeout)

    def mint_jwt(
        self, *, jti: str, now: float, ttl: int, claims: dict[str, Any]
    ) -> IssuedCredential:
        minted = self.signer.mint(now, ttl, jti=jti, **claims)
        return IssuedCredential(
            kind="jwt",
            credential_id=minted.jti,
            expires_at=minted.expires_at,
            ttl=minted.expires_at - int(now),
            # RFC 9449 section 5: a key-bound token is of type DPoP, not Bearer.
            secret={"token": minted.token, "token_type": "DPoP" if "jkt" in claims else "Bearer"},
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
        cred = await self.vault.run(issue_credential_steps(mount, role, ttl))
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
