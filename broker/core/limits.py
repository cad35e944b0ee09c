"""Usage accounting: budget windows, rate windows and in-flight credentials (pure, no clock).

Choices, and why:

- Budgets use fixed windows aligned to the epoch (``per: 1d`` is a UTC day, ``1h`` a clock
  hour), because owners reason about "today's refunds". Amounts are summed as ``Decimal``
  of the float's shortest repr, so N charges of 0.1 add up to exactly N/10.
- Rates use a sliding window log: one timestamp per allowed call, kept only as long as the
  longest rate window. That is exact (no boundary bursts of 2x) and cheap: counts are a
  ``bisect`` and the log never holds more entries than the calls the limits allow.
- Concurrency counts credential ids with their expiry, so a slot frees itself when the
  credential expires even if the agent never reports it done.

Only allowed (or approved and redeemed) calls are charged; refusals are never charged. The
sidecar runs ``decide`` and ``charge`` in one synchronous stretch with no ``await`` between,
which makes check-then-charge atomic in its single event loop.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from broker.core.manifest import Manifest

AGENT_RATE_KEY = "agent"  # action names always contain a dot, so this cannot collide
LEDGER_FORMAT = 1


class UsageView(Protocol):
    """What ``decide`` may read about past usage."""

    def budget_used(self, name: str, now: float) -> float: ...

    def rate_count(self, key: str, per: float, now: float) -> int: ...

    def retry_after(self, key: str, limit: int, per: float, now: float) -> float: ...

    def in_flight(self, now: float) -> int: ...

    def slot_frees_in(self, now: float) -> float | None: ...


class Chargeable(Protocol):
    """The parts of a ``Decision`` the ledger needs."""

    @property
    def action(self) -> str: ...

    @property
    def charges(self) -> Mapping[str, float]: ...


def window_start(now: float, per: int) -> int:
    """Start of the epoch-aligned window of ``per`` seconds that contains ``now``."""
    return int(now // per) * per


def window_end(now: float, per: int) -> int:
    return window_start(now, per) + per


@dataclass
class UsageLedger:
    """Mutable usage state for one agent. ``periods`` maps budget name -> window seconds."""

    periods: dict[str, int] = field(default_factory=dict)
    rate_horizon: int = 0
    _budgets: dict[str, tuple[int, Decimal]] = field(default_factory=dict)
    _rates: dict[str, list[float]] = field(default_factory=dict)
    _in_flight: dict[str, float] = field(default_factory=dict)
    # (expiry, credential id), a heap: expiring slots costs O(log n), not a scan per charge.
    # Entries of released credentials stay until their expiry and are skipped then.
    _expiries: list[tuple[float, str]] = field(default_factory=list)
    # Charged, but the credential's record is not yet on the trail: a snapshot taken now must
    # name them, so that replaying their records after it does not charge them twice.
    _unrecorded: set[str] = field(default_factory=set)
    # Whether a concurrency cap reads the slots: only then must a snapshot carry every slot
    # (without a cap they are only a count for ``broker status``, and a snapshot listing the
    # credentials of a busy minute ran to megabytes, written every 5,000 records).
    slots_capped: bool = True

    @classmethod
    def for_manifest(cls, manifest: Manifest) -> UsageLedger:
        ledger = cls()
        ledger.configure(manifest)
        return ledger

    def configure(self, manifest: Manifest) -> None:
        """Adopt a (new) manifest's windows; usage of unchanged budgets carries over."""
        self.periods = {name: b.per for name, b in manifest.budgets.items()}
        windows = [r.per for r in manifest.rate]
        windows += [r.per for a in manifest.actions.values() for r in a.rate]
        self.rate_horizon = max(windows, default=0)
        self.slots_capped = manifest.concurrency is not None

    # -- reads (used by decide) --------------------------------------------------------------

    def budget_used(self, name: str, now: float) -> float:
        per = self.periods.get(name)
        entry = self._budgets.get(name)
        if per is None or entry is None or entry[0] != window_start(now, per):
            return 0.0
        return float(entry[1])

    def rate_count(self, key: str, per: float, now: float) -> int:
        log = self._rates.get(key)
        if not log:
            return 0
        return len(log) - bisect_right(log, now - per)

    def retry_after(self, key: str, limit: int, per: float, now: float) -> float:
        """Seconds until one more call fits under ``limit`` per ``per`` (0 if it fits now)."""
        log = self._rates.get(key, [])
        inside = log[bisect_right(log, now - per) :]
        if len(inside) < limit:
            return 0.0
        return max(inside[len(inside) - limit] + per - now, 0.0)

    def in_flight(self, now: float) -> int:
        self._expire(now)
        return len(self._in_flight)

    def slot_frees_in(self, now: float) -> float | None:
        """Seconds until the oldest credential in flight expires (an outcome may free a slot
        sooner); None when nothing is in flight. Read only on a concurrency refusal."""
        self._expire(now)
        live = [at for at, cid in self._expiries if self._in_flight.get(cid) == at]
        return max(min(live) - now, 0.0) if live else None

    def reported_used(self, name: str, now: float) -> float:
        """Usage for metrics and budget notifications (the fleet ledger's differs from what
        ``decide`` reads)."""
        return self.budget_used(name, now)

    # -- writes ------------------------------------------------------------------------------

    def charge(
        self, decision: Chargeable, credential_id: str, expires_at: float, now: float
    ) -> None:
        """Record a minted credential: its costs, one call on each rate log, one slot."""
        for name, amount in decision.charges.items():
            self._add_budget(name, amount, now)
        if self.rate_horizon:
            for key in (AGENT_RATE_KEY, decision.action):
                self._log_call(key, now)
        self._expire(now)
        self._in_flight[credential_id] = expires_at
        heapq.heappush(self._expiries, (expires_at, credential_id))
        self._unrecorded.add(credential_id)

    def recorded(self, credential_id: str) -> None:
        """The credential's record is durable: a snapshot no longer needs to name it."""
        self._unrecorded.discard(credential_id)

    def refund(self, decision: Chargeable, credential_id: str, now: float) -> None:
        """Undo ``charge`` made at ``now`` when minting failed: nothing was issued."""
        for name, amount in decision.charges.items():
            self._sub_budget(name, amount, now)
        for key in (AGENT_RATE_KEY, decision.action):
            self._unlog_call(key, now)
        self._in_flight.pop(credential_id, None)
        self._unrecorded.discard(credential_id)

    def carve(self, amounts: Mapping[str, float], now: float) -> None:
        """Reserve budget for a delegated grant: spent as far as everyone else can tell, with
        no call on the rate logs and no concurrency slot."""
        for name, amount in amounts.items():
            self._add_budget(name, amount, now)

    def uncarve(self, amounts: Mapping[str, float], now: float) -> None:
        """Give back what a grant did not spend (within the window it was carved in)."""
        for name, amount in amounts.items():
            self._sub_budget(name, amount, now)

    def release(self, credential_id: str) -> bool:
        """Free a credential's concurrency slot early; False if it was not in flight."""
        return self._in_flight.pop(credential_id, None) is not None

    def release_all(self, credential_ids: Iterable[str] | None = None) -> None:
        """Free the given slots, or every slot (after a mass revocation)."""
        if credential_ids is None:
            self._in_flight.clear()
            self._expiries.clear()
        else:
            for credential_id in credential_ids:
                self._in_flight.pop(credential_id, None)

    def _add_budget(self, name: str, amount: float, now: float) -> None:
        per = self.periods.get(name)
        if per is None:
            raise KeyError(f"budget {name!r} is not configured in this ledger")
        start = window_start(now, per)
        held_start, used = self._budgets.get(name, (start, Decimal(0)))
        if held_start != start:
            used = Decimal(0)
        self._budgets[name] = (start, used + Decimal(repr(float(amount))))

    def _sub_budget(self, name: str, amount: float, now: float) -> None:
        per = self.periods.get(name)
        entry = self._budgets.get(name)
        if per is None or entry is None or entry[0] != window_start(now, per):
            return  # the window has rolled over: its usage is already gone
        left = max(entry[1] - Decimal(repr(float(amount))), Decimal(0))
        self._budgets[name] = (entry[0], left)

    def _unlog_call(self, key: str, now: float) -> None:
        log = self._rates.get(key)
        if not log:
            return
        # The call was logged at ``now``, or later if the clock had stepped back.
        index = bisect_left(log, now)
        if index < len(log):
            del log[index]

    def _log_call(self, key: str, now: float) -> None:
        log = self._rates.setdefault(key, [])
        # Clock steps backwards must not unsort the log; record such a call at the last time.
        log.append(max(now, log[-1]) if log else now)
        del log[: bisect_right(log, now - self.rate_horizon)]

    def _expire(self, now: float) -> None:
        heap = self._expiries
        while heap and heap[0][0] <= now:
            expiry, credential_id = heapq.heappop(heap)
            if self._in_flight.get(credential_id) == expiry:
                del self._in_flight[credential_id]
            self._unrecorded.discard(credential_id)  # bounded even if a record never came

    # -- persistence -------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready snapshot; ``from_json`` of it continues exactly where this stopped."""
        return {
            "format": LEDGER_FORMAT,
            "periods": dict(self.periods),
            "rate_horizon": self.rate_horizon,
            "budgets": {
                n: {"window_start": s, "used": str(u)} for n, (s, u) in self._budgets.items()
            },
            "rates": {k: list(v) for k, v in self._rates.items()},
            "in_flight": dict(self._in_flight) if self.slots_capped else {},
            "unrecorded": sorted(self._unrecorded),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> UsageLedger:
        if data.get("format") != LEDGER_FORMAT:
            raise ValueError(f"unsupported usage ledger format {data.get('format')!r}")
        ledger = cls(periods=dict(data["periods"]), rate_horizon=int(data["rate_horizon"]))
        for name, entry in data["budgets"].items():
            ledger._budgets[name] = (int(entry["window_start"]), Decimal(entry["used"]))
        ledger._rates = {k: sorted(float(t) for t in v) for k, v in data["rates"].items()}
        ledger._in_flight = {k: float(v) for k, v in data["in_flight"].items()}
        ledger._unrecorded = set(data.get("unrecorded", ()))  # absent in older snapshots
        ledger._expiries = [(v, k) for k, v in ledger._in_flight.items()]
        heapq.heapify(ledger._expiries)
        return ledger


class UsageStore(Protocol):
    """Where a sidecar keeps its ledger across restarts (a file, Vault KV, ...)."""

    def save(self, snapshot: dict[str, Any]) -> None: ...

    def load(self) -> dict[str, Any] | None: ...


@dataclass(frozen=True)
class UsageSnapshot:
    """Fixed usage figures, for scenario tests and ``explain``: counts hold in every window."""

    budgets: Mapping[str, float] = field(default_factory=dict)
    rates: Mapping[str, int] = field(default_factory=dict)
    in_flight_count: int = 0

    def budget_used(self, name: str, now: float) -> float:
        return float(self.budgets.get(name, 0.0))

    def rate_count(self, key: str, per: float, now: float) -> int:
        return self.rates.get(key, 0)

    def retry_after(self, key: str, limit: int, per: float, now: float) -> float:
        return float(per) if self.rate_count(key, per, now) >= limit else 0.0

    def in_flight(self, now: float) -> int:
        return self.in_flight_count

    def slot_frees_in(self, now: float) -> float | None:
        return None  # fixed figures: no credential has an expiry
