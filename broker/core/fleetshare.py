"""What of a manifest the fleet's replicas share through the ledger document (pure).

Budgets are shared under their own names. Each rate limit is shared as a calls budget named
``rate:<key>:<per>`` over fixed windows aligned to the epoch (``key`` is ``agent`` or the action):
across the fleet at most ``limit`` calls in each such window, exactly; each replica still
keeps its own sliding log too, so no single replica bursts 2x across a window boundary. (Two
fleet windows side by side can admit up to 2 x limit in a sliding window that straddles them:
that is the declared tolerance.) The concurrency cap is shared as slots.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal

from broker.core.decision import ActionRequest
from broker.core.fleetdoc import dec
from broker.core.limits import AGENT_RATE_KEY
from broker.core.manifest import Budget, Manifest


@dataclass(frozen=True)
class SharedRate:
    """One rate limit as the fleet shares it."""

    name: str
    key: str
    limit: int
    per: int
    local_share: bool  # may fall back to limit / replicas when the store is unreachable


def rate_name(key: str, per: int) -> str:
    return f"rate:{key}:{per}"


def shared_rates(manifest: Manifest) -> dict[str, SharedRate]:
    """Every rate limit of the manifest, by its entry name (the tightest one per key and window)."""
    out: dict[str, SharedRate] = {}
    pairs = [(AGENT_RATE_KEY, r) for r in manifest.rate]
    pairs += [(name, r) for name, a in manifest.actions.items() for r in a.rate]
    for key, rate in pairs:
        name = rate_name(key, rate.per)
        if name not in out or rate.limit < out[name].limit:
            out[name] = SharedRate(name, key, rate.limit, rate.per, rate.fallback == "local_share")
    return out


def shared_limits(manifest: Manifest) -> dict[str, Budget]:
    """Budgets and rate limits, each as the entry the ledger document keeps for it."""
    rates = {
        n: Budget(limit=float(r.limit), per=r.per, unit="calls")
        for n, r in shared_rates(manifest).items()
    }
    return {**manifest.budgets, **rates}


def call_needs(manifest: Manifest, req: ActionRequest) -> dict[str, Decimal]:
    """What the call would take of each shared entry: its costs (0 where an input is missing:
    decide refuses), and one call of every rate limit on the agent and on the action."""
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
    for name, rate in shared_rates(manifest).items():
        if rate.key in (AGENT_RATE_KEY, req.action):
            out[name] = Decimal(1)
    return out


def longest_ttl(manifest: Manifest) -> int:
    """How long a credential minted now may live: a dead replica's slots are held that long."""
    return max((a.credential.ttl for a in manifest.actions.values()), default=0)


METER_SECONDS = 1.0  # how far back the observed rate looks


@dataclass
class RateMeter:
    """Spending per second of each shared entry over the last ``METER_SECONDS`` (time passed
    in): what sizes a replica's slices and how far ahead it reports its spending."""

    _seen: dict[str, deque[tuple[float, Decimal]]] = field(default_factory=dict)
    _since: dict[str, float] = field(default_factory=dict)  # start of the current busy spell

    def add(self, name: str, amount: Decimal, now: float) -> None:
        if amount > 0:
            if not self._recent(name, now):
                self._since[name] = now
            self._seen.setdefault(name, deque()).append((now, amount))

    def _recent(self, name: str, now: float) -> deque[tuple[float, Decimal]]:
        seen = self._seen.get(name, deque())
        while seen and seen[0][0] <= now - METER_SECONDS:
            seen.popleft()
        return seen

    def _span(self, name: str, now: float) -> Decimal:
        # A spell younger than the window is measured over its own length (at least 0.1 s),
        # or a replica that just started would see a tenth of its rate.
        young = now - self._since.get(name, now)
        return Decimal(repr(min(max(young, 0.1), METER_SECONDS)))

    def calls(self, name: str, now: float) -> Decimal:
        """Charges per second."""
        return len(self._recent(name, now)) / self._span(name, now)

    def count(self, name: str, now: float) -> int:
        """Charges in the window."""
        return len(self._recent(name, now))

    def amount(self, name: str, now: float) -> Decimal:
        """Spending per second."""
        return sum((a for _, a in self._recent(name, now)), Decimal(0)) / self._span(name, now)
