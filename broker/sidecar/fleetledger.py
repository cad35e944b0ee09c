"""One agent's budgets shared exactly by all its replicas (``BROKER_LEDGER=vault``).

A replica takes a slice of each budget (a lease, ``broker.core.fleetdoc``) with one check-and-set
write to Vault, then decides against its slice in-process: ``budget_used`` reads
``limit - what is left of my slice``, so ``decide`` stays pure and a decision and its charge
still happen with no ``await`` between them.

Order of a mint: ``ensure`` (top up the slice if it cannot cover the call: one CAS write, or
none) -> ``decide`` -> ``charge`` (local) -> ``commit`` (report spending: one CAS write that
covers every charge made while the previous write was in flight) -> mint. The spending is in
the document before any credential leaves, so when a replica dies its lease returns exactly
``granted - spent`` to the fleet after the TTL. Rates and concurrency stay per replica.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from broker.audit.records import iso_utc
from broker.core import fleetdoc
from broker.core.decision import ActionRequest
from broker.core.errors import BackendUnavailable, BrokerError, LedgerInvalid
from broker.core.fleetdoc import ZERO, Grant, dec
from broker.core.limits import Chargeable, UsageLedger, window_start
from broker.core.manifest import Manifest

DEFAULT_LEASE_TTL = 30.0


class LedgerStore(Protocol):
    path: str
    writes: int

    def read(self) -> dict[str, Any] | None: ...

    def update(
        self, change: Callable[[dict[str, Any] | None], dict[str, Any]]
    ) -> dict[str, Any]: ...


class LedgerUnavailable(BackendUnavailable):
    code = "ledger_unavailable"


def request_costs(manifest: Manifest, req: ActionRequest) -> dict[str, Decimal]:
    """What the call would charge each budget (0 where an input is missing: decide refuses)."""
    action = manifest.actions.get(req.action)
    if action is None:
        return {}
    out = {}
    for name, value in action.cost.items():
        amount = value
        if isinstance(value, str):
            raw = req.inputs.get(value.removeprefix("inputs."))
            amount = raw if isinstance(raw, int | float) and not isinstance(raw, bool) else 0
        out[name] = dec(amount)
    return out


@dataclass
class FleetLedger(UsageLedger):
    """A ``UsageLedger`` whose budgets are leases on the fleet document."""

    store: LedgerStore | None = None
    replica: str = ""
    ttl: float = DEFAULT_LEASE_TTL
    limits: dict[str, Decimal] = field(default_factory=dict)
    _manifest: Manifest | None = None
    _grants: dict[str, Grant] = field(default_factory=dict)
    _spent: dict[str, tuple[int, Decimal]] = field(default_factory=dict)
    _fleet_used: dict[str, tuple[int, Decimal]] = field(default_factory=dict)
    # Called with a trail record for each slice granted (set by the sidecar: the audit trail).
    on_event: Callable[[dict[str, Any]], None] | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _charged: int = 0  # charges made so far
    _reported: int = 0  # charges covered by the last successful write

    def configure(self, manifest: Manifest) -> None:
        super().configure(manifest)
        self._manifest = manifest
        self.limits = {n: dec(b.limit) for n, b in manifest.budgets.items()}

    # -- the view decide reads ---------------------------------------------------------------

    def left(self, name: str, now: float) -> Decimal:
        """What this replica may still spend of ``name`` now (0 without a live lease)."""
        grant, per = self._grants.get(name), self.periods.get(name)
        if grant is None or per is None or grant.window_start != window_start(now, per):
            return ZERO
        if now >= grant.expires - self.ttl / 3:  # margin for clock skew against the others
            return ZERO
        return max(grant.granted - self._spent_in(name, now), ZERO)

    def budget_used(self, name: str, now: float) -> float:
        limit = self.limits.get(name)
        return 0.0 if limit is None else float(limit - self.left(name, now))

    def reported_used(self, name: str, now: float) -> float:
        """The fleet's usage as of this replica's last write (not ``limit - my slice``), so
        metrics and the 80%/100% notifications speak of the whole fleet."""
        window, used = self._fleet_used.get(name, (-1, ZERO))
        per = self.periods.get(name)
        if per is None or window != window_start(now, per):
            return 0.0
        return float(used)

    def _spent_in(self, name: str, now: float) -> Decimal:
        window, amount = self._spent.get(name, (-1, ZERO))
        per = self.periods.get(name)
        return amount if per is not None and window == window_start(now, per) else ZERO

    # -- charges -----------------------------------------------------------------------------

    def charge(
        self, decision: Chargeable, credential_id: str, expires_at: float, now: float
    ) -> None:
        super().charge(decision, credential_id, expires_at, now)
        for name, amount in decision.charges.items():
            self._spend(name, dec(amount), now)
        self._charged += 1

    def refund(self, decision: Chargeable, credential_id: str, now: float) -> None:
        super().refund(decision, credential_id, now)
        for name, amount in decision.charges.items():
            self._spend(name, -dec(amount), now)

    def carve(self, amounts: Mapping[str, float], now: float) -> None:
        """A delegated grant's reservation is spending of this replica's slice (``commit``
        puts it in the fleet's document); ``uncarve`` gives back what the grant did not use."""
        for name, amount in amounts.items():
            self._spend(name, dec(amount), now)
        self._charged += 1

    def uncarve(self, amounts: Mapping[str, float], now: float) -> None:
        for name, amount in amounts.items():
            self._spend(name, -dec(amount), now)
        self._charged += 1

    def _spend(self, name: str, amount: Decimal, now: float) -> None:
        per = self.periods[name]
        self._spent[name] = (window_start(now, per), max(self._spent_in(name, now) + amount, ZERO))

    # -- the store ---------------------------------------------------------------------------

    async def ensure(self, costs: Mapping[str, Decimal], now: float) -> None:
        """Top up every slice that cannot cover ``costs``: one CAS write, or none at all."""
        short = {n: c for n, c in costs.items() if c > 0 and self.left(n, now) < c}
        if short:
            async with self._lock:
                if any(self.left(n, now) < c for n, c in short.items()):
                    await self._write(short, now)

    async def commit(self, now: float) -> None:
        """Return once the spending of every charge made so far is in the document."""
        target = self._charged
        async with self._lock:
            if self._reported < target:
                await self._write({}, now)

    async def _write(self, needs: Mapping[str, Decimal], now: float) -> None:
        assert self.store is not None
        assert self._manifest is not None
        budgets, spent, covered = self._manifest.budgets, dict(self._spent), self._charged
        path, replica, ttl = self.store.path, self.replica, self.ttl

        def change(doc: dict[str, Any] | None) -> dict[str, Any]:
            return fleetdoc.lease(
                doc,
                path,
                budgets=budgets,
                replica=replica,
                spent=spent,
                needs=needs,
                now=now,
                ttl=ttl,
            )

        try:
            doc = await asyncio.to_thread(self.store.update, change)
        except fleetdoc.LeaseLost:
            self._grants.clear()
            self._spent.clear()  # that spending is closed into ``used`` already
            raise
        except LedgerInvalid:
            raise  # its own stable code: a document to repair, not a store to wait for
        except BrokerError as exc:
            raise LedgerUnavailable(f"the fleet usage ledger: {exc.detail}") from exc
        before, self._grants = self._grants, fleetdoc.grants(doc, replica)
        for name, grant in self._grants.items():
            old = before.get(name)
            if old is None or grant.granted > old.granted or grant.window_start != old.window_start:
                self._announce("grant", name, grant, now)
        self._fleet_used = {
            name: (b["window_start"], Decimal(b["used"]))
            for name, b in fleetdoc.summary(doc, path, now).items()
        }
        self._reported = max(self._reported, covered)

    async def give_back(self, now: float) -> list[dict[str, Any]]:
        """On shutdown: close this replica's leases, so their unspent rest is free at once.
        Returns the trail records of the returns (the caller appends them before closing)."""
        if self.store is None or not self._grants:
            return []
        spent, path, replica = dict(self._spent), self.store.path, self.replica
        async with self._lock:
            await asyncio.to_thread(
                self.store.update, lambda doc: fleetdoc.give_back(doc, path, replica, spent)
            )
            returned, self._grants = self._grants, {}
        return [self._record("return", n, g, now) for n, g in returned.items()]

    def _announce(self, event: str, name: str, grant: Grant, now: float) -> None:
        if self.on_event is not None:
            self.on_event(self._record(event, name, grant, now))

    def _record(self, event: str, name: str, grant: Grant, now: float) -> dict[str, Any]:
        return {
            "type": "lease",
            "event": event,
            "timestamp": iso_utc(now),
            "at": round(now, 6),
            "agent_id": self._manifest.agent if self._manifest else "",
            "replica": self.replica,
            "budget": name,
            "window_start": grant.window_start,
            "granted": str(grant.granted),
            "spent": str(max(grant.spent, self._spent_in(name, now))),
            "expires": grant.expires,
        }

    def status(self, now: float) -> dict[str, Any]:
        """Used, leased (per replica), free and window end per budget, from the document."""
        assert self.store is not None
        return fleetdoc.summary(self.store.read(), self.store.path, now)
