"""One agent's budgets shared exactly by all its replicas (``BROKER_LEDGER=vault``).

A replica takes a slice of each budget (a lease, ``broker.core.fleetdoc``) with one check-and-set
write to Vault, then decides against its slice in-process: ``budget_used`` reads
``limit - what is left of my slice``, so ``decide`` stays pure and a decision and its charge
still happen with no ``await`` between them.

Order of a mint: ``ensure`` (top up the slice if it cannot cover the call: one CAS write, or
none) -> ``decide`` -> ``charge`` (local) -> ``commit`` (report spending: one CAS write that
covers every charge made while the previous write was in flight) -> mint. The spending is in
the document before any credential leaves, so when a replica dies its lease returns exactly
``granted - spent`` to the fleet after the TTL.

Rate limits are shared the same way (``broker.core.fleetshare``): ``rate_count`` reads the
larger of this replica's sliding count and ``limit - what is left of my slice``. The
concurrency cap is shared as slots: ``in_flight`` reads ``cap - my spare slots``; slots need no
write per mint, because a dead replica's slots stay held until its credentials have expired.

Store unreachable: budgets and rate limits fail closed once the slice is spent, except a rate
limit marked ``fallback: local_share``, which then allows ``limit / replicas`` per replica
(replicas as seen at the last write; a replica that never reached the store has no share).
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
from broker.core.fleetdoc import ZERO, Grant, SlotAsk, dec
from broker.core.fleetshare import (
    RateMeter,
    SharedRate,
    call_needs,
    longest_ttl,
    rate_name,
    shared_limits,
    shared_rates,
)
from broker.core.limits import AGENT_RATE_KEY, Chargeable, UsageLedger, window_end, window_start
from broker.core.manifest import Budget, Manifest
from broker.vault.asyncapi import off_loop

DEFAULT_LEASE_TTL = 30.0
# At a steady rate of at least AHEAD_FROM calls per second on an entry, a replica reports the
# next AHEAD_SECONDS of its spending with this one, so its mints in between need no write: one
# write per replica and entry every AHEAD_SECONDS at most, whatever the rate. The price: if it
# dies, that much of its slice counts as spent (never more than the limit is minted).
AHEAD_SECONDS = Decimal("0.5")
AHEAD_FROM = 10


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
    """What the call would take of each shared budget and rate limit."""
    return call_needs(manifest, req)


@dataclass
class FleetLedger(UsageLedger):
    """A ``UsageLedger`` whose budgets are leases on the fleet document."""

    store: LedgerStore | None = None
    replica: str = ""
    ttl: float = DEFAULT_LEASE_TTL
    limits: dict[str, Decimal] = field(default_factory=dict)
    _manifest: Manifest | None = None
    _shared: dict[str, Budget] = field(default_factory=dict)
    _fleet_rates: dict[str, SharedRate] = field(default_factory=dict)
    _slots: tuple[int, float] = (0, 0.0)  # slots granted, lease expiry
    _replicas: int = 0  # live replicas seen at the last write (0: never reached the store)
    _down: bool = False  # the last write failed: fallback rates run on their local share
    _grants: dict[str, Grant] = field(default_factory=dict)
    # Calls made on a local share (window, count) per rate, not yet closed into the document.
    _unreported: dict[str, tuple[int, Decimal]] = field(default_factory=dict)
    _spent: dict[str, tuple[int, Decimal]] = field(default_factory=dict)
    _fleet_used: dict[str, tuple[int, Decimal]] = field(default_factory=dict)
    # Called with a trail record for each slice granted (set by the sidecar: the audit trail).
    on_event: Callable[[dict[str, Any]], None] | None = None
    # Called with (budget, fleet's used, leased out unspent, limit) after each write (/metrics).
    on_usage: Callable[[str, float, float, float], None] | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    meter: RateMeter = field(default_factory=RateMeter)

    def configure(self, manifest: Manifest) -> None:
        super().configure(manifest)
        self._manifest = manifest
        self._shared = shared_limits(manifest)
        self._fleet_rates = shared_rates(manifest)
        self.limits = {n: dec(b.limit) for n, b in self._shared.items()}

    # -- the view decide reads ---------------------------------------------------------------

    def left(self, name: str, now: float) -> Decimal:
        """What this replica may still spend of ``name`` now (0 without a live lease)."""
        grant, per = self._grants.get(name), self._per(name)
        if grant is None or per is None or grant.window_start != window_start(now, per):
            return ZERO
        if now >= grant.expires - self.ttl / 3:  # margin for clock skew against the others
            return ZERO
        return max(grant.granted - self._spent_in(name, now), ZERO)

    def budget_used(self, name: str, now: float) -> float:
        limit = self.limits.get(name)
        return 0.0 if limit is None else float(limit - self.left(name, now))

    def _per(self, name: str) -> int | None:
        budget = self._shared.get(name)
        return None if budget is None else budget.per

    def rate_count(self, key: str, per: float, now: float) -> int:
        mine = super().rate_count(key, per, now)
        rate = self._fleet_rates.get(rate_name(key, int(per)))
        if rate is None:
            return mine
        if self._on_local_share(rate, now):
            return mine * self._replicas  # reaches the limit at limit / replicas
        return max(mine, rate.limit - int(self.left(rate.name, now)))

    def retry_after(self, key: str, limit: int, per: float, now: float) -> float:
        mine = super().retry_after(key, limit, per, now)
        rate = self._fleet_rates.get(rate_name(key, int(per)))
        if rate is None or super().rate_count(key, per, now) >= limit:
            return mine
        return max(mine, window_end(now, rate.per) - now)  # others hold the rest of the window

    def _on_local_share(self, rate: SharedRate, now: float) -> bool:
        return (
            self._down and rate.local_share and self._replicas > 0 and not self.left(rate.name, now)
        )

    def in_flight(self, now: float) -> int:
        mine = super().in_flight(now)
        cap = self._manifest.concurrency if self._manifest else None
        if cap is None:
            return mine
        return cap - self._spare_slots(now)

    def _spare_slots(self, now: float) -> int:
        granted, expires = self._slots
        if now >= expires - self.ttl / 3:
            return 0
        return max(granted - super().in_flight(now), 0)

    def reported_used(self, name: str, now: float) -> float:
        """The fleet's usage as of this replica's last write (not ``limit - my slice``), so
        metrics and the 80%/100% notifications speak of the whole fleet."""
        window, used = self._fleet_used.get(name, (-1, ZERO))
        per = self._per(name)
        if per is None or window != window_start(now, per):
            return 0.0
        return float(used)

    def _spent_in(self, name: str, now: float) -> Decimal:
        window, amount = self._spent.get(name, (-1, ZERO))
        per = self._per(name)
        return amount if per is not None and window == window_start(now, per) else ZERO

    # -- charges -----------------------------------------------------------------------------

    def charge(
        self, decision: Chargeable, credential_id: str, expires_at: float, now: float
    ) -> None:
        super().charge(decision, credential_id, expires_at, now)
        self._account(decision, Decimal(1), now)

    def refund(self, decision: Chargeable, credential_id: str, now: float) -> None:
        super().refund(decision, credential_id, now)
        self._account(decision, Decimal(-1), now)

    def _account(self, decision: Chargeable, sign: Decimal, now: float) -> None:
        for name, amount in self._taken(decision).items():
            if self._on_share(name, now):  # outside any lease: closed into used on next write
                window, old = self._unreported.get(name, (-1, ZERO))
                start = window_start(now, self._shared[name].per)
                old = old if window == start else ZERO
                self._unreported[name] = (start, max(old + sign * amount, ZERO))
            else:
                self._spend(name, sign * amount, now)

    def _on_share(self, name: str, now: float) -> bool:
        rate = self._fleet_rates.get(name)
        return rate is not None and self._on_local_share(rate, now)

    def _taken(self, decision: Chargeable) -> dict[str, Decimal]:
        out = {name: dec(amount) for name, amount in decision.charges.items()}
        for rate in self._fleet_rates.values():
            if rate.key in (AGENT_RATE_KEY, decision.action):
                out[rate.name] = Decimal(1)
        return out

    def must_commit(self, decision: Chargeable, now: float) -> bool:
        """Whether the call's spending must be in the document before its credential leaves
        (not for a rate limit running on its local share while the store is away)."""
        return any(not self._on_share(n, now) for n in self._taken(decision))

    def carve(self, amounts: Mapping[str, float], now: float) -> None:
        """A delegated grant's reservation is spending of this replica's slice (``commit``
        puts it in the fleet's document); ``uncarve`` gives back what the grant did not use."""
        for name, amount in amounts.items():
            self._spend(name, dec(amount), now)

    def uncarve(self, amounts: Mapping[str, float], now: float) -> None:
        for name, amount in amounts.items():
            self._spend(name, -dec(amount), now)

    def _spend(self, name: str, amount: Decimal, now: float) -> None:
        per = self._shared[name].per
        self.meter.add(name, amount, now)
        self._spent[name] = (window_start(now, per), max(self._spent_in(name, now) + amount, ZERO))

    # -- the store ---------------------------------------------------------------------------

    async def ensure(self, costs: Mapping[str, Decimal], now: float) -> None:
        """Top up every slice that cannot cover ``costs``: one CAS write, or none at all."""
        short = {n: c for n, c in costs.items() if c > 0 and self.left(n, now) < c}
        slot = self._needs_slot(now)
        if short or slot:
            async with self._lock:
                if slot or any(self.left(n, now) < c for n, c in short.items()):
                    await self._write(short, now, slot=self._needs_slot(now))

    def _needs_slot(self, now: float) -> bool:
        cap = self._manifest.concurrency if self._manifest else None
        return cap is not None and self._spare_slots(now) < 1

    async def commit(self, now: float) -> None:
        """Return once the spending of every charge made so far is in the document (reported
        ahead by an earlier write, or by one now that covers every charge made meanwhile)."""
        if self._covered(now):
            return
        async with self._lock:
            if not self._covered(now):
                await self._write({}, now)

    def _covered(self, now: float) -> bool:
        for name, (window, amount) in self._spent.items():
            grant = self._grants.get(name)
            if amount > 0 and (
                grant is None or grant.window_start != window or grant.spent < amount
            ):
                return False
        return True

    def _rates_seen(self, now: float) -> tuple[dict[str, Decimal], dict[str, Decimal]]:
        """Per entry: the slice the observed rate asks for (half a TTL of spending), and how
        much spending to report ahead (none for exact budgets or slow spending)."""
        wants, ahead = {}, {}
        for name, budget in self._shared.items():
            if self.meter.count(name, now) == 0:
                continue
            rate = self.meter.amount(name, now)
            wants[name] = rate * Decimal(self.ttl) / 2
            steady = self.meter.count(name, now) >= AHEAD_FROM  # not two calls in a blink
            if not budget.exact and steady and self.meter.calls(name, now) >= AHEAD_FROM:
                ahead[name] = rate * AHEAD_SECONDS
        return wants, ahead

    def _slot_ask(self, now: float, need: bool) -> SlotAsk | None:
        assert self._manifest is not None
        cap = self._manifest.concurrency
        if cap is None:
            return None
        return SlotAsk(cap, super().in_flight(now), int(need), float(longest_ttl(self._manifest)))

    async def _write(self, needs: Mapping[str, Decimal], now: float, slot: bool = False) -> None:
        assert self.store is not None
        assert self._manifest is not None
        budgets, spent = self._shared, dict(self._spent)
        wants, ahead = self._rates_seen(now)
        path, replica, ttl = self.store.path, self.replica, self.ttl
        held, slots = frozenset(self._grants), self._slot_ask(now, slot)
        closed = dict(self._unreported)

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
                held=held,
                slots=slots,
                closed=closed,
                wants=wants,
                ahead=ahead,
            )

        try:
            doc = await off_loop(self.store.update, change)
        except fleetdoc.LeaseLost:
            self._grants.clear()
            self._spent.clear()  # that spending is closed into ``used`` already
            raise
        except LedgerInvalid:
            raise  # its own stable code: a document to repair, not a store to wait for
        except BrokerError as exc:
            self._down = True
            raise LedgerUnavailable(f"the fleet usage ledger: {exc.detail}") from exc
        self._down = False
        for name, (window, amount) in closed.items():
            now_window, left = self._unreported.get(name, (window, ZERO))
            if now_window == window:
                self._unreported[name] = (window, max(left - amount, ZERO))
        self._replicas = max(
            [len(e["leases"]) for e in doc["budgets"].values()]
            + [len(doc.get("slots", {}).get("leases", {})), 1]
        )
        self._slots = fleetdoc.slot_grant(doc, replica)
        before, self._grants = self._grants, fleetdoc.grants(doc, replica)
        for name, grant in self._grants.items():
            old = before.get(name)
            if old is None or grant.granted > old.granted or grant.window_start != old.window_start:
                self._announce("grant", name, grant, now)
        seen = fleetdoc.summary(doc, path, now)
        self._fleet_used = {
            name: (b["window_start"], Decimal(b["used"]))
            for name, b in seen.items()
            if "window_start" in b
        }
        if self.on_usage is not None:
            for name in self._manifest.budgets:
                entry = seen.get(name, {})
                leased = sum((Decimal(x) for x in entry.get("leased", {}).values()), ZERO)
                used = float(entry.get("used", 0))
                self.on_usage(name, used, float(leased), float(self.limits[name]))

    async def give_back(self, now: float) -> list[dict[str, Any]]:
        """On shutdown: close this replica's leases, so their unspent rest is free at once.
        Returns the trail records of the returns (the caller appends them before closing)."""
        if self.store is None or not (self._grants or self._slots[0]):
            return []
        spent, path, replica = dict(self._spent), self.store.path, self.replica
        live = [at for at in self._in_flight.values() if at > now]
        busy = (len(live), max(live, default=0.0))
        async with self._lock:
            await off_loop(
                self.store.update, lambda doc: fleetdoc.give_back(doc, path, replica, spent, busy)
            )
            returned, self._grants, self._slots = self._grants, {}, (0, 0.0)
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
