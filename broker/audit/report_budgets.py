"""Budget use against the manifests' limits, from the audit trail: pure, records in.

A budget's window is aligned to the epoch (a ``1d`` budget resets at 00:00 UTC), as the
sidecar's ledger counts it. For each agent's budget the report shows what was charged in the
window that holds ``now`` (what is left to spend) and the busiest window of the report's range
(how close it came). Charges are the decision records' ``charges`` at mint; an outcome's
actual cost does not change them, as the ledger does not refund on outcome either."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from broker.audit.report import _iso, _text, _time


@dataclass(frozen=True)
class BudgetLimit:
    """One agent's budget as its manifest declares it."""

    agent: str
    budget: str
    limit: float
    per: int  # seconds
    unit: str


@dataclass(frozen=True)
class BudgetUse:
    agent: str
    budget: str
    unit: str
    limit: float
    per: int
    current: float  # charged in the window holding ``now``
    peak: float  # the busiest window of the range
    peak_window: str | None  # its start, ISO UTC; None when nothing was charged

    @property
    def current_share(self) -> float:
        return self.current / self.limit

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"current_share": round(self.current_share, 4)}


def budget_use(
    records: Iterable[Mapping[str, Any]],
    limits: Iterable[BudgetLimit],
    *,
    now: float,
    start: float | None = None,
) -> tuple[BudgetUse, ...]:
    """Per declared budget: charged now and at peak, over windows from ``start`` (or the
    first record) to ``now``."""
    charged: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for r in records:
        at, agent, charges = _time(r), _text(r, "agent_id"), r.get("charges")
        if r.get("type") != "decision" or at is None or not agent or not _text(r, "credential_id"):
            continue
        if isinstance(charges, Mapping):
            for name, amount in charges.items():
                if isinstance(amount, int | float):
                    charged[(agent, str(name))].append((at, float(amount)))
    return tuple(_use(b, charged.get((b.agent, b.budget), []), now, start) for b in limits)


def _use(
    b: BudgetLimit, charges: list[tuple[float, float]], now: float, start: float | None
) -> BudgetUse:
    windows: dict[int, float] = defaultdict(float)
    first = None if start is None else int(start // b.per)
    for at, amount in charges:
        n = int(at // b.per)
        if at <= now and (first is None or n >= first):
            windows[n] += amount
    current = windows.get(int(now // b.per), 0.0)
    peak_n = max(windows, key=lambda n: (windows[n], n), default=None)
    return BudgetUse(
        agent=b.agent, budget=b.budget, unit=b.unit, limit=b.limit, per=b.per,
        current=round(current, 6),
        peak=round(windows[peak_n], 6) if peak_n is not None else 0.0,
        peak_window=_iso(peak_n * b.per) if peak_n is not None else None,
    )  # fmt: skip


def limits_of(manifests: Iterable[Any], agent: str | None = None) -> list[BudgetLimit]:
    """Every budget the manifests declare (only ``agent``'s, when given)."""
    return [
        BudgetLimit(m.agent, name, float(b.limit), int(b.per), b.unit)
        for m in manifests
        if agent in (None, m.agent)
        for name, b in sorted(m.budgets.items())
    ]
