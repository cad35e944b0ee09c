"""Delegated grants on the sidecar: grant, look up, revoke, and give budgets back.

A grant is created for a named sub-agent (``POST /v1/delegations``) by the agent itself, or
by a sub-agent holding a grant (``parent_grant``), one level further down. Its scope is
checked and built by ``broker.scopes.delegation``; its budgets are carved out of the parent's
usage ledger (the agent's own, or the parent grant's) in the same synchronous stretch as the
check, so two grants cannot both take the last of a budget. The grant's record is durable in
the audit trail before its secret leaves the sidecar.

Invariants:
- A grant never outlives its parent, nor the budget window its carve was taken in (its
  expiry is clamped to the window's end), so a carve is never spent in a window it was not
  taken from.
- Revoking a grant revokes every grant below it (their chains name it); the revocation is
  in memory at once (exchanges refuse), then in ``delegations/<agent>`` in Vault (verifiers
  refuse every token whose ``act`` chain names a revoked grant), then on the record.
- What a grant did not spend goes back to its parent when it ends: revoked or expired,
  deepest first, so a parent gets back its children's unspent carves before its own.

Grants live in this sidecar's memory: a restarted sidecar knows none (their exchanges are
refused; their carves are not replayed from the trail, so the budget comes back)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

from broker.audit.records import iso_utc
from broker.core.delegation import (
    GRANT_HTTP_STATUS,
    GRANT_PREFIX,
    GRANT_TOKEN_TYPE,
    Actor,
    Grant,
    GrantReason,
    GrantRefusal,
    GrantRequest,
)
from broker.core.errors import AuditUnavailable, BrokerError, NotFound
from broker.core.limits import UsageLedger, window_end
from broker.core.manifest import Manifest
from broker.sidecar.fleetledger import FleetLedger
from broker.sidecar.reply import Reply
from broker.sidecar.service import CredentialService
from broker.vault.asyncapi import off_loop
from broker.vault.delegations import DelegationStore

_R = GrantReason


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def refusal_reply(refusal: GrantRefusal) -> Reply:
    return Reply(GRANT_HTTP_STATUS[refusal.reason], {"outcome": "deny", **refusal.to_json()})


class DelegationDesk:
    """The grants of one agent's sidecar, by id, and each grant's own usage ledger."""

    def __init__(
        self,
        service: CredentialService,
        store: DelegationStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.service = service
        self.store = store
        self.clock = clock
        self.grants: dict[str, Grant] = {}
        self.ledgers: dict[str, UsageLedger] = {}
        self._lock = asyncio.Lock()

    @property
    def agent(self) -> str:
        return self.service.manifest.agent

    # -- lookup ------------------------------------------------------------------------------

    def authenticate(self, token: str, now: float) -> Grant | GrantRefusal:
        """The live grant a grant token names, or why it is not usable."""
        grant_id, _, secret = token.partition(".")
        grant = self.grants.get(grant_id)
        if grant is None or not hmac.compare_digest(grant.secret_digest, _digest(secret)):
            return GrantRefusal(_R.grant_invalid, "subject_token", "not a grant of this sidecar")
        revoked = self.service.runtime.control.revoked_grants  # security's, from Vault
        if any(
            a.grant in revoked or (a.grant in self.grants and self.grants[a.grant].revoked)
            for a in grant.chain
        ):
            why = f"grant {grant.id} or one above it was revoked"
            return GrantRefusal(_R.grant_revoked, "subject_token", why)
        if grant.issued_at <= self.service.runtime.control.revoked_before:
            why = f"{grant.agent}'s credentials were revoked after grant {grant.id} was made"
            return GrantRefusal(_R.grant_revoked, "subject_token", why)
        if now >= grant.expires_at:
            return GrantRefusal(_R.grant_expired, "subject_token", f"grant {grant.id} expired")
        return grant

    # -- grant -------------------------------------------------------------------------------

    async def grant(self, req: GrantRequest, request_id: str) -> Reply:
        if getattr(self.service.audit, "failed", ""):
            raise AuditUnavailable(self.service.audit.failed)  # type: ignore[attr-defined]
        now = self.clock()
        await self.sweep(now)
        parent: Grant | None = None
        if req.parent_grant is not None:
            found = self.authenticate(req.parent_grant, now)
            if isinstance(found, GrantRefusal):
                return await self._refused(req, request_id, None, found, now)
            parent = found
        if self.service.runtime.control.killed:
            refusal = GrantRefusal(_R.grant_revoked, "agent", f"{self.agent} is disabled")
            return await self._refused(req, request_id, parent, refusal, now)
        ledger = self.service.ledger if parent is None else self.ledgers[parent.id]
        if isinstance(ledger, FleetLedger) and req.budgets:
            await self._top_up(ledger, req.budgets, now)
        now = self.clock()
        made = self._make(req, parent, ledger, now)  # checks and carves with no await between
        if isinstance(made, GrantRefusal):
            return await self._refused(req, request_id, parent, made, now)
        grant, secret = made
        try:
            if isinstance(ledger, FleetLedger) and grant.carved:
                await ledger.commit(self.clock())  # the carve is in the fleet's document first
            if self.store is not None:  # in Vault, for `broker status`, before it exists
                await off_loop(self.store.record, grant.id, _describe(grant), now)
            await self.service.audit.append(self._record("grant", grant, now, request_id))
        except BrokerError:
            ledger.uncarve(grant.carved, now)
            raise
        self.grants[grant.id] = grant
        self.ledgers[grant.id] = UsageLedger.for_manifest(grant.scope)
        return Reply(201, {**_describe(grant), "grant": f"{grant.id}.{secret}"})

    async def _top_up(self, ledger: FleetLedger, budgets: Mapping[str, float], now: float) -> None:
        from broker.core.fleetdoc import dec

        await ledger.ensure({n: dec(a) for n, a in budgets.items()}, now)

    def _make(
        self, req: GrantRequest, parent: Grant | None, ledger: UsageLedger, now: float
    ) -> tuple[Grant, str] | GrantRefusal:
        scope = self.service.manifest if parent is None else parent.scope
        left = {n: float(b.limit) - ledger.budget_used(n, now) for n, b in scope.budgets.items()}
        policy = self.service.manifest.delegation
        bound = parent.remaining(now) if parent else policy.max_ttl if policy else 0
        depth = parent.depth + 1 if parent else 1
        # Here: the manifest diff it rests on is 0.65 MB that an agent granting nothing never needs.
        from broker.scopes.delegation import narrow

        built = narrow(scope, req, depth=depth, ttl_bound=bound, left=left)
        if isinstance(built, GrantRefusal):
            return built
        for name, action in built.actions.items():
            if action.credential.kind != "jwt":
                why = "delegated credentials are action tokens: the action's kind is not jwt"
                rule = f"actions.{name}.credential.kind"
                return GrantRefusal(_R.invalid_grant_request, rule, why)
        ledger.carve(req.budgets, now)
        grant_id = GRANT_PREFIX + secrets.token_hex(12)
        secret = secrets.token_urlsafe(32)
        chain = (*(parent.chain if parent else ()), Actor(req.sub_agent, grant_id))
        expires = _expiry(scope, req, now)
        grant = Grant(
            id=grant_id,
            agent=self.agent,
            sub_agent=req.sub_agent,
            parent=parent.id if parent else None,
            depth=depth,
            chain=chain,
            issued_at=now,
            expires_at=expires,
            carved=dict(req.budgets),
            scope=built,
            secret_digest=_digest(secret),
        )
        return grant, secret

    async def _refused(
        self,
        req: GrantRequest,
        request_id: str,
        parent: Grant | None,
        refusal: GrantRefusal,
        now: float,
    ) -> Reply:
        body = {
            "type": "delegation",
            "event": "refused",
            "timestamp": iso_utc(now),
            "at": round(now, 6),
            "agent_id": self.agent,
            "request_id": request_id,
            "sub_agent": req.sub_agent,
            "parent_grant": parent.id if parent else None,
            "actions": sorted(req.actions),
            "budgets": dict(req.budgets),
            "ttl": req.ttl,
            **refusal.to_json(),
        }
        await self.service.audit.append(body)
        return refusal_reply(refusal)

    def _record(self, event: str, grant: Grant, now: float, request_id: str) -> dict[str, Any]:
        return {
            "type": "delegation",
            "event": event,
            "timestamp": iso_utc(now),
            "at": round(now, 6),
            "agent_id": self.agent,
            "request_id": request_id,
            **_describe(grant),
        }

    # -- revoke and expire -------------------------------------------------------------------

    def below(self, grant_id: str) -> list[Grant]:
        """``grant_id``'s grant and every grant under it, deepest first."""
        found = [g for g in self.grants.values() if any(a.grant == grant_id for a in g.chain)]
        return sorted(found, key=lambda g: -g.depth)

    async def revoke(self, grant_id: str, reason: str, request_id: str) -> Reply:
        if grant_id not in self.grants:
            raise NotFound(f"no grant {grant_id!r} on this sidecar")
        now = self.clock()
        async with self._lock:
            tree = [g for g in self.below(grant_id) if not g.revoked]
            for grant in tree:
                grant.revoked = True  # exchanges refuse from here on
            if self.store is not None and tree:
                store, ids = self.store, {g.id: g.expires_at for g in tree}
                await off_loop(store.revoke, ids, now)
            for grant in tree:
                self._give_back(grant, now)
                body = {**self._record("revoke", grant, now, request_id), "reason": reason}
                await self.service.audit.append(body)
        return Reply(200, {"revoked": [g.id for g in tree]})

    async def sweep(self, now: float) -> None:
        """Expired grants give their unspent carve back, deepest first, and are forgotten."""
        done = sorted(
            (g for g in self.grants.values() if now >= g.expires_at or g.revoked),
            key=lambda g: -g.depth,
        )
        for grant in done:
            if not grant.revoked:
                self._give_back(grant, now)
                await self.service.audit.append(self._record("expire", grant, now, ""))
            if now >= grant.expires_at:
                del self.grants[grant.id]
                self.ledgers.pop(grant.id, None)

    def _give_back(self, grant: Grant, now: float) -> None:
        ledger = self.ledgers.get(grant.id)
        parent = self.service.ledger if grant.parent is None else self.ledgers.get(grant.parent)
        if ledger is None or parent is None:
            return
        unspent = {
            n: max(amount - ledger.budget_used(n, now), 0.0) for n, amount in grant.carved.items()
        }
        parent.uncarve({n: a for n, a in unspent.items() if a > 0}, now)
        grant.carved = {n: amount - unspent[n] for n, amount in grant.carved.items()}

    def listing(self, now: float) -> dict[str, Any]:
        """For ``GET /v1/delegations`` and ``broker status``: live grants with their chains."""
        return {
            "agent": self.agent,
            "grants": [
                {**_describe(g), "revoked": g.revoked, "spent": self._spent(g, now)}
                for g in sorted(self.grants.values(), key=lambda g: (g.depth, g.issued_at))
            ],
        }

    def _spent(self, grant: Grant, now: float) -> dict[str, float]:
        ledger = self.ledgers.get(grant.id)
        if ledger is None:
            return {}
        return {n: ledger.budget_used(n, now) for n in grant.carved}


def _expiry(scope: Manifest, req: GrantRequest, now: float) -> float:
    """``now + ttl``, no later than the end of the window of any budget carved."""
    ends = [window_end(now, scope.budgets[n].per) for n in req.budgets]
    return min([now + req.ttl, *ends])


def _describe(grant: Grant) -> dict[str, Any]:
    return {
        "grant_id": grant.id,
        "token_type": GRANT_TOKEN_TYPE,
        "agent": grant.agent,
        "sub_agent": grant.sub_agent,
        "parent_grant": grant.parent,
        "depth": grant.depth,
        "chain": [{"sub": a.sub, "grant": a.grant} for a in grant.chain],
        "actions": sorted(grant.scope.actions),
        "budgets": dict(grant.carved),
        "issued_at": round(grant.issued_at, 6),
        "expires_at": round(grant.expires_at, 6),
    }
